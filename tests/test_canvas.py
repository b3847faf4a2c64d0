"""Signatures, chains, groups and callbacks (the parts of the canvas that exist so far)."""

from __future__ import annotations

import orjson
import pytest
from apps.basic import add, echo, fail_value, identity

import pgq
from pgq import chain, group, signature


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


def test_failing_step_stops_the_chain(app, start_worker):
    start_worker("-c", "2")
    result = (add.s(1, 1) | fail_value.si("stop here") | add.s(1)).apply_async()
    with pytest.raises(ValueError, match="stop here"):
        result.parent.get(timeout=15)
    assert result.state == "PENDING"  # never enqueued


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
