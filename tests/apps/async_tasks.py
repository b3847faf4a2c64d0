"""`async def` tasks and a Task base with its own `__call__`, registered on the test app. Workers
load them with PGQ_INCLUDE=apps.async_tasks."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from apps.basic import app
from pgq import Task


@app.task
async def async_add(x: int, y: int, delay: float = 0.05) -> int:
    await asyncio.sleep(delay)
    return x + y


@app.task(bind=True)
async def async_whoami(self: Task) -> dict[str, Any]:
    await asyncio.sleep(0)
    loop: Any = asyncio.get_running_loop()
    loop.pgq_test_runs = getattr(loop, "pgq_test_runs", 0) + 1  # the same loop counts on
    return {"id": self.request.id, "retries": self.request.retries, "pid": os.getpid(),
            "loop_runs": loop.pgq_test_runs, "hostname": self.request.hostname}


@app.task(bind=True, max_retries=3, default_retry_delay=0.05)
async def async_retry_until(self: Task, succeed_on: int) -> int:
    await asyncio.sleep(0)
    if self.request.retries < succeed_on:
        raise self.retry(exc=KeyError("not yet"))
    return self.request.retries


@app.task(autoretry_for=(ConnectionError,), max_retries=2, retry_backoff=0.05,
          retry_backoff_max=0.1)
async def async_flaky() -> None:
    await asyncio.sleep(0)
    raise ConnectionError("down")


@app.task(soft_time_limit=0.3)
async def async_soft_limited(catch: bool) -> str:
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        if catch:
            return "cleaned up"
        raise
    return "not interrupted"


@app.task(time_limit=0.5)
async def async_too_slow() -> None:
    await asyncio.sleep(10)


@app.task
async def async_enqueues(x: int) -> str:
    """An async task that sends another job with the async producer API."""
    result = await async_add.adelay(x, 1)
    return result.id


class MarkingTask(Task):
    """Celery's pattern for Flask: a base whose `__call__` wraps every run."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        os.environ["PGQ_TEST_WRAPPED"] = "yes"
        try:
            return super().__call__(*args, **kwargs)
        finally:
            del os.environ["PGQ_TEST_WRAPPED"]


@app.task(base=MarkingTask, bind=True)
def wrapped(self: Task) -> dict[str, Any]:
    return {"wrapped": os.environ.get("PGQ_TEST_WRAPPED"), "id": self.request.id}

