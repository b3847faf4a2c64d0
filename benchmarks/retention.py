"""Does a big history slow the hot path? Drain 10,000 no-op jobs with `pgq worker -c 2` on an
empty table, then again with 5,000,000 finished jobs kept, and time the monitoring views.

    .venv/bin/python benchmarks/retention.py [--finished 5000000] [--jobs 10000] [--dsn DSN]

Finished rows stay in `jobs` (the design choice this measures): every hot index is partial
(`jobs_ready`, `jobs_running`, `jobs_unique_key`), so claims and completions never touch them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fresh_schema, machine_details, print_details, resolve_dsn
from explain_claim import LOAD_FINISHED, QUEUE
from run import WorkerProcess, load_tasks, wait_registered

VIEWS = ("queue_stats", "task_stats", "recent_failures", "worker_status")


def drain(dsn: str, schema: str, tasks: Any, n: int) -> float:
    """Jobs/s from the first claim to the last completion of `n` fresh jobs."""
    ids = [r.id for r in tasks.app.enqueue_many([tasks.noop.s(i) for i in range(n)])]
    with psycopg.connect(dsn, autocommit=True) as conn:
        worker = WorkerProcess(dsn, schema, 2)
        try:
            wait_registered(conn, schema, worker)
            query = sql.SQL("SELECT count(*) FILTER (WHERE finished_at IS NULL), "
                            "extract(epoch FROM max(finished_at) - min(started_at))::float8 "
                            "FROM {}.jobs WHERE id = ANY(%s::uuid[])").format(
                                sql.Identifier(schema))
            while True:
                left, span = conn.execute(query, (ids,)).fetchone()  # type: ignore[misc]
                if left == 0:
                    return float(n / span)
                worker.check_alive()
                time.sleep(0.05)
        finally:
            worker.stop()


def view_times(dsn: str, schema: str) -> list[tuple[str, float]]:
    timings = []
    with psycopg.connect(dsn) as conn:
        for view in VIEWS:
            query = sql.SQL("SELECT * FROM {} LIMIT 100").format(sql.Identifier(schema, view))
            conn.execute(query).fetchall()  # warm
            started = time.perf_counter()
            conn.execute(query).fetchall()
            timings.append((view, (time.perf_counter() - started) * 1000))
    return timings


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--finished", type=int, default=5_000_000)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--dsn")
    args = parser.parse_args()
    dsn = resolve_dsn(args.dsn)
    print_details(machine_details(dsn))
    with fresh_schema(dsn, "retention") as schema:
        tasks = load_tasks(dsn, schema)
        empty = drain(dsn, schema, tasks, args.jobs)
        empty_views = view_times(dsn, schema)
        started = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET pgq.skip_notify = on")
            conn.execute(sql.SQL(LOAD_FINISHED).format(jobs=sql.Identifier(schema, "jobs")),
                         {"queue": QUEUE, "n": args.finished})
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, "jobs")))
        print(f"loaded {args.finished:,} finished jobs in {time.perf_counter() - started:.1f} s")
        full = drain(dsn, schema, tasks, args.jobs)
        full_views = view_times(dsn, schema)
    print()
    print(f"{'':<34}{'empty':>12}{f'{args.finished:,} kept':>16}{'ratio':>9}")
    print(f"{'drain jobs/s (-c 2, SQL span)':<34}{empty:>12,.0f}{full:>16,.0f}"
          f"{full / empty:>9.2f}")
    for (view, a), (_, b) in zip(empty_views, full_views, strict=True):
        label = f"SELECT * FROM {view} (ms)"
        print(f"{label:<34}{a:>12.1f}{b:>16.1f}{b / max(a, 0.01):>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
