"""Serializers, compression and signed jobs, with real `pgq worker` processes.

Producers are this process's app (settings changed per test through the `conf` fixture);
workers get theirs from PGQ_* environment variables."""

from __future__ import annotations

import datetime as dt
import subprocess
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from apps.basic import (
    Point,
    add,
    echo,
    fail_value,
    identity,
    make_point,
    measure,
    point_sum,
    record,
    types_of,
    yaml_echo,
)
from conftest import PGQ

import pgq
from pgq import chain, security
from pgq.errors import InvalidOption

ACCEPT_ALL = {"PGQ_ACCEPT_CONTENT": "json,msgpack,yaml,pickle"}
HMAC_WORKER = {"PGQ_SECURITY_HMAC_KEY": "s3cret", "PGQ_SECURITY_REQUIRE_SIGNATURE": "1"}


@pytest.fixture
def conf(app: Any) -> Iterator[Any]:
    """The producer's settings, restored after the test."""
    saved = dict(app.conf._explicit)
    yield app.conf
    app.conf._explicit.clear()
    app.conf._explicit.update(saved)
    app.conf._resolved.clear()
    app.conf._memo.clear()


def job_row(db: psycopg.Connection[Any], job_id: str) -> dict[str, Any]:
    cur = db.execute("SELECT * FROM pgq.jobs WHERE id = %s", (job_id,))
    names = [c.name for c in cur.description or ()]
    found = cur.fetchone()
    assert found is not None, f"no row for {job_id}"
    return dict(zip(names, found, strict=True))


def job_count(db: psycopg.Connection[Any]) -> int:
    return int(db.execute("SELECT count(*) FROM pgq.jobs").fetchone()[0])  # type: ignore[index]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PGQ, *args], capture_output=True, text=True, timeout=60)


VALUE = {"when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "day": dt.date(2026, 1, 2),
         "id": uuid.UUID(int=7), "price": Decimal("1.10"), "list": [1, "a", None, 2.5]}


# --- serializers -------------------------------------------------------------------------------


def test_default_json_job_keeps_its_arguments_in_jsonb(app, db, start_worker):
    start_worker("-c", "1")
    result = add.delay(2, 3)
    assert result.get(timeout=10) == 5
    row = job_row(db, result.id)
    assert row["args"] == [2, 3]
    assert row["content_type"] is None and row["payload"] is None and row["signature"] is None


def test_msgpack_per_call_round_trips_types_and_bytes(app, conf, db, start_worker):
    conf.update(accept_content=["json", "msgpack"])
    start_worker("-c", "1", env=ACCEPT_ALL)
    result = identity.apply_async([VALUE], serializer="msgpack")
    assert result.get(timeout=10) == VALUE
    row = job_row(db, result.id)
    assert row["content_type"] == "application/x-msgpack"
    assert row["args"] == [] and row["payload"] is not None
    # bytes are msgpack's own: they arrive as bytes
    assert types_of.apply_async([b"\x00\xff"], serializer="msgpack").get(timeout=10) == ["bytes"]


def test_yaml_per_task_and_task_serializer_setting(app, conf, db, start_worker):
    conf.update(accept_content=["json", "yaml", "msgpack"])
    start_worker("-c", "1", env=ACCEPT_ALL)
    result = yaml_echo.delay(VALUE, k=Decimal("2.5"))
    assert result.get(timeout=10) == {"args": [VALUE], "kwargs": {"k": Decimal("2.5")}}
    row = job_row(db, result.id)
    assert row["content_type"] == "application/x-yaml"
    assert b"__type__" in bytes(row["payload"])  # readable text, with pgq's type tags
    conf.update(task_serializer="msgpack")
    other = echo.delay(1, b=2)
    assert other.get(timeout=10) == {"args": [1], "kwargs": {"b": 2}}
    assert job_row(db, other.id)["content_type"] == "application/x-msgpack"
    # a per-call serializer wins over the task's and the app's
    third = yaml_echo.apply_async([1], serializer="json")
    assert third.get(timeout=10) == {"args": [1], "kwargs": {}}
    assert job_row(db, third.id)["content_type"] is None


def test_pickle_only_when_explicitly_accepted(app, conf, db, start_worker):
    conf.update(task_serializer="pickle")
    with pytest.raises(InvalidOption, match=r"not in accept_content.*'pickle'"):
        point_sum.delay(Point(1, 2))
    assert job_count(db) == 0
    conf.update(accept_content=["json", "pickle"])
    start_worker("-c", "1", env={"PGQ_ACCEPT_CONTENT": "json,pickle"})
    result = point_sum.delay(Point(1, 2))
    assert result.get(timeout=10) == 3
    assert job_row(db, result.id)["content_type"] == "application/x-python-serialize"


def test_worker_refuses_content_it_does_not_accept(app, conf, db, start_worker, tmp_path):
    conf.update(accept_content=["json", "msgpack", "pickle"])
    start_worker("-c", "1")  # accept_content: the default, json only
    marker = tmp_path / "ran"
    result = record.apply_async([str(marker), "x"], serializer="msgpack")
    with pytest.raises(pgq.ContentDisallowed, match=r"application/x-msgpack.*add 'msgpack' to "
                                                    r"accept_content"):
        result.get(timeout=10)
    assert not marker.exists()
    pickled = record.apply_async([str(marker), "x"], serializer="pickle")
    with pytest.raises(pgq.ContentDisallowed, match="'pickle' to accept_content"):
        pickled.get(timeout=10)
    assert not marker.exists()
    assert job_row(db, pickled.id)["retries"] == 0  # refused once, not retried
    # and the other way round: a worker that does not accept json refuses default jobs
    start_worker("-c", "1", "-Q", "msgpack-only",
                 env={"PGQ_ACCEPT_CONTENT": "msgpack"})
    plain = record.apply_async([str(marker), "x"], queue="msgpack-only")
    with pytest.raises(pgq.ContentDisallowed, match="'json' to accept_content"):
        plain.get(timeout=10)
    assert not marker.exists()


def test_unknown_names_fail_at_the_call_and_write_nothing(app, conf, db):
    with pytest.raises(InvalidOption, match="unknown serializer 'xml'"):
        add.apply_async((1, 2), serializer="xml")
    with pytest.raises(InvalidOption, match=r"unknown compression 'zip'.*zlib, bzip2"):
        add.apply_async((1, 2), compression="zip")
    assert job_count(db) == 0
    with pytest.raises(pgq.ConfigurationError, match="unknown serializer 'xml'"):
        conf.update(task_serializer="xml")
    with pytest.raises(pgq.ConfigurationError, match="unknown compression 'zip'"):
        conf.update(task_compression="zip")
    with pytest.raises(pgq.ConfigurationError, match="unknown serializer 'xml' on task"):
        app.task(serializer="xml", name="tests.bad_serializer")(lambda: None)
    with pytest.raises(pgq.ConfigurationError, match=r"unknown compression 'zip'.*on task"):
        app.task(compression="zip", name="tests.bad_compression")(lambda: None)
    assert "tests.bad_serializer" not in app.tasks and "tests.bad_compression" not in app.tasks
    with pytest.raises(pgq.EncodeError, match="cannot encode a set with msgpack"):
        conf.update(accept_content=["json", "msgpack"])
        add.apply_async(({1}, 2), serializer="msgpack")
    assert job_count(db) == 0


# --- compression -------------------------------------------------------------------------------


def test_compression_per_call_per_task_and_setting(app, conf, db, start_worker):
    start_worker("-c", "1")
    text = "all work and no play " * 10_000  # 210 kB
    zipped = measure.apply_async([text], compression="zlib")
    assert zipped.get(timeout=10) == len(text)
    row = job_row(db, zipped.id)
    assert row["content_type"] == "application/json" and row["compression"] == "zlib"
    assert row["payload_size"] > 200_000 and len(row["payload"]) < 2_000
    per_task = measure.delay(text)  # the task says bzip2
    assert per_task.get(timeout=10) == len(text)
    assert job_row(db, per_task.id)["compression"] == "bzip2"
    conf.update(task_compression="gzip")  # Celery's alias for zlib
    plain_task = identity.delay(text)
    assert plain_task.get(timeout=10) == text
    assert job_row(db, plain_task.id)["compression"] == "zlib"
    sizes = db.execute("SELECT stored_bytes, raw_bytes FROM pgq.job_payloads WHERE id = %s",
                       (zipped.id,)).fetchone()
    assert sizes is not None and sizes[0] < 2_000 < 200_000 < sizes[1]


def test_inspect_shows_stored_and_raw_size(app, db, start_worker):
    text = "x" * 50_000
    waiting = measure.apply_async([text], compression="zlib", countdown=600)
    failed = fail_value.apply_async(["boom " * 2_000], compression="bzip2")
    start_worker("-c", "1")
    with pytest.raises(ValueError):
        failed.get(timeout=10)
    scheduled = run_cli("inspect", "scheduled", "-A", "apps.basic")
    assert scheduled.returncode == 0, scheduled.stderr
    line = next(ln for ln in scheduled.stdout.splitlines() if waiting.id in ln)
    assert "json+zlib" in line and "(50.0 kB raw)" in line
    failures = run_cli("inspect", "failed", "-A", "apps.basic")
    line = next(ln for ln in failures.stdout.splitlines() if failed.id in ln)
    assert "json+bzip2" in line and "raw)" in line


# --- results -----------------------------------------------------------------------------------


def test_result_serializer_and_result_accept_content(app, conf, db, start_worker):
    start_worker("-c", "1", env={"PGQ_RESULT_SERIALIZER": "pickle",
                                 "PGQ_ACCEPT_CONTENT": "json,pickle"})
    result = make_point.delay(1, 2)
    with pytest.raises(pgq.ContentDisallowed, match="'pickle' to result_accept_content"):
        result.get(timeout=10)
    assert job_row(db, result.id)["result"]["content_type"] == "application/x-python-serialize"
    conf.update(result_accept_content=["json", "pickle"])
    assert app.AsyncResult(result.id).get(timeout=10) == Point(1, 2)


def test_chain_passes_msgpack_results_on(app, conf, db, start_worker):
    conf.update(result_accept_content=["json", "msgpack"])
    start_worker("-c", "1", env={"PGQ_RESULT_SERIALIZER": "msgpack",
                                 "PGQ_RESULT_COMPRESSION": "zlib"})
    result = chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()
    assert result.get(timeout=10) == 10
    stored = job_row(db, result.id)["result"]
    assert stored["content_type"] == "application/x-msgpack" and stored["compression"] == "zlib"


def test_bulk_enqueue_copies_binary_payloads(app, conf, db, start_worker):
    conf.update(accept_content=["json", "msgpack"], task_serializer="msgpack")
    results = app.enqueue_many([add.s(i, i) for i in range(150)])  # COPY path
    assert db.execute("SELECT count(*) FROM pgq.jobs WHERE content_type = "
                      "'application/x-msgpack'").fetchone() == (150,)
    start_worker("-c", "2", env=ACCEPT_ALL)
    assert [r.get(timeout=20) for r in results] == [2 * i for i in range(150)]


def test_eager_mode_decodes_every_serializer(app, conf):
    conf.update(accept_content=["json", "msgpack", "pickle"], task_always_eager=True)
    assert point_sum.apply_async([Point(2, 3)], serializer="pickle").get() == 5
    assert identity.apply_async([VALUE], serializer="msgpack", compression="lzma").get() == VALUE


# --- signing: HMAC -----------------------------------------------------------------------------


def test_hmac_signed_jobs_run_and_unsigned_or_tampered_ones_never_do(app, conf, db,
                                                                     start_worker, tmp_path):
    conf.update(security_hmac_key="s3cret")
    marker = tmp_path / "ran"
    # Awkward JSON that jsonb normalises (key order, number spelling) must still verify.
    awkward = {"z": 1e300, "a": [0.1, -0.0, 1e16, 2**63], "é": "ü", "m": {"b": 1, "a": 2}}
    good = identity.apply_async([awkward])
    tampered = record.apply_async([str(marker), "signed"])
    forged = echo.apply_async([str(marker), "forged"])
    linked = add.apply_async((1, 2), link=record.si(str(marker), "link"))
    errback = fail_value.apply_async(["x"], link_error=record.si(str(marker), "errback"))
    conf.update(security_hmac_key=None)
    unsigned = record.apply_async([str(marker), "unsigned"])
    conf.update(security_hmac_key="another key")
    wrong_key = record.apply_async([str(marker), "wrong key"])
    # Tamper with the rows as someone with write access to the table could.
    db.execute("UPDATE pgq.jobs SET args = jsonb_set(args, '{1}', '\"changed\"') "
               "WHERE id = %s", (tampered.id,))
    db.execute("UPDATE pgq.jobs SET task = 'apps.basic.record' WHERE id = %s", (forged.id,))
    db.execute("UPDATE pgq.jobs SET options = jsonb_set(options, '{link,0,args,1}', "
               "'\"evil\"') WHERE id = %s", (linked.id,))
    # the worker would sign an error callback it starts: it must not start a forged one
    db.execute("UPDATE pgq.jobs SET options = jsonb_set(options, '{link_error,0,args,1}', "
               "'\"evil\"') WHERE id = %s", (errback.id,))
    assert job_row(db, good.id)["signature"].startswith("hmac-sha256:")

    start_worker("-c", "1", env=HMAC_WORKER)
    back = good.get(timeout=10)
    assert float(back.pop("z")) == awkward.pop("z")  # jsonb may spell 1e300 as an integer
    assert back == awkward
    for result, why in [(tampered, "does not match its signature"),
                        (forged, "does not match its signature"),
                        (linked, "does not match its signature"),
                        (errback, "does not match its signature"),
                        (unsigned, "is not signed and this worker requires signed jobs"),
                        (wrong_key, "does not match its signature")]:
        with pytest.raises(pgq.SecurityError, match=why):
            result.get(timeout=10)
        row = job_row(db, result.id)
        assert row["state"] == "FAILURE" and row["retries"] == 0
    assert not marker.exists()  # nothing tampered ran, nor its callbacks
    assert job_count(db) == 7  # and no callback was enqueued


def test_hmac_worker_signs_the_steps_it_enqueues(app, conf, db, start_worker):
    conf.update(security_hmac_key=["new key", "s3cret"])  # rotation: the first signs
    start_worker("-c", "1", env={**HMAC_WORKER, "PGQ_SECURITY_HMAC_KEY": "s3cret"})
    with pytest.raises(pgq.SecurityError):  # signed with "new key", which it does not know
        add.delay(1, 1).get(timeout=10)
    conf.update(security_hmac_key="s3cret")
    result = chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()
    assert result.get(timeout=10) == 10
    signatures = db.execute("SELECT count(*) FROM pgq.jobs WHERE signature IS NOT NULL "
                            "AND state = 'SUCCESS'").fetchone()
    assert signatures == (3,)


def test_worker_with_keys_but_not_requiring_runs_unsigned_jobs(app, db, start_worker):
    start_worker("-c", "1", env={"PGQ_SECURITY_HMAC_KEY": "s3cret"})
    assert add.delay(1, 1).get(timeout=10) == 2


def test_requiring_signatures_without_a_key_fails_at_start(app, start_worker):
    worker = start_worker("-c", "1", env={"PGQ_SECURITY_REQUIRE_SIGNATURE": "1"}, ready=False)
    assert worker.proc.wait(30) != 0
    assert "security_require_signature is on but there is no key" in worker.output()


# --- signing: Ed25519 --------------------------------------------------------------------------


@pytest.fixture
def key_pair(tmp_path: Path) -> tuple[Path, Path]:
    private, public = security.generate_ed25519_pem()
    (tmp_path / "signing.pem").write_bytes(private)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "producer.pem").write_bytes(public)
    return tmp_path / "signing.pem", tmp_path / "keys"


def test_ed25519_producer_signs_worker_verifies_with_public_key(app, conf, db, start_worker,
                                                                 tmp_path, key_pair):
    private, store = key_pair
    conf.update(security_key=str(private))
    marker = tmp_path / "ran"
    good = echo.apply_async([1], {"k": "v"})
    tampered = record.apply_async([str(marker), "signed"])
    elsewhere = tmp_path / "elsewhere"
    db.execute("UPDATE pgq.jobs SET args = %s::jsonb WHERE id = %s",
               (f'["{elsewhere}", "signed"]', tampered.id))
    other_private, _ = security.generate_ed25519_pem()
    conf.update(security_key=other_private.decode())  # a key the worker does not trust
    stranger = record.apply_async([str(marker), "stranger"])
    signature = job_row(db, good.id)["signature"]
    assert signature.startswith("ed25519:")

    worker = start_worker("-c", "1", env={"PGQ_SECURITY_CERT_STORE": str(store),
                                          "PGQ_SECURITY_REQUIRE_SIGNATURE": "1"})
    assert "cannot sign the jobs it enqueues itself" in worker.output()
    assert good.get(timeout=10) == {"args": [1], "kwargs": {"k": "v"}}
    with pytest.raises(pgq.SecurityError, match="does not match its signature"):
        tampered.get(timeout=10)
    with pytest.raises(pgq.SecurityError, match="not in this worker's security_cert_store"):
        stranger.get(timeout=10)
    assert not marker.exists() and not elsewhere.exists()
    view = db.execute("SELECT signed, signature_scheme, signing_key FROM pgq.job_payloads "
                      "WHERE id = %s", (good.id,)).fetchone()
    assert view == (True, "ed25519", signature.split(":")[1])


def test_bad_key_settings_are_one_line_errors(app, conf, db, tmp_path):
    conf.update(security_key=str(tmp_path / "missing.pem"))
    with pytest.raises(pgq.ConfigurationError, match="security_key: cannot read"):
        add.delay(1, 1)
    (tmp_path / "rsa.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n"
                                      "-----END PRIVATE KEY-----\n")
    conf.update(security_key=str(tmp_path / "rsa.pem"))
    with pytest.raises(pgq.ConfigurationError, match="not a usable PEM private key"):
        add.delay(1, 1)
    assert job_count(db) == 0


def test_setup_security_is_celerys_entry_point(app, conf, key_pair):
    private, store = key_pair
    app.setup_security(key=str(private), store=str(store))
    assert conf.security_require_signature is True
    keys = security.keys(app)
    assert keys is not None and keys.can_sign and keys.can_verify



def test_encrypted_key_and_x509_certificate_in_the_store(tmp_path):
    """No worker needed: a PEM key with a password signs; a self-signed X.509 certificate of
    its public key in the store verifies; a changed row does not."""
    import datetime as _dt

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.x509.oid import NameOID

    from pgq.enqueue import build_row

    key = Ed25519PrivateKey.generate()
    (tmp_path / "signing.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw")))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "producer")])
    now = _dt.datetime.now(_dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + _dt.timedelta(days=1)).sign(key, None))
    (tmp_path / "producer.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    producer = pgq.App("producer", dsn="postgresql:///unused",
                       security_key=str(tmp_path / "signing.pem"), security_key_password="pw")
    worker = pgq.App("worker", dsn="postgresql:///unused",
                     security_cert_store=str(tmp_path / "*.crt"),
                     security_require_signature=True)
    row = build_row(producer, "shop.refund", [10], {"order": "A-1"}, {})
    verifier = security.keys(worker)
    assert verifier is not None and not verifier.can_sign
    verifier.verify(row)
    with pytest.raises(pgq.SecurityError, match="does not match its signature"):
        verifier.verify(row._replace(kwargs='{"order": "B-2"}'))
    with pytest.raises(pgq.SecurityError, match="does not match its signature"):
        verifier.verify(row._replace(task="shop.payout"))
    with pytest.raises(pgq.ConfigurationError, match="not a usable PEM private key"):
        pgq.App("p", dsn="postgresql:///unused", security_key=str(tmp_path / "signing.pem"),
                security_key_password="wrong").send_task("shop.refund", [1])
