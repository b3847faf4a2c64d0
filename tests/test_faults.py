"""Faults injected for real: dying children, vanished and frozen workers, time limits,
recycling, cold shutdown, rate limits, concurrent unique enqueue."""

from __future__ import annotations

import itertools
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor

import pytest
from apps.basic import (
    add,
    child_pid,
    exit_hard,
    limited,
    record_run,
    returns_nul,
    segfault,
    sleep,
    sleep_unguarded,
    soft_limited,
    too_slow,
)
from conftest import wait_until

import pgq


def runs(path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("task", [exit_hard.s(3), segfault.s()])
def test_child_exit_or_segfault_is_worker_lost(app, start_worker, task):
    worker = start_worker("-c", "1")
    result = task.delay()
    with pytest.raises(pgq.WorkerLostError):
        result.get(timeout=30)
    assert result.retries == 3
    assert add.delay(1, 1).get(timeout=10) == 2
    assert worker.proc.poll() is None


def test_child_killed_from_outside_is_retried_at_once(app, start_worker, tmp_path):
    start_worker("-c", "2")
    log = tmp_path / "runs"
    result = record_run.delay(str(log), 30)
    wait_until(lambda: runs(log), what="job to start")
    started = time.monotonic()
    os.kill(int(runs(log)[0][2]), signal.SIGKILL)
    wait_until(lambda: len(runs(log)) == 2, what="the retry")
    assert time.monotonic() - started < 3, "a crash must be retried at once, not after a delay"
    assert runs(log)[0][2] != runs(log)[1][2], "a new child runs the retry"
    result.revoke(terminate=True)


def test_frozen_worker_cannot_overwrite_rescued_jobs(app, start_worker, tmp_path, db):
    log = tmp_path / "runs"
    frozen = start_worker("-c", "1")
    result = record_run.delay(str(log), 1.0)
    wait_until(lambda: runs(log), what="job to start")
    os.killpg(frozen.pid, signal.SIGSTOP)
    try:
        start_worker("-c", "1")  # rescues after worker_lost_timeout (3 s)
        assert result.get(timeout=30) == 2  # the second attempt's return value
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
    # The frozen worker wakes, its child finishes attempt 1 and the supervisor tries to ack.
    wait_until(lambda: "discarded" in frozen.output() or "declared lost" in frozen.output(),
               timeout=20, what="the frozen worker to notice")
    time.sleep(0.5)
    row = db.execute("SELECT state, attempts, result::text FROM pgq.jobs WHERE id = %s",
                     (result.id,)).fetchone()
    assert row == ("SUCCESS", 2, "2")


def test_long_job_is_not_rescued_while_its_worker_lives(app, start_worker, tmp_path):
    log = tmp_path / "runs"
    start_worker("-c", "1")
    start_worker("-c", "1")  # a second live worker that could (wrongly) rescue it
    result = record_run.delay(str(log), 7.0)  # > 2 x worker_lost_timeout
    assert result.get(timeout=30) == 1
    assert len(runs(log)) == 1


def test_soft_time_limit_raises_inside_the_task(app, start_worker):
    start_worker("-c", "1")
    assert soft_limited.delay().get(timeout=10) == "cleaned up"


def test_worker_default_time_limits(app, start_worker):
    start_worker("-c", "1", "--time-limit", "0.5")
    with pytest.raises(pgq.TimeLimitExceeded):
        sleep_unguarded.delay(5).get(timeout=15)
    assert add.delay(1, 2).get(timeout=10) == 3


def test_worker_default_soft_time_limit(app, start_worker):
    start_worker("-c", "1", "--soft-time-limit", "0.3")
    with pytest.raises(pgq.SoftTimeLimitExceeded):
        sleep_unguarded.delay(5).get(timeout=15)


def test_time_limit_failure_keeps_worker_serving(app, start_worker):
    start_worker("-c", "2")
    slow = too_slow.delay()
    quick = [add.delay(i, i) for i in range(20)]
    assert [r.get(timeout=15) for r in quick] == [2 * i for i in range(20)]
    with pytest.raises(pgq.TimeLimitExceeded):
        slow.get(timeout=15)


def test_max_tasks_per_child_recycles_without_losing_jobs(app, start_worker):
    start_worker("-c", "1", "--max-tasks-per-child", "3")
    results = [child_pid.delay() for _ in range(10)]
    pids = [r.get(timeout=20) for r in results]
    assert len(set(pids)) >= 4  # 10 jobs, 3 per child


def test_max_memory_per_child_recycles(app, start_worker):
    start_worker("-c", "1", "--max-memory-per-child", "1000")  # 1 MB: always over
    pids = [child_pid.delay().get(timeout=20) for _ in range(3)]
    assert len(set(pids)) == 3


def test_cold_shutdown_returns_jobs_without_spending_a_retry(app, start_worker, db, tmp_path):
    log = tmp_path / "runs"
    worker = start_worker("-c", "2")
    results = [record_run.delay(str(log), 30) for _ in range(2)]
    wait_until(lambda: len(runs(log)) == 2, what="jobs to start")
    worker.signal(signal.SIGTERM)
    time.sleep(0.3)
    worker.signal(signal.SIGTERM)
    assert worker.proc.wait(15) == 0
    rows = db.execute("SELECT state, retries FROM pgq.jobs WHERE id = ANY(%s::uuid[])",
                      ([r.id for r in results],)).fetchall()
    assert rows == [("PENDING", 0), ("PENDING", 0)]


def test_revoke_terminate_kills_only_that_job(app, start_worker, tmp_path):
    start_worker("-c", "2")
    victim = sleep.delay(30)
    survivor = sleep.delay(1.5)
    wait_until(lambda: victim.state == "STARTED" and survivor.state == "STARTED",
               what="both jobs to start")
    victim.revoke(terminate=True)
    with pytest.raises(pgq.TaskRevokedError):
        victim.get(timeout=10)
    assert survivor.get(timeout=10) == 1.5


def test_rate_limit_holds_across_workers_and_does_not_block_others(app, start_worker, tmp_path):
    log = tmp_path / "stamps"
    start_worker("-c", "2")
    start_worker("-c", "2")
    limited_jobs = [limited.delay(str(log)) for _ in range(10)]  # 5/s
    started = time.monotonic()
    others = [add.delay(i, 1) for i in range(20)]
    assert [r.get(timeout=10) for r in others] == [i + 1 for i in range(20)]
    assert time.monotonic() - started < 1.5, "rate-limited jobs held back other tasks"
    for r in limited_jobs:
        r.get(timeout=20)
    stamps = sorted(float(x) for x in log.read_text().split())
    span = stamps[-1] - stamps[0]
    assert span >= 9 * 0.2 * 0.9, f"10 runs at 5/s took only {span:.2f}s"
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # Slots are 0.2 s apart; a run that starts late on a loaded machine shortens the gap after
    # it (0.07 s seen with three suites at once), while a burst would leave gaps near zero.
    assert min(gaps) > 0.05, gaps


def _enqueue_unique(_: int) -> set[str]:
    from apps.basic import add as task

    return {task.apply_async((1, 2), unique_key="same-key").id for _ in range(20)}


def test_unique_jobs_hold_under_concurrent_enqueue(app, db):
    with ProcessPoolExecutor(6) as pool:
        ids = set().union(*pool.map(_enqueue_unique, range(6)))
    assert len(ids) == 1
    assert db.execute("SELECT count(*) FROM pgq.jobs").fetchone()[0] == 1


def test_unstorable_result_fails_the_job_not_the_worker(app, start_worker):
    start_worker("-c", "1")
    with pytest.raises(pgq.EncodeError, match="cannot be stored"):
        returns_nul.delay().get(timeout=10)
    assert add.delay(1, 1).get(timeout=10) == 2


def test_text_and_countdowns_postgresql_cannot_take_fail_their_jobs_clearly(app, start_worker):
    """An exception message PostgreSQL cannot store (a lone surrogate, a NUL) is kept escaped;
    a retry countdown it cannot take fails the job with the reason. Before, the first killed
    the child running it and the second failed the job as 'cannot be stored'."""
    from apps.basic import raises_unstorable_text, retries_in

    start_worker("-c", "1")
    text, never, soon, nan = (raises_unstorable_text.delay(), retries_in.delay("inf"),
                              retries_in.delay("soon"), retries_in.delay("nan"))
    with pytest.raises(ValueError, match=r"half a character: \\ud800, a NUL: \\x00"):
        text.get(timeout=10)
    with pytest.raises(ValueError, match="cannot retry in inf seconds"):
        never.get(timeout=10)
    with pytest.raises(ValueError, match="could not convert string to float: 'soon'"):
        soon.get(timeout=10)
    with pytest.raises(ValueError, match="cannot retry in nan seconds"):
        nan.get(timeout=10)
    assert add.delay(1, 1).get(timeout=10) == 2


def test_job_that_keeps_killing_its_worker_runs_out_of_retries(app, start_worker):
    from apps.basic import kill_my_worker

    result = kill_my_worker.delay()  # max_retries=1
    for _ in range(3):  # each worker it reaches dies with it; the next one rescues it
        worker = start_worker("-c", "1")
        wait_until(lambda w=worker: w.proc.poll() is not None or result.ready(), timeout=30,
                   what="the job to kill its worker or fail")
        if result.ready():
            break
    with pytest.raises(pgq.WorkerLostError, match="lost"):
        result.get(timeout=1)
    assert result.retries == 2
