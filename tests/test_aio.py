"""Async producers against a real PostgreSQL: the app's async pool, a psycopg AsyncConnection,
a SQLAlchemy AsyncConnection and AsyncSession (rows join the caller's transaction: visible
on commit, gone on rollback, never committed by pgq), workflows, bulk, `aget` via LISTEN, and
the bad paths."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from apps.basic import add, fail_value, sleep, tsum, unique_add
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

import pgq
from pgq import chain, chord, group

Use = Callable[[Any], Awaitable[None]]


def jobs_in_db(db: psycopg.Connection[Any], ids: list[str]) -> int:
    row = db.execute("SELECT count(*) FROM pgq.jobs WHERE id = ANY(%s::uuid[])", (ids,)).fetchone()
    return int(row[0]) if row else 0


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_adelay_on_the_app_pool_and_aget(app: Any, start_worker: Any) -> None:
    start_worker("-c", "1")

    async def main() -> tuple[Any, ...]:
        result = await add.adelay(2, 3)
        value = await result.aget(timeout=10)
        named = await app.asend_task("apps.basic.add", (4, 4))
        state = await result.astate()
        ready = await result.aready()
        ok = await result.asuccessful()
        failed = await result.afailed()
        await app.aclose()
        return value, await named.aget(timeout=10), state, ready, ok, failed

    assert run(main()) == (5, 8, "SUCCESS", True, True, False)


def test_pool_per_event_loop(app: Any, db: Any) -> None:
    first = run(add.adelay(1, 1))
    second = run(add.adelay(2, 2))  # a new loop: a new pool, not the closed loop's
    assert jobs_in_db(db, [first.id, second.id]) == 2


async def _on_psycopg(dsn: str, use: Use, commit: bool) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await use(conn)
        if commit:
            await conn.commit()
        else:
            await conn.rollback()


async def _on_sqlalchemy_connection(dsn: str, use: Use, commit: bool) -> None:
    engine = create_async_engine("postgresql+psycopg://",
                                 async_creator=lambda: psycopg.AsyncConnection.connect(dsn))
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        await use(conn)
        if commit:
            await conn.commit()
        else:
            await conn.rollback()
    await engine.dispose()


async def _on_sqlalchemy_session(dsn: str, use: Use, commit: bool) -> None:
    engine = create_async_engine("postgresql+psycopg://",
                                 async_creator=lambda: psycopg.AsyncConnection.connect(dsn))
    async with AsyncSession(engine) as session:
        await use(session)
        if commit:
            await session.commit()
        else:
            await session.rollback()
    await engine.dispose()


CONNECTIONS = {"psycopg": _on_psycopg, "sqlalchemy-connection": _on_sqlalchemy_connection,
               "sqlalchemy-session": _on_sqlalchemy_session}


@pytest.mark.parametrize("kind", CONNECTIONS)
@pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])
def test_caller_transaction_decides(app: Any, db: Any, dsn: str, kind: str,
                                    commit: bool) -> None:
    rows: list[str] = []  # the id of every row written

    async def use(conn: Any) -> None:
        rows.append((await add.aapply_async((1, 2), connection=conn)).id)
        rows.extend(r.id for r in await app.aenqueue_many(
            [add.s(i, i) for i in range(150)], connection=conn))  # the COPY path
        first, again = await app.aenqueue_many([unique_add.s(7, 7), unique_add.s(7, 7)],
                                               connection=conn)
        assert first.id == again.id  # the second stands for the first
        rows.append(first.id)
        flow = await (add.s(1, 1) | add.s(2)).aapply_async(connection=conn)
        rows.append(flow.parent.id)  # the next step rides in the first one's row
        assert jobs_in_db(db, rows) == 0  # not committed yet: invisible to others

    run(CONNECTIONS[kind](dsn, use, commit))
    assert len(set(rows)) == len(rows) == 153
    assert jobs_in_db(db, rows) == (153 if commit else 0)
    # and pgq wrote nothing else, on its own or through its pool
    assert db.execute("SELECT count(*) FROM pgq.jobs").fetchone()[0] == (153 if commit else 0)


def test_workflows_and_bulk_on_the_pool(app: Any, start_worker: Any) -> None:
    start_worker("-c", "2")

    async def main() -> tuple[Any, ...]:
        chained = await (add.s(1, 2) | add.s(3)).aapply_async()
        grouped = await group(add.s(i, i) for i in range(4)).aapply_async()
        chorded = await chord([add.s(1, 1), add.s(2, 2)], tsum.s()).aapply_async()
        many = await app.aenqueue_many([add.s(i, 1) for i in range(120)] + [
            chain(add.s(5, 5), add.s(1))])
        values = (await chained.aget(timeout=10), await grouped.aget(timeout=10),
                  await chorded.aget(timeout=10),
                  [await r.aget(timeout=10) for r in many])
        await app.aclose()
        return values

    chained, grouped, chorded, many = run(main())
    assert chained == 6 and grouped == [0, 2, 4, 6] and chorded == 6
    assert many == [i + 1 for i in range(120)] + [11]


def test_aget_is_woken_by_notify(app: Any, start_worker: Any, db: Any) -> None:
    """Without the NOTIFY, the re-checks (0.25 s, then doubling) would see a job finishing at
    about 1.2 s only at 1.75 s."""
    app.conf.update(result_poll_interval=30)
    start_worker("-c", "1")

    async def main() -> tuple[Any, float]:
        result = await sleep.adelay(1.2)
        await result.aget(timeout=10)
        return result, time.time()

    try:
        result, returned = run(main())
    finally:
        app.conf.update(result_poll_interval=2.0)
    finished = db.execute("SELECT extract(epoch FROM finished_at) FROM pgq.jobs WHERE id = %s",
                          (result.id,)).fetchone()[0]
    assert returned - float(finished) < 0.3


def test_aget_failure_timeout_and_revoke(app: Any, start_worker: Any) -> None:
    start_worker("-c", "1")

    async def main() -> tuple[Any, ...]:
        failing = await fail_value.adelay("boom")
        with pytest.raises(ValueError, match="boom"):
            await failing.aget(timeout=10)
        returned = await failing.aget(timeout=1, propagate=False)
        late = await add.aapply_async((1, 1), countdown=60)
        with pytest.raises(pgq.TimeoutError):
            await late.aget(timeout=0.3)
        await late.arevoke()
        with pytest.raises(pgq.TaskRevokedError):
            await late.aget(timeout=5)
        await late.aforget()
        state = await late.astate()
        await app.aclose()
        return returned, state

    returned, state = run(main())
    assert isinstance(returned, ValueError) and state == "PENDING"


def test_blocking_and_async_connections_are_not_mixed(app: Any, db: Any, dsn: str) -> None:
    with psycopg.connect(dsn) as conn, pytest.raises(pgq.ConfigurationError,
                                                    match="blocking connection"):
        run(add.aapply_async((1, 1), connection=conn))

    async def sync_call_on_async_connection() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            add.apply_async((1, 1), connection=aconn)

    with pytest.raises(pgq.ConfigurationError, match="async connection"):
        run(sync_call_on_async_connection())
    with pytest.raises(pgq.ConfigurationError, match="not object"):
        run(add.aapply_async((1, 1), connection=object()))
    with pytest.raises(pgq.EncodeError):
        run(add.adelay(object(), 1))
    assert db.execute("SELECT count(*) FROM pgq.jobs").fetchone()[0] == 0


def test_unreachable_database_is_one_clear_error(dsn: str) -> None:
    app = pgq.App("down", dsn="postgresql://nobody@127.0.0.1:1/none")

    @app.task
    def noop() -> None: ...

    with pytest.raises(pgq.PgqError, match="cannot connect to PostgreSQL"):
        run(noop.adelay())


# The loop closed without cancelling its tasks: its pool's pending coroutines are destroyed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_no_connection_outlives_its_loop(app: Any, db: Any) -> None:
    """asyncio.run() closes the app's async pool at its end (the guard); a loop closed without
    cancelling its tasks leaves its pool behind, and the next async call closes those
    connections: a script looping over event loops never piles them up."""
    from conftest import wait_until

    from pgq import aio

    def pools() -> list[Any]:
        return [e for e in aio._pools.values() if e.app() is app]

    def live(pids: list[int]) -> int:
        return int(db.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                              (pids,)).fetchone()[0])

    async def send_and_report() -> list[int]:
        await add.adelay(1, 1)
        (entry,) = pools()
        return [c.info.backend_pid for c in entry.conns]

    pids = run(send_and_report())
    assert pids and pools() == []
    wait_until(lambda: live(pids) == 0, timeout=5, what="the pool's backends to end")

    loop = asyncio.new_event_loop()
    pids = loop.run_until_complete(send_and_report())
    loop.close()  # no cancellation: the guard never ran
    assert len(pools()) == 1 and live(pids) == len(pids)
    run(add.adelay(1, 1))
    wait_until(lambda: live(pids) == 0, timeout=5, what="the abandoned backends to end")


def test_asyncio_run_ends_with_the_pool_open(app: Any) -> None:
    """asyncio.run() cancels every task at its end; psycopg_pool's workers retry a cancelled
    connection attempt, so an open pool made the runner wait for ever (1 run in ~100 here).
    The pool's guard closes it instead."""
    import subprocess
    import sys

    script = ("import asyncio\nfrom apps.basic import add\n"
              "for _ in range(150):\n    asyncio.run(add.adelay(1, 1))\nprint('done')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=90)
    assert done.stdout.strip() == "done", done.stderr[-2000:]
