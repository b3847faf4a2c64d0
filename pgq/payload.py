"""Serializers and compression: what a job's arguments and a result look like in their row.

A default job (JSON, no compression) keeps its arguments in the `args`/`kwargs` jsonb columns,
readable with plain SQL; its `content_type` column is NULL. Any other job — another
serializer, or compression — stores `[args, kwargs]` as one encoded (and maybe compressed)
document in the `payload` bytea column, with its `content_type` (a MIME type, as Celery's
messages carry) and `compression` beside it. A worker decodes only content types in its
`accept_content`; the others fail with `ContentDisallowed`, unread.

Results stay JSON in the `result` jsonb column unless `result_serializer` (or
`result_compression`) says otherwise; then the column holds an envelope
`{"__type__": "payload", "content_type": ..., "compression": ..., "__value__": <base64>}`
that readers decode only if their `result_accept_content` allows it.
"""

from __future__ import annotations

import base64
import bz2
import datetime as dt
import lzma
import pickle
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import orjson

from pgq import security, serialization
from pgq.errors import ConfigurationError, ContentDisallowed, EncodeError, InvalidOption

if TYPE_CHECKING:
    from pgq.app import App


class Decodable(Protocol):
    """The columns that carry a job's arguments (a JobRow, or a claimed Job)."""

    @property
    def args(self) -> str: ...
    @property
    def kwargs(self) -> str: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def compression(self) -> str | None: ...
    @property
    def payload(self) -> bytes | None: ...

JSON = "application/json"


class Serializer(NamedTuple):
    name: str
    content_type: str
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]


# --- the serializers ---------------------------------------------------------------------------


def _json_dumps(obj: Any) -> bytes:
    return serialization.dumps(obj, "payload").encode()


def _json_loads(data: bytes) -> Any:
    return serialization.loads(data)


def _tag_scalar(obj: Any) -> Any:
    """msgpack's `default`: the types pgq's JSON tags, tagged the same way."""
    if isinstance(obj, dt.datetime | dt.date | dt.time | uuid.UUID | Decimal):
        return serialization.tag(obj)
    raise EncodeError(f"cannot encode a {type(obj).__name__} with msgpack (use str, int, "
                      "float, bool, None, bytes, list, dict, datetime, date, UUID or Decimal)")


def _untag_map(obj: dict[Any, Any]) -> Any:
    if len(obj) == 2 and "__type__" in obj and "__value__" in obj:
        return serialization.from_db(obj)
    return obj


def _msgpack_dumps(obj: Any) -> bytes:
    import msgpack  # type: ignore[import-untyped]

    try:
        return msgpack.packb(obj, default=_tag_scalar, use_bin_type=True,  # type: ignore[no-any-return]
                             datetime=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"cannot encode with msgpack: {exc}") from exc


def _msgpack_loads(data: bytes) -> Any:
    import msgpack

    return msgpack.unpackb(data, raw=False, object_hook=_untag_map, strict_map_key=False)


def _yaml_dumps(obj: Any) -> bytes:
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    tagged = orjson.loads(serialization.dumps(obj, "payload"))  # same types as JSON
    return yaml.dump(tagged, Dumper=dumper, allow_unicode=True,
                     sort_keys=False).encode()


def _yaml_loads(data: bytes) -> Any:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return serialization.from_db(yaml.load(data, Loader=loader))


def _pickle_dumps(obj: Any) -> bytes:
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise EncodeError(f"cannot pickle value: {exc}") from exc


SERIALIZERS: dict[str, Serializer] = {s.name: s for s in (
    Serializer("json", JSON, _json_dumps, _json_loads),
    Serializer("msgpack", "application/x-msgpack", _msgpack_dumps, _msgpack_loads),
    Serializer("yaml", "application/x-yaml", _yaml_dumps, _yaml_loads),
    Serializer("pickle", "application/x-python-serialize", _pickle_dumps, pickle.loads),
)}
_BY_CONTENT_TYPE = {s.content_type: s for s in SERIALIZERS.values()}


def serializer_names() -> frozenset[str]:
    """Every name or MIME type `task_serializer` may be set to."""
    return frozenset(SERIALIZERS) | frozenset(_BY_CONTENT_TYPE)


_NEEDS = {"msgpack": "msgpack", "yaml": "yaml"}  # serializer -> module (and extra) it needs


def serializer(name: str, where: str = "serializer") -> Serializer:
    """The serializer called `name` (or with that MIME type); `InvalidOption` otherwise."""
    found = SERIALIZERS.get(name) or _BY_CONTENT_TYPE.get(name)
    if found is None:
        raise InvalidOption(f"unknown {where} {name!r}: use one of "
                            f"{', '.join(SERIALIZERS)}")
    module = _NEEDS.get(found.name)
    if module is not None:
        _require(module, found.name)
    return found


def _require(module: str, name: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigurationError(f"serializer {name!r} needs the {module} package: "
                                 f"pip install 'pgq-tasks[{module}]'")


def accepts(accept: Iterable[str], ser: Serializer) -> bool:
    """Celery's rule: `accept_content` lists serializer names or MIME types."""
    return any(a == ser.name or a == ser.content_type for a in accept)


# --- compression -------------------------------------------------------------------------------

COMPRESSIONS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "zlib": (zlib.compress, zlib.decompress),
    "bzip2": (bz2.compress, bz2.decompress),
    "lzma": (lzma.compress, lzma.decompress),
}
_COMPRESSION_ALIASES = {"gzip": "zlib", "bz2": "bzip2", "xz": "lzma",
                        "application/x-gzip": "zlib", "application/x-bz2": "bzip2",
                        "application/x-lzma": "lzma"}


def compression(name: str | None, where: str = "compression") -> str | None:
    """The canonical compression name (None: no compression); `InvalidOption` if unknown."""
    if not name:
        return None
    canonical = _COMPRESSION_ALIASES.get(name, name)
    if canonical not in COMPRESSIONS:
        raise InvalidOption(f"unknown {where} {name!r}: use one of {', '.join(COMPRESSIONS)}")
    return canonical


def compress(name: str | None, data: bytes) -> bytes:
    return COMPRESSIONS[name][0](data) if name else data


def decompress(name: str | None, data: bytes) -> bytes:
    if not name:
        return data
    codec = COMPRESSIONS.get(name)
    if codec is None:
        raise ContentDisallowed(f"unknown compression {name!r}: this pgq knows "
                                f"{', '.join(COMPRESSIONS)}")
    return codec[1](data)


# --- job arguments -----------------------------------------------------------------------------


class Encoded(NamedTuple):
    args: str
    kwargs: str
    content_type: str | None = None
    compression: str | None = None
    payload: bytes | None = None
    payload_size: int | None = None


class ProducerPolicy(NamedTuple):
    """What an app's settings say about the jobs it sends (memoised on `app.conf`)."""

    serializer: str
    compression: str | None
    json_accepted: bool
    signer: security.Keys | None

    @property
    def plain(self) -> bool:
        """Jobs default to unsigned JSON in jsonb (rows may share a template)."""
        return self.serializer == "json" and self.compression is None and self.signer is None


def producer_policy(app: App) -> ProducerPolicy:
    return app.conf.memo("payload.producer", _producer_policy, app)


def _producer_policy(app: App) -> ProducerPolicy:
    conf = app.conf
    ser = conf.task_serializer
    return ProducerPolicy("json" if ser == JSON else ser, conf.task_compression,
                          accepts(conf.accept_content, SERIALIZERS["json"]),
                          security.signer(app))


class WorkerPolicy(NamedTuple):
    """What an app's settings say about the jobs it runs and the results it stores."""

    accept: tuple[str, ...]
    json_accepted: bool
    require_signature: bool
    result_plain: bool  # results are JSON, uncompressed


def worker_policy(app: App) -> WorkerPolicy:
    return app.conf.memo("payload.worker", _worker_policy, app)


def _worker_policy(app: App) -> WorkerPolicy:
    conf = app.conf
    accept = tuple(conf.accept_content)
    return WorkerPolicy(accept, accepts(accept, SERIALIZERS["json"]),
                        bool(conf.security_require_signature),
                        conf.result_serializer in ("json", JSON)
                        and not conf.result_compression)


def encode_arguments(app: App, policy: ProducerPolicy, ser_name: str,
                     compression_name: str | None, args: list[Any],
                     kwargs: dict[str, Any]) -> Encoded:
    """Encode a job's arguments for its row; raise before anything is written."""
    if ser_name == "json" and compression_name is None and policy.json_accepted:
        return Encoded(serialization.dumps(args, "args"),
                       serialization.dumps(kwargs, "kwargs") if kwargs else "{}")
    ser = serializer(ser_name)
    comp = compression(compression_name)
    _check_accepted(app, ser)
    if ser.name == "json" and comp is None:
        return Encoded(serialization.dumps(args, "args"),
                       serialization.dumps(kwargs, "kwargs") if kwargs else "{}")
    raw = ser.dumps([args, kwargs])
    return Encoded("[]", "{}", ser.content_type, comp, compress(comp, raw), len(raw))


def _check_accepted(app: App, ser: Serializer) -> None:
    accept = app.conf.accept_content
    if not accepts(accept, ser):
        raise InvalidOption(
            f"serializer {ser.name!r} is not in accept_content {accept}: add it "
            f"(accept_content=[..., {ser.name!r}]) so that workers sharing this "
            "configuration run these jobs")


def decode_arguments(policy: WorkerPolicy, job: Decodable, options: dict[str, Any]
                     ) -> tuple[Any, Any]:
    """A job's (args, kwargs) from its row, if this worker accepts its content type."""
    content_type = job.content_type
    if content_type is None:
        if not policy.json_accepted:
            raise _refused(SERIALIZERS["json"], "accept_content")
        args, kwargs = serialization.loads(job.args), serialization.loads(job.kwargs)
        if options.get("content_type") == "pickle":  # rows written before revision 0007
            if not accepts(policy.accept, SERIALIZERS["pickle"]):
                raise _refused(SERIALIZERS["pickle"], "accept_content")
            return serialization.maybe_unpickle(args, True)  # type: ignore[no-any-return]
        return args, kwargs
    ser = _known(content_type)
    if not accepts(policy.accept, ser):
        raise _refused(ser, "accept_content")
    body = ser.loads(decompress(job.compression, job.payload or b""))
    if not (isinstance(body, list | tuple) and len(body) == 2
            and isinstance(body[0], list | tuple) and isinstance(body[1], dict)):
        raise ContentDisallowed(f"job payload ({ser.name}) is not [args, kwargs]")
    return list(body[0]), body[1]


def _known(content_type: str) -> Serializer:
    ser = _BY_CONTENT_TYPE.get(content_type) or SERIALIZERS.get(content_type)
    if ser is None:
        raise ContentDisallowed(f"content type {content_type!r} is not one this pgq knows "
                                f"({', '.join(_BY_CONTENT_TYPE)})")
    module = _NEEDS.get(ser.name)
    if module is not None:
        _require(module, ser.name)
    return ser


def _refused(ser: Serializer, setting: str) -> ContentDisallowed:
    return ContentDisallowed(
        f"content type {ser.content_type!r} ({ser.name}) is not accepted here: add "
        f"{ser.name!r} to {setting} to allow it")


def unique_digest_source(enc: Encoded, args: list[Any], kwargs: dict[str, Any]) -> bytes:
    """What a unique task's key hashes: the JSON of its arguments, or the encoded payload."""
    if enc.content_type is None:
        return serialization.dumps([args, dict(sorted(kwargs.items()))], "args").encode()
    return (enc.content_type.encode() + b"\0"
            + serializer(enc.content_type).dumps([args, dict(sorted(kwargs.items()))]))


# --- results -----------------------------------------------------------------------------------

_ENVELOPE = "payload"


def encode_result(app: App, policy: WorkerPolicy, value: Any) -> str:
    """A task's return value as the JSON text stored in `result`."""
    if policy.result_plain:
        return serialization.dumps(value, "result")
    conf = app.conf
    ser_name, comp_name = conf.result_serializer, conf.result_compression
    ser = serializer(ser_name, "result_serializer")
    comp = compression(comp_name, "result_compression")
    data = compress(comp, ser.dumps(value))
    return orjson.dumps({"__type__": _ENVELOPE, "content_type": ser.content_type,
                         "compression": comp,
                         "__value__": base64.b64encode(data).decode()}).decode()


def decode_result(app: App, value: Any, own: bool = False) -> Any:
    """A `result` column's value (already parsed from jsonb) as the task returned it. `own`:
    this process encoded it just now (a chain step's result), so any serializer will do."""
    if isinstance(value, dict) and value.get("__type__") == _ENVELOPE and "__value__" in value:
        ser = _known(str(value.get("content_type")))
        accept = app.conf.result_accept_content or app.conf.accept_content
        if not own and not accepts(accept, ser):
            raise _refused(ser, "result_accept_content")
        data = decompress(value.get("compression"), base64.b64decode(value["__value__"]))
        return ser.loads(data)
    return serialization.from_db(value)


def loads_result(app: App, text: str | None, own: bool = False) -> Any:
    """`decode_result` for a result read as JSON text."""
    if text is None:
        return None
    if '"__type__"' not in text:
        return orjson.loads(text)
    return decode_result(app, orjson.loads(text), own)


def describe(content_type: str | None, compression_name: str | None) -> str:
    """Short label for `pgq inspect`: 'json', 'msgpack+zlib', ..."""
    ser = _BY_CONTENT_TYPE.get(content_type or JSON)
    label = ser.name if ser else str(content_type)
    return f"{label}+{compression_name}" if compression_name else label


def check_settings(names: Sequence[tuple[str, str | None]]) -> None:
    """Fail early (at registration or start-up) on a serializer or compression name that
    pgq does not know."""
    for where, value in names:
        if value is None:
            continue
        if "compression" in where:
            compression(value, where)
        else:
            serializer(value, where)
