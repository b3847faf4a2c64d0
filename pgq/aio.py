"""Async producers and result waits: the rows, statements and rules of the sync API, run on an
asyncio connection. The caller's connection (`connection=`: a psycopg AsyncConnection, or a
SQLAlchemy AsyncConnection / AsyncSession on the psycopg driver) gets the rows inside its
current transaction and is never committed or rolled back here; without one, an
AsyncConnectionPool of the app's, one per event loop and database, is used.

The rules are the sync API's: the same statements (`enqueue.plan_steps`, which also sends the
publish signals), the same routing of queues to databases (`queue_databases`: rows go to their
queue's database, a caller's connection must reach it, results are read where the job lives).

Public spellings live on the objects: `await task.adelay(...)`, `task.aapply_async`,
`app.asend_task`, `app.aenqueue_many`, `sig.aapply_async`, `result.aget` and friends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg_pool

from pgq import enqueue, routing, workflow
from pgq.db.connection import DatabaseUnavailable, first_line, redact
from pgq.errors import ConfigurationError, TimeoutError
from pgq.result import READY_STATES, AsyncResult, GroupResult, _is_done, _Row

if TYPE_CHECKING:
    from pgq.app import App
    from pgq.task import Task

# --- connections -------------------------------------------------------------------------------


async def caller_connection(connection: Any) -> psycopg.AsyncConnection[Any]:
    """The psycopg AsyncConnection under what the caller passed, with a SQLAlchemy
    transaction begun where needed so that the caller's own `commit()` commits our rows."""
    if isinstance(connection, psycopg.AsyncConnection):
        return connection
    if type(connection).__module__.startswith("sqlalchemy.ext.asyncio"):
        if hasattr(connection, "get_bind"):  # AsyncSession, async_scoped_session
            connection = await connection.connection()
        if not connection.in_transaction():
            await connection.begin()
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        if isinstance(driver, psycopg.AsyncConnection):
            return driver
        raise ConfigurationError(
            f"pgq's async calls need SQLAlchemy's psycopg driver (postgresql+psycopg://), "
            f"not {type(driver).__module__.split('.')[0]}"
        )
    if isinstance(connection, psycopg.Connection) or hasattr(connection, "cursor"):
        raise ConfigurationError(
            f"{type(connection).__name__} is a blocking connection: pass it to apply_async / "
            "send_task / enqueue_many, or give the async call an async connection"
        )
    raise ConfigurationError(
        "connection= of an async call must be a psycopg AsyncConnection or a SQLAlchemy "
        f"AsyncConnection or AsyncSession, not {type(connection).__name__}"
    )


class _LoopPool:
    """The app's pools on one event loop (one per database), and the connections they opened
    (so that they can be closed without that loop once it has gone)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, app: App) -> None:
        self.loop = loop
        self.app = weakref.ref(app)
        self.pid = os.getpid()
        self.pools: dict[str, psycopg_pool.AsyncConnectionPool[Any]] = {}  # by DSN
        self.opening = asyncio.Lock()
        self.conns: weakref.WeakSet[psycopg.AsyncConnection[Any]] = weakref.WeakSet()
        self.guard: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self.guard is not None and self.guard is not asyncio.current_task():
            self.guard.cancel()
        try:
            for pool in list(self.pools.values()):
                await pool.close()
        finally:
            self.abandon()  # what the pool did not close (it may not, as its loop winds down)

    async def guard_shutdown(self) -> None:
        """Close the pool when asyncio.run() (or any runner) cancels the loop's tasks at its
        end. Left open, psycopg_pool's workers would take the cancellation of a connection
        attempt for a failed attempt and retry it, and the runner would wait for ever."""
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            with _pools_lock:
                if _pools.get((id(self.loop), id(self.app()))) is self:
                    del _pools[(id(self.loop), id(self.app()))]
            with contextlib.suppress(asyncio.CancelledError):  # its workers' cancellation
                await self.close()
            raise

    async def track(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conns.add(conn)

    def abandon(self) -> None:
        """Close the connections directly (the loop closed without `aclose()`: the pool can no
        longer run) rather than leave them open until the process ends."""
        for conn in list(self.conns):
            if not conn.closed:
                with contextlib.suppress(Exception):
                    conn.pgconn.finish()


# One pool per (event loop, app): a pool's connections belong to the loop that opened them.
_pools: dict[tuple[int, int], _LoopPool] = {}
_pools_lock = threading.Lock()


def _entry(app: App) -> _LoopPool:
    loop = asyncio.get_running_loop()
    with _pools_lock:
        for key, entry in list(_pools.items()):
            if entry.loop.is_closed() or entry.pid != os.getpid():
                del _pools[key]
                if entry.pid == os.getpid():
                    entry.abandon()
        key = (id(loop), id(app))
        found = _pools.get(key)
        if found is None or found.loop is not loop or found.app() is not app:
            found = _pools[key] = _LoopPool(loop, app)
        return found


async def _pool(app: App, dsn: str | None = None) -> psycopg_pool.AsyncConnectionPool[Any]:
    """The pool of database `dsn` (default: the app's) on the running loop."""
    entry = _entry(app)
    dsn = dsn or await _app_dsn(app)
    pool = entry.pools.get(dsn)
    if pool is None:
        async with entry.opening:
            pool = entry.pools.get(dsn)
            if pool is None:
                pool = entry.pools[dsn] = await _open_pool(app, entry, dsn)
            if entry.guard is None:
                entry.guard = asyncio.get_running_loop().create_task(
                    entry.guard_shutdown(), name="pgq-async-pool-guard")
    return pool


async def _app_dsn(app: App) -> str:
    if app._dsn is None:
        return await asyncio.to_thread(lambda: app.dsn)  # may start the embedded server
    return app.dsn


async def _open_pool(app: App, entry: _LoopPool, dsn: str
                     ) -> psycopg_pool.AsyncConnectionPool[Any]:
    kwargs = {"autocommit": True, **app.connect_kwargs()}
    try:  # fail fast, with the same clear message as the sync pool
        await (await psycopg.AsyncConnection.connect(dsn, **kwargs)).close()
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL at {redact(dsn)!r}: {first_line(exc)} "
            "(check --dsn / PGQ_DSN and that the server is running)"
        ) from None
    pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
        dsn, min_size=1, max_size=int(app.conf.pool_max_size), timeout=30, kwargs=kwargs,
        configure=entry.track, open=False, name="pgq-async",
    )
    await pool.open()
    return pool


@contextlib.asynccontextmanager
async def pooled(app: App, dsn: str | None = None
                 ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with (await _pool(app, dsn)).connection() as conn:
        yield conn


async def close(app: App) -> None:
    """Close the app's async pool of the running loop (a FastAPI lifespan's shutdown)."""
    with _pools_lock:
        entry = _pools.pop((id(asyncio.get_running_loop()), id(app)), None)
    if entry is not None:
        await entry.close()


async def fetch(conn: psycopg.AsyncConnection[Any], query: str,
                params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
    cur = await conn.execute(query, params)
    return list(await cur.fetchall()) if cur.description is not None else []


# --- enqueue -----------------------------------------------------------------------------------


async def run_steps(conn: psycopg.AsyncConnection[Any], steps: enqueue.Steps) -> list[str]:
    """`enqueue.run_steps` on an async connection: the same statements, awaited."""
    try:
        step = next(steps)
        while True:
            if isinstance(step, enqueue.Copy):
                async with conn.cursor().copy(step.query) as copy:
                    for values in step.rows:
                        await copy.write_row(values)
                step = steps.send([])
            else:
                step = steps.send(await fetch(conn, *step))
    except StopIteration as done:
        return list(done.value)


async def insert_plan(app: App, jobs: Sequence[enqueue.JobRow], chords: Sequence[Any],
                      connection: Any = None) -> list[str]:
    """`enqueue.insert_plan`, awaited: in the rows' queue database (`queue_databases`)."""
    if not jobs and not chords:
        return []
    dsn = routing.database_of(app, jobs, chords)
    if connection is not None:
        conn = await caller_connection(connection)
        if dsn is not None:
            await check_connection(app, conn, dsn)
        return await run_steps(conn, enqueue.plan_steps(app, jobs, chords, can_copy=True))
    async with pooled(app, dsn) as conn:
        steps = enqueue.plan_steps(app, jobs, chords, can_copy=True)
        if not chords:  # one statement is atomic on its own
            return await run_steps(conn, steps)
        async with conn.transaction():
            return await run_steps(conn, steps)


async def send_task(app: App, name: str, args: Sequence[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None, *, connection: Any = None,
                    _task: Task | None = None, **options: Any) -> AsyncResult:
    task = _task or app.tasks.get(name)
    row = enqueue.build_row(app, name, args, kwargs, options, task)
    if app.conf.task_always_eager and connection is None:
        return app._run_eagerly(row, task)
    (job_id,) = await insert_plan(app, [row], (), connection)
    return AsyncResult(job_id, app=app, task_name=name,
                       database=routing.database_for(app, row.queue))


async def enqueue_many(app: App, signatures: Iterable[Any], *, connection: Any = None
                       ) -> list[AsyncResult]:
    batch = workflow.plan_many(app, signatures)
    ids = await insert_plan(app, batch.jobs, batch.chords, connection)
    return [AsyncResult(job_id, app=app, task_name=name)
            for job_id, name in zip(batch.result_ids(ids), batch.names, strict=True)]


async def check_connection(app: App, conn: psycopg.AsyncConnection[Any], dsn: str) -> None:
    """`routing.check_connection` for an async connection."""
    found = routing.known_identity(conn)
    if found is None:
        found = routing.remember_identity(conn, await fetch(conn, routing.IDENTITY_SQL))
    expected = routing.known_database(dsn)
    if expected is None:
        async with pooled(app, dsn) as own:
            expected = routing.remember_database(dsn, await fetch(own, routing.IDENTITY_SQL))
    routing.check_identity(app, found, expected, dsn)


async def start(sig: Any, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None,
                options: dict[str, Any]) -> workflow.Started:
    """Plan a workflow and insert its first rows in one transaction (canvas `_start`)."""
    connection = options.pop("connection", None)
    sig_plan, started = workflow.plan(sig.app, sig, args, kwargs, options)
    await insert_plan(sig.app, sig_plan.jobs, sig_plan.chords, connection)
    return started


# --- results -----------------------------------------------------------------------------------


async def fetch_row(result: AsyncResult) -> _Row:
    if result._cache is not None:
        return result._cache
    rows: list[tuple[Any, ...]] = []
    for dsn in await _databases(result.app, result._databases):
        async with pooled(result.app, dsn) as conn:
            rows = await fetch(conn, result.app.queries.get_result, {"id": result.id})
        if rows:
            result._database = dsn
            break
    row = _Row(rows[0] if rows else None)
    if row.state in READY_STATES:
        result._cache = row
    return row


async def get(result: AsyncResult, timeout: float | None, propagate: bool) -> Any:
    databases = await _databases(result.app, result._databases)

    async def check() -> _Row:
        return result._heard(databases) or await fetch_row(result)

    row = await wait(result.app, [result.id], timeout, check, databases)
    if row.state == "SUCCESS":
        return row.value(result.app)
    # A chord's error reads its cause's row: rare, and done off the loop.
    exc = await asyncio.to_thread(result._exception, row)
    if propagate:
        raise exc
    return exc


async def states(app: App, job_ids: Sequence[str], databases: Sequence[str]
                 ) -> dict[str, str]:
    found: dict[str, str] = {}
    for dsn in databases:
        async with pooled(app, dsn) as conn:
            rows = await fetch(conn, app.queries.get_states, {"ids": list(job_ids)})
        found.update((str(job_id), state) for job_id, state in rows)
    return found


async def group_ready(group: GroupResult) -> bool:
    found = await states(group.app, [r.id for r in group.results],
                         await _databases(group.app, group._databases))
    return all(found.get(r.id) in READY_STATES for r in group.results)


async def group_get(group: GroupResult, timeout: float | None, propagate: bool) -> list[Any]:
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    await wait(group.app, [r.id for r in group.results], timeout, lambda: group_ready(group),
               await _databases(group.app, group._databases))
    values = []
    for result in group.results:
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        values.append(await get(result, remaining, propagate))
    return values


async def forget(result: AsyncResult) -> None:
    for dsn in await _databases(result.app, result._databases):
        async with pooled(result.app, dsn) as conn:
            await fetch(conn, result.app.queries.forget, {"id": result.id})
    result._cache = None


async def revoke(result: AsyncResult, terminate: bool) -> bool:
    app, q = result.app, result.app.queries
    result._cache = None
    for dsn in await _databases(app, result._databases):
        async with pooled(app, dsn) as conn, conn.transaction():
            rows = await fetch(conn, q.revoke, {"id": result.id})
            if rows and terminate:
                await fetch(conn, q.notify, {"channel": q.control_channel,
                                             "payload": f"terminate:{result.id}"})
        if rows:
            return True
    return False


async def _databases(app: App, databases: Callable[[], list[str]]) -> list[str]:
    """Where a result's job may be (`databases()`: its own, else every database of the app);
    off the loop when the app's DSN is not known yet (it may start the embedded server)."""
    if app._dsn is None:
        return await asyncio.to_thread(databases)
    return databases()


class _LoopEvent:
    """Set from the LISTEN thread, awaited on the loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            self.loop.call_soon_threadsafe(self.event.set)


async def wait(app: App, job_ids: Sequence[str], timeout: float | None,
               check: Callable[[], Awaitable[Any]], databases: Sequence[str]) -> Any:
    """`result.wait_loop` for a coroutine: woken by the process's LISTEN threads (one per
    database of `databases`) through the loop, re-checking on each wake-up and, slowly, on
    its own; polls where a database has no listener."""
    waiters = [await asyncio.to_thread(app._result_waiter, dsn) if _needs_thread(app, dsn)
               else app._result_waiter(dsn) for dsn in databases]
    listening = [waiter for waiter in waiters if waiter is not None]
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    wake = _LoopEvent()
    for waiter in listening:
        waiter.register(job_ids, wake)
    try:
        safety = 0.25 if listening and len(listening) == len(waiters) else 0.01
        fallback = float(app.conf.result_poll_interval)
        while True:
            wake.event.clear()
            outcome = await check()
            if _is_done(outcome):
                return outcome
            pause = safety
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"job(s) {', '.join(job_ids[:3])} not ready after "
                                       f"{timeout}s")
                pause = min(pause, remaining)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.event.wait(), pause)
            safety = min(safety * 2, fallback)
    finally:
        for waiter in listening:
            waiter.unregister(job_ids, wake)


def _needs_thread(app: App, dsn: str) -> bool:
    """The first wait on a database starts its LISTEN thread (it connects): not on the
    loop."""
    listen_dsn = app.listen_dsn_for(dsn)
    return listen_dsn is not None and (listen_dsn not in app._waiters
                                       or app._waiter_pid != os.getpid())
