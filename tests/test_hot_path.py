"""The worker's batched hot path: a prefork child takes several short jobs per message, and a
batch of outcomes, its NOTIFYs and the next claim go in one statement. Faults inside a batch
must charge only the job that caused them; every other job runs exactly once."""

from __future__ import annotations

from collections import Counter

import psycopg
import pytest
from apps.basic import add, exit_hard, fail_value, record_run, too_slow
from conftest import wait_until

import pgq

JOBS = 120  # enough for the run-time average to fall and children to get batches


def runs_per_job(path) -> Counter[str]:
    return Counter(line.split()[0] for line in path.read_text().splitlines())


def short_jobs_with(app, log, odd_one) -> tuple[list[str], str]:
    """JOBS record_run jobs, `odd_one`, and JOBS more, each part enqueued after the other (so
    that a worker started afterwards claims them in that order, and `odd_one` runs inside a
    child's batch)."""
    before = app.enqueue_many([record_run.s(str(log)) for _ in range(JOBS)])
    odd = app.enqueue_many([odd_one])[0]
    after = app.enqueue_many([record_run.s(str(log)) for _ in range(JOBS)])
    return [r.id for r in before + after], odd.id


def assert_each_ran_once_unharmed(db, log, ids) -> None:
    assert runs_per_job(log) == {job_id: 1 for job_id in ids}
    rows = db.execute("SELECT state, retries, count(*) FROM pgq.jobs WHERE id = ANY(%s::uuid[]) "
                      "GROUP BY state, retries", (ids,)).fetchall()
    assert rows == [("SUCCESS", 0, len(ids))]


def test_done_notify_names_every_finished_job(app, start_worker, dsn):
    with psycopg.connect(dsn, autocommit=True) as listen:
        listen.execute("LISTEN pgq_done")
        ids = {r.id for r in app.enqueue_many([add.s(i, i) for i in range(300)])}
        start_worker("-c", "2")
        heard: set[str] = set()
        for note in listen.notifies(timeout=60):
            heard.update(note.payload.split(","))
            if ids <= heard:
                break
    assert ids <= heard


def test_child_dying_mid_batch_charges_only_its_job(app, start_worker, db, tmp_path):
    log = tmp_path / "runs"
    ids, crasher = short_jobs_with(app, log, exit_hard.s(3))
    start_worker("-c", "1")
    with pytest.raises(pgq.WorkerLostError):
        app.AsyncResult(crasher).get(timeout=60)
    for job_id in ids:
        app.AsyncResult(job_id).get(timeout=60)
    assert_each_ran_once_unharmed(db, log, ids)
    assert app.AsyncResult(crasher).retries == 3


def test_time_limit_inside_a_batch_kills_only_its_job(app, start_worker, db, tmp_path):
    log = tmp_path / "runs"
    ids, slow = short_jobs_with(app, log, too_slow.s())
    start_worker("-c", "1")
    with pytest.raises(pgq.TimeLimitExceeded):
        app.AsyncResult(slow).get(timeout=60)
    for job_id in ids:
        app.AsyncResult(job_id).get(timeout=60)
    assert_each_ran_once_unharmed(db, log, ids)


def test_recycled_children_start_no_job_twice(app, start_worker, db, tmp_path):
    log = tmp_path / "runs"
    ids = [r.id for r in app.enqueue_many([record_run.s(str(log)) for _ in range(JOBS)])]
    start_worker("-c", "1", "--max-tasks-per-child", "7")
    for job_id in ids:
        app.AsyncResult(job_id).get(timeout=60)
    assert_each_ran_once_unharmed(db, log, ids)
    children = {line.split()[2] for line in log.read_text().splitlines()}
    assert len(children) >= JOBS // 7


def test_finished_counters_stay_exact_through_the_one_statement_path(app, start_worker, db):
    """complete_and_claim updates jobs twice in one statement (completions and the next
    claim): the statement-level triggers behind queue_stats must count each change once."""
    results = app.enqueue_many([add.s(i, i) for i in range(300)] +
                               [fail_value.s("x") for _ in range(40)])
    start_worker("-c", "2")
    ids = [r.id for r in results]
    wait_until(lambda: db.execute("SELECT count(*) FROM pgq.jobs WHERE id = ANY(%s::uuid[]) "
                                  "AND finished_at IS NOT NULL", (ids,)).fetchone()[0] == 340,
               timeout=60, what="every job to finish")
    counted = db.execute("SELECT queue, state, jobs FROM pgq.queue_stats "
                         "ORDER BY queue, state").fetchall()
    assert ("default", "SUCCESS", 300) in counted and ("default", "FAILURE", 40) in counted
    assert counted == db.execute("SELECT queue, state, count(*) FROM pgq.jobs "
                                 "GROUP BY queue, state ORDER BY queue, state").fetchall()
