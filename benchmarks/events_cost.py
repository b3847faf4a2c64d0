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
import uuid
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
    tree_cpu_s,
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
    """Jobs/s from the first claim to the last completion of `n` fresh jobs; CPU per job of
    the worker (supervisor and children, from its registration to the last job) and of the
    server; and how many task-succeeded events the consumer printed."""
    ids = [r.id for r in tasks.app.enqueue_many([tasks.noop.s(i) for i in range(n)])]
    consumer = start_consumer(dsn, schema, consumer_out) if consumer_out else None
    with psycopg.connect(dsn, autocommit=True) as conn:
        worker = WorkerProcess(dsn, schema, 2, flags)
        try:
            wait_registered(conn, schema, worker)
            worker_before = tree_cpu_s(worker.proc.pid)
            server_before = server_cpu_s(postmaster)
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
            worker_cpu = tree_cpu_s(worker.proc.pid) - worker_before
            server_cpu = server_cpu_s(postmaster) - server_before
        finally:
            logged = worker.stop()
    figures = {"rate": n / span, "worker_us": worker_cpu / n * 1e6,
               "server_us": server_cpu / n * 1e6}
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


def publisher_cpu_us(app: Any, n: int, rounds: int = 5) -> float:
    """CPU per job, in this process, of the worker's event path alone: the supervisor's
    hooks for `n` jobs (claimed in batches of 33, started, finished) and the publisher
    encoding and sending them in flushes of 1,000 jobs. Median of `rounds`."""
    from pgq.worker.events import EventPublisher
    from pgq.worker.executor import Job, Outcome

    publisher = EventPublisher(app, "bench", "bench-host", ["default"], task_events=True,
                               heartbeats=False, active=lambda: 0)
    jobs = [Job(str(uuid.uuid4()), "bench.noop", "STARTED", f"[{i}]", "{}", "{}", "default",
                0, None, 0, 1, None, None, None) for i in range(n)]
    outcomes = [Outcome(job.id, 1, "SUCCESS", None, runtime_ms=0.05) for job in jobs]
    inflight = {job.id: job for job in jobs}
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        for flush in range(0, n, 1000):
            for k in range(flush, min(n, flush + 1000), 33):
                batch = jobs[k:k + 33]
                publisher.received(batch)
                publisher.started(batch)
                publisher.finished(outcomes[k:k + 33], {job.id for job in batch}, inflight)
            publisher._flush()
        samples.append((time.process_time() - started) / n * 1e6)
    if publisher._conn is not None:
        publisher._conn.close()
    return statistics.median(samples)


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
        alone = publisher_cpu_us(tasks.app, args.jobs)
        tasks.app.close()
    base = statistics.median(f["rate"] for f in runs["off"])
    rows = []
    for name in names:
        rates = [f["rate"] for f in runs[name]]
        median = statistics.median(rates)
        delivered = [int(f["succeeded_events"]) for f in runs[name] if "succeeded_events" in f]
        rows.append((name, f"{median:,.0f}", " / ".join(f"{r:,.0f}" for r in rates),
                     f"{median / base:.3f}",
                     f"{statistics.median(f['worker_us'] for f in runs[name]):.0f}",
                     f"{statistics.median(f['server_us'] for f in runs[name]):.0f}",
                     " / ".join(f"{d:,}" for d in delivered) or "-"))
    print()
    print(format_table(("task events", "jobs/s (median)", "each round", "ratio to off",
                        "worker CPU µs/job", "server CPU µs/job",
                        "task-succeeded events seen"), rows))
    print(f"\nthe event path alone (hooks, encoding, sending; in this process): "
          f"{alone:.1f} µs of CPU per job")
    print(f"\n{cpu.summary()}")
    if cpu.disturbed:
        print("warning: other processes used the CPU meanwhile: these figures are disturbed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
