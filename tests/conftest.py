"""Test fixtures: a real PostgreSQL (the embedded server, or $PGQ_TEST_DSN), one database per
xdist process, and real `pgq worker` subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

ROOT = Path(__file__).resolve().parent.parent
PGQ = str(Path(sys.executable).parent / "pgq")


def _admin_dsn() -> str:
    env = os.environ.get("PGQ_TEST_DSN")
    if env:
        return env
    from pgq import embedded

    return embedded.ensure_server(ROOT / ".pgq" / "testdata")


def _database_dsn() -> str:
    admin = _admin_dsn()
    name = "pgq_test_" + os.environ.get("PYTEST_XDIST_WORKER", "main")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return conninfo.make_conninfo(admin, dbname=name)


# The test apps read PGQ_DSN at import, and worker subprocesses inherit it: set it first.
os.environ["PGQ_DSN"] = _database_dsn()
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT),
                                            os.environ.get("PYTHONPATH", "")])
sys.path.insert(0, str(ROOT / "tests"))

from apps.basic import app as basic_app  # noqa: E402

import pgq.app as pgq_app_module  # noqa: E402

basic_app.migrate()


@pytest.fixture
def dsn() -> str:
    return os.environ["PGQ_DSN"]


@pytest.fixture
def app() -> Iterator[Any]:
    """The test app, with an empty queue and no workers left from earlier tests."""
    with psycopg.connect(os.environ["PGQ_DSN"], autocommit=True) as conn:
        conn.execute("TRUNCATE pgq.jobs, pgq.workers, pgq.chords, pgq.rate_limits")
    # Signatures and AsyncResults made without app= use the newest App: tests that create
    # other apps (another role's DSN, an example's) must not leave theirs behind.
    pgq_app_module._current = basic_app
    yield basic_app


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition"
               ) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class WorkerProcess:
    def __init__(self, args: list[str], env: dict[str, str] | None = None,
                 app: str = "apps.basic") -> None:
        name = f"pgq-worker-{os.getpid()}-{time.monotonic_ns()}.log"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / name
        self.log = open(self.log_path, "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [PGQ, "worker", "-A", app, "-l", "INFO", *args],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, dsn: str) -> WorkerProcess:
        def registered() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.output()}")
            with psycopg.connect(dsn) as conn:
                return bool(conn.execute("SELECT 1 FROM pgq.workers WHERE pid = %s",
                                         (self.pid,)).fetchone())
        wait_until(registered, what="worker to register")
        # The row is written before LISTEN starts: give the listener its moment.
        wait_until(lambda: "ready" in self.output(), what="worker ready line")
        return self

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def start_worker(dsn: str, app: Any) -> Iterator[Callable[..., WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, ready: bool = True,
              on_dsn: str | None = None, app: str = "apps.basic") -> WorkerProcess:
        """Start `pgq worker -A APP ARGS`; `on_dsn` runs it against another server."""
        if on_dsn:
            env = {**(env or {}), "PGQ_DSN": on_dsn}
        worker = WorkerProcess(list(args), env, app)
        workers.append(worker)
        return worker.wait_ready(on_dsn or dsn) if ready else worker

    yield start
    for worker in workers:
        worker.stop()
