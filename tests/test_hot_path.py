"""The worker's batched hot path: a prefork child takes several short jobs per message, and a
batch of outcomes, its NOTIFYs and the next claim go in one statement. Faults inside a batch
must charge only the job that caused them; every other job runs exactly once."""

from __future__ import annotations

import re
import uuid
from collections import Counter

import orjson
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


def test_done_notify_names_every_finished_job_after_its_small_result(app, start_worker, dsn):
    """Per chunk of finished jobs, each payload under 8,000 bytes: on `_results` a JSON object
    of the results of 200 bytes or less, then on `_done` the ids, comma-separated."""
    with psycopg.connect(dsn, autocommit=True) as listen:
        listen.execute("LISTEN pgq_done")
        listen.execute("LISTEN pgq_results")
        small = {r.id: 2 * i for i, r in enumerate(app.enqueue_many(
            [add.s(i, i) for i in range(300)]))}
        big = {r.id for r in app.enqueue_many([add.s("x" * 250, str(i)) for i in range(30)])}
        start_worker("-c", "2")
        heard: set[str] = set()
        carried: dict[str, object] = {}
        for note in listen.notifies(timeout=60):
            assert len(note.payload.encode()) < 8000
            if note.channel == "pgq_results":
                results = orjson.loads(note.payload)
                assert not set(results) & heard  # before the ids
                carried.update(results)
            else:
                heard.update(note.payload.split(","))
            if {*small, *big} <= heard:
                break
    assert heard == {*small, *big}
    assert carried == small


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


def test_idle_claim_and_lone_write_answer_as_the_whole_statement_does(app, db, dsn):
    """The worker sends `claim_and_due` when it has no outcome to write and
    `complete_and_notify` when it wants no job: the same summary as `complete_and_claim`
    (unwritten ids, retries woken, notifications sent, next due), the claim's rows after it."""
    from pgq.worker.completer import complete_params
    from pgq.worker.executor import Outcome

    q, worker = app.queries, str(uuid.uuid4())
    now_id, later_id = add.delay(1, 2).id, add.apply_async((3, 4), countdown=60).id
    claim = {"queues": ["default"], "limit": 5, "worker": worker}
    rows = db.execute(q.claim_and_due, claim).fetchall()
    assert [(row[:3], row[4]) for row in rows] == [(([], 0, 0), now_id)]
    assert 55 < rows[0][3].total_seconds() <= 60  # next due: the countdown job
    ((attempts,),) = db.execute("SELECT attempts FROM pgq.jobs WHERE id = %s", (now_id,))
    done = Outcome(now_id, attempts, "SUCCESS", "3")
    stray = Outcome(later_id, 1, "SUCCESS", "7")  # not held by this worker: not written
    with psycopg.connect(dsn, autocommit=True) as listen:
        listen.execute(f"LISTEN {q.done_channel}")
        listen.execute(f"LISTEN {q.results_channel}")
        written = db.execute(q.complete_and_notify, {
            **complete_params([done, stray], worker), "done_channel": q.done_channel,
            "results_channel": q.results_channel, "jobs_channel": q.jobs_channel}).fetchall()
        assert written == [([later_id], 0, 1, None)]
        notes = [(n.channel, n.payload) for n in listen.notifies(timeout=5, stop_after=2)]
        assert notes == [(q.results_channel, f'{{ "{now_id}" : 3 }}'), (q.done_channel, now_id)]
    assert app.AsyncResult(now_id).get(timeout=1) == 3
    assert app.AsyncResult(later_id).state == "PENDING"
    (row,) = db.execute(q.claim_and_due, claim).fetchall()  # nothing due: the summary alone
    assert row[:3] == ([], 0, 0) and 55 < row[3].total_seconds() <= 60
    assert set(row[4:]) == {None}


def test_statements_are_short_enough_for_psycopgs_parse_cache():
    """psycopg parses a statement longer than its cache limit again at every execution (~0.1
    ms for the hot path): every statement, with the longest schema name pgq allows."""
    from psycopg import _queries

    from pgq.db.queries import MAX_STATEMENT_BYTES, queries_for

    assert MAX_STATEMENT_BYTES <= _queries.MAX_CACHED_STATEMENT_LENGTH
    with pytest.raises(pgq.ConfigurationError):
        pgq.App("long", schema="s" * 50)
    statements = queries_for("s" * 49)._sql
    too_long = {name: len(text.encode()) for name, text in statements.items()
                if len(text.encode()) > MAX_STATEMENT_BYTES}
    assert not too_long
    assert not [name for name, text in statements.items() if "--" in text]


def generic_plan(db, query: str) -> str:
    """EXPLAIN (GENERIC_PLAN) of a statement written with psycopg's %(name)s placeholders."""
    names: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    text = re.sub(r"%\((\w+)\)s", placeholder, query).replace("%%", "%")
    return "\n".join(row[0] for row in db.execute("EXPLAIN (GENERIC_PLAN) " + text))


def test_generic_plan_of_the_hot_path_writes_outcomes_by_primary_key(app, db):
    """The worker plans its statements once (plan_cache_mode = force_generic_plan). The
    generic plan must still find each outcome's job by primary key: not by walking
    jobs_running (every job finished since the last vacuum), not by rescanning the outcomes
    once per job."""
    if db.info.server_version < 160000:
        pytest.skip("EXPLAIN (GENERIC_PLAN) needs PostgreSQL 16")
    db.execute("INSERT INTO pgq.jobs (id, task, queue, state, args, finished_at) "
               "SELECT gen_random_uuid(), 'add', 'default', 'SUCCESS', '[]', now() "
               "FROM generate_series(1, 50000)")
    app.enqueue_many([add.s(i, i) for i in range(500)])
    db.execute("ANALYZE pgq.jobs")
    for query in (app.queries.complete_and_claim, app.queries.complete_and_notify):
        plan = generic_plan(db, query)
        done = plan.split("CTE done\n")[1].split("CTE done_notified")[0]
        assert "Index Scan using jobs_pkey" in done and "Index Cond: (id = o.id)" in done, plan
        assert "jobs_running" not in plan and "Seq Scan on jobs" not in plan, plan
