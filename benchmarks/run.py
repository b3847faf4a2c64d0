"""pgq benchmarks: enqueue, drain and round-trip latency against a real PostgreSQL.

    .venv/bin/python benchmarks/run.py [--quick] [--dsn DSN] [--json FILE]

The database is `--dsn`, else $PGQ_DSN, else an embedded server in ./.pgq/benchdata. Each
run migrates a fresh schema (bench_<time>_<pid>) and drops it at the end (`--keep-schema`
keeps it). The worker is a real `pgq worker -A bench_tasks -c 2` subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
from common import (
    CpuMeter,
    format_table,
    fresh_schema,
    local_postmaster,
    machine_details,
    print_details,
    resolve_dsn,
)
from psycopg import sql

from pgq.db.queries import queries_for

BENCH_DIR = Path(__file__).resolve().parent
PGQ_BIN = Path(sys.executable).parent / "pgq"
DRAIN_TIMEOUT = 600.0


@dataclass(frozen=True)
class Sizes:
    enqueue: int
    batch: int
    drain: int
    round_trips: int
    warmup: int


FULL = Sizes(enqueue=10_000, batch=1_000, drain=10_000, round_trips=200, warmup=10)
QUICK = Sizes(enqueue=500, batch=100, drain=500, round_trips=20, warmup=3)


@dataclass(frozen=True)
class Result:
    key: str  # stable name, for comparing runs
    label: str
    value: float
    unit: str
    aim: str
    note: str


# --- the worker subprocess ---------------------------------------------------------------------


class WorkerProcess:
    """`pgq worker -A bench_tasks -c N --dsn DSN -l WARNING`, in its own session."""

    def __init__(self, dsn: str, schema: str, concurrency: int, extra: tuple[str, ...] = ()
                 ) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", prefix="pgq-bench-worker-",  # noqa: SIM115
                                               suffix=".log", delete=False)
        env = {**os.environ, "PGQ_BENCH_SCHEMA": schema, "PGQ_DSN": dsn,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR),
                                                           os.environ.get("PYTHONPATH")]))}
        command = [str(PGQ_BIN), "worker", "-A", "bench_tasks", "-c", str(concurrency),
                   "--dsn", dsn, "-l", "WARNING", *extra]
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env, cwd=BENCH_DIR.parent, start_new_session=True)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the worker exited with code {self.proc.returncode}:\n"
                               f"{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self, timeout: float = 30.0) -> str:
        """Warm shutdown (SIGTERM); returns what the worker logged (WARNING and above)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        output = self.output()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)
        return output


def wait_registered(conn: psycopg.Connection[Any], schema: str, worker: WorkerProcess) -> None:
    query = sql.SQL("SELECT 1 FROM {}.workers WHERE pid = %s AND stopped_at IS NULL").format(
        sql.Identifier(schema))
    deadline = time.monotonic() + 30
    while not conn.execute(query, (worker.proc.pid,)).fetchone():
        worker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError("the worker did not register within 30 s")
        time.sleep(0.02)


# --- helpers -----------------------------------------------------------------------------------


def load_tasks(dsn: str, schema: str) -> ModuleType:
    """Import benchmarks/bench_tasks.py with this run's schema and DSN (it reads both from the
    environment, as the worker subprocess does)."""
    os.environ["PGQ_BENCH_SCHEMA"] = schema
    os.environ["PGQ_DSN"] = dsn
    import bench_tasks

    return bench_tasks


def truncate_jobs(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}.jobs").format(sql.Identifier(schema)))


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def percentile(samples: list[float], pct: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]


# --- A. enqueue --------------------------------------------------------------------------------


def bench_enqueue(tasks: ModuleType, dsn: str, schema: str, sizes: Sizes) -> list[Result]:
    app, noop = tasks.app, tasks.noop
    n = sizes.enqueue
    noop.delay(-1)  # open the producer pool outside the timing
    truncate_jobs(dsn, schema)

    one_by_one = timed(lambda: [noop.delay(i) for i in range(n)])
    truncate_jobs(dsn, schema)

    def in_batches() -> None:
        for start in range(0, n, sizes.batch):
            app.enqueue_many([noop.s(i) for i in range(start, min(n, start + sizes.batch))])

    batched = timed(in_batches)
    truncate_jobs(dsn, schema)
    all_at_once = timed(lambda: app.enqueue_many([noop.s(i) for i in range(n)]))
    truncate_jobs(dsn, schema)
    return [
        Result("enqueue_delay", f"A. enqueue {n:,} x task.delay()", n / one_by_one, "jobs/s",
               "", f"one INSERT + commit per job; {one_by_one:.2f} s"),
        Result("enqueue_many_batches", f"A. enqueue_many, batches of {sizes.batch:,}",
               n / batched, "jobs/s", ">= 50,000",
               f"{n // sizes.batch} calls; signature building included; {batched:.2f} s"),
        Result("enqueue_many_all", f"A. enqueue_many, all {n:,} at once", n / all_at_once,
               "jobs/s", ">= 50,000",
               f"one call; signature building included; {all_at_once:.2f} s"),
    ]


# --- B. drain ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrainFigures:
    jobs: int
    wall_s: float
    sql_span_s: float
    claim_transactions: int
    complete_transactions: int


def unfinished_jobs(conn: psycopg.Connection[Any], schema: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}.jobs WHERE finished_at IS NULL").format(
        sql.Identifier(schema))).fetchone()
    return int(row[0]) if row else 0


def wait_for_done(listen: psycopg.Connection[Any], schema: str, expected: int,
                  worker: WorkerProcess) -> bool:
    """Count the job ids the worker announces on the `<schema>_done` channel. Should the
    announcements fall short, a quiet half second ends in a SQL check instead (returns
    False: the wall-clock end is then only known to within that half second)."""
    seen: set[str] = set()
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while len(seen) < expected:
        worker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {expected} jobs done after "
                               f"{DRAIN_TIMEOUT:.0f} s")
        heard = False
        for note in listen.notifies(timeout=0.5):
            heard = True
            seen.update(note.payload.split(","))
            if len(seen) >= expected:
                break
        if not heard and unfinished_jobs(listen, schema) == 0:
            return False
    return True


def drain_figures(conn: psycopg.Connection[Any], schema: str, wall_s: float) -> DrainFigures:
    # started_at/finished_at are now() = the transaction's start, so each distinct value is
    # one claim (resp. completion) transaction of the worker.
    row = conn.execute(sql.SQL("""
        SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at))::float8,
               count(DISTINCT started_at), count(DISTINCT finished_at)
        FROM {}.jobs WHERE state = 'SUCCESS'""").format(sql.Identifier(schema))).fetchone()
    assert row is not None
    return DrainFigures(row[0], wall_s, row[1], row[2], row[3])


def bench_drain(tasks: ModuleType, dsn: str, schema: str, sizes: Sizes, concurrency: int
                ) -> tuple[DrainFigures, WorkerProcess]:
    """Enqueue `sizes.drain` jobs, start a worker, time until the last one is done. Returns
    the worker still running (idle), for the round-trip benchmark."""
    n = sizes.drain
    for start in range(0, n, sizes.batch):
        tasks.app.enqueue_many([tasks.noop.s(i) for i in range(start, min(n, start + sizes.batch))])
    with psycopg.connect(dsn, autocommit=True) as listen:
        listen.execute(sql.SQL("LISTEN {}").format(
            sql.Identifier(queries_for(schema).done_channel)))
        started = time.perf_counter()
        worker = WorkerProcess(dsn, schema, concurrency)
        try:
            precise = wait_for_done(listen, schema, n, worker)
            wall = time.perf_counter() - started
            if not precise:
                print("warning: fewer done notifications than jobs; wall clock +-0.5 s")
            figures = drain_figures(listen, schema, wall)
        except BaseException:
            worker.stop()
            raise
    if figures.jobs != n:
        worker.stop()
        raise RuntimeError(f"expected {n} SUCCESS jobs, found {figures.jobs}")
    return figures, worker


def drain_results(f: DrainFigures, concurrency: int) -> list[Result]:
    per_claim = f.jobs / f.claim_transactions
    per_complete = f.jobs / f.complete_transactions
    return [
        Result("drain_sql", f"B. drain {f.jobs:,} no-op jobs, -c {concurrency} (SQL span)",
               f.jobs / f.sql_span_s, "jobs/s", ">= 5,000",
               f"min(started_at)..max(finished_at) = {f.sql_span_s:.2f} s; "
               f"{per_claim:.1f} jobs/claim txn, {per_complete:.1f} jobs/completion txn"),
        Result("drain_wall", f"B. drain {f.jobs:,} no-op jobs, -c {concurrency} (wall clock)",
               f.jobs / f.wall_s, "jobs/s", "",
               f"process start to last done NOTIFY = {f.wall_s:.2f} s "
               f"(includes ~{f.wall_s - f.sql_span_s:.2f} s worker start-up)"),
    ]


# --- C. round trip -----------------------------------------------------------------------------


def stage_medians(conn: psycopg.Connection[Any], schema: str, ids: list[str]
                  ) -> tuple[float, float]:
    """Median ms from the enqueue (created_at) to the claim transaction (started_at), and
    from there to the completion transaction (finished_at): timestamps are each
    transaction's now()."""
    row = conn.execute(sql.SQL("""
        SELECT percentile_cont(0.5) WITHIN GROUP (
                   ORDER BY extract(epoch FROM started_at - created_at)),
               percentile_cont(0.5) WITHIN GROUP (
                   ORDER BY extract(epoch FROM finished_at - started_at))
        FROM {}.jobs WHERE id = ANY(%s::uuid[])""").format(sql.Identifier(schema)),
        (ids,)).fetchone()
    assert row is not None
    return float(row[0]) * 1000, float(row[1]) * 1000


def bench_round_trip(tasks: ModuleType, dsn: str, schema: str, worker: WorkerProcess,
                     sizes: Sizes) -> list[Result]:
    noop = tasks.noop
    with psycopg.connect(dsn, autocommit=True) as conn:
        wait_registered(conn, schema, worker)
    for i in range(sizes.warmup):  # opens the result listener; not counted
        noop.delay(i).get(timeout=30)
    totals: list[float] = []
    enqueues: list[float] = []
    ids: list[str] = []
    for i in range(sizes.round_trips):
        started = time.perf_counter()
        result = noop.delay(i)
        sent = time.perf_counter()
        result.get(timeout=30)
        done = time.perf_counter()
        totals.append((done - started) * 1000)
        enqueues.append((sent - started) * 1000)
        ids.append(result.id)
    worker.check_alive()
    with psycopg.connect(dsn, autocommit=True) as conn:
        to_claim, to_complete = stage_medians(conn, schema, ids)
    n = sizes.round_trips
    return [
        Result("rt_p50", f"C. delay().get() round trip p50 ({n} sequential)",
               percentile(totals, 50), "ms", "<= 5 ms",
               f"idle worker; {sizes.warmup} warm-up round trips not counted"),
        Result("rt_p95", "C. round trip p95", percentile(totals, 95), "ms", "", ""),
        Result("rt_p99", "C. round trip p99", percentile(totals, 99), "ms", "",
               f"max {max(totals):.2f} ms"),
        Result("rt_enqueue_p50", "C. stage: delay() returns, p50", percentile(enqueues, 50),
               "ms", "", "INSERT + commit, client clock"),
        Result("rt_to_claim_p50", "C. stage: enqueue -> claim txn, p50", to_claim, "ms", "",
               "created_at -> started_at (commit, NOTIFY, wake-up, BEGIN)"),
        Result("rt_to_complete_p50", "C. stage: claim txn -> completion txn, p50",
               to_complete, "ms", "",
               "started_at -> finished_at (claim, commit, child runs the job)"),
    ]


# --- the run -----------------------------------------------------------------------------------


def format_value(result: Result) -> str:
    if result.unit == "ms":
        return f"{result.value:,.2f} ms"
    return f"{result.value:,.0f} {result.unit}"


def print_results(results: list[Result]) -> None:
    rows = [(r.label, format_value(r), r.aim, r.note) for r in results]
    print(format_table(("benchmark", "result", "aim", "notes"), rows))


def run(dsn: str, sizes: Sizes, concurrency: int, keep_schema: bool) -> list[Result]:
    with fresh_schema(dsn, "bench", keep=keep_schema) as schema:
        print(f"schema:     {schema}", flush=True)
        tasks = load_tasks(dsn, schema)
        try:
            results = bench_enqueue(tasks, dsn, schema, sizes)
            figures, worker = bench_drain(tasks, dsn, schema, sizes, concurrency)
            try:
                results += drain_results(figures, concurrency)
                results += bench_round_trip(tasks, dsn, schema, worker, sizes)
            finally:
                logged = worker.stop()
            if logged.strip():
                print(f"the worker logged:\n{logged}")
        finally:
            tasks.app.close()
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (500 jobs, 20 round trips): a smoke test")
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: $PGQ_DSN, else embedded)")
    parser.add_argument("-c", "--concurrency", type=int, default=2,
                        help="worker child processes (default 2)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results here")
    parser.add_argument("--keep-schema", action="store_true",
                        help="do not drop the benchmark schema afterwards")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    dsn = resolve_dsn(args.dsn)
    details = machine_details(dsn)
    print_details(details)
    print(f"sizes:      {asdict(sizes)}", flush=True)
    with CpuMeter(local_postmaster(dsn)) as cpu:
        results = run(dsn, sizes, args.concurrency, args.keep_schema)
    print()
    print_results(results)
    print(f"\n{cpu.summary()}")
    if cpu.disturbed:
        print("warning: other processes used the CPU meanwhile: these figures are disturbed")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"details": dict(details), "sizes": asdict(sizes),
                                         "cpu": asdict(cpu), "disturbed": cpu.disturbed,
                                         "results": [asdict(r) for r in results]},
                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
