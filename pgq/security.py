"""Signed jobs: a producer signs what it writes; a worker verifies before it runs anything.

Two schemes, chosen by what a process is configured with:

- `hmac-sha256`: `security_hmac_key`, a secret shared by producers and workers (a list
  rotates keys: the first signs, any verifies).
- `ed25519`: producers hold an Ed25519 private key (`security_key`); workers trust the
  public keys (or X.509 certificates) in `security_cert_store`, so a worker's host holds
  nothing that can sign (unless it enqueues follow-up jobs itself: see docs/serialization.md).

The signature covers the job's id, task name, content type, compression, arguments
(`args`, `kwargs`, or the encoded `payload`) and `options` (links, chains, chords, time
limits, headers...). It does not cover where or when the job runs (queue, priority, eta,
expires), which operators may change with SQL. jsonb normalises what it stores (key order,
number spelling), so JSON columns are signed in a canonical form that survives it: keys
sorted, numbers compared by decimal value.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import hmac
import logging
import math
import os
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from pgq.errors import ConfigurationError, SecurityError

if TYPE_CHECKING:
    from pgq.app import App

log = logging.getLogger("pgq.security")

HMAC = "hmac-sha256"
ED25519 = "ed25519"
_VERSION = b"pgq-signed-job-v1\0"
SECURITY_ERROR = "pgq.errors.SecurityError"


class Signable(Protocol):
    """What is signed: the fields a JobRow (producer) and a claimed Job (worker) share."""

    @property
    def id(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def args(self) -> str: ...
    @property
    def kwargs(self) -> str: ...
    @property
    def options(self) -> str: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def compression(self) -> str | None: ...
    @property
    def payload(self) -> bytes | None: ...
    @property
    def signature(self) -> str | None: ...


# --- the signed message ------------------------------------------------------------------------


def _number(value: int | float) -> bytes:
    if isinstance(value, float) and not math.isfinite(value):
        return b"null"  # orjson writes NaN and infinities as null
    exact = Decimal(value) if isinstance(value, int) else Decimal(repr(value))
    return b"#0" if exact == 0 else b"#" + str(exact.normalize()).encode()


def _canon(value: Any, out: list[bytes]) -> None:
    if value is None or value is True or value is False or isinstance(value, str):
        out.append(orjson.dumps(value))
    elif isinstance(value, int | float):
        out.append(_number(value))
    elif isinstance(value, list | tuple):
        out.append(b"[")
        for i, item in enumerate(value):
            if i:
                out.append(b",")
            _canon(item, out)
        out.append(b"]")
    elif isinstance(value, dict):
        out.append(b"{")
        for i, key in enumerate(sorted(value)):
            if i:
                out.append(b",")
            out.append(orjson.dumps(str(key)) + b":")
            _canon(value[key], out)
        out.append(b"}")
    else:
        raise TypeError(f"cannot sign a {type(value).__name__}")


def message(job: Signable) -> bytes:
    """The bytes a signature covers. JSON columns are canonicalised (see the module doc)."""
    payload = job.payload
    fields = [str(job.id), job.task, job.content_type, job.compression,
              orjson.loads(job.args), orjson.loads(job.kwargs), orjson.loads(job.options),
              hashlib.sha256(payload).hexdigest() if payload is not None else None]
    out: list[bytes] = [_VERSION]
    _canon(fields, out)
    return b"".join(out)


# --- keys --------------------------------------------------------------------------------------


def _pem(value: str | bytes, setting: str) -> bytes:
    """PEM text given inline, or read from the file it names."""
    if isinstance(value, bytes):
        if b"-----BEGIN" in value:
            return value
        value = value.decode()
    if "-----BEGIN" in value:
        return value.encode()
    try:
        return Path(value).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{setting}: cannot read {value!r}: {exc.strerror}") from None


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        raise ConfigurationError("Ed25519 signatures (security_key / security_cert_store) need "
                                 "the cryptography package: pip install 'pgq-tasks[security]'"
                                 ) from None
    return serialization


def _raw_public(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw,  # type: ignore[no-any-return]
                            serialization.PublicFormat.Raw)


def key_id(public_key: Any) -> str:
    """A short name for a public key: the first 8 bytes of SHA-256 of its raw bytes, in hex."""
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def _private_key(value: str | bytes, password: str | bytes | None) -> Any:
    crypto = _crypto()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    secret = password.encode() if isinstance(password, str) else password
    try:
        key = crypto.load_pem_private_key(_pem(value, "security_key"), password=secret)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"security_key is not a usable PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError("security_key must be an Ed25519 private key "
                                 "(openssl genpkey -algorithm ed25519 -out signing.pem)")
    return key


def _store_entries(value: Any) -> list[str | bytes]:
    items = [value] if isinstance(value, str | bytes) else list(value)
    entries: list[str | bytes] = []
    for item in items:
        if isinstance(item, bytes) or "-----BEGIN" in item:
            entries.append(item)
        elif os.path.isdir(item):
            entries.extend(sorted(glob.glob(os.path.join(item, "*.pem"))))
        elif glob.has_magic(item):
            entries.extend(sorted(glob.glob(item)))
        else:
            entries.append(item)
    if not entries:
        raise ConfigurationError(f"security_cert_store {value!r} names no key files")
    return entries


def _public_keys(value: Any) -> dict[str, Any]:
    """security_cert_store → {key id: Ed25519 public key}."""
    crypto = _crypto()
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys: dict[str, Any] = {}
    for entry in _store_entries(value):
        pem = _pem(entry, "security_cert_store")
        try:
            if b"CERTIFICATE" in pem:
                key = x509.load_pem_x509_certificate(pem).public_key()
            else:
                key = crypto.load_pem_public_key(pem)
        except ValueError as exc:
            raise ConfigurationError(f"security_cert_store: {_label(entry)} is not a PEM public "
                                     f"key or certificate: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigurationError(f"security_cert_store: {_label(entry)} is not an Ed25519 "
                                     "key")
        keys[key_id(key)] = key
    return keys


def _label(entry: str | bytes) -> str:
    return "an inline PEM" if isinstance(entry, bytes) or "-----BEGIN" in entry else repr(entry)


def _hmac_keys(value: Any) -> list[bytes]:
    items = [value] if isinstance(value, str | bytes) else list(value)
    keys = [k.encode() if isinstance(k, str) else bytes(k) for k in items]
    if not keys or not all(keys):
        raise ConfigurationError("security_hmac_key must be a non-empty secret (or a list)")
    return keys


# --- signing and verifying ---------------------------------------------------------------------


class Keys:
    """What one configuration can sign with and verify against (built once, then cached)."""

    def __init__(self, key: Any, password: Any, store: Any, hmac_key: Any) -> None:
        self.private = _private_key(key, password) if key else None
        self.public = _public_keys(store) if store else {}
        self.hmac = _hmac_keys(hmac_key) if hmac_key else []
        if self.private is not None:  # a process trusts what it signs itself
            self.public.setdefault(key_id(self.private.public_key()),
                                   self.private.public_key())

    @property
    def can_sign(self) -> bool:
        return self.private is not None or bool(self.hmac)

    @property
    def can_verify(self) -> bool:
        return bool(self.public) or bool(self.hmac)

    def sign(self, job: Signable) -> str:
        data = message(job)
        if self.private is not None:
            raw = self.private.sign(data)
            return f"{ED25519}:{key_id(self.private.public_key())}:{_b64(raw)}"
        return f"{HMAC}:{_b64(hmac.digest(self.hmac[0], data, 'sha256'))}"

    def verify(self, job: Signable) -> None:
        scheme, _, rest = (job.signature or "").partition(":")
        if scheme == HMAC:
            if not self.hmac:
                raise SecurityError(_about(job, "has an hmac-sha256 signature but this worker "
                                                "has no security_hmac_key to check it"))
            data = message(job)
            given = _unb64(rest, job)
            if not any(hmac.compare_digest(hmac.digest(k, data, "sha256"), given)
                       for k in self.hmac):
                raise SecurityError(_tampered(job))
        elif scheme == ED25519:
            kid, _, sig = rest.partition(":")
            public = self.public.get(kid)
            if public is None:
                raise SecurityError(_about(job, f"is signed by key {kid}, which is not in "
                                                "this worker's security_cert_store"))
            from cryptography.exceptions import InvalidSignature

            try:
                public.verify(_unb64(sig, job), message(job))
            except InvalidSignature:
                raise SecurityError(_tampered(job)) from None
        else:
            raise SecurityError(_about(job, f"has a signature of unknown scheme {scheme!r}"))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str, job: Signable) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise SecurityError(_about(job, "has a malformed signature")) from None


def _about(job: Signable, what: str) -> str:
    return f"job {job.id} ({job.task}) {what}; it was not run"


def _tampered(job: Signable) -> str:
    return _about(job, "does not match its signature: its task name, arguments or options "
                       "changed after it was signed, or another key signed it")


_cache: dict[tuple[str, ...], Keys] = {}


def keys(app: App) -> Keys | None:
    """This app's keys, or None when no security setting is set (the common case: cheap)."""
    conf = app.conf
    key, store, hmac_key = conf.security_key, conf.security_cert_store, conf.security_hmac_key
    if not (key or store or hmac_key):
        return None
    password = conf.security_key_password
    cache_key = (repr(key), repr(password), repr(store), repr(hmac_key))
    found = _cache.get(cache_key)
    if found is None:
        found = _cache[cache_key] = Keys(key, password, store, hmac_key)
    return found


def signer(app: App) -> Keys | None:
    """The keys to sign new jobs with, or None when this process does not sign."""
    found = keys(app)
    return found if found is not None and found.can_sign else None


def check(app: App, job: Signable) -> None:
    """Raise SecurityError unless `job` may run here: its signature verifies, or it is
    unsigned and this worker does not require signatures."""
    required = bool(app.conf["security_require_signature"])
    if job.signature is None:
        if required:
            raise SecurityError(_about(job, "is not signed and this worker requires signed "
                                            "jobs (security_require_signature)"))
        return
    found = keys(app)
    if found is None or not found.can_verify:
        if required:
            raise SecurityError(_about(job, "is signed but this worker has no key to check "
                                            "it (security_hmac_key or security_cert_store)"))
        return  # signing is the producers' choice; verifying is this worker's
    found.verify(job)


def trusted(app: App, job: Signable, exc_type: str | None) -> bool:
    """May the completer act on this job's options (links, chain, chord)? Not when the job
    was refused as untrusted, nor when its signature fails (a hard time limit or a crash can
    end a job before its child checked it)."""
    if exc_type == SECURITY_ERROR:
        return False
    if job.signature is None and not app.conf["security_require_signature"]:
        return True
    try:
        check(app, job)
    except SecurityError as exc:
        log.error("%s", exc)
        return False
    return True


def check_worker_config(app: App) -> list[str]:
    """Problems to fail on (raised) and warnings to log (returned) when a worker starts."""
    found = keys(app)
    warnings: list[str] = []
    if app.conf.security_require_signature:
        if found is None or not found.can_verify:
            raise ConfigurationError("security_require_signature is on but there is no key to "
                                     "verify with: set security_hmac_key or "
                                     "security_cert_store")
        if not found.can_sign:
            warnings.append("this worker requires signed jobs but cannot sign the jobs it "
                            "enqueues itself (chain steps, callbacks, chord bodies): give it "
                            "a security_key whose public key workers trust")
    return warnings


def setup(app: App, *, key: Any = None, key_password: Any = None, store: Any = None,
          hmac_key: Any = None) -> None:
    """`app.setup_security()`: set the keys and require signed jobs."""
    settings: dict[str, Any] = {"security_require_signature": True}
    for name, value in (("security_key", key), ("security_key_password", key_password),
                        ("security_cert_store", store), ("security_hmac_key", hmac_key)):
        if value is not None:
            settings[name] = value
    app.conf.update(settings)
    check_worker_config(app)


def generate_ed25519_pem() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as (private PEM, public PEM) — for tests and `pgq keygen`."""
    crypto = _crypto()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    return (
        private.private_bytes(crypto.Encoding.PEM, crypto.PrivateFormat.PKCS8,
                              crypto.NoEncryption()),
        private.public_key().public_bytes(crypto.Encoding.PEM,
                                          crypto.PublicFormat.SubjectPublicKeyInfo),
    )


def describe(signature: str | None) -> str:
    """'hmac-sha256', 'ed25519:<key id>' or '' — for `pgq inspect`."""
    if not signature:
        return ""
    scheme, _, rest = signature.partition(":")
    return f"{scheme}:{rest.partition(':')[0]}" if scheme == ED25519 else scheme
