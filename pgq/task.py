"""`@app.task` → Task: call it in-process, send it with delay/apply_async, sign it with .s()."""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, cast

from typing_extensions import ParamSpec, TypeVar

from pgq import request as request_context
from pgq.errors import MaxRetriesExceededError, Retry
from pgq.request import Request

if TYPE_CHECKING:
    from pgq.app import App
    from pgq.canvas import Signature
    from pgq.result import AsyncResult

# Decorator options a task accepts (SPEC §2), with their defaults on the Task class.
TASK_OPTIONS = (
    "name", "queue", "priority", "max_retries", "default_retry_delay", "autoretry_for",
    "retry_kwargs", "retry_backoff", "retry_backoff_max", "retry_jitter", "time_limit",
    "soft_time_limit", "rate_limit", "acks_late", "ignore_result", "expires", "bind", "unique",
    "serializer", "compression", "typing", "track_started", "throws", "shared",
)


# A task's parameters and return type. The defaults (PEP 696) make a bare `Task` mean
# `Task[..., Any]`, so `self: Task` in a bind=True task and `base=` subclasses need no
# parameters, even under `mypy --strict`.
P = ParamSpec("P", default=...)
R = TypeVar("R", default=Any)


class Task(Generic[P, R]):
    """A registered task, made by `@app.task`. Its options are class attributes of the
    same names. Subclass it and pass `base=` to share behaviour between tasks.

    `Task[P, R]` is generic over the function's parameters `P` and return type `R`, so a
    type checker checks `delay()`'s arguments and knows what `AsyncResult.get()` returns
    (see "Type checking" in the tasks page)."""

    name: str = ""
    """The task's name: `name=`, else `module.qualname` of the function."""
    app: App
    queue: str | None = None
    priority: int | None = None
    max_retries: int | None = 3
    default_retry_delay: float = 180
    autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: ClassVar[dict[str, Any]] = {}
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600
    retry_jitter: bool = True
    time_limit: float | None = None
    soft_time_limit: float | None = None
    rate_limit: str | None = None
    acks_late: bool = True
    ignore_result: bool = False
    expires: float | datetime | None = None
    bind: bool = False
    unique: bool = False
    serializer: str | None = None
    compression: str | None = None
    typing: bool = True
    track_started: bool = True
    throws: tuple[type[BaseException], ...] = ()
    shared: bool = True

    def run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        raise NotImplementedError(f"task {self.name!r} has no body")

    # --- calling --------------------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the body here and now, like a plain function call."""
        if request_context.take_worker_call(self):  # the worker's request is in place
            return self.run(*args, **kwargs)
        request_context.push(Request(args=list(args), kwargs=dict(kwargs), task=self.name))
        try:
            return self.run(*args, **kwargs)
        finally:
            request_context.pop()

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Enqueue a job with these arguments: `apply_async(args, kwargs)` without options."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        connection: Any = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Enqueue a job; returns its `AsyncResult` at once. The arguments are not
        type-checked here (use `delay` for that).

        Args:
            args: Positional arguments (JSON-encodable, see the calling page).
            kwargs: Keyword arguments.
            connection: A `psycopg.Connection`, SQLAlchemy `Connection` or `Session`: the
                job is written in its current transaction and exists only if the caller
                commits. pgq never commits or rolls it back.
            **options: `countdown`, `eta`, `expires`, `queue` (or `routing_key`),
                `priority`, `task_id`, `unique_key`, `link`, `link_error`, `time_limit`,
                `soft_time_limit`, `ignore_result`, `headers`; Celery's publishing options
                (`retry`, `retry_policy`, `serializer`, `compression`, …) are accepted and
                ignored.

        Raises:
            EncodeError: An argument cannot be encoded; nothing was written.
            ValueError: An option has a value pgq cannot use (e.g. `priority=12`).
        """
        return self.app.send_task(self.name, args, kwargs, connection=connection, _task=self,
                                  **options)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """`delay` for async code: `await add.adelay(2, 3)` (see docs/async.md)."""
        return await self.aapply_async(args, kwargs)

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        connection: Any = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """`apply_async` for async code; `connection=` takes a psycopg AsyncConnection or a
        SQLAlchemy AsyncConnection / AsyncSession (the row joins its transaction)."""
        return await self.app.asend_task(self.name, args, kwargs, connection=connection,
                                         _task=self, **options)

    def apply(self, args: Sequence[Any] | None = None,
              kwargs: Mapping[str, Any] | None = None, **options: Any) -> R:
        """Run in-process (eagerly); returns the value, as Celery's EagerResult.get() would."""
        call = cast("Callable[..., R]", self)  # args/kwargs are not checked against P here
        return call(*(args or ()), **(kwargs or {}))

    # --- signatures -----------------------------------------------------------------------

    def signature(self, args: Sequence[Any] | None = None,
                  kwargs: Mapping[str, Any] | None = None, **options: Any) -> Signature[R]:
        """A signature of this task with partial arguments and calling options;
        `immutable=True` makes it ignore a parent's result (as `si()`)."""
        from pgq.canvas import Signature

        immutable = bool(options.pop("immutable", False))
        return Signature(self.name, args, kwargs, options, immutable=immutable, app=self.app)

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """A signature: `add.s(2)` in a chain receives the previous result as its first
        argument. Its arguments may be partial, so they are not type-checked (`si` is)."""
        return self.signature(args, kwargs)

    def si(self, *args: P.args, **kwargs: P.kwargs) -> Signature[R]:
        """An immutable signature: it runs with exactly these arguments, ignoring a parent's
        result."""
        return self.signature(args, kwargs, immutable=True)

    def map(self, iterable: Iterable[Any]) -> Signature[list[R]]:
        """A signature of one job that calls this task on each item and returns the list of
        results."""
        return self.app.tasks["pgq.map"].s(self.name, list(iterable))

    def starmap(self, iterable: Iterable[Sequence[Any]]) -> Signature[list[R]]:
        """Like `map`, with each item unpacked as the positional arguments."""
        return self.app.tasks["pgq.starmap"].s(self.name, [list(x) for x in iterable])

    # --- inside a running task ------------------------------------------------------------

    @property
    def request(self) -> Request:
        """The running job's context (`self.request.id`, `.retries`, …) in a `bind=True`
        task; an empty `Request` outside a job."""
        return request_context.current() or Request()

    def retry(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Ask the worker to run this job again later: `raise self.retry(exc=exc)`.

        Args:
            exc: The exception that caused the retry (shown in `.traceback` meanwhile;
                re-raised when no retry is left).
            eta: When to run again (a datetime).
            countdown: Seconds from now (default: `default_retry_delay`).
            max_retries: Overrides the task's `max_retries` for this call.

        Raises:
            Retry: Always, while retries are left: the worker catches it.
            MaxRetriesExceededError: Past `max_retries` with no `exc` to re-raise.
        """
        limit = self.max_retries if max_retries is None else max_retries
        retries = self.request.retries
        if limit is not None and retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"can't retry {self.name}[{self.request.id}]: max retries ({limit}) exceeded"
            )
        if eta is not None:
            when: Any = eta
        else:
            when = self.default_retry_delay if countdown is None else countdown
        raise Retry(exc=exc, when=when)

    def update_state(self, task_id: str | None = None, state: str | None = None,
                     meta: Mapping[str, Any] | None = None, **_: Any) -> None:
        """Record a custom state (e.g. PROGRESS) with `meta`; visible at once to AsyncResult."""
        job_id = task_id or self.request.id
        if job_id is None:
            return
        self.app.backend_update_state(job_id, state or "PROGRESS", meta)

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:
        """The handle on the job `task_id`."""
        return self.app.AsyncResult(task_id)

    # --- retry policy (used by the executor) ---------------------------------------------

    def autoretry_countdown(self, retries: int) -> float:
        if self.retry_kwargs.get("countdown") is not None:
            return float(self.retry_kwargs["countdown"])
        if not self.retry_backoff:
            return float(self.default_retry_delay)
        factor = 1 if self.retry_backoff is True else float(self.retry_backoff)
        countdown = factor * (2**retries)
        if self.retry_jitter:
            countdown = random.uniform(0, countdown)
        return float(min(self.retry_backoff_max, countdown))

    def effective_max_retries(self) -> int | None:
        if "max_retries" in self.retry_kwargs:
            limit: int | None = self.retry_kwargs["max_retries"]
            return limit
        return self.max_retries

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"


if TYPE_CHECKING:
    from typing import Concatenate, Protocol, overload

    class AsyncTask(Task[P, R]):
        """How a type checker sees an `async def` task: `R` is the awaited value (what
        `delay(...).get()` returns) and a direct call returns the coroutine. Exists for type
        checkers only; at run time the task is a plain `Task`."""

        def run(  # type: ignore[override]  # a direct call returns the coroutine, not R
            self, *args: P.args, **kwargs: P.kwargs
        ) -> Coroutine[Any, Any, R]: ...

        def __call__(  # type: ignore[override]  # as run
            self, *args: P.args, **kwargs: P.kwargs
        ) -> Coroutine[Any, Any, R]: ...

    class TaskDecorator(Protocol):
        """What `@app.task(...)` returns: makes a `Task[P, R]` of `fn(*P) -> R`."""

        @overload
        def __call__(
            self, fn: Callable[P, Coroutine[Any, Any, R]], /
        ) -> AsyncTask[P, R]: ...
        @overload
        def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    class BoundTaskDecorator(Protocol):
        """What `@app.task(bind=True, ...)` returns: the function's first parameter is the
        task itself (`self`), so the task's parameters are the rest."""

        @overload
        def __call__(
            self, fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], /
        ) -> AsyncTask[P, R]: ...
        @overload
        def __call__(self, fn: Callable[Concatenate[Any, P], R], /) -> Task[P, R]: ...

    class LooseTaskDecorator(Protocol):
        """What `@app.task(bind=flag)` returns when `flag` is not a literal: the parameters
        cannot be known, only the return type."""

        def __call__(self, fn: Callable[..., R], /) -> Task[..., R]: ...


_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def rate_interval(rate_limit: str | float | None) -> float | None:
    """Seconds between two runs for Celery's `"N/s"`, `"N/m"`, `"N/h"` (a bare number is per
    second); None when there is no limit."""
    if rate_limit is None or rate_limit == "":
        return None
    text = str(rate_limit).strip()
    count, _, unit = text.partition("/")
    try:
        per_unit = float(count)
        seconds = _RATE_UNITS[unit.strip()[:1] or "s"]
    except (ValueError, KeyError):
        from pgq.errors import ConfigurationError

        raise ConfigurationError(
            f"rate_limit {rate_limit!r} is not like '10/s', '100/m' or '1000/h'") from None
    if per_unit <= 0:
        return None
    return seconds / per_unit


def make_task(app: App, fn: Callable[..., Any], base: type[Task], options: dict[str, Any]) -> Task:
    """Build the Task subclass for `fn`, as Celery does: class attributes are the options."""
    unknown = set(options) - set(TASK_OPTIONS)
    if unknown:
        from pgq.errors import ConfigurationError

        raise ConfigurationError(f"unknown task option(s) {sorted(unknown)} on {fn.__qualname__}")
    name = options.pop("name", None) or f"{fn.__module__}.{fn.__qualname__}"
    bind = options.get("bind", base.bind)
    attrs: dict[str, Any] = {
        **options,
        "name": name,
        "app": app,
        "run": fn if bind else staticmethod(fn),
        "__doc__": fn.__doc__,
        "__module__": fn.__module__,
        "__wrapped__": fn,
    }
    if "autoretry_for" in attrs:
        attrs["autoretry_for"] = tuple(attrs["autoretry_for"])
    rate_interval(attrs.get("rate_limit"))  # a bad rate limit fails at registration
    _check_payload_options(attrs)
    cls: type[Task] = type(fn.__name__, (base,), attrs)
    return cls()


def _check_payload_options(attrs: dict[str, Any]) -> None:
    """An unknown serializer or compression name fails at registration, not at send."""
    from pgq.errors import ConfigurationError
    from pgq.payload import compression, serializer_names

    name = attrs.get("serializer")
    if name is not None and name not in serializer_names():
        raise ConfigurationError(f"unknown serializer {name!r} on task {attrs['name']!r}: "
                                 f"use one of json, msgpack, yaml, pickle")
    try:
        compression(attrs.get("compression"))
    except ValueError as exc:
        raise ConfigurationError(f"{exc} (on task {attrs['name']!r})") from None
