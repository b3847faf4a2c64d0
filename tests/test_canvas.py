"""Signatures, chains, groups and callbacks (the parts of the canvas that exist so far)."""

from __future__ import annotations

import time

import orjson
import psycopg
import pytest
from apps.basic import add, count_body, echo, fail_value, identity, tsum

import pgq
from pgq import chain, chord, group, signature


def test_signature_is_a_dict_that_survives_json(app):
    sig = add.s(2).set(queue="q", countdown=5, priority=3)
    again = signature(orjson.loads(orjson.dumps(dict(sig))))
    assert again == sig
    assert again.options == {"queue": "q", "countdown": 5, "priority": 3}
    assert add.si(1, 2).immutable and not add.s(1, 2).immutable
    assert add.signature((1,), {"y": 2}, queue="x").options == {"queue": "x"}


def test_signature_call_and_delay(app, start_worker):
    assert add.s(1)(2) == 3
    start_worker("-c", "2")
    assert add.s(1).delay(41).get(timeout=10) == 42


def test_chain_passes_each_result_on(app, start_worker):
    start_worker("-c", "2")
    result = (add.s(1, 2) | add.s(10) | add.s(100)).apply_async()
    assert result.get(timeout=15) == 113
    assert result.parent.get(timeout=5) == 13
    assert result.parent.parent.get(timeout=5) == 3
    assert result.parent.parent.parent is None


def test_chain_with_immutable_step(app, start_worker):
    start_worker("-c", "2")
    result = chain(add.s(1, 1), add.si(5, 5), identity.s()).apply_async()
    assert result.get(timeout=15) == 10


def test_failing_step_stops_the_chain_and_fails_its_result(app, start_worker, db):
    start_worker("-c", "2")
    result = (add.s(1, 1) | fail_value.si("stop here") | add.s(1)).apply_async(
        link_error=echo.s())
    with pytest.raises(ValueError, match="stop here"):
        result.get(timeout=15)
    assert result.state == "FAILURE"
    assert result.parent.state == "FAILURE"
    assert result.parent.parent.get(timeout=5) == 2
    from conftest import wait_until

    wait_until(lambda: db.execute("SELECT count(*) FROM pgq.jobs WHERE task = "
                                  "'apps.basic.echo' AND state = 'SUCCESS'").fetchone()[0] == 1)
    time.sleep(0.3)
    assert db.execute("SELECT count(*) FROM pgq.jobs WHERE task = 'apps.basic.echo'"
                      ).fetchone()[0] == 1, "link_error must run once"
    assert db.execute("SELECT count(*) FROM pgq.jobs WHERE task = 'apps.basic.add' "
                      "AND started_at IS NOT NULL").fetchone()[0] == 1


def test_group_results_in_order(app, start_worker):
    start_worker("-c", "2")
    result = group(add.s(i, i) for i in range(20)).apply_async()
    assert isinstance(result, pgq.GroupResult)
    assert result.get(timeout=20) == [2 * i for i in range(20)]
    assert result.ready() and result.successful() and result.completed_count() == 20


def test_link_and_link_error(app, start_worker):
    start_worker("-c", "2")
    ok = add.apply_async((2, 2), link=echo.s(tag="after"))
    assert ok.get(timeout=10) == 4
    bad = fail_value.apply_async(("x",), link_error=echo.s())
    with pytest.raises(ValueError):
        bad.get(timeout=10)
    from conftest import wait_until

    def callbacks():
        rows = app.pool.connection
        with rows() as conn:
            return conn.execute("SELECT args::text FROM pgq.jobs WHERE task = 'apps.basic.echo' "
                                "AND state = 'SUCCESS' ORDER BY created_at").fetchall()
    found = wait_until(lambda: len(callbacks()) == 2 and callbacks(), what="callbacks")
    assert orjson.loads(found[0][0]) == [4]
    assert orjson.loads(found[1][0]) == [bad.id]


def test_map_and_starmap(app, start_worker):
    start_worker("-c", "1")
    assert identity.map([1, 2, 3]).delay().get(timeout=10) == [1, 2, 3]
    assert add.starmap([(1, 2), (3, 4)]).delay().get(timeout=10) == [3, 7]


# --- chords ----------------------------------------------------------------------------------


def test_chord_body_gets_header_results_in_order(app, start_worker):
    start_worker("-c", "2")
    result = chord([add.s(i, i) for i in range(10)], identity.s()).apply_async()
    assert result.get(timeout=20) == [2 * i for i in range(10)]
    assert chord(add.s(i, 0) for i in range(5))(tsum.s()).get(timeout=20) == 10


def test_chord_header_failure_fails_the_chord_once(app, start_worker, db):
    start_worker("-c", "2")
    header = [add.s(1, 1), fail_value.s("header broke"), fail_value.s("also broke")]
    result = chord(header, tsum.s()).apply_async(link_error=echo.s())
    with pytest.raises(pgq.ChordError) as info:
        result.get(timeout=20)
    assert isinstance(info.value.__cause__, ValueError)
    from conftest import wait_until

    wait_until(lambda: db.execute("SELECT count(*) FROM pgq.jobs WHERE task = "
                                  "'apps.basic.echo' AND state = 'SUCCESS'").fetchone()[0] >= 1)
    time.sleep(0.5)
    rows = db.execute("SELECT args::text FROM pgq.jobs WHERE task = 'apps.basic.echo'").fetchall()
    assert len(rows) == 1, "link_error must run once"
    failed_ids = {r[0] for r in db.execute(
        "SELECT id::text FROM pgq.jobs WHERE task = 'apps.basic.fail_value'").fetchall()}
    assert orjson.loads(rows[0][0])[0] in failed_ids
    assert db.execute("SELECT count(*) FROM pgq.jobs WHERE task = 'apps.basic.tsum' "
                      "AND started_at IS NOT NULL").fetchone()[0] == 0, "the body ran"


def test_chord_with_empty_header_runs_body_with_empty_list(app, start_worker):
    start_worker("-c", "1")
    assert chord([], identity.s()).apply_async().get(timeout=10) == []


def test_chord_body_runs_exactly_once_with_many_workers(app, start_worker, tmp_path):
    for _ in range(3):
        start_worker("-c", "2")
    log = tmp_path / "body"
    result = chord([add.s(i, 1) for i in range(300)], count_body.s(str(log))).apply_async()
    assert result.get(timeout=60) == 300
    time.sleep(0.5)
    assert log.read_text().split() == ["300"]


def test_nested_workflows(app, start_worker):
    start_worker("-c", "2")
    # a group inside a chain (becomes a chord with the next step)
    assert chain(add.s(1, 1), group(add.s(1), add.s(2)), tsum.s()).apply_async().get(
        timeout=20) == 7
    # a chain inside a chord header
    assert chord([chain(add.s(1, 1), add.s(1)), add.s(5, 5)], tsum.s()).apply_async().get(
        timeout=20) == 13
    # a chord inside a chain
    assert chain(chord([add.s(1, 1), add.s(2, 2)], tsum.s()), add.s(100)).apply_async().get(
        timeout=20) == 106


def test_workflows_enqueue_transactionally(app, dsn, db):
    with psycopg.connect(dsn) as conn:
        chord([add.s(i, i) for i in range(5)], tsum.s()).apply_async(connection=conn)
        group(add.s(i, i) for i in range(5)).apply_async(connection=conn)
        (add.s(1, 1) | add.s(2)).apply_async(connection=conn)
        conn.rollback()
    assert db.execute("SELECT count(*) FROM pgq.jobs").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM pgq.chords").fetchone()[0] == 0


def test_large_group_is_one_statement(app, db):
    result = group(add.s(i, i) for i in range(1000)).apply_async()
    assert len(result) == 1000
    assert db.execute("SELECT count(DISTINCT group_id) FROM pgq.jobs").fetchone()[0] == 1


def test_errback_taking_request_exc_traceback_runs_in_the_worker(app, start_worker, tmp_path):
    from apps.basic import errback_with_request, fail_with_path
    from conftest import wait_until

    start_worker("-c", "1")
    out = tmp_path / "errback"
    result = fail_with_path.apply_async(kwargs={"path": str(out)},
                                        link_error=errback_with_request.s())
    with pytest.raises(RuntimeError):
        result.get(timeout=10)
    wait_until(out.exists, what="the errback")
    assert out.read_text() == f"{result.id} RuntimeError True"


def test_rescued_chord_header_job_counts_once(app, start_worker, tmp_path, db):
    import os
    import signal

    from apps.basic import record_run
    from conftest import wait_until

    log = tmp_path / "runs"
    doomed = start_worker("-c", "2")
    header = [record_run.s(str(log), 1.5) for _ in range(2)] + [add.s(i, 0) for i in range(3)]
    result = chord(header, identity.s()).apply_async()
    wait_until(lambda: log.exists() and len(log.read_text().split("\n")) > 2,
               what="the slow header jobs to start")
    os.killpg(doomed.pid, signal.SIGKILL)  # both slow header jobs die with their worker
    start_worker("-c", "2")  # rescues them after worker_lost_timeout
    values = result.get(timeout=30)
    assert values[2:] == [0, 1, 2] and values[:2] == [2, 2]  # second attempts
    assert db.execute("SELECT count(*) FROM pgq.jobs WHERE task = 'apps.basic.identity'"
                      ).fetchone()[0] == 1, "the body must be enqueued once"
    assert db.execute("SELECT pending, state FROM pgq.chords").fetchone() == (0, "DONE")
