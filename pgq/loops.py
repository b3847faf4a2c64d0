"""Event loops for `async def` tasks: one per thread, created at the first async job and
reused for the next ones (so a client or pool an async task caches at module level stays
bound to a live loop). Jobs run one at a time on it: a child that runs an async task is busy
until the coroutine returns, like a child running a plain function.

A soft time limit cancels the coroutine (asyncio.CancelledError inside it, as
`asyncio.timeout` does) and the job fails with `SoftTimeLimitExceeded`."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pgq import request as request_context
from pgq.errors import SoftTimeLimitExceeded

_local = threading.local()


def thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's loop (a forked child makes its own, never its parent's)."""
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed() or getattr(_local, "pid", None) != os.getpid():
        loop = asyncio.new_event_loop()
        _local.loop, _local.pid = loop, os.getpid()
    return loop


def run(coro: Coroutine[Any, Any, Any], soft_time_limit: float | None = None) -> Any:
    """Run `coro` to completion on this thread's loop and return its value. Called where a
    loop already runs (eager mode inside async code), it runs on a helper thread instead."""
    if _running_here():
        request = request_context.current()
        with ThreadPoolExecutor(1, thread_name_prefix="pgq-eager") as pool:
            return pool.submit(_run_with_request, coro, soft_time_limit, request).result()
    return thread_loop().run_until_complete(limited(coro, soft_time_limit))


def _running_here() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _run_with_request(coro: Coroutine[Any, Any, Any], soft_time_limit: float | None,
                      request: request_context.Request | None) -> Any:
    if request is None:
        return run(coro, soft_time_limit)
    request_context.push(request)
    try:
        return run(coro, soft_time_limit)
    finally:
        request_context.pop()


async def limited(coro: Coroutine[Any, Any, Any], seconds: float | None) -> Any:
    if not seconds:
        return await coro
    timeout = asyncio.timeout(seconds)
    try:
        async with timeout:
            return await coro
    except TimeoutError:
        if timeout.expired():
            raise SoftTimeLimitExceeded(f"soft time limit ({seconds}s) exceeded") from None
        raise
