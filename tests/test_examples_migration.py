"""The Celery migration example (examples/pgq_app): the converted shop runs for real — its
Procfile's own `release`, `worker` and `beat` commands against PostgreSQL, a chain with a
retried step, a chord at low priority, a periodic task and a crontab schedule — and the diff
shown to readers is the diff of the two versions."""

from __future__ import annotations

import os
import py_compile
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import PGQ, ROOT, wait_until

import pgq.app

EXAMPLES = ROOT / "examples"
SCHEDULES = ["daily-sales-report", "release-expired-carts"]


def procfile(name: str) -> dict[str, list[str]]:
    lines = (EXAMPLES / name / "Procfile").read_text().splitlines()
    return {kind: shlex.split(command) for kind, _, command in
            (line.partition(": ") for line in lines if line.strip())}


class Process:
    """A Procfile command, run from examples/ as a deployment would (`pgq` on the PATH)."""

    def __init__(self, argv: list[str], log: Path) -> None:
        assert argv[0] == "pgq", argv
        self.log_path = log
        self.log = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen([PGQ, *argv[1:]], cwd=EXAMPLES, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def shop(app: Any, dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
         ) -> Iterator[Any]:
    """The example's environment (its database = the test database, an outbox, a 1 s sweep)
    and its modules, imported as the web app would; the test app stays pgq's current app."""
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setenv("SHOP_OUTBOX", str(tmp_path / "outbox"))
    monkeypatch.setenv("SHOP_SWEEP_EVERY", "1")
    monkeypatch.syspath_prepend(str(EXAMPLES))
    current = pgq.app._current
    from pgq_app import checkout, services
    from pgq_app.app import app as shop_app

    yield checkout, services
    shop_app.close()
    pgq.app._current = current
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM pgq.schedules WHERE name = ANY(%s)", (SCHEDULES,))


def test_the_converted_shop_runs_for_real(shop: Any, dsn: str, tmp_path: Path) -> None:
    checkout, services = shop
    commands = procfile("pgq_app")
    release = subprocess.run([PGQ, *commands["release"][1:]], cwd=EXAMPLES,
                             capture_output=True, text=True, timeout=60)
    assert release.returncode == 0, release.stderr
    worker = Process(commands["worker"], tmp_path / "worker.log")
    beat = Process(commands["beat"], tmp_path / "beat.log")
    try:
        wait_until(lambda: "ready" in worker.output(), what="worker ready line")

        # A chain whose charge step times out once and is retried by self.retry().
        receipt = checkout.place_order(7, {"tea": 2, "mug": 1}, "tok_visa", "ann@example.com")
        assert receipt.get(timeout=30).endswith("@shop.example>")
        charged = receipt.parent
        assert charged.retries == 1 and charged.result.startswith("ch_")
        assert charged.parent.result == 2 * 450 + 1200
        assert [m["subject"] for m in services.records("mail")] == ["Order 7 is paid"]

        # A chord of low-priority mails on the routed queue, then one report.
        report = checkout.send_newsletter("spring", ["a@x.example", "b@x.example",
                                                     "c@x.example"])
        assert report.get(timeout=30) == {"campaign": "spring", "sent": 3}
        with psycopg.connect(dsn) as conn:
            mails = conn.execute("SELECT queue, priority, state FROM pgq.jobs "
                                 "WHERE task = 'shop.send_email'").fetchall()
            receipts = conn.execute("SELECT queue, priority FROM pgq.jobs "
                                    "WHERE task = 'shop.send_receipt'").fetchall()
        assert mails == [("emails", 0, "SUCCESS")] * 3
        assert receipts == [("shop", 4)]

        # The periodic task from add_periodic_task runs (every second here) ...
        wait_until(lambda: services.records("sweeps"), what="release_expired_carts to run")
        # ... and the crontab of beat_schedule is stored, in the app's timezone.
        with psycopg.connect(dsn) as conn:
            daily = conn.execute("SELECT task, cron, timezone, enabled FROM pgq.schedules "
                                 "WHERE name = 'daily-sales-report'").fetchone()
        assert daily == ("shop.daily_report", "30 6 * * *", "Europe/Berlin", True)
    finally:
        codes = beat.stop(), worker.stop()
    assert codes == (0, 0), worker.output() + beat.output()
    assert "order 7: the gateway timed out" in worker.output()


def test_the_procfiles_differ_only_in_the_command() -> None:
    celery, pgq_commands = procfile("celery_app"), procfile("pgq_app")
    for kind in ("worker", "beat"):
        assert celery[kind][0] == "celery" and pgq_commands[kind][0] == "pgq"
        assert [a.replace("celery_app", "pgq_app") for a in celery[kind][1:]] == \
            pgq_commands[kind][1:]


def test_the_celery_original_is_valid_python(tmp_path: Path) -> None:
    for path in (EXAMPLES / "celery_app").glob("*.py"):
        py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)
    services = [(EXAMPLES / d / "services.py").read_text() for d in ("celery_app", "pgq_app")]
    assert services[0] == services[1], "services.py is the part porting does not touch"


@pytest.mark.parametrize("page", ["examples/pgq_app/README.md",
                                  "docs/migrating-from-celery.md"])
def test_the_diff_shown_is_the_real_one(page: str) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        from migration_diff import migration_diff
    finally:
        sys.path.remove(str(EXAMPLES))
    expected = f"```diff\n{migration_diff()}```"
    assert expected in (ROOT / page).read_text(), (
        f"{page} must show the current diff: paste the output of "
        f"`python examples/migration_diff.py` into its ```diff block")
