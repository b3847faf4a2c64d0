"""Through PgBouncer in transaction mode (Debian's pgbouncer, started here): producers, the
claim/complete path, LISTEN over a direct listen_dsn, and poll-only workers."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from conftest import wait_until
from psycopg import conninfo

import pgq

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
pytestmark = pytest.mark.skipif(not os.path.exists(PGBOUNCER), reason="pgbouncer not installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def bouncer():
    direct = conninfo.conninfo_to_dict(os.environ["PGQ_DSN"])
    host = str(direct.get("host") or "/tmp")
    # PgBouncer refuses to run as root: run it as whoever owns the server's socket.
    owner = pwd.getpwuid(os.stat(host).st_uid).pw_name if host.startswith("/") else "postgres"
    workdir = Path(tempfile.mkdtemp(prefix="pgq-pgbouncer-"))  # readable by that user
    os.chmod(workdir, 0o777)
    port = free_port()
    user = direct.get("user", "postgres")
    (workdir / "pgbouncer.ini").write_text(f"""
[databases]
pgq = host={host} port={direct.get("port", 5432)} dbname={direct["dbname"]} user={user}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = 10
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
""")
    proc = subprocess.Popen([PGBOUNCER, str(workdir / "pgbouncer.ini")],
                            user=owner if os.geteuid() == 0 else None,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    dsn = f"host=127.0.0.1 port={port} dbname=pgq user={user}"

    def up() -> bool:
        try:
            psycopg.connect(dsn, connect_timeout=1).close()
            return True
        except psycopg.OperationalError:
            return False
    wait_until(up, what="pgbouncer to accept connections")
    yield dsn
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)


def test_producer_through_transaction_pooling(app, bouncer, start_worker):
    from apps.basic import add

    producer = pgq.App("via-bouncer", dsn=bouncer, pgbouncer=True)
    start_worker("-c", "2")
    # Many executions of the same statements: with prepared statements this would fail.
    results = [producer.send_task(add.name, args=[i, i]) for i in range(30)]
    results += producer.enqueue_many([add.s(i, 1) for i in range(200)])
    with psycopg.connect(bouncer, prepare_threshold=None) as conn:
        kept = producer.send_task(add.name, args=[40, 2], connection=conn)
        conn.commit()
        dropped = producer.send_task(add.name, args=[0, 0], connection=conn)
        conn.rollback()
    # get() through PgBouncer without a listen_dsn polls (10 ms upwards).
    assert [producer.AsyncResult(r.id).get(timeout=20) for r in results[:30]] == \
        [2 * i for i in range(30)]
    assert producer.AsyncResult(kept.id).get(timeout=20) == 42
    assert producer.AsyncResult(dropped.id).state == "PENDING"
    producer.close()


def test_worker_through_pgbouncer_with_direct_listen_dsn(app, bouncer, start_worker, dsn):
    from apps.basic import add

    worker = start_worker("-c", "2", on_dsn=bouncer,
                          env={"PGQ_PGBOUNCER": "1", "PGQ_LISTEN_DSN": dsn,
                               "PGQ_WORKER_POLL_INTERVAL": "30"})
    started = time.monotonic()
    assert [add.delay(i, i).get(timeout=20) for i in range(20)] == [2 * i for i in range(20)]
    assert time.monotonic() - started < 10, "LISTEN over listen_dsn should wake the worker"
    assert "poll-only" not in worker.output()


def test_poll_only_worker_through_pgbouncer(app, bouncer, start_worker):
    from apps.basic import add

    worker = start_worker("-c", "2", on_dsn=bouncer,
                          env={"PGQ_PGBOUNCER": "1", "PGQ_WORKER_POLL_INTERVAL": "0.2"})
    assert "poll-only" in worker.output()
    results = [add.delay(i, 1) for i in range(50)]
    assert [r.get(timeout=30) for r in results] == [i + 1 for i in range(50)]


def test_hung_listen_backend_behind_pgbouncer_is_replaced(app, bouncer, start_worker, dsn, db):
    """Claims, heartbeats and the self-probe NOTIFY go through PgBouncer; LISTEN goes over
    the direct listen_dsn. When that LISTEN backend hangs (the socket stays open, nothing
    arrives), the probe no longer comes back: the worker replaces the connection and is
    woken by the new one (a 60 s poll could not pick the next job up in time)."""
    from apps.basic import add

    worker = start_worker("-c", "1", on_dsn=bouncer,
                          env={"PGQ_PGBOUNCER": "1", "PGQ_LISTEN_DSN": dsn,
                               "PGQ_WORKER_POLL_INTERVAL": "60"})
    assert add.delay(1, 1).get(timeout=10) == 2
    # This database only: other xdist processes' workers LISTEN on the same server.
    (pid,) = db.execute("SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN%probe%' "
                        "AND datname = current_database()").fetchone()
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: "LISTEN connection lost" in worker.output(), timeout=15,
                   what="the worker to notice its LISTEN connection hears nothing")
        wait_until(lambda: "re-established" in worker.output(), timeout=15,
                   what="a new LISTEN connection")
        assert add.delay(2, 2).get(timeout=10) == 4
    finally:
        os.kill(pid, signal.SIGCONT)
        db.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_listen_dsn_through_transaction_pooling_is_called_out(app, bouncer, start_worker):
    """A listen_dsn that goes through PgBouncer in transaction mode never delivers anything:
    the worker says so once, clearly, backs off its reconnects, and keeps working by polling."""
    from apps.basic import add

    worker = start_worker("-c", "1", on_dsn=bouncer,
                          env={"PGQ_PGBOUNCER": "1", "PGQ_LISTEN_DSN": bouncer,
                               "PGQ_WORKER_POLL_INTERVAL": "0.3"})
    wait_until(lambda: "has not heard its own probe" in worker.output(), timeout=30,
               what="the worker to call out a LISTEN that hears nothing")
    output = worker.output()
    assert "listen_dsn must be a direct connection" in output
    assert output.count("has not heard its own probe") == 1
    assert add.delay(1, 2).get(timeout=10) == 3
