"""AsyncResult and GroupResult: read a job's state and result; `get()` waits on LISTEN."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, overload

import orjson
from typing_extensions import TypeVar

from pgq import payload, serialization
from pgq.db.connection import execute
from pgq.db.listener import Listener
from pgq.errors import TaskRevokedError, TimeoutError

if TYPE_CHECKING:
    from pgq.app import App

# The task's return type; a bare AsyncResult is AsyncResult[Any]. Covariant, as Signature's.
R = TypeVar("R", covariant=True, default=Any)

READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
EXCEPTION_STATES = frozenset({"FAILURE", "RETRY", "REVOKED"})


class ResultWaiter:
    """Per process: one LISTEN on the schema's `_done` channel; wakes `get()` callers whose
    job ids appear in a notification (the completer sends ids in batches). On `_results`, just
    before, the worker's hot path sends the small results of the successes among them: kept
    for the ids someone waits on (`take`). It also keeps the last RECENT ids nobody was
    waiting for, so that a `get()` on a job this process enqueued while listening can wait
    without reading the job first (`heard_all_since`)."""

    RECENT = 10_000

    def __init__(self, dsn: str, done_channel: str, results_channel: str) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, list[threading.Event]] = defaultdict(list)
        self._heard: dict[str, Any] = {}  # id -> its result, parsed, for a waiting get()
        self._recent: OrderedDict[str, float] = OrderedDict()  # id -> when it was heard
        self._forgotten = 0.0  # when the newest id dropped from _recent was heard
        self.listener = Listener(dsn, [done_channel, results_channel])
        self.listener.on(done_channel, self._on_done)
        self.listener.on(results_channel, self._on_results)
        self.listener.on_reconnect(self._wake_all)
        self.listener.start()

    def _on_results(self, payload: str) -> None:
        """`{"id": result, ...}` (queries.sql, `_outcome_ctes`), parsed only while someone
        waits."""
        if not self._waiting:
            return
        try:
            results = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return  # get() reads the row instead
        with self._lock:
            for job_id, result in results.items():
                if self._waiting.get(job_id):
                    self._heard[job_id] = result

    def _on_done(self, payload: str) -> None:
        now = time.monotonic()
        with self._lock:
            for job_id in payload.split(","):
                events = self._waiting.get(job_id)
                if events:
                    for event in events:
                        event.set()
                else:
                    self._recent[job_id] = now
            while len(self._recent) > self.RECENT:
                self._forgotten = self._recent.popitem(last=False)[1]

    def take(self, job_id: str) -> tuple[bool, Any]:
        """(True, result) if the results channel carried the finished job's result
        (SUCCESS), parsed as its `result` column would be; (False, None) otherwise. Once
        only."""
        with self._lock:
            if job_id in self._heard:
                return True, self._heard.pop(job_id)
        return False, None

    def heard_all_since(self, moment: float) -> bool:
        """Every job that finishes after `moment` (time.monotonic()) is heard here: listening
        since before it without a break, and no id heard since then forgotten."""
        live = self.listener.live_since
        return live is not None and live < moment and self._forgotten < moment

    def _wake_all(self) -> None:
        with self._lock:
            for events in self._waiting.values():
                for event in events:
                    event.set()

    def register(self, job_ids: Sequence[str], event: Any = None) -> Any:
        """Set `event` (a new threading.Event by default; anything with `set()`) when one of
        `job_ids` finishes."""
        event = event or threading.Event()
        with self._lock:
            for job_id in job_ids:
                self._waiting[job_id].append(event)
                if job_id in self._recent:  # finished before anyone waited
                    event.set()
        return event

    def unregister(self, job_ids: Sequence[str], event: Any) -> None:
        with self._lock:
            for job_id in job_ids:
                events = self._waiting.get(job_id)
                if events and event in events:
                    events.remove(event)
                    if not events:
                        del self._waiting[job_id]
                        self._heard.pop(job_id, None)


class _Row:
    __slots__ = ("date_done", "exc_message", "exc_type", "meta", "parent_id",
                 "progress_state", "result", "retries", "state", "task", "traceback")

    def __init__(self, row: tuple[Any, ...] | None) -> None:
        if row is None:
            self.state = "PENDING"
            self.progress_state = self.result = self.meta = self.exc_type = None
            self.exc_message = self.traceback = self.date_done = self.parent_id = None
            self.task = None
            self.retries = 0
            return
        (self.state, self.progress_state, self.result, self.meta, self.exc_type,
         self.exc_message, self.traceback, self.date_done, self.retries, parent_id,
         self.task, _options) = row
        self.parent_id = str(parent_id) if parent_id else None

    @classmethod
    def succeeded(cls, result: Any) -> _Row:
        row = cls(None)
        row.state, row.result = "SUCCESS", result
        return row

    @property
    def public_state(self) -> str:
        if self.state == "STARTED" and self.progress_state:
            return str(self.progress_state)
        return str(self.state)

    def exception(self) -> BaseException:
        if self.state == "REVOKED":
            return TaskRevokedError(self.exc_message or "revoked")
        args = self.result if isinstance(self.result, list) else None
        return serialization.rebuild_exception(
            self.exc_type or "Exception", self.exc_message or "", args, self.traceback
        )

    def value(self, app: App) -> Any:
        if self.state in EXCEPTION_STATES:
            return self.exception()
        if self.state == "STARTED":
            return serialization.from_db(self.meta)
        if self.state == "SUCCESS":
            return payload.decode_result(app, self.result)
        return None


class AsyncResult(Generic[R]):
    """The handle on one job. Every read goes to the job's row in Postgres; once the job has
    finished, the row is cached. `AsyncResult[R]`: `get()` returns the task's `R`.

    Args:
        id: The job id.
        app: The App whose database to read; `None`: the most recently created App.
        database: The DSN of the database holding the job, when known; `None`: the app's
            database, or with `queue_databases` each of the app's databases in turn.
    """

    id: str
    """The job id (`self.request.id` inside the job)."""

    def __init__(self, id: str, app: App | None = None, *, task_name: str | None = None,
                 parent: AsyncResult | None = None, database: str | None = None) -> None:
        if app is None:
            from pgq.app import current_app

            app = current_app()
        self.id = str(id)
        self.app = app
        self.task_name = task_name
        self._parent = parent
        self._cache: _Row | None = None
        self._database = database  # where the job lives, when known (queue_databases)
        self._unseen_before: float | None = None  # see wait_loop; set by send_task

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        return other == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _databases(self) -> list[str]:
        return [self._database] if self._database else self.app.databases()

    def _row(self) -> _Row:
        if self._cache is not None:
            return self._cache
        rows: list[tuple[Any, ...]] = []
        for dsn in self._databases():
            with self.app.pool_for(dsn).connection() as conn:
                rows = execute(conn, self.app.queries.get_result, {"id": self.id})
            if rows:
                self._database = dsn
                break
        row = _Row(rows[0] if rows else None)
        if row.state in READY_STATES:
            self._cache = row
        return row

    @property
    def state(self) -> str:
        """`PENDING` (waiting, scheduled, or an unknown id), `STARTED`, `RETRY`, `SUCCESS`,
        `FAILURE`, `REVOKED`, or a custom state set with `update_state` while it runs."""
        return self._row().public_state

    status = state
    """Alias of `state`."""

    @property
    def result(self) -> Any:
        """`SUCCESS`: the return value (`None` with `ignore_result`). `FAILURE`, `RETRY`,
        `REVOKED`: the exception. While running: the `update_state` meta. Else `None`."""
        row = self._row()
        if row.state == "FAILURE":
            return self._exception(row)
        return row.value(self.app)

    info = result
    """Alias of `result`."""

    @property
    def traceback(self) -> str | None:
        """The remote traceback of a failure (or of the last retry), else `None`."""
        return self._row().traceback

    @property
    def date_done(self) -> datetime | None:
        """When the job finished (an aware datetime), else `None`."""
        return self._row().date_done

    @property
    def retries(self) -> int:
        """How many times the job has been retried so far."""
        return self._row().retries

    @property
    def name(self) -> str | None:
        """The task name."""
        return self._row().task or self.task_name

    @property
    def parent(self) -> AsyncResult | None:
        """The result of the job that enqueued this one (a chain's previous step), or
        `None` for a top-level job."""
        if self._parent is None:
            parent_id = self._row().parent_id
            if parent_id:
                self._parent = AsyncResult(parent_id, app=self.app, database=self._database)
        return self._parent

    def ready(self) -> bool:
        """True once the job has finished: `SUCCESS`, `FAILURE` or `REVOKED`."""
        return self._row().state in READY_STATES

    def successful(self) -> bool:
        """True if the job finished with `SUCCESS`."""
        return self._row().state == "SUCCESS"

    def failed(self) -> bool:
        """True if the job finished with `FAILURE`."""
        return self._row().state == "FAILURE"

    @overload
    def get(self, timeout: float | None = None, propagate: Literal[True] = True,
            interval: float | None = None, **_: Any) -> R: ...
    @overload
    def get(self, timeout: float | None = None, propagate: bool = True,
            interval: float | None = None, **_: Any) -> R | BaseException: ...

    def get(self, timeout: float | None = None, propagate: bool = True,
            interval: float | None = None, **_: Any) -> R | BaseException:
        """Wait for the job to finish and return its value. The wait is woken by
        `LISTEN/NOTIFY` when the job's outcome is committed, not by polling.

        Args:
            timeout: Seconds to wait at most; `None` waits for ever.
            propagate: Raise the job's exception if it failed (else return it).
            interval: Accepted for Celery compatibility; ignored.

        Raises:
            TimeoutError: Not finished within `timeout` (`pgq.TimeoutError`, also a
                built-in `TimeoutError`).
            TaskRevokedError: The job was revoked or expired.
            Exception: The task's own exception (same type where it can be rebuilt, else
                `TaskError`), when `propagate`.
        """
        row = self._cache  # finished and read before
        if row is None:
            row = self.app.wait_for([self.id], timeout, self._heard_or_row, self._databases(),
                                    unseen_before=self._unseen_before)
            self._unseen_before = None  # heard: a later wait must look before it sleeps
        if row.state == "SUCCESS":
            value: R = row.value(self.app)
            return value
        exc = self._exception(row)
        if propagate:
            raise exc
        return exc

    def _heard_or_row(self) -> _Row:
        return self._heard() or self._row()

    def _heard(self, databases: Sequence[str] | None = None) -> _Row | None:
        """The result the results channel carried, if it did (a small one, of a SUCCESS).
        Not cached: it has the result only (no date_done, retries, ...)."""
        for dsn in databases or self._databases():
            waiter = self.app._result_waiter(dsn)
            if waiter is not None:
                found, result = waiter.take(self.id)
                if found:
                    return _Row.succeeded(result)
        return None

    def _exception(self, row: _Row) -> BaseException:
        exc = row.exception()
        cause = (row.meta or {}).get("cause") if isinstance(row.meta, dict) else None
        if cause and row.exc_type == "pgq.errors.ChordError":
            exc.__cause__ = AsyncResult(cause, app=self.app).result
        return exc

    wait = get

    # --- the same, for async code (see docs/async.md) --------------------------------------

    @overload
    async def aget(self, timeout: float | None = None, propagate: Literal[True] = True,
                   **_: Any) -> R: ...
    @overload
    async def aget(self, timeout: float | None = None, propagate: bool = True,
                   **_: Any) -> R | BaseException: ...

    async def aget(self, timeout: float | None = None, propagate: bool = True,
                   **_: Any) -> R | BaseException:
        """`get()` without blocking the event loop: woken by the process's LISTEN."""
        from pgq import aio

        value: R | BaseException = await aio.get(self, timeout, propagate)
        return value

    async def astate(self) -> str:
        from pgq import aio

        return (await aio.fetch_row(self)).public_state

    async def aready(self) -> bool:
        from pgq import aio

        return (await aio.fetch_row(self)).state in READY_STATES

    async def asuccessful(self) -> bool:
        from pgq import aio

        return (await aio.fetch_row(self)).state == "SUCCESS"

    async def afailed(self) -> bool:
        from pgq import aio

        return (await aio.fetch_row(self)).state == "FAILURE"

    async def arevoke(self, terminate: bool = False) -> None:
        from pgq import aio

        await aio.revoke(self, terminate)

    async def aforget(self) -> None:
        from pgq import aio

        await aio.forget(self)

    def revoke(self, terminate: bool = False, signal: Any = None, **_: Any) -> None:
        """Revoke the job: if it has not started it never runs; with `terminate=True` a
        running job's child process is killed. Either way the state becomes `REVOKED`."""
        self.app.revoke(self.id, terminate=terminate, databases=self._databases())
        self._cache = None

    def forget(self) -> None:
        """Delete the finished job's row (its result); the id then reads `PENDING`."""
        for dsn in self._databases():
            with self.app.pool_for(dsn).connection() as conn:
                execute(conn, self.app.queries.forget, {"id": self.id})
        self._cache = None


class GroupResult:
    """The results of a group's members, in the group's order; iterable and indexable."""

    results: list[AsyncResult]
    """The members' `AsyncResult`s, in the group's order."""

    def __init__(self, id: str, results: Sequence[AsyncResult], app: App | None = None) -> None:
        from pgq.app import current_app

        self.id = id
        self.results = list(results)
        self.app = app or current_app()

    def __iter__(self) -> Iterator[AsyncResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult:
        return self.results[index]

    def _databases(self) -> list[str]:
        known = {r._database for r in self.results if r._database}
        return list(known) if known else self.app.databases()

    def _states(self) -> dict[str, str]:
        states: dict[str, str] = {}
        for dsn in self._databases():
            with self.app.pool_for(dsn).connection() as conn:
                rows = execute(conn, self.app.queries.get_states,
                               {"ids": [r.id for r in self.results]})
            states.update((str(job_id), state) for job_id, state in rows)
        return states

    def ready(self) -> bool:
        """True once every member has finished."""
        states = self._states()
        return all(states.get(r.id) in READY_STATES for r in self.results)

    def successful(self) -> bool:
        """True if every member finished with `SUCCESS`."""
        states = self._states()
        return all(states.get(r.id) == "SUCCESS" for r in self.results)

    def failed(self) -> bool:
        """True if any member finished with `FAILURE`."""
        return "FAILURE" in self._states().values()

    def completed_count(self) -> int:
        """How many members finished with `SUCCESS`."""
        return sum(1 for state in self._states().values() if state == "SUCCESS")

    def get(self, timeout: float | None = None, propagate: bool = True,
            **_: Any) -> list[Any]:
        """Wait for every member and return their values in the group's order; `timeout`
        covers the whole wait. With `propagate`, the first failed member's exception is
        raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.app.wait_for([r.id for r in self.results], timeout, self.ready, self._databases())
        values = []
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(result.get(timeout=remaining, propagate=propagate))
        return values

    join = get

    async def aget(self, timeout: float | None = None, propagate: bool = True,
                   **_: Any) -> list[Any]:
        from pgq import aio

        return await aio.group_get(self, timeout, propagate)

    async def aready(self) -> bool:
        from pgq import aio

        return await aio.group_ready(self)

    def revoke(self, terminate: bool = False, **_: Any) -> None:
        """Revoke every member (see `AsyncResult.revoke`)."""
        for result in self.results:
            result.revoke(terminate=terminate)

    def forget(self) -> None:
        """Delete every finished member's result."""
        for result in self.results:
            result.forget()


# With every database listened to, how long a wait goes without a re-check at first (then
# doubling up to result_poll_interval): in case a notification was lost with its connection.
SAFETY_RECHECK_S = 0.25


def wait_loop(waiters: Sequence[ResultWaiter | None], job_ids: Sequence[str],
              timeout: float | None, check: Any, fallback: float,
              unseen_before: float | None = None) -> Any:
    """Re-check on every wake-up (NOTIFY from any of the jobs' databases, reconnect, or a
    slow safety re-check). Where a database has no waiter (PgBouncer, no listen_dsn) it
    polls, from 10 ms up to `unseen_before`. `unseen_before`: a time.monotonic() before which
    the jobs did not exist (this process enqueued them later); when every waiter has heard
    everything since then, the first check is skipped: a finished job was heard."""
    deadline = None if timeout is None else time.monotonic() + timeout
    event = threading.Event()
    listening = [waiter for waiter in waiters if waiter is not None]
    for waiter in listening:
        waiter.register(job_ids, event)
    try:
        safety = SAFETY_RECHECK_S if listening and len(listening) == len(waiters) else 0.01
        skip_check = (unseen_before is not None and len(listening) == len(waiters)
                      and all(waiter.heard_all_since(unseen_before) for waiter in listening))
        while True:
            if not skip_check:
                event.clear()
                outcome = check()
                if _is_done(outcome):
                    return outcome
            skip_check = False
            wait = safety
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"job(s) {', '.join(job_ids[:3])} not ready after "
                                       f"{timeout}s")
                wait = min(wait, remaining)
            event.wait(wait)
            safety = min(safety * 2, fallback)
    finally:
        for waiter in listening:
            waiter.unregister(job_ids, event)


def _is_done(outcome: Any) -> bool:
    if isinstance(outcome, _Row):
        return outcome.state in READY_STATES
    return bool(outcome)


class EagerResult(AsyncResult[R]):
    """The result of a job run in-process because `task_always_eager` is set."""

    def __init__(self, id: str, state: str, value: Any, traceback: str | None = None,
                 app: App | None = None) -> None:
        super().__init__(id, app=app)
        row = _Row(None)
        row.state = state
        row.traceback = traceback
        self._value = value
        self._cache = row

    def _row(self) -> _Row:
        assert self._cache is not None
        return self._cache

    @property
    def result(self) -> Any:
        return self._value

    info = result

    @overload
    def get(self, timeout: float | None = None, propagate: Literal[True] = True,
            interval: float | None = None, **_: Any) -> R: ...
    @overload
    def get(self, timeout: float | None = None, propagate: bool = True,
            interval: float | None = None, **_: Any) -> R | BaseException: ...

    def get(self, timeout: float | None = None, propagate: bool = True,
            interval: float | None = None, **_: Any) -> R | BaseException:
        if self._cache is not None and self._cache.state == "FAILURE" and propagate:
            raise self._value
        value: R = self._value
        return value

    @overload
    async def aget(self, timeout: float | None = None, propagate: Literal[True] = True,
                   **_: Any) -> R: ...
    @overload
    async def aget(self, timeout: float | None = None, propagate: bool = True,
                   **_: Any) -> R | BaseException: ...

    async def aget(self, timeout: float | None = None, propagate: bool = True,
                   **_: Any) -> R | BaseException:
        return self.get(timeout, propagate)

    def revoke(self, terminate: bool = False, signal: Any = None, **_: Any) -> None:
        pass

    def forget(self) -> None:
        pass
