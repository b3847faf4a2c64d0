"""Pools side by side: prefork against threads, on an I/O-like task and a CPU-bound one.

    .venv/bin/python benchmarks/pools.py [--quick] [--seconds 3] [--repeat 1] [--dsn DSN]

`bench.io` sleeps 10 ms (a stand-in for an HTTP call); `bench.cpu` burns 5 ms of its own
thread's CPU (benchmarks/pool_tasks.py). For each task and each pool variant, jobs are
enqueued first, then `pgq worker -P POOL -c N` is started and the rate is measured from the
first claim to the last completion (SQL span). Each variant gets about `--seconds` of work at
its ceiling — slots ÷ task time for I/O; for CPU, at most one core per prefork child (2 cores
here) and one core in all for threads (the GIL). `memory` is the proportional set size (PSS)
of the worker and its children once drained, from /proc/PID/smaps_rollup; `CPU/job` the CPU
time the worker and its children used per job, from its registration to the last job.
With `--repeat N` every variant runs N times (interleaved) and the table shows medians, with
the range of jobs/s. `other CPU` is the share of the machine that other processes used
meanwhile: above a few percent, the figures are disturbed.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from common import (
    CpuMeter,
    _children,
    _process_cpu_s,
    format_table,
    fresh_schema,
    local_postmaster,
    machine_details,
    print_details,
    resolve_dsn,
)
from psycopg import sql

HERE = Path(__file__).resolve().parent
PGQ_BIN = str(Path(sys.executable).parent / "pgq")
VARIANTS = [("prefork", 2), ("prefork", 16), ("threads", 2), ("threads", 16), ("threads", 32)]
TASKS = {"io": 0.010, "cpu": 0.005}  # task -> seconds per job
CORES = os.cpu_count() or 1
Run = tuple[int, float, float, float, float]


def ceiling(task: str, pool: str, concurrency: int) -> float:
    """Jobs/s the slots allow if pgq itself cost nothing."""
    if task == "io":
        return concurrency / TASKS[task]
    parallel = min(concurrency, CORES) if pool == "prefork" else 1
    return parallel / TASKS[task]


def pss_mib(pid: int) -> float:
    """PSS of `pid` and its children (shared pages counted once between them)."""
    pids = [pid] + [int(p) for p in
                    Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    total_kib = 0
    for each in pids:
        for line in Path(f"/proc/{each}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


def tree_cpu_s(pid: int) -> float:
    """CPU-seconds of `pid`, its live children and the children it has reaped."""
    return _process_cpu_s(pid, True) + sum(_process_cpu_s(c, False) for c in _children(pid))


def query(conn: psycopg.Connection[Any], schema: str, text: str) -> Any:
    row = conn.execute(sql.SQL(text).format(sql.Identifier(schema))).fetchone()
    assert row is not None
    return row


def run_variant(conn: psycopg.Connection[Any], dsn: str, schema: str, tasks: Any, task: str,
                pool: str, concurrency: int, seconds: float) -> Run:
    """(jobs, jobs/s, PSS MiB, other processes' share of the CPU, worker CPU-ms per job)."""
    jobs = max(100, round(ceiling(task, pool, concurrency) * seconds, -2))
    signature = getattr(tasks, task).s
    tasks.app.enqueue_many([signature(i) for i in range(int(jobs))])
    env = {**os.environ, "PGQ_BENCH_SCHEMA": schema, "PGQ_DSN": dsn,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    with CpuMeter(local_postmaster(dsn)) as cpu:
        worker = subprocess.Popen(
            [PGQ_BIN, "worker", "-A", "pool_tasks", "-P", pool, "-c", str(concurrency),
             "--dsn", dsn, "-l", "WARNING"], env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 60 + 10 * seconds
            while not conn.execute(sql.SQL("SELECT 1 FROM {}.workers WHERE pid = %s").format(
                    sql.Identifier(schema)), (worker.pid,)).fetchone():
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{pool} -c {concurrency}: the worker did not start")
                time.sleep(0.01)
            cpu_at_start = tree_cpu_s(worker.pid)
            while query(conn, schema, "SELECT count(*) FROM {}.jobs "
                        "WHERE finished_at IS NULL")[0]:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{pool} -c {concurrency}: worker exited or too slow")
                time.sleep(0.05)
            worker_cpu = tree_cpu_s(worker.pid) - cpu_at_start
            memory = pss_mib(worker.pid)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
    done, span = query(conn, schema, "SELECT count(*) FILTER (WHERE state = 'SUCCESS'), "
                       "extract(epoch FROM max(finished_at) - min(started_at))::float8 "
                       "FROM {}.jobs")
    if done != jobs:
        raise RuntimeError(f"{pool} -c {concurrency}: {done} of {jobs:.0f} jobs succeeded")
    conn.execute(sql.SQL("TRUNCATE {}.jobs").format(sql.Identifier(schema)))
    return done, done / span, memory, cpu.others / cpu.available, worker_cpu * 1000 / done


def row(task: str, pool: str, concurrency: int, runs: list[Run]) -> list[str]:
    rates = [r[1] for r in runs]
    rate = statistics.median(rates)
    limit = ceiling(task, pool, concurrency)
    spread = f"{min(rates):,.0f}-{max(rates):,.0f}" if len(runs) > 1 else ""
    return [task, pool, str(concurrency), f"{runs[0][0]:,}", f"{rate:,.0f}", spread,
            f"{limit:,.0f}", f"{rate / limit:.0%}",
            f"{statistics.median(r[4] for r in runs):.2f} ms",
            f"{statistics.median(r[2] for r in runs):.0f} MiB",
            f"{statistics.median(r[3] for r in runs):.0%}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: $PGQ_DSN, else embedded)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="work per variant at its ceiling (default 3)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of every variant; the table shows medians (default 1)")
    parser.add_argument("--quick", action="store_true", help="0.3 s per variant: smoke test")
    parser.add_argument("--only", metavar="TASK:POOL:C,…",
                        help="run only these variants, e.g. io:prefork:2,cpu:threads:16")
    args = parser.parse_args()
    seconds = 0.3 if args.quick else args.seconds
    dsn = resolve_dsn(args.dsn)
    print_details(machine_details(dsn))
    variants = [(task, pool, c) for task in TASKS for pool, c in VARIANTS]
    if args.only:
        wanted = {tuple(v.split(":")) for v in args.only.split(",")}
        variants = [v for v in variants if (v[0], v[1], str(v[2])) in wanted]
    runs: dict[tuple[str, str, int], list[Run]] = {v: [] for v in variants}
    with fresh_schema(dsn, "poolbench") as schema, \
            psycopg.connect(dsn, autocommit=True) as conn:
        os.environ["PGQ_BENCH_SCHEMA"] = schema
        os.environ["PGQ_DSN"] = dsn
        sys.path.insert(0, str(HERE))
        import pool_tasks

        try:
            for n in range(args.repeat):
                for variant in variants:
                    runs[variant].append(run_variant(conn, dsn, schema, pool_tasks, *variant,
                                                     seconds))
                    print(f"run {n + 1}: {' | '.join(row(*variant, runs[variant][-1:]))}",
                          flush=True)
        finally:
            pool_tasks.app.close()
    print()
    print(format_table(("task", "pool", "-c", "jobs", "jobs/s", "range", "ceiling",
                        "of ceiling", "CPU/job", "memory", "other CPU"),
                       [row(*variant, runs[variant]) for variant in variants]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
