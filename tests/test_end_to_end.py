"""Enqueue → a real `pgq worker` → result, through the public API."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from decimal import Decimal

import pytest
from apps.basic import add, echo, fail_custom, fail_value, identity, types_of, whoami

import pgq


def test_delay_then_get_returns_the_value(start_worker, app):
    start_worker("-c", "2")
    result = add.delay(2, 3)
    assert result.get(timeout=10) == 5
    assert result.state == "SUCCESS"
    assert result.successful() and result.ready() and not result.failed()
    assert result.date_done is not None


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_every_pool_runs_jobs(start_worker, app, pool):
    worker = start_worker("--pool", pool, "-c", "2")
    info = whoami.delay().get(timeout=10)
    if pool == "prefork":
        assert info["pid"] != worker.pid
    else:
        assert info["pid"] == worker.pid


def test_values_round_trip_with_their_types(start_worker, app):
    start_worker("-c", "1")
    value = {"when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "day": dt.date(2026, 1, 2),
             "id": uuid.UUID(int=7), "price": Decimal("1.10"), "list": [1, "a", None, 2.5],
             "tuple": (1, 2)}
    back = identity.delay(value).get(timeout=10)
    assert back == {**value, "tuple": [1, 2]}
    assert type(back["price"]) is Decimal and type(back["id"]) is uuid.UUID
    assert types_of.delay(dt.date(2026, 1, 1), k=uuid.UUID(int=1)).get(timeout=10) == [
        "date", "k:UUID"]


def test_request_context(start_worker, app):
    start_worker("-c", "1", "-n", "box-%n")
    result = whoami.apply_async(queue="default", priority=4, headers={"trace": "abc"})
    info = result.get(timeout=10)
    assert info["id"] == result.id
    assert info["root_id"] == result.id and info["parent_id"] is None
    assert info["delivery_info"]["routing_key"] == "default"
    assert info["delivery_info"]["priority"] == 4
    assert info["headers"] == {"trace": "abc"}
    assert info["hostname"].startswith("box-")


def test_failure_reraises_builtin_type(start_worker, app):
    start_worker("-c", "1")
    result = fail_value.delay("boom")
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=10)
    assert result.state == "FAILURE" and result.failed()
    assert "raise ValueError(message)" in result.traceback
    assert isinstance(result.get(timeout=1, propagate=False), ValueError)


def test_failure_that_cannot_be_rebuilt_becomes_task_error(start_worker, app):
    start_worker("-c", "1")
    with pytest.raises(pgq.TaskError) as info:
        fail_custom.delay().get(timeout=10)
    assert "Unrebuildable" in info.value.exc_type


def test_unknown_task_fails_with_not_registered(start_worker, app):
    start_worker("-c", "1")
    result = app.send_task("nowhere.to.be.found", args=[1])
    with pytest.raises(pgq.NotRegistered, match=r"nowhere\.to\.be\.found"):
        result.get(timeout=10)


def test_send_task_by_name(start_worker, app):
    start_worker("-c", "1")
    assert app.send_task("apps.basic.add", args=[20, 22]).get(timeout=10) == 42
    assert echo.apply_async(args=[1], kwargs={"a": 2}).get(timeout=10) == {
        "args": [1], "kwargs": {"a": 2}}


def test_direct_call_runs_in_process(app):
    assert add(1, 2) == 3
    assert whoami()["pid"] == os.getpid()


def test_get_timeout_raises_pgq_timeout_error(app):
    result = add.delay(1, 1)  # no worker running
    with pytest.raises(pgq.TimeoutError):
        result.get(timeout=0.3)
    with pytest.raises(TimeoutError):  # the built-in, too
        result.get(timeout=0.1)
    assert result.state == "PENDING"
