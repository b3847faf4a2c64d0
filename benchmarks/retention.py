"""Does a big history slow the hot path? Drain 10,000 no-op jobs with `pgq worker -c 2` on an
empty table, then again with 5,000,000 finished jobs kept, time the monitoring views and show
their plans; then churn (enqueue, drain, prune, repeated) and watch the table's size.

    .venv/bin/python benchmarks/retention.py [--finished 5000000] [--jobs 10000]
                                             [--churn-seconds 180] [--explain] [--dsn DSN]

Finished rows stay in `jobs` (the design choice this measures): every hot index is partial
(`jobs_ready`, `jobs_running`, `jobs_unique_key`), so claims and completions never touch them.
"""

from __future__ import annotations

import argparse
import statistics
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


def drain(dsn: str, schema: str, app: Any, n: int) -> float:
    """Jobs/s from the first claim to the last completion of `n` fresh jobs."""
    noop = app.tasks["bench.noop"]
    ids = [r.id for r in app.enqueue_many([noop.s(i) for i in range(n)])]
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


def explain_views(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn) as conn:
        for view in VIEWS:
            query = sql.SQL("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT * FROM {}").format(
                sql.Identifier(schema, view))
            plan = "\n".join(row[0] for row in conn.execute(query).fetchall())
            print(f"\n-- {view}\n{plan.replace(schema + '.', '')}")


def time_prune(app: Any, dsn: str) -> None:
    """Delete the whole history the way workers do: batches of PRUNE_BATCH, one short
    transaction each (row locks on the deleted rows only; nothing else waits)."""
    from pgq.worker.heartbeat import PRUNE_BATCH, prune

    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        deleted = prune(app, conn, 0.0)
        seconds = time.perf_counter() - started
    batches = max(1, -(-deleted // PRUNE_BATCH))
    print(f"\nprune: {deleted:,} finished jobs in {seconds:.1f} s"
          f" ({deleted / seconds:,.0f} rows/s),"
          f" {batches:,} transactions of <= {PRUNE_BATCH:,} rows, {seconds / batches * 1000:.0f} ms"
          " each on average")


SIZES = """
SELECT pg_relation_size(c.oid), pg_indexes_size(c.oid), s.n_live_tup, s.n_dead_tup,
       s.autovacuum_count
FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = %s::regclass
"""


def churn(dsn: str, schema: str, app: Any, n: int, seconds: float) -> None:
    """Enqueue, drain and prune for `seconds`: once autovacuum has had its turns, dead rows
    are reused and the table stops growing instead of growing by `n` rows every cycle."""
    from pgq.worker.heartbeat import prune

    with psycopg.connect(dsn, autocommit=True) as conn:
        naptime = conn.execute("SHOW autovacuum_naptime").fetchone()[0]  # type: ignore[index]
    print(f"\nchurn for {seconds:.0f} s: each cycle enqueues {n:,} jobs, drains them, then prunes"
          f" every finished job (autovacuum_naptime={naptime}, the server's own)")
    print(f"{'cycle':>5}{'drain jobs/s':>14}{'pruned':>9}{'table MB':>10}{'indexes MB':>12}"
          f"{'live':>10}{'dead':>10}{'autovacuums':>13}")
    relation = f"{schema}.jobs"
    deadline = time.monotonic() + seconds
    cycle = 0
    while time.monotonic() < deadline:
        cycle += 1
        rate = drain(dsn, schema, app, n)
        with psycopg.connect(dsn, autocommit=True) as conn:
            pruned = prune(app, conn, 0.0)
            conn.execute("SELECT pg_stat_force_next_flush()")
            table, indexes, live, dead, vacuums = conn.execute(SIZES, (relation,)).fetchone()  # type: ignore[misc]
        print(f"{cycle:>5}{rate:>14,.0f}{pruned:>9,}{table / 2**20:>10.1f}"
              f"{indexes / 2**20:>12.1f}{live:>10,}{dead:>10,}{vacuums:>13}")


def bench_app(schema: str) -> Any:
    """An app on `schema` with the benchmark's no-op task (what the worker's -A finds)."""
    from pgq import App

    app = App("bench", schema=schema)
    app.task(name="bench.noop")(lambda i: None)
    return app


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--finished", type=int, default=5_000_000)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=4,
                        help="drains of each schema, alternating (median reported)")
    parser.add_argument("--churn-seconds", type=float, default=180,
                        help="enqueue/drain/prune cycles for this long (0: skip)")
    parser.add_argument("--explain", action="store_true", help="print the views' plans")
    parser.add_argument("--dsn")
    args = parser.parse_args()
    if args.finished <= 0:
        parser.error("--finished must be positive")
    dsn = resolve_dsn(args.dsn)
    print_details(machine_details(dsn))
    # Two schemas side by side, drained in turn, so a load that comes and goes on the
    # machine hits both alike: one empty, one keeping the history.
    with fresh_schema(dsn, "retention") as empty, fresh_schema(dsn, "retention_kept") as kept:
        tasks = load_tasks(dsn, empty)
        apps = {empty: tasks.app, kept: bench_app(kept)}
        started = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET pgq.skip_notify = on")
            conn.execute(sql.SQL(LOAD_FINISHED).format(jobs=sql.Identifier(kept, "jobs")),
                         {"queue": QUEUE, "n": args.finished})
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(kept, "jobs")))
        print(f"loaded {args.finished:,} finished jobs in {time.perf_counter() - started:.1f} s")
        rates: dict[str, list[float]] = {empty: [], kept: []}
        for rep in range(args.reps):  # ABBA order: neither schema always drains second
            for schema in ((empty, kept) if rep % 2 == 0 else (kept, empty)):
                rates[schema].append(drain(dsn, schema, apps[schema], args.jobs))
        empty_views, kept_views = view_times(dsn, empty), view_times(dsn, kept)
        if args.explain:
            explain_views(dsn, kept)
        report(args.finished, rates[empty], rates[kept], empty_views, kept_views)
        time_prune(apps[kept], dsn)
        if args.churn_seconds:
            churn(dsn, kept, apps[kept], args.jobs, args.churn_seconds)
    return 0


def report(finished: int, empty_rates: list[float], kept_rates: list[float],
           empty_views: list[tuple[str, float]], full_views: list[tuple[str, float]]) -> None:
    empty, full = statistics.median(empty_rates), statistics.median(kept_rates)
    print()
    print("drains, alternating:",
          " ".join(f"{a:,.0f}/{b:,.0f}" for a, b in zip(empty_rates, kept_rates, strict=True)),
          "(empty/kept)")
    print(f"{'':<34}{'empty':>12}{f'{finished:,} kept':>16}{'ratio':>9}")
    print(f"{'drain jobs/s (-c 2, SQL span), median':<34}{empty:>12,.0f}{full:>16,.0f}"
          f"{full / empty:>9.2f}")
    for (view, a), (_, b) in zip(empty_views, full_views, strict=True):
        label = f"SELECT * FROM {view} (ms)"
        print(f"{label:<34}{a:>12.1f}{b:>16.1f}{b / max(a, 0.01):>9.1f}")


if __name__ == "__main__":
    sys.exit(main())
