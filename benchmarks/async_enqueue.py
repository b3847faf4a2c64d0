"""Enqueue rates of the blocking and the async producer APIs, in one run on one database.

    .venv/bin/python benchmarks/async_enqueue.py [--jobs N] [--bulk N] [--dsn DSN]

Rows: `delay()` one at a time (the app's psycopg pool); `await adelay()` one at a time (the
app's AsyncConnectionPool); `asyncio.gather` of N `adelay()` (up to pool_max_size in flight);
`enqueue_many` and `aenqueue_many` of a bulk batch (COPY). No worker runs: only enqueue is
timed. The schema is fresh and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

from common import format_table, fresh_schema, resolve_dsn

from pgq import App


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--bulk", type=int, default=10_000)
    parser.add_argument("--dsn")
    args = parser.parse_args()
    dsn = resolve_dsn(args.dsn)
    with fresh_schema(dsn, "bench_async") as schema:
        app = App("bench-async", dsn=dsn, schema=schema)

        @app.task
        def noop(i: int) -> None: ...

        n, bulk = args.jobs, args.bulk
        noop.delay(0)  # open the pool

        async def one_by_one() -> None:
            for i in range(n):
                await noop.adelay(i)
            await app.aclose()

        async def gathered() -> None:
            await asyncio.gather(*(noop.adelay(i) for i in range(n)))
            await app.aclose()

        async def bulk_async() -> None:
            await app.aenqueue_many([noop.s(i) for i in range(bulk)])
            await app.aclose()

        asyncio.run(noop.adelay(0))  # warm the async path (imports, first pool)
        rows = [
            ("delay() one by one", n, timed(lambda: [noop.delay(i) for i in range(n)])),
            ("await adelay() one by one", n, timed(lambda: asyncio.run(one_by_one()))),
            ("gather(adelay() x N)", n, timed(lambda: asyncio.run(gathered()))),
            ("enqueue_many", bulk,
             timed(lambda: app.enqueue_many([noop.s(i) for i in range(bulk)]))),
            ("await aenqueue_many", bulk, timed(lambda: asyncio.run(bulk_async()))),
        ]
        app.close()
    print(format_table(["call", "jobs", "seconds", "jobs/s"],
                       [(name, str(count), f"{secs:.2f}", f"{count / secs:,.0f}")
                        for name, count, secs in rows]))


if __name__ == "__main__":
    main()
