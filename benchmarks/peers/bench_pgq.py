"""pgq in the peer benchmark harness (../shared/bench/peers): the same workloads, protocol and
JSON result format as the harness' bench_celery_redis.py, bench_procrastinate.py and
bench_pgqueuer.py, so its `summarize.py` can put pgq beside them.

`benchmarks/compare.py` runs this together with every peer; by hand (servers running, the
harness directory on PYTHONPATH for its `common` module, pgq's own .venv):

    PYTHONPATH=/path/to/harness .venv/bin/python benchmarks/peers/bench_pgq.py --reps 3

Worker: `pgq worker -A pgq_peer_app -l WARNING`, the default worker (prefork pool, one child
per core: 2 here). Client: `noop.delay(i)` one by one, `app.enqueue_many([noop.s(i), ...])`
in chunks for the bulk API, `noop.delay(i).get()` for the round trip (pgq has a result API:
`get()` is woken by the completion's NOTIFY; no polling).

pgq adds three workloads to the harness' A-D (pgq only; the peers are not run on them):
  D  also reports enqueue-to-start latency percentiles (jobs.created_at -> started_at, the
     two transactions' now()) of every job the producer sent
  E  drain N jobs in an empty database and in one holding 5,000,000 finished and 100,000
     future (eta) jobs (loaded once, in set-up, into database bench_pgq_e), in the order
     empty, loaded, loaded, empty: the ratio of the means
  F  1,000 jobs of a 10 ms sleeping task and of a 5 ms CPU task, prefork vs threads pool
     (both at the default concurrency)
"""

from __future__ import annotations

import compileall
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common

# compare.py --baseline runs an older pgq in a database of its own (its schema revisions differ)
DB = os.environ.get("PGQ_BENCH_DB", "bench_pgq")
DB_E = DB + "_e"  # workload E's database: millions of kept rows, loaded once
SCHEMA = "pgq"
MIN_TABLE = "public.bench_bare_insert"  # A's reference table: a primary key and nothing else
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PGQ_BIN = Path(sys.executable).parent / "pgq"
READY_ARG = -1000  # the harness' ready-check job: `roundtrip(-1000)`

# Every pgq table but alembic's version table (schedules too: nothing here uses them).
SQL_TABLES = """SELECT string_agg(format('%%I.%%I', schemaname, tablename), ', ')
FROM pg_tables WHERE schemaname = %s AND tablename <> 'alembic_version'"""
SQL_SPAN = f"""
SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at))::float8,
       count(DISTINCT started_at), count(DISTINCT finished_at)
FROM {SCHEMA}.jobs WHERE state = 'SUCCESS' AND task = %s"""
# C's split, from the jobs' own timestamps (each is its transaction's now()).
SQL_BREAKDOWN = f"""
WITH j AS (SELECT created_at, started_at, finished_at FROM {SCHEMA}.jobs
           WHERE state = 'SUCCESS' ORDER BY created_at OFFSET %s)
SELECT count(*),
  percentile_cont(0.5)  WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)),
  percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)),
  percentile_cont(0.5)  WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)),
  percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at))
FROM j"""
SQL_D_LATENCY = f"""
SELECT count(*), percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM started_at - created_at)),
       max(extract(epoch FROM started_at - created_at))
FROM {SCHEMA}.jobs WHERE started_at IS NOT NULL AND args <> '[{READY_ARG}]'::jsonb"""
SQL_SUCCEEDED = f"SELECT coalesce(sum(jobs), 0) FROM {SCHEMA}.queue_counts WHERE state = 'SUCCESS'"
# Pre-enqueued jobs for E and F (untimed): the rows `delay()` writes, without the NOTIFY,
# with time-ordered ids as pgq.enqueue.new_id() makes them (UUID version 7).
SQL_PRELOAD = f"""
INSERT INTO {SCHEMA}.jobs (id, task, queue, args, root_id)
SELECT u, %(task)s, 'default', jsonb_build_array(i), u
FROM (SELECT i, (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
                 || '7' || substr(md5(random()::text || i), 1, 19))::uuid
      FROM generate_series(1, %(n)s) AS i) AS x(i, u)"""
# Finished one every 10 ms up to now: 5,000,000 span ~14 hours, all younger than the default
# result_expires (1 day), so the worker's pruning leaves them alone (kept, as E means).
SQL_LOAD_FINISHED = f"""
INSERT INTO {SCHEMA}.jobs (id, task, queue, state, args, run_at, created_at, started_at,
                           finished_at, attempts, result, runtime_ms, root_id)
SELECT u, 'kept', 'default', 'SUCCESS', jsonb_build_array(i), t, t, t,
       t + interval '2 ms', 1, 'null', 0.1, u
FROM (SELECT i, now() - %(n)s * interval '10 ms' + i * interval '10 ms', gen_random_uuid()
      FROM generate_series(1, %(n)s) AS i) AS x(i, t, u)
"""
SQL_LOAD_FUTURE = f"""
INSERT INTO {SCHEMA}.jobs (id, task, queue, priority, args, run_at, eta, root_id)
SELECT u, 'kept', 'default', i %% 10, jsonb_build_array(i), t, t, u
FROM (SELECT i, now() + interval '1 hour' + i * interval '800 ms', gen_random_uuid()
      FROM generate_series(1, %(n)s) AS i) AS x(i, t, u)
"""
F_CASES = (("sleep", "sleep_10ms", "prefork"), ("sleep", "sleep_10ms", "threads"),
           ("cpu", "cpu_5ms", "prefork"), ("cpu", "cpu_5ms", "threads"))


def _extra(ap: Any) -> None:
    ap.add_argument("--pool", default=None, help="pgq worker -P (default: pgq's, prefork)")
    ap.add_argument("--concurrency", type=int, default=None,
                    help="pgq worker -c (default: pgq's, one per core)")
    ap.add_argument("--e-finished", type=int, default=5_000_000,
                    help="E: finished jobs kept in the loaded database")
    ap.add_argument("--e-future", type=int, default=100_000,
                    help="E: future (eta) jobs in the loaded database")
    ap.add_argument("--f-jobs", type=int, default=1_000, help="F: jobs per case")
    ap.add_argument("--e-keep", action="store_true",
                    help="E: keep database bench_pgq_e afterwards (the next run with the same "
                         "sizes reuses it instead of loading again)")


def pgq_revision() -> str:
    """This checkout's commit, or for an exported copy put first on PYTHONPATH (compare.py
    --baseline), the REVISION file in it."""
    import pgq

    source = Path(pgq.__file__).resolve().parent.parent
    if source != REPO:
        marker = source / "REVISION"
        return marker.read_text().strip() if marker.exists() else f"imported from {source}"
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                          capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "pgq"], cwd=REPO,
                           capture_output=True, text=True, check=False).stdout.strip()
    return (done.stdout.strip() or "unknown") + (" + uncommitted changes" if dirty else "")


def _pg(dbname: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(common.pg_conninfo(dbname), autocommit=True) as conn:
        conn.execute("SET lock_timeout = '20s'")
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _truncate(dbname: str) -> None:
    ((tables,),) = _pg(dbname, SQL_TABLES, (SCHEMA,))
    common.pg_execute(dbname, f"TRUNCATE {tables}")


class PgqPeer(common.Peer):
    name = "pgq"
    pg_db = DB
    batch_api = "app.enqueue_many([noop.s(i) for i in chunk]) (one COPY per chunk)"

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.dsn = common.pg_dsn(DB)
        self.app: Any = None
        self.noop: Any = None
        self._done: Any = None
        self._all: Any = None
        self.set_up = False  # the orchestrator, once set-up is over
        self.spawned_at = 0.0
        self.last_cpu: dict[str, float] = {}

    # --- lifecycle
    def versions(self) -> dict[str, str]:
        import importlib.metadata as md

        return {"pgq": pgq_revision(), "psycopg": md.version("psycopg")}

    def worker_cmd(self, pool: str | None = None, concurrency: int | None = None) -> list[str]:
        cmd = [str(PGQ_BIN), "worker", "-A", "pgq_peer_app", "-l", "WARNING"]
        pool = pool or self.args.pool
        concurrency = concurrency or self.args.concurrency
        if pool:
            cmd += ["-P", pool]
        if concurrency:
            cmd += ["-c", str(concurrency)]
        return cmd

    def describe(self) -> dict[str, str]:
        return {
            "worker": f"`{' '.join(['pgq', *self.worker_cmd()[1:]])}` (default: prefork, "
                      f"concurrency = cores = {os.cpu_count()})",
            "durability": "every enqueue, claim and completion commits (fsync on)",
            "completion_detection": "count(*) jobs state=SUCCESS (polled every 20 ms)",
            "roundtrip_wait": "AsyncResult.get() (LISTEN/NOTIFY on completion, no polling)",
        }

    def setup(self) -> None:
        import pgq
        from pgq.migrate import upgrade

        # The peers run from byte-compiled modules (pip compiles what it installs); pgq runs
        # from a checkout, where PYTHONDONTWRITEBYTECODE (set on this machine) would have every
        # worker start compile pgq's modules again: ~60 ms of B's ~1 s, measured.
        compileall.compile_dir(Path(pgq.__file__).parent, quiet=1)
        common.ensure_database(DB)
        upgrade(self.dsn, SCHEMA)
        if "E" in self._workloads():
            self._load_e()
        self.reset()
        self.set_up = True

    def _workloads(self) -> list[str]:
        return (self.args.workloads or "").split(",")

    def _load_e(self) -> None:
        """Database bench_pgq_e: migrated, `--e-finished` finished and `--e-future` future
        jobs, vacuumed and analysed. Kept between runs with the same sizes."""
        from pgq.migrate import upgrade

        common.ensure_database(DB_E)
        dsn_e = common.pg_dsn(DB_E)
        upgrade(dsn_e, SCHEMA)
        kept = _pg(DB_E, f"SELECT count(*) FILTER (WHERE state = 'SUCCESS'), "
                         f"count(*) FILTER (WHERE state = 'PENDING') "
                         f"FROM {SCHEMA}.jobs WHERE task = 'kept'")[0]
        if tuple(kept) == (self.args.e_finished, self.args.e_future):
            return
        started = time.monotonic()
        _truncate(DB_E)
        import psycopg

        with psycopg.connect(common.pg_conninfo(DB_E), autocommit=True) as conn:
            conn.execute("SET pgq.skip_notify = on")
            conn.execute(SQL_LOAD_FINISHED, {"n": self.args.e_finished})
            conn.execute(SQL_LOAD_FUTURE, {"n": self.args.e_future})
        common.pg_execute(DB_E, f"VACUUM ANALYZE {SCHEMA}.jobs", "CHECKPOINT")
        print(f"[{self.args.peer_tag}] E: loaded {self.args.e_finished:,} finished + "
              f"{self.args.e_future:,} future jobs in {time.monotonic() - started:.0f}s",
              flush=True)

    def open(self) -> None:
        os.environ["PGQ_DSN"] = self.dsn
        os.environ["PGQ_BENCH_SCHEMA"] = SCHEMA
        sys.path.insert(0, str(HERE))
        import pgq_peer_app

        self.app, self.noop = pgq_peer_app.app, pgq_peer_app.noop
        with self.app.pool.connection() as conn:  # the producer pool, opened untimed
            conn.execute("SELECT 1")
        self._done = common.PgCounter(DB, f"SELECT count(*) FROM {SCHEMA}.jobs "
                                          "WHERE state = 'SUCCESS'")
        self._all = common.PgCounter(DB, f"SELECT count(*) FROM {SCHEMA}.jobs")

    def close(self) -> None:
        for counter in (self._done, self._all):
            if counter is not None:
                counter.close()
        if self.app is not None:
            self.app.close()

    def reset(self) -> None:
        _truncate(DB)
        common.pg_execute(DB, "CHECKPOINT")
        if self.set_up and "E" in self._workloads() and not self.args.e_keep:
            # the orchestrator's final reset: leave no millions of rows behind for the next peer
            common.drop_database(DB_E)

    def before_drain(self) -> None:
        common.pg_execute(DB, f"ANALYZE {SCHEMA}.jobs", "CHECKPOINT")

    def queued_count(self) -> int:
        return int(self._all())

    def done_count(self) -> int:
        return int(self._done())

    # --- client
    def enqueue_single(self, n: int, max_s: float) -> tuple[int, float]:
        delay = self.noop.delay
        t = time.perf_counter()
        end = t + max_s
        i = 0
        while i < n:
            delay(i)
            i += 1
            if (i & 255) == 0 and time.perf_counter() > end:
                break
        return i, time.perf_counter() - t

    def bare_inserts(self, n: int) -> dict[str, float]:
        """Seconds for A's references (issue 9: one by one within 15% of a bare psycopg
        INSERT): n autocommit INSERTs of (id, task, queue, args) from psycopg, into pgq's
        jobs table (its indexes and trigger) and into a table with only a primary key."""
        import psycopg

        tables = {"A_bare_insert_jobs_s": f"{SCHEMA}.jobs", "A_bare_insert_min_jobs_s": MIN_TABLE}
        spent: dict[str, float] = {}
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {MIN_TABLE} (id uuid PRIMARY KEY, "
                         "task text NOT NULL, queue text NOT NULL, args jsonb NOT NULL)")
            for key, table in tables.items():
                insert = (f"INSERT INTO {table} (id, task, queue, args) "
                          "VALUES (gen_random_uuid(), 'noop', 'default', %s::jsonb)")
                t = time.perf_counter()
                for i in range(n):
                    conn.execute(insert, (f"[{i}]",))
                spent[key] = time.perf_counter() - t
            conn.execute(f"DROP TABLE {MIN_TABLE}")
        _truncate(DB)
        return spent

    def enqueue_batch(self, n: int, batch: int, max_s: float) -> tuple[int, float]:
        enqueue_many, sig = self.app.enqueue_many, self.noop.s
        t = time.perf_counter()
        end = t + max_s
        sent = 0
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            enqueue_many([sig(i) for i in range(start, stop)])
            sent = stop
            if time.perf_counter() > end:
                break
        return sent, time.perf_counter() - t

    def roundtrip(self, i: int, timeout: float = 10.0) -> float:
        t = time.perf_counter()
        value = self.noop.delay(i).get(timeout=timeout)
        elapsed = time.perf_counter() - t
        if value != i:
            raise RuntimeError(f"round trip {i} returned {value!r}")
        return elapsed

    def produce_for(self, seconds: float, max_jobs: int) -> tuple[int, float]:
        delay = self.noop.delay
        t = time.perf_counter()
        end = t + seconds
        n = 0
        while n < max_jobs:
            delay(n)
            n += 1
            if (n & 31) == 0 and time.perf_counter() >= end:
                break
        return n, time.perf_counter() - t

    def server_breakdown(self, min_job_id: int) -> dict[str, float | None]:
        row = _pg(DB, SQL_BREAKDOWN, (min_job_id - 1,))[0]
        keys = ("C_srv_n", "C_srv_enq_to_start_p50_ms", "C_srv_enq_to_start_p95_ms",
                "C_srv_start_to_done_p50_ms", "C_srv_start_to_done_p95_ms")
        return {k: None if v is None else (float(v) if k == "C_srv_n" else float(v) * 1000)
                for k, v in zip(keys, row, strict=True)}

    # --- workers
    def start_workers(self, log_prefix: Path, *, dbname: str = DB, pool: str | None = None,
                      concurrency: int | None = None) -> None:
        # a pgq copy first on PYTHONPATH (a baseline) must be what the worker runs too
        path = [str(HERE), str(common.HERE), os.environ.get("PGQ_BENCH_PYTHONPATH", "")]
        env = {"PGQ_DSN": common.pg_dsn(dbname), "PGQ_BENCH_SCHEMA": SCHEMA,
               "PYTHONPATH": os.pathsep.join(filter(None, path))}
        self.spawned_at = time.time()
        self.workers.spawn(self.worker_cmd(pool, concurrency),
                           log_prefix.with_suffix(".worker0.log"), env)

    def stop_workers(self) -> None:
        if self.workers.procs:
            self.last_cpu = self.cpu_used()
        super().stop_workers()

    def cpu_used(self) -> dict[str, float]:
        """CPU-seconds so far of the worker processes (supervisor and children) and of the
        PostgreSQL backends they opened (a server on this machine): a figure that machine
        load disturbs much less than elapsed time."""
        worker = 0.0
        for proc in self.workers.procs:
            worker += _cpu_s(proc.pid) + sum(_cpu_s(child) for child in _children(proc.pid))
        rows = _pg(DB, "SELECT pid FROM pg_stat_activity WHERE datname = %s "
                       "AND backend_start >= to_timestamp(%s) AND pid <> pg_backend_pid()",
                  (DB, self.spawned_at))
        return {"worker": worker, "pg": sum(_cpu_s(pid) for (pid,) in rows)}

    # --- pgq's extra figures
    def drain_span(self, dbname: str, task: str) -> dict[str, float]:
        """Jobs/s from the first claim to the last completion (excludes worker start-up),
        and jobs per claim / completion transaction."""
        n, span, claims, completions = _pg(dbname, SQL_SPAN, (task,))[0]
        return {"jobs_s": n / span if span else float("nan"), "per_claim": n / max(claims, 1),
                "per_completion": n / max(completions, 1)}

    def d_latency(self) -> dict[str, float]:
        n, pcts, worst = _pg(DB, SQL_D_LATENCY)[0]
        if not n:
            return {}
        p50, p95, p99 = (float(x) * 1000 for x in pcts)
        return {"D_started": int(n), "D_enq_to_start_p50_ms": p50,
                "D_enq_to_start_p95_ms": p95, "D_enq_to_start_p99_ms": p99,
                "D_enq_to_start_max_ms": float(worst) * 1000}

    def timed_drain(self, dbname: str, task: str, n: int, log: Path, *, pool: str | None = None
                    ) -> dict[str, float]:
        """Pre-load `n` jobs of `task` (untimed), start a worker, wait until all are done."""
        _pg(dbname, f"DELETE FROM {SCHEMA}.jobs WHERE task <> 'kept'")
        _pg(dbname, SQL_PRELOAD, {"task": task, "n": n})
        common.pg_execute(dbname, f"ANALYZE {SCHEMA}.jobs", "CHECKPOINT")
        # Polled every 20 ms: a count over jobs would scan the kept millions each time and
        # slow the very drain it watches; the finished-job counters (revision 0006) are tiny.
        ((before,),) = _pg(dbname, SQL_SUCCEEDED)
        counter = common.PgCounter(dbname, f"SELECT ({SQL_SUCCEEDED}) - {int(before)}")
        try:
            t0 = time.perf_counter()
            self.start_workers(log, dbname=dbname, pool=pool)
            waited = common.wait_for_count(counter, n, common.DRAIN_TIMEOUT_S, 0.02, t0,
                                           self.workers)
            self.stop_workers()
        finally:
            counter.close()
        if not waited["done"]:
            raise RuntimeError(f"{task} drain incomplete in {dbname}: {waited}")
        figures = self.drain_span(dbname, task)
        figures["wall_jobs_s"] = n / waited["t_last"]
        return figures


def run_e(peer: PgqPeer, args: Any) -> dict[str, Any]:
    """Empty, loaded, loaded, empty (ABBA): a load that changes during the rep hits both."""
    logs = common.HERE / "logs" / args.peer_tag / f"rep{args.rep}-E"
    rates: dict[str, list[float]] = {DB: [], DB_E: []}
    for k, dbname in enumerate((DB, DB_E, DB_E, DB)):
        log = logs.with_name(f"{logs.name}-{k}-{'loaded' if dbname == DB_E else 'empty'}")
        rates[dbname].append(peer.timed_drain(dbname, "noop", args.n, log)["jobs_s"])
    _pg(DB_E, f"DELETE FROM {SCHEMA}.jobs WHERE task <> 'kept'")
    peer.reset()
    empty, loaded = statistics.fmean(rates[DB]), statistics.fmean(rates[DB_E])
    return {"E_empty_jobs_s": empty, "E_loaded_jobs_s": loaded,
            "E_loaded_vs_empty": loaded / empty,
            "E_kept_finished": args.e_finished, "E_kept_future": args.e_future}


def run_f(peer: PgqPeer, args: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, task, pool in F_CASES:
        logs = common.HERE / "logs" / args.peer_tag / f"rep{args.rep}-F-{kind}-{pool}"
        figures = peer.timed_drain(DB, task, args.f_jobs, logs, pool=pool)
        out[f"F_{kind}_{pool}_jobs_s"] = figures["jobs_s"]
    peer.reset()
    return out


_harness_run_workload = common.run_workload


def run_workload(peer: PgqPeer, workload: str, args: Any) -> dict[str, Any]:
    """The harness' workloads, plus pgq's figures from the jobs table, plus E and F."""
    if workload in ("E", "F"):
        try:
            return (run_e if workload == "E" else run_f)(peer, args)
        finally:
            peer.stop_workers()
    if workload == "A_single":
        before = peer.bare_inserts(args.n // 2)
    out: dict[str, Any] = _harness_run_workload(peer, workload, args)
    if "error" in out:
        return out
    if workload == "B":
        span = peer.drain_span(DB, "noop")
        out.update({"B_sql_span_jobs_s": span["jobs_s"], "B_jobs_per_claim": span["per_claim"],
                    "B_jobs_per_completion": span["per_completion"]})
        if peer.last_cpu:
            out.update({"B_worker_cpu_us_per_job": peer.last_cpu["worker"] / args.n * 1e6,
                        "B_pg_cpu_us_per_job": peer.last_cpu["pg"] / args.n * 1e6})
    elif workload == "D":
        out.update(peer.d_latency())
    elif workload == "A_single":
        # Half the references before pgq's loop and half after: a drift in the machine's
        # speed during the rep weighs on both sides.
        spent = [before, peer.bare_inserts(args.n // 2)]
        for key in spent[0]:
            out[key] = 2 * (args.n // 2) / (spent[0][key] + spent[1][key])
        out["A_single_vs_bare"] = out["A_single_jobs_s"] / out["A_bare_insert_jobs_s"]
    return out


if __name__ == "__main__":
    # the harness starts each workload as `python sys.argv[0] ...` in its own directory
    sys.argv[0] = str(Path(__file__).resolve())
    # The harness accepts only its own workload names and runs only its own workloads: add
    # pgq's E and F (its module globals are read when the parser is built and a child runs).
    common.EXTRA_WORKLOADS = (*common.EXTRA_WORKLOADS, "E", "F")
    common.run_workload = run_workload
    common.main(PgqPeer, extra_args=_extra)
