"""Sending work: transactional enqueue, bulk enqueue, unique jobs, and bad input."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
import sqlalchemy as sa
from apps.basic import add, echo, unique_add
from sqlalchemy.orm import Session

import pgq


def job_count(db: psycopg.Connection, job_id: str | None = None) -> int:
    if job_id is None:
        return db.execute("SELECT count(*) FROM pgq.jobs").fetchone()[0]
    return db.execute("SELECT count(*) FROM pgq.jobs WHERE id = %s", (job_id,)).fetchone()[0]


def sa_engine(dsn: str) -> sa.Engine:
    return sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))


# --- transactional enqueue ---------------------------------------------------------------------


def test_psycopg_connection_commit_makes_the_job_visible(app, dsn, db):
    with psycopg.connect(dsn) as conn:
        result = add.apply_async((1, 2), connection=conn)
        assert job_count(db, result.id) == 0, "visible before the caller committed"
        conn.commit()
    assert job_count(db, result.id) == 1


def test_psycopg_connection_rollback_leaves_nothing(app, dsn, db):
    with psycopg.connect(dsn) as conn:
        result = add.apply_async((1, 2), connection=conn)
        conn.rollback()
    assert job_count(db, result.id) == 0


def test_pgq_never_commits_a_handed_connection(app, dsn, db):
    conn = psycopg.connect(dsn)
    add.apply_async((1, 2), connection=conn)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    conn.close()  # closing without commit discards it
    assert job_count(db) == 0


def test_sqlalchemy_connection(app, dsn, db):
    engine = sa_engine(dsn)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
        kept = add.apply_async((1, 1), connection=conn)
        assert job_count(db, kept.id) == 0
        conn.commit()
        dropped = add.apply_async((2, 2), connection=conn)
        conn.rollback()
    assert job_count(db, kept.id) == 1
    assert job_count(db, dropped.id) == 0
    with engine.connect() as conn:  # a fresh connection with no transaction begun yet
        fresh = add.apply_async((3, 3), connection=conn)
        conn.commit()
    assert job_count(db, fresh.id) == 1
    engine.dispose()


def test_sqlalchemy_session(app, dsn, db, start_worker):
    engine = sa_engine(dsn)
    with Session(engine) as session:
        kept = add.apply_async((4, 5), connection=session)
        assert job_count(db, kept.id) == 0
        session.commit()
    with Session(engine) as session:
        dropped = add.apply_async((4, 5), connection=session)
        session.rollback()
    assert job_count(db, dropped.id) == 0
    engine.dispose()
    start_worker("-c", "1")
    assert kept.get(timeout=10) == 9


def test_a_committed_job_wakes_an_idle_worker(app, dsn, start_worker):
    start_worker("-c", "1")
    with psycopg.connect(dsn) as conn:
        result = add.apply_async((5, 5), connection=conn)
        conn.commit()
    assert result.get(timeout=10) == 10


# --- bulk ------------------------------------------------------------------------------------


def test_enqueue_many_in_one_statement(app, db, start_worker):
    results = app.enqueue_many([add.s(i, i) for i in range(500)] + [echo.s(x=1)])
    assert len(results) == 501
    assert job_count(db) == 501
    start_worker("-c", "2")
    group_values = [r.get(timeout=30) for r in results[:500]]
    assert group_values == [2 * i for i in range(500)]


def test_enqueue_many_is_transactional(app, dsn, db):
    with psycopg.connect(dsn) as conn:
        app.enqueue_many([add.s(i, i) for i in range(10)], connection=conn)
        conn.rollback()
    assert job_count(db) == 0


def test_enqueue_many_with_one_bad_item_writes_nothing(app, db):
    with pytest.raises(pgq.EncodeError):
        app.enqueue_many([add.s(1, 2), add.s(object(), 2)])
    assert job_count(db) == 0


# --- unique jobs -----------------------------------------------------------------------------


def test_unique_key_returns_the_waiting_job(app, db):
    first = add.apply_async((1, 2), unique_key="order-42")
    second = add.apply_async((1, 2), unique_key="order-42")
    assert second.id == first.id
    assert job_count(db) == 1


def test_unique_task_keys_on_arguments(app, db, start_worker):
    a = unique_add.delay(1, 2)
    assert unique_add.delay(1, 2).id == a.id
    other = unique_add.delay(2, 1)
    assert other.id != a.id
    start_worker("-c", "1")
    assert a.get(timeout=10) == 3
    again = unique_add.delay(1, 2)  # the first one finished: a new job
    assert again.id != a.id


# --- bad input: a clear error, nothing written --------------------------------------------------


@pytest.mark.parametrize("bad", [object(), {1: "int key"}, {"s": {1, 2}}, b"bytes",
                                 float("inf"), [1.5, float("nan")], "\ud800", {"x": 2**64}])
def test_unencodable_arguments_raise_encode_error(app, db, bad):
    with pytest.raises(pgq.EncodeError) as info:
        echo.delay(bad)
    assert "\n" not in str(info.value)
    assert job_count(db) == 0


@pytest.mark.parametrize("options, message", [
    ({"countdown": -1}, "countdown must not be negative"),
    ({"countdown": "soon"}, "countdown must be a number"),
    ({"priority": 12}, "priority must be an int from 0 to 9"),
    ({"eta": "tomorrow"}, "eta must be a datetime"),
    ({"task_id": "not-a-uuid"}, "is not a UUID"),
    ({"expires": -5}, "expires must be"),
    ({"colour": "blue"}, "unknown calling option"),
])
def test_bad_options_raise_and_write_nothing(app, db, options, message):
    with pytest.raises(pgq.PgqError, match=message):
        add.apply_async((1, 2), **options)
    assert job_count(db) == 0


def test_celery_per_call_options_are_accepted(app, db):
    result = add.apply_async((1, 2), retry=True, retry_policy={"max_retries": 3},
                             serializer="json", compression=None, routing_key="default",
                             time_limit=5, soft_time_limit=4, ignore_result=False, shadow="x")
    assert job_count(db, result.id) == 1


def test_countdown_and_eta_set_run_at(app, db):
    later = add.apply_async((1, 2), countdown=60)
    eta = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    at = add.apply_async((1, 2), eta=eta)
    rows = dict(db.execute("SELECT id::text, run_at - now() FROM pgq.jobs").fetchall())
    assert dt.timedelta(seconds=55) < rows[later.id] <= dt.timedelta(seconds=60)
    assert dt.timedelta(minutes=59) < rows[at.id] <= dt.timedelta(hours=1)


def test_task_id_is_used(app, db):
    job_id = "0b8f4c1e-6a7d-4f0e-9d1c-2b3a4c5d6e7f"
    assert add.apply_async((1, 2), task_id=job_id).id == job_id
    assert job_count(db, job_id) == 1


def test_every_single_job_statement_writes_the_same_row(app, dsn, db):
    """A single job goes in by one of three statements (docs/performance.md, round 5):
    `enqueue_plain` (delay()), `enqueue_new` (an option the plain one has no column for),
    `enqueue_one` (a chosen id: ON CONFLICT). The rows they write differ only where the
    call did; a chosen id already taken returns that job and writes nothing."""
    plain = add.delay(1, 2)
    expiring = add.apply_async((1, 2), expires=3600)
    chosen = add.apply_async((1, 2), task_id="0b8f4c1e-6a7d-4f0e-9d1c-2b3a4c5d6e7f")
    with psycopg.connect(dsn) as conn:
        on_callers = add.apply_async((1, 2), connection=conn)
    columns = ("task, queue, priority, state, args, kwargs, options, eta, unique_key, "
               "parent_id, group_id, content_type, compression, payload, payload_size, "
               "signature, run_at <= now(), root_id = id, expires_at IS NULL")
    rows = {job_id: rest for job_id, *rest in db.execute(
        f"SELECT id::text, {columns} FROM pgq.jobs").fetchall()}
    assert rows[expiring.id][-1] is False
    rows[expiring.id][-1] = True
    assert rows[plain.id] == rows[expiring.id] == rows[chosen.id] == rows[on_callers.id]
    assert rows[plain.id][-3:] == [True, True, True]
    again = add.apply_async((5, 5), task_id=chosen.id)
    assert again.id == chosen.id and job_count(db) == 4


def test_enqueue_many_accepts_workflows_and_plain_signatures(app, db):
    from pgq import chain, group

    results = app.enqueue_many([add.s(1, 1), chain(add.s(1, 1), add.s(2)),
                                group(add.s(i, i) for i in range(3)), echo.s(k=1)])
    assert len(results) == 4
    assert db.execute("SELECT count(*) FROM pgq.jobs").fetchone()[0] == 1 + 1 + 3 + 1
