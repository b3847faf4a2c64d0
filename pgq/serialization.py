"""Encoding of task arguments, results and exceptions.

JSON (orjson) is the default. datetime, date, UUID and Decimal are tagged so that they arrive
as the same type with the same value, as Celery's JSON does since 5.3. Anything else is refused
with `EncodeError` before anything is written. Pickle is available only when the app opts in.
"""

from __future__ import annotations

import base64
import builtins
import datetime as dt
import math
import pickle
import sys
import uuid
from decimal import Decimal
from typing import Any

import orjson

from pgq.errors import EncodeError, TaskError

_TYPE = "__type__"
_VALUE = "__value__"
_SCALARS = (str, int, float, bool, type(None))


def _tag(obj: Any, path: str) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise EncodeError(f"cannot encode {path}: {obj} is not a JSON number (send it as a "
                          "str, or as None)")
    if isinstance(obj, _SCALARS):
        return obj
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise EncodeError(
                    f"cannot encode {path}: dict key {key!r} is {type(key).__name__}, "
                    "only str keys are allowed in JSON"
                )
            out[key] = _tag(value, f"{path}[{key!r}]")
        return out
    if isinstance(obj, list | tuple):
        return [_tag(value, f"{path}[{i}]") for i, value in enumerate(obj)]
    if isinstance(obj, dt.datetime):
        return {_TYPE: "datetime", _VALUE: obj.isoformat()}
    if isinstance(obj, dt.date):
        return {_TYPE: "date", _VALUE: obj.isoformat()}
    if isinstance(obj, dt.time):
        return {_TYPE: "time", _VALUE: obj.isoformat()}
    if isinstance(obj, uuid.UUID):
        return {_TYPE: "uuid", _VALUE: str(obj)}
    if isinstance(obj, Decimal):
        return {_TYPE: "decimal", _VALUE: str(obj)}
    raise EncodeError(
        f"cannot encode {path}: {type(obj).__name__} is not JSON serializable "
        "(use str, int, float, bool, None, list, dict, datetime, date, UUID or Decimal)"
    )


def tag(obj: Any) -> Any:
    """`obj` with datetime, date, time, UUID and Decimal tagged as pgq's JSON stores them."""
    return _tag(obj, "value")


_UNTAG = {
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "uuid": uuid.UUID,
    "decimal": Decimal,
}


def _untag(obj: Any) -> Any:
    if isinstance(obj, dict):
        kind = obj.get(_TYPE)
        if kind in _UNTAG and len(obj) == 2 and _VALUE in obj:
            return _UNTAG[kind](obj[_VALUE])
        return {key: _untag(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_untag(value) for value in obj]
    return obj


_PLAIN = frozenset({str, int, bool, type(None)})  # and finite floats (JSON has no inf, nan)


def dumps(obj: Any, what: str = "value") -> str:
    """Encode `obj` as JSON text; raise `EncodeError` naming the offending part."""
    try:
        if type(obj) in (list, tuple) and all(
                type(item) in _PLAIN or (type(item) is float and math.isfinite(item))
                for item in obj):
            return orjson.dumps(obj).decode()  # the common case: nothing to tag or check
        return orjson.dumps(_tag(obj, what)).decode()
    except orjson.JSONEncodeError as exc:  # say, a str with a lone surrogate
        raise EncodeError(f"cannot encode {what} as JSON: {exc}") from exc


def loads(data: str | bytes | None) -> Any:
    if data is None:
        return None
    raw = data.encode() if isinstance(data, str) else data
    value = orjson.loads(raw)
    if b'"__type__"' in raw:
        return _untag(value)
    return value


def from_db(value: Any) -> Any:
    """Decode a jsonb column psycopg has already parsed (tags still to be resolved)."""
    if isinstance(value, dict | list):
        return _untag(value)
    return value


# --- pickle in jsonb (rows written before revision 0007 kept pickled arguments so) ------------

PICKLE_KEY = "__pickle__"


def maybe_unpickle(value: Any, accept_pickle: bool) -> Any:
    if isinstance(value, dict) and PICKLE_KEY in value and len(value) == 1:
        if not accept_pickle:
            raise EncodeError("job payload is pickled but this app does not accept pickle")
        return pickle.loads(base64.b64decode(value[PICKLE_KEY]))
    return value


# --- exceptions --------------------------------------------------------------------------------


def exception_type_name(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def exception_args(exc: BaseException) -> list[Any] | None:
    try:
        return _tag(list(exc.args), "exc.args")  # type: ignore[no-any-return]
    except EncodeError:
        return None


def rebuild_exception(
    exc_type: str, message: str, args: list[Any] | None, traceback: str | None
) -> BaseException:
    """Rebuild a remote exception: the same type when it can be imported and built from its
    args, otherwise a `TaskError` carrying the type name, message and traceback."""
    cls = _import_exception_class(exc_type)
    if cls is not None:
        try:
            exc = cls(*(_untag(args) if args is not None else [message]))
            exc.__notes__ = [f"remote traceback:\n{traceback}"] if traceback else []
            return exc
        except Exception:
            pass
    return TaskError(exc_type, message, traceback)


def _import_exception_class(name: str) -> type[BaseException] | None:
    module_name, _, attr = name.rpartition(".")
    obj: Any
    try:
        if not module_name:
            obj = getattr(builtins, attr, None)
        else:
            # Only modules this process already imported: a result never makes us import code.
            obj = sys.modules.get(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
    except Exception:
        return None
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return obj
    return None
