"""What do task events cost? Drain 10,000 no-op jobs with `pgq worker -c 2` with task events
off, on, and on with a `pgq events --json` consumer running, in rotating order, several
rounds in one run; print jobs/s (SQL span) and the ratios to "off".

    .venv/bin/python benchmarks/events_cost.py [--jobs 10000] [--rounds 3] [--dsn DSN]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CpuMeter,
    format_table,
    fresh_schema,
    local_postmaster,
    machine_details,
    print_details,
    resolve_dsn,
    server_cpu_s,
)
from run import BENCH_DIR, PGQ_BIN, WorkerProcess, load_tasks, wait_registered

VARIANTS: dict[str, tuple[tuple[str, ...], bool]] = {  # name -> (worker flags, consumer?)
    "off": (("--without-task-events",), False),
    "on": (("-E",), False),
    "on + pgq events": (("-E",), True),
}


def start_consumer(dsn: str, schema: str, out: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PGQ_BENCH_SCHEMA": schema, "PGQ_DSN": dsn,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR),
                                                       os.environ.get("PYTHONPATH")]))}
    err = out.with_suffix(".err")
    proc = subprocess.Popen([str(PGQ_BIN), "-A", "bench_tasks", "events", "--json"],
                            stdout=out.open("w"), stderr=err.open("w"), env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while "listening" not in err.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"pgq events did not start: {err.read_text()}")
        time.sleep(0.02)
    return proc


def drain(dsn: str, schema: str, tasks: Any, n: int, flags: tuple[str, ...],
          consumer_out: Path | None, postmaster: int | None) -> dict[str, float]:
    """Jobs/s from the first claim to the last completion of `n` fresh jobs, the worker's
    CPU-seconds (start-up included), the server's, and events the consumer printed."""
    ids = [r.id for r in tasks.app.enqueue_many([tasks.noop.s(i) for i in range(n)])]
    consumer = start_consumer(dsn, schema, consumer_out) if consumer_out else None
    before = os.times()
    server_before = server_cpu_s(postmaster)
    with psycopg.connect(dsn, autocommit=True) as conn:
        worker = WorkerProcess(dsn, schema, 2, flags)
        try:
            wait_registered(conn, schema, worker)
            query = sql.SQL("SELECT count(*) FILTER (WHERE finished_at IS NULL), "
                            "extract(epoch FROM max(finished_at) - min(started_at))::float8 "
                            "FROM {}.jobs WHERE id = ANY(%s::uuid[])").format(
                                sql.Identifier(schema))
            while True:
                left, span = conn.execute(query, (ids,)).fetchone()  # type: ignore[misc]
                if left == 0:
                    break
                worker.check_alive()
                time.sleep(0.05)
        finally:
            logged = worker.stop()
    after = os.times()
    figures = {"rate": n / span,
               "worker_cpu": (after.children_user + after.children_system)
               - (before.children_user + before.children_system),
               "server_cpu": server_cpu_s(postmaster) - server_before}
    logged = "\n".join(line for line in logged.splitlines() if "warm shutdown" not in line)
    if logged.strip():
        print(f"the worker logged:\n{logged}")
    if consumer is not None and consumer_out is not None:
        time.sleep(0.5)  # the last batch
        consumer.send_signal(signal.SIGINT)
        consumer.wait(10)
        text = consumer_out.read_text()
        figures["succeeded_events"] = sum(1 for line in text.splitlines()
                                          if '"type":"task-succeeded"' in line)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}.jobs").format(sql.Identifier(schema)))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dsn")
    args = parser.parse_args(argv)
    dsn = resolve_dsn(args.dsn)
    print_details(machine_details(dsn))
    postmaster = local_postmaster(dsn)
    names = list(VARIANTS)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with CpuMeter(postmaster) as cpu, fresh_schema(dsn, "bench_events") as schema, \
            tempfile.TemporaryDirectory() as tmp:
        tasks = load_tasks(dsn, schema)
        for round_no in range(args.rounds):
            order = names[round_no % len(names):] + names[:round_no % len(names)]
            for name in order:
                flags, with_consumer = VARIANTS[name]
                out = Path(tmp) / f"events-{round_no}.jsonl" if with_consumer else None
                figures = drain(dsn, schema, tasks, args.jobs, flags, out, postmaster)
                runs[name].append(figures)
                print(f"round {round_no + 1}: {name:<16} {figures['rate']:,.0f} jobs/s",
                      flush=True)
        tasks.app.close()
    base = statistics.median(f["rate"] for f in runs["off"])
    rows = []
    for name in names:
        rates = [f["rate"] for f in runs[name]]
        median = statistics.median(rates)
        delivered = [int(f["succeeded_events"]) for f in runs[name] if "succeeded_events" in f]
        rows.append((name, f"{median:,.0f}", " / ".join(f"{r:,.0f}" for r in rates),
                     f"{median / base:.3f}",
                     f"{statistics.median(f['worker_cpu'] for f in runs[name]):.2f}",
                     f"{statistics.median(f['server_cpu'] for f in runs[name]):.2f}",
                     " / ".join(f"{d:,}" for d in delivered) or "-"))
    print()
    print(format_table(("task events", "jobs/s (median)", "each round", "ratio to off",
                        "worker CPU-s", "server CPU-s", "task-succeeded events seen"), rows))
    print(f"\n{cpu.summary()}")
    if cpu.disturbed:
        print("warning: other processes used the CPU meanwhile: these figures are disturbed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
