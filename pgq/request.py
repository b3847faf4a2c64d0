"""The request context a running task sees as `self.request` (one stack per thread)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class Request:
    """`self.request` in a `bind=True` task: the running job's context, with Celery's names.

    Attributes:
        id: The job id.
        task: The task name.
        args: Positional arguments of this run.
        kwargs: Keyword arguments of this run.
        retries: Retries so far (0 on the first run).
        queue: The queue the job came from.
        priority: Its priority (0 to 9, 9 runs first).
        eta: The due time it was scheduled for (countdown, eta, a retry's delay or a
            periodic schedule's due time), as an aware UTC datetime; else `None`.
        hostname: The worker's `-n` name.
        root_id: The id of the job that started the workflow (its own id at the top).
        parent_id: The id of the job that enqueued this one, or `None`.
        group_id: The id of the group or chord header it belongs to, or `None`.
        headers: The `headers=` given to `apply_async`.
        attempts: How many times the job has been claimed (rescues included).
        called_directly: True when the task was called as a plain function.
        is_eager: True when it runs eagerly (`task_always_eager`).
    """

    id: str | None = None
    task: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    queue: str | None = None
    priority: int = 0
    eta: datetime | None = None
    hostname: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    called_directly: bool = True
    is_eager: bool = False

    @property
    def delivery_info(self) -> dict[str, Any]:
        """`{"routing_key": queue, "priority": priority, "exchange": ""}`, as Celery code
        reads it."""
        return {"routing_key": self.queue, "priority": self.priority, "exchange": ""}

    @property
    def correlation_id(self) -> str | None:
        return self.id

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)


_local = threading.local()


def _stack() -> list[Request]:
    stack: list[Request] | None = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def current() -> Request | None:
    stack = _stack()
    return stack[-1] if stack else None


def push(request: Request) -> None:
    _stack().append(request)


def pop() -> None:
    _stack().pop()


def worker_call(task: Any, *args: Any, **kwargs: Any) -> Any:
    """The worker calls `task(*args, **kwargs)` (a Task subclass with its own `__call__`): the
    job's request is already pushed, so the base `Task.__call__` must not push another."""
    _local.worker_call = task
    try:
        return task(*args, **kwargs)
    finally:
        _local.worker_call = None


def take_worker_call(task: Any) -> bool:
    """True once for the call `worker_call` is making on `task`."""
    if getattr(_local, "worker_call", None) is task:
        _local.worker_call = None
        return True
    return False
