"""The worker's claim statement on a big table: its plan and its time.

    .venv/bin/python benchmarks/explain_claim.py [--dsn DSN] [--finished N] [--ready N]

Loads N finished (SUCCESS) jobs (default 1,000,000) and some ready ones (default 1,000) into
a fresh schema, runs ANALYZE, and prints EXPLAIN (ANALYZE, BUFFERS) of the claim statement
from `pgq.db.queries` with its parameters bound; then adds 100,000 PENDING jobs whose run_at
is in the future and does it again. Each claim runs in a transaction that is rolled back, so
every repetition sees the same rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from common import fresh_schema, machine_details, print_details, resolve_dsn
from psycopg import sql

from pgq.db.queries import queries_for

QUEUE = "default"
REPEAT = 25

LOAD_FINISHED = """
INSERT INTO {jobs} (id, task, queue, state, args, run_at, created_at, started_at,
                    finished_at, attempts, result, runtime_ms)
SELECT gen_random_uuid(), 'bench.noop', %(queue)s, 'SUCCESS', jsonb_build_array(i), t, t, t,
       t + interval '2 ms', 1, 'null', 0.1
FROM generate_series(1, %(n)s) AS i,
     LATERAL (SELECT now() - interval '24 hours' + i * (interval '24 hours' / %(n)s)) AS x(t)
"""

# (Finished jobs above: spread evenly over the last 24 hours, as a steady load leaves them.)
# Ready jobs: due now, default priority, as `delay()` writes them.
LOAD_READY = """
INSERT INTO {jobs} (id, task, queue, args, run_at)
SELECT gen_random_uuid(), 'bench.noop', %(queue)s, jsonb_build_array(i),
       now() - interval '1 minute' + i * interval '1 ms'
FROM generate_series(1, %(n)s) AS i
"""

# Scheduled and retrying jobs: due from 1 hour to ~1 day ahead, priorities 0-9.
LOAD_FUTURE = """
INSERT INTO {jobs} (id, task, queue, priority, args, run_at, eta)
SELECT gen_random_uuid(), 'bench.noop', %(queue)s, i %% 10, jsonb_build_array(i), t, t
FROM generate_series(1, %(n)s) AS i,
     LATERAL (SELECT now() + interval '1 hour' + i * interval '800 ms') AS x(t)
"""


@dataclass(frozen=True)
class ClaimTiming:
    median_ms: float
    min_ms: float
    claimed: int


def load(conn: psycopg.Connection[Any], schema: str, statement: str, n: int) -> float:
    jobs = sql.Identifier(schema, "jobs")
    started = time.perf_counter()
    with conn.transaction():
        conn.execute("SET LOCAL pgq.skip_notify = on")  # nobody listens; skip the NOTIFY
        conn.execute(sql.SQL(statement).format(jobs=jobs), {"queue": QUEUE, "n": n})
    return time.perf_counter() - started


def analyze(conn: psycopg.Connection[Any], schema: str) -> None:
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "jobs")))


def claim_params(limit: int) -> dict[str, Any]:
    return {"queues": [QUEUE], "limit": limit, "worker": str(uuid.uuid4())}


def bound_claim(conn: psycopg.Connection[Any], claim: str, limit: int) -> str:
    """The claim statement with its parameters bound as literals (what EXPLAIN shows)."""
    return psycopg.ClientCursor(conn).mogrify(claim, claim_params(limit))


def explain(conn: psycopg.Connection[Any], statement: str) -> str:
    with conn.transaction(force_rollback=True):
        rows = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + sql.SQL(statement))
        return "\n".join(str(row[0]) for row in rows)


def time_claim(conn: psycopg.Connection[Any], claim: str, limit: int) -> ClaimTiming:
    """Run the claim as the worker does (server-side parameters, prepared after a few runs),
    each time in a transaction that is rolled back."""
    samples: list[float] = []
    claimed = 0
    for _ in range(REPEAT):
        with conn.transaction(force_rollback=True):
            started = time.perf_counter()
            claimed = len(conn.execute(claim, claim_params(limit)).fetchall())
            samples.append((time.perf_counter() - started) * 1000)
    return ClaimTiming(statistics.median(samples), min(samples), claimed)


def counts(conn: psycopg.Connection[Any], schema: str) -> str:
    rows = conn.execute(sql.SQL("""
        SELECT state || CASE WHEN state = 'PENDING' AND run_at > now() THEN ' (future)'
                             ELSE '' END, count(*)
        FROM {} GROUP BY 1 ORDER BY 1""").format(sql.Identifier(schema, "jobs"))).fetchall()
    return ", ".join(f"{label} {n:,}" for label, n in rows)


def report_case(conn: psycopg.Connection[Any], schema: str, title: str, limits: list[int]
                ) -> list[ClaimTiming]:
    claim = queries_for(schema).claim
    print(f"\n=== {title}")
    print(f"rows: {counts(conn, schema)}\n")
    print(explain(conn, bound_claim(conn, claim, limits[0])))
    print()
    timings = []
    for limit in limits:
        timing = time_claim(conn, claim, limit)
        timings.append(timing)
        print(f"claim LIMIT {limit}, {REPEAT} runs: median {timing.median_ms:.2f} ms, "
              f"min {timing.min_ms:.2f} ms, {timing.claimed} rows claimed per run")
    return timings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: $PGQ_DSN, else embedded)")
    parser.add_argument("--finished", type=int, default=1_000_000, help="SUCCESS jobs")
    parser.add_argument("--ready", type=int, default=1_000, help="PENDING jobs due now")
    parser.add_argument("--future", type=int, default=100_000,
                        help="PENDING jobs due later (second case)")
    parser.add_argument("--limits", default="2,64", help="claim LIMITs to time; the first "
                        "is EXPLAINed (default 2,64: the free slots of -c 2, and about what a "
                        "-c 2 worker claims at once when it prefetches for short jobs)")
    parser.add_argument("--keep-schema", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limits = [int(part) for part in args.limits.split(",")]
    dsn = resolve_dsn(args.dsn)
    print_details(machine_details(dsn))
    with fresh_schema(dsn, "explain", keep=args.keep_schema) as schema, \
            psycopg.connect(dsn, autocommit=True) as conn:
        print(f"schema:     {schema}")
        seconds = load(conn, schema, LOAD_FINISHED, args.finished)
        seconds += load(conn, schema, LOAD_READY, args.ready)
        analyze(conn, schema)
        print(f"loaded {args.finished:,} finished + {args.ready:,} ready jobs in {seconds:.1f} s"
              " (INSERT ... SELECT generate_series), then ANALYZE")
        print("\nclaim statement, parameters bound:\n")
        print(bound_claim(conn, queries_for(schema).claim, limits[0]))
        first = report_case(conn, schema, "1. finished + ready jobs", limits)
        seconds = load(conn, schema, LOAD_FUTURE, args.future)
        analyze(conn, schema)
        print(f"\nloaded {args.future:,} future PENDING jobs in {seconds:.1f} s, then ANALYZE")
        second = report_case(conn, schema, "2. the same plus future PENDING jobs", limits)
    print("\nsummary, median claim time by LIMIT:")
    cases = [f"1. {args.finished:,} finished + {args.ready:,} ready",
             f"2. the same + {args.future:,} future PENDING"]
    for case, timings in zip(cases, (first, second), strict=True):
        figures = ", ".join(f"LIMIT {limit}: {t.median_ms:.2f} ms"
                            for limit, t in zip(limits, timings, strict=True))
        print(f"  {case}: {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
