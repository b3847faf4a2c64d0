"""The worker: queues, priorities, shutdown, crash handling, time limits, heartbeats."""

from __future__ import annotations

import os
import signal
import time

import pytest
from apps.basic import add, crash, record, sleep, too_slow, whoami
from conftest import wait_until

import pgq


def test_queues_are_honoured(app, start_worker, db):
    other = add.apply_async((1, 1), queue="other")
    default = add.apply_async((2, 2))
    start_worker("-c", "1", "-Q", "other")
    assert other.get(timeout=10) == 2
    time.sleep(0.3)
    assert default.state == "PENDING", "a worker consumed a queue it was not given"


def test_higher_priority_runs_first(app, start_worker, tmp_path):
    log = tmp_path / "order.txt"
    low = [record.apply_async((str(log), f"low{i}"), priority=0) for i in range(3)]
    high = [record.apply_async((str(log), f"high{i}"), priority=9) for i in range(3)]
    start_worker("--pool", "solo")
    for r in low + high:
        r.get(timeout=10)
    order = log.read_text().split()
    assert order[:3] == ["high0", "high1", "high2"]
    assert order[3:] == ["low0", "low1", "low2"]


def test_countdown_job_waits_until_due(app, start_worker):
    start_worker("-c", "1")
    enqueued = time.monotonic()
    result = whoami.apply_async(countdown=1.0)
    info = result.get(timeout=10)
    assert time.monotonic() - enqueued >= 1.0
    assert info["eta"] is not None


def test_warm_shutdown_finishes_running_jobs_and_exits_zero(app, start_worker, db):
    worker = start_worker("-c", "2")
    job = sleep.delay(1.5)
    wait_until(lambda: job.state == "STARTED", what="job to start")
    worker.signal(signal.SIGTERM)
    assert worker.proc.wait(20) == 0
    assert job.state == "SUCCESS"
    alive = db.execute("SELECT alive FROM pgq.worker_status WHERE pid = %s", (worker.pid,))
    assert alive.fetchone()[0] is False


def test_warm_shutdown_returns_prefetched_jobs_at_once(app, start_worker, db):
    worker = start_worker("-c", "1", "--prefetch-multiplier", "4")
    running = sleep.delay(1.0)
    waiting = [add.delay(i, i) for i in range(3)]
    wait_until(lambda: running.state == "STARTED", what="job to start")
    worker.signal(signal.SIGTERM)
    assert worker.proc.wait(20) == 0
    states = {r.state for r in waiting}
    assert states <= {"PENDING", "SUCCESS"}
    held = db.execute("SELECT count(*) FROM pgq.jobs WHERE state = 'STARTED'").fetchone()[0]
    assert held == 0


def test_child_crash_is_retried_then_fails_with_worker_lost(app, start_worker):
    worker = start_worker("-c", "1")
    result = crash.delay()
    with pytest.raises(pgq.WorkerLostError):
        result.get(timeout=20)
    assert result.retries == 3  # the default max_retries, each retried at once
    assert add.delay(1, 2).get(timeout=10) == 3, "the worker replaced its child"
    assert worker.proc.poll() is None


def test_hard_time_limit_kills_the_child(app, start_worker):
    start_worker("-c", "1")
    result = too_slow.delay()
    with pytest.raises(pgq.TimeLimitExceeded):
        result.get(timeout=15)
    assert add.delay(2, 2).get(timeout=10) == 4


def test_revoke_terminate_kills_the_running_job(app, start_worker):
    start_worker("-c", "2")
    result = sleep.delay(30)
    wait_until(lambda: result.state == "STARTED", what="job to start")
    result.revoke(terminate=True)
    with pytest.raises(pgq.TaskRevokedError):
        result.get(timeout=10)
    assert add.delay(3, 3).get(timeout=10) == 6


def test_lost_worker_jobs_are_rescued_by_another(app, start_worker, db):
    doomed = start_worker("-c", "1")
    result = sleep.delay(0.5)
    wait_until(lambda: result.state == "STARTED", what="job to start")
    import os
    os.killpg(doomed.pid, signal.SIGKILL)
    start_worker("-c", "1")  # worker_lost_timeout is 3 s in the test app
    assert result.get(timeout=20) == 0.5


def test_worker_status_view(app, start_worker, db):
    worker = start_worker("-c", "3", "-Q", "a,b", "-n", "node-7")
    row = db.execute("SELECT hostname, pid, queues, concurrency, running, alive "
                     "FROM pgq.worker_status").fetchone()
    assert row == ("node-7", worker.pid, ["a", "b"], 3, 0, True)


def test_queue_stats_view(app, db):
    add.delay(1, 1)
    add.apply_async((1, 1), countdown=600)
    add.apply_async((1, 1), queue="q2")
    rows = db.execute("SELECT queue, state, jobs FROM pgq.queue_stats ORDER BY 1, 2").fetchall()
    assert rows == [("default", "PENDING", 2), ("q2", "PENDING", 1)]
    age = db.execute("SELECT oldest_age FROM pgq.queue_stats WHERE queue = 'q2'").fetchone()[0]
    assert age.total_seconds() >= 0


def test_worker_with_a_long_schema_name_heartbeats(tmp_path, dsn):
    import subprocess
    import sys
    from pathlib import Path

    import psycopg

    schema = "s" * 40 + os.urandom(4).hex()  # 48 characters, under the 50 allowed
    (tmp_path / "longapp.py").write_text(
        "import os\nfrom pgq import App\n"
        f"app = App('long', dsn=os.environ['PGQ_DSN'], schema={schema!r},"
        " worker_heartbeat_interval=0.2)\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ['PYTHONPATH']}"}
    pgq_bin = str(Path(sys.executable).parent / "pgq")
    subprocess.run([pgq_bin, "migrate", "-A", "longapp"], env=env, check=True,
                   capture_output=True)
    worker = subprocess.Popen([pgq_bin, "worker", "-A", "longapp", "-c", "1"], env=env,
                              stderr=subprocess.PIPE, text=True)
    try:
        def beats() -> int:
            with psycopg.connect(dsn) as conn:
                row = conn.execute(f'SELECT count(*) FROM "{schema}".workers '
                                   "WHERE last_heartbeat > started_at + interval '0.5 s'"
                                   ).fetchone()
            return row[0]
        wait_until(beats, what="a heartbeat after start")
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=30)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    assert "heartbeat failed" not in err
