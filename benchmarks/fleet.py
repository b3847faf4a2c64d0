"""Drain throughput with workers on 1, 2 and 3 "hosts" against one PostgreSQL.

    sudo .venv/bin/python benchmarks/fleet.py [--jobs 10000] [--repeat 3] [--delay-ms 2]

Each host is a network namespace joined to this one by a veth pair, `--delay-ms` round trip
away (tc netem where the kernel has it, else a userspace forwarder in the namespace: see
tests/clusters.py). The server is a PostgreSQL 15 cluster of the benchmark's own (Debian's
binaries, run as `postgres`, fsync on), listening on the hosts' gateways; it is removed at the
end. Each host runs one `pgq worker -c 2`. Two workloads:

- `noop`: jobs that do nothing, so the drain is bound by CPU (workers + PostgreSQL);
- `sleep`: jobs that sleep 20 ms, so the drain is bound by worker slots (2 per host).

All hosts share this machine's cores: on a 2-core box the `noop` curve flattens at the CPU
limit, while the `sleep` curve shows the hosts adding capacity. When other processes load
the machine ("others' CPU-s"), more hosts also means a larger share of the CPU for this
benchmark; "jobs per CPU-s of ours" (workers, children, proxies, PostgreSQL) does not
depend on that share. Needs root (namespaces).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from clusters import Hosts, PgCluster, cluster_unavailable, netns_unavailable  # noqa: E402
from common import (  # noqa: E402
    CpuMeter,
    _children,
    _process_cpu_s,
    format_table,
    pgq_revision,
    server_cpu_s,
)

from pgq import App  # noqa: E402

PGQ = str(Path(sys.executable).parent / "pgq")
WORKLOADS = {"noop": 0.0, "sleep": 0.020}


@dataclass
class Run:
    workload: str
    hosts: int
    jobs: int
    span_s: float
    busy: float  # share of all cores busy during the drain
    pg_share: float  # share of the busy CPU that PostgreSQL used
    others_s: float  # CPU-seconds of processes not ours (load from other users)
    ours_s: float  # CPU-seconds of the workers, their children, proxies and PostgreSQL

    @property
    def rate(self) -> float:
        return self.jobs / self.span_s


def tree_cpu_s(pids: list[int]) -> float:
    """CPU-seconds of these processes and all their descendants (live or reaped)."""
    total = 0.0
    todo = list(pids)
    while todo:
        pid = todo.pop()
        total += _process_cpu_s(pid, True)
        todo.extend(_children(pid))
    return total


def host_pids(hosts: Hosts) -> list[int]:
    return [p.pid for h in hosts for p in [*h.processes, *h.services] if p.poll() is None]


def start_workers(hosts: Hosts, count: int, concurrency: int, logdir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    for host in hosts.hosts[:count]:
        with open(logdir / f"worker-{host.index}.log", "a") as log:
            host.spawn([PGQ, "worker", "-A", "apps.fleet", "-c", str(concurrency), "-n",
                        f"host{host.index}", "-l", "WARNING"],
                       env={**env, "PGQ_DSN": hosts.dsn(host)}, stdout=log,
                       stderr=subprocess.STDOUT, cwd=ROOT)


def wait_for(pg: PgCluster, query: str, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pg.sql(query)[0][0] != expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {query} != {expected}")
        time.sleep(0.05)


def drain(pg: PgCluster, hosts: Hosts, workload: str, count: int, jobs: int,
          concurrency: int) -> Run:
    pg.sql("TRUNCATE pgq.jobs, pgq.workers")
    start_workers(hosts, count, concurrency, pg.base)
    try:
        wait_for(pg, "SELECT count(*) FROM pgq.worker_status WHERE alive", count, 60)
        time.sleep(1.0)  # the workers' first claim, LISTEN and heartbeat are done
        app = App("fleet", dsn=pg.dsn())
        postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
        sigs = [app.signature("fleet.where", ("/dev/null", WORKLOADS[workload]))
                for _ in range(jobs)]
        pids = host_pids(hosts)
        pg_before, hosts_before = server_cpu_s(postmaster), tree_cpu_s(pids)
        with CpuMeter(None) as cpu:
            app.enqueue_many(sigs)
            wait_for(pg, "SELECT count(*) FROM pgq.jobs WHERE state = 'SUCCESS'", jobs, 600)
        pg_used = server_cpu_s(postmaster) - pg_before
        ours = pg_used + tree_cpu_s(pids) - hosts_before + cpu.ours
        app.close()
        ((span,),) = pg.sql("SELECT extract(epoch FROM max(finished_at) - min(started_at))"
                            "::float8 FROM pgq.jobs")
        return Run(workload, count, jobs, span, cpu.busy / cpu.available,
                   pg_used / max(cpu.busy, 1e-9), max(0.0, cpu.busy - ours), ours)
    finally:
        for host in hosts:
            host.stop_processes()


def chart(runs: list[Run], width: int = 50) -> str:
    top = max(r.rate for r in runs)
    lines = []
    for r in runs:
        bar = "#" * max(1, round(r.rate / top * width))
        lines.append(f"{r.workload:>5} {r.hosts} host{'s' if r.hosts > 1 else ' '} "
                     f"{bar} {r.rate:,.0f}/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="no-op jobs per drain")
    parser.add_argument("--sleep-jobs", type=int, default=1_500, help="20 ms jobs per drain")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=2.0, help="round trip to the hosts")
    parser.add_argument("-c", "--concurrency", type=int, default=2)
    args = parser.parse_args(argv)
    reason = netns_unavailable() or cluster_unavailable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    with Hosts(3, delay_ms=args.delay_ms) as hosts, PgCluster(
            "fleet-bench", listen=",".join(["127.0.0.1", *hosts.gateways]),
            settings={"fsync": "on", "full_page_writes": "on",
                      "shared_buffers": "256MB"}) as pg:
        pg.init().start()
        hosts.connect_to(pg.port)
        App("fleet", dsn=pg.dsn()).migrate()
        print(f"pgq {pgq_revision()}; PostgreSQL {pg.sql('SHOW server_version')[0][0]} "
              f"(fsync on); {os.cpu_count()} cores shared by every host and the server; "
              f"{args.delay_ms:g} ms round trip by {hosts.delay}; -c {args.concurrency}")
        medians: list[Run] = []
        rows = []
        for workload in WORKLOADS:
            jobs = args.jobs if workload == "noop" else args.sleep_jobs
            for count in (1, 2, 3):
                runs = [drain(pg, hosts, workload, count, jobs, args.concurrency)
                        for _ in range(args.repeat)]
                runs.sort(key=lambda r: r.rate)
                median = runs[len(runs) // 2]
                medians.append(median)
                rows.append([workload, str(count), str(jobs), f"{median.rate:,.0f}",
                             " / ".join(f"{r.rate:,.0f}" for r in runs),
                             f"{statistics.median(r.busy for r in runs):.0%}",
                             f"{statistics.median(r.pg_share for r in runs):.0%}",
                             f"{max(r.others_s for r in runs):.1f}",
                             f"{statistics.median(r.jobs / r.ours_s for r in runs):,.0f}"])
                print(f"  {workload} x{count}: " + ", ".join(f"{r.rate:,.0f}/s" for r in runs),
                      flush=True)
        print()
        print(format_table(["workload", "hosts", "jobs", "jobs/s (median)", "runs",
                            "CPU busy", "PostgreSQL's share", "others' CPU-s",
                            "jobs per CPU-s of ours"], rows))
        print()
        print(chart(medians))
    return 0


if __name__ == "__main__":
    sys.exit(main())
