"""`async def` tasks run by a real `pgq worker`: values, self.request, retries, time limits,
one event loop per child reused across jobs; and a Task base with its own `__call__`."""

from __future__ import annotations

import os
from typing import Any

import pytest
from apps import async_tasks
from apps.async_tasks import (
    async_add,
    async_enqueues,
    async_flaky,
    async_retry_until,
    async_soft_limited,
    async_too_slow,
    async_whoami,
    wrapped,
)

import pgq
from pgq import App, SoftTimeLimitExceeded, Task, TimeLimitExceeded
from pgq.testing import eager

INCLUDE = {"PGQ_INCLUDE": "apps.async_tasks"}


def test_async_task_returns_its_value(start_worker: Any) -> None:
    start_worker("-c", "1", env=INCLUDE)
    assert async_add.delay(2, 3, delay=0.1).get(timeout=10) == 5


def test_async_tasks_share_one_loop_per_child(start_worker: Any) -> None:
    worker = start_worker("-c", "1", env=INCLUDE)
    first = async_whoami.delay().get(timeout=10)
    second = async_whoami.delay().get(timeout=10)
    assert first["pid"] == second["pid"] != worker.pid
    assert (first["loop_runs"], second["loop_runs"]) == (1, 2)
    assert first["id"] != second["id"]
    assert first["retries"] == 0 and first["hostname"]


def test_async_task_request_id_matches_the_job(start_worker: Any) -> None:
    start_worker("-c", "1", env=INCLUDE)
    result = async_whoami.delay()
    assert result.get(timeout=10)["id"] == result.id


def test_async_task_retries(start_worker: Any) -> None:
    start_worker("-c", "1", env=INCLUDE)
    assert async_retry_until.delay(2).get(timeout=10) == 2
    flaky = async_flaky.delay()
    with pytest.raises(ConnectionError):
        flaky.get(timeout=10)
    assert flaky.retries == 2


def test_async_soft_time_limit_cancels_the_coroutine(start_worker: Any) -> None:
    start_worker("-c", "1", env=INCLUDE)
    with pytest.raises(SoftTimeLimitExceeded):
        async_soft_limited.delay(False).get(timeout=10)
    assert async_soft_limited.delay(True).get(timeout=10) == "cleaned up"


def test_async_hard_time_limit_kills_the_child(start_worker: Any) -> None:
    start_worker("-c", "1", env=INCLUDE)
    with pytest.raises(TimeLimitExceeded):
        async_too_slow.delay().get(timeout=15)
    assert async_add.delay(1, 1).get(timeout=10) == 2  # a fresh child, a fresh loop


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_async_tasks_in_thread_and_solo_pools(start_worker: Any, pool: str) -> None:
    start_worker("--pool", pool, "-c", "2", env=INCLUDE)
    results = [async_add.delay(i, i) for i in range(6)]
    assert [r.get(timeout=10) for r in results] == [2 * i for i in range(6)]
    with pytest.raises(SoftTimeLimitExceeded):  # enforced in threads too, unlike sync tasks
        async_soft_limited.delay(False).get(timeout=10)


def test_async_task_enqueues_with_the_async_api(start_worker: Any, app: Any) -> None:
    start_worker("-c", "1", env=INCLUDE)
    sent_id = async_enqueues.delay(41).get(timeout=10)
    assert app.AsyncResult(sent_id).get(timeout=10) == 42
    assert app.AsyncResult(sent_id).parent is not None  # sent from inside a job


def test_async_map_over_an_async_task(start_worker: Any) -> None:
    start_worker("-c", "1", env=INCLUDE)
    assert async_add.starmap([(1, 2), (3, 4)]).delay().get(timeout=10) == [3, 7]


def test_custom_call_wraps_the_run_in_the_worker(start_worker: Any) -> None:
    start_worker("-c", "1", env=INCLUDE)
    result = wrapped.delay()
    assert result.get(timeout=10) == {"wrapped": "yes", "id": result.id}


def test_async_task_called_directly_returns_a_coroutine() -> None:
    import asyncio

    assert asyncio.run(async_add(2, 2, delay=0)) == 4


def test_async_task_in_eager_mode(app: Any) -> None:
    with eager(app):
        assert async_add.delay(1, 2, delay=0).get() == 3

        async def inside_a_loop() -> Any:
            return (await async_add.adelay(3, 4, delay=0)).get()

        import asyncio

        assert asyncio.run(inside_a_loop()) == 7


def test_task_cls_is_the_default_base(dsn: str) -> None:
    class Base(Task):
        marker = "base"

    app = App("task-cls", dsn=dsn, task_cls=Base)

    @app.task
    def f() -> None: ...

    assert isinstance(f, Base)
    named = App("task-cls-named", dsn=dsn, task_cls="apps.async_tasks:MarkingTask")
    assert isinstance(named.task(lambda: None, name="x"), async_tasks.MarkingTask)
    with pytest.raises(pgq.ConfigurationError, match="task_cls"):
        App("bad", dsn=dsn, task_cls="apps.async_tasks:Nope")
    with pytest.raises(pgq.ConfigurationError, match=r"subclass of pgq\.Task"):
        App("bad", dsn=dsn, task_cls=dict)
    assert os.environ.get("PGQ_TEST_WRAPPED") is None
