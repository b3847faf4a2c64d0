"""Workers on three "hosts" — network namespaces joined to this one by veth pairs, a few ms
away — against one PostgreSQL of this module's own: every job runs exactly once, and each
host holds the same four connections whatever its concurrency."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from clusters import Host, Hosts, PgCluster, cluster_unavailable, netns_unavailable
from conftest import ROOT, wait_until

from pgq import App

REASON = netns_unavailable() or cluster_unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"fleet tests: {REASON}")
PGQ = str(Path(sys.executable).parent / "pgq")
DELAY_MS = 2.0


class Fleet:
    def __init__(self, hosts: Hosts, pg: PgCluster) -> None:
        self.hosts = hosts
        self.pg = pg
        self.logs: list[Path] = []

    def start_worker(self, host: Host, *args: str, env: dict[str, str] | None = None) -> None:
        log = Path(self.pg.base) / f"worker-{host.index}-{len(self.logs)}.log"
        self.logs.append(log)
        env = {**os.environ, "PGQ_DSN": self.hosts.dsn(host),
               "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), **(env or {})}
        with open(log, "w") as out:
            host.spawn([PGQ, "worker", "-A", "apps.fleet", "-n", f"host{host.index}",
                        "-l", "INFO", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                       cwd=ROOT)

    def output(self) -> str:
        return "\n".join(log.read_text() for log in self.logs if log.exists())

    def connections(self) -> dict[str, list[str]]:
        """The queries last run by each worker host's connections, by host address."""
        rows = self.pg.sql("SELECT host(client_addr), query FROM pg_stat_activity "
                           "WHERE backend_type = 'client backend' AND client_addr <<= %s",
                           "10.0.0.0/8")
        by_host: dict[str, list[str]] = {h.address: [] for h in self.hosts}
        for address, query in rows:
            by_host.setdefault(address, []).append(query)
        return by_host


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with Hosts(3, delay_ms=DELAY_MS) as hosts, \
            PgCluster("fleet", listen=",".join(["127.0.0.1", *hosts.gateways])) as pg:
        pg.init().start()
        hosts.connect_to(pg.port)
        App("fleet", dsn=pg.dsn()).migrate()
        yield Fleet(hosts, pg)


def test_hosts_are_really_apart(fleet):
    """The namespaces reach PostgreSQL only over their veth link, with the delay on it."""
    host = fleet.hosts.hosts[0]
    probe = (f"import psycopg, time; c = psycopg.connect({fleet.hosts.dsn(host)!r}); "
             "t = time.perf_counter(); [c.execute('SELECT 1') for _ in range(20)]; "
             "print((time.perf_counter() - t) / 20 * 1000)")
    out = subprocess.run(host.command([sys.executable, "-c", probe]), capture_output=True,
                         text=True, check=True).stdout
    assert float(out) >= DELAY_MS * 0.9, f"round trip {out} ms: the delay is missing"
    direct = f"import socket; socket.create_connection(('127.0.0.1', {fleet.pg.port}), 1)"
    isolated = subprocess.run(host.command([sys.executable, "-c", direct]), capture_output=True)
    assert isolated.returncode != 0, "the namespace reached the server without its link"


CONNECTIONS = 4  # claim/complete, heartbeat, LISTEN, events (docs/scaling.md)


def test_every_job_runs_once_on_three_hosts(fleet, tmp_path):
    pg = fleet.pg
    pg.sql("TRUNCATE pgq.jobs, pgq.workers")
    runs = Path(pg.base) / "runs"
    runs.unlink(missing_ok=True)
    concurrency = {1: "1", 2: "2", 3: "4"}
    for host in fleet.hosts:
        fleet.start_worker(host, "-c", concurrency[host.index])
    try:
        wait_until(lambda: pg.sql("SELECT count(*) FROM pgq.worker_status WHERE alive")[0][0]
                   == 3, timeout=30, what="three workers to register")
        # Idle, each host holds the same four connections, whatever its concurrency:
        # claim/complete, heartbeat, LISTEN, events.
        wait_until(lambda: all(len(q) == CONNECTIONS for q in fleet.connections().values()),
                   timeout=15, what="four connections per host")
        for queries in fleet.connections().values():
            assert sum(q.startswith("LISTEN") for q in queries) == 1, queries

        app = App("fleet", dsn=pg.dsn())
        n = 600
        ids = [r.id for r in app.enqueue_many(
            [app.signature("fleet.where", (str(runs),)) for _ in range(n)])]
        app.close()
        wait_until(lambda: pg.sql("SELECT count(*) FROM pgq.jobs WHERE state = 'SUCCESS'")
                   [0][0] == n, timeout=40, what="every job to succeed")

        lines = [line.split() for line in runs.read_text().splitlines()]
        runs_per_job = Counter(job_id for job_id, _, _ in lines)
        assert set(runs_per_job) == set(ids), "a job was lost"
        assert max(runs_per_job.values()) == 1, "a job ran twice: two claims collided"
        per_host = Counter(host for _, host, _ in lines)
        assert set(per_host) == {"host1", "host2", "host3"}, per_host
        # The job rows agree with the runs: claimed once, by the worker on the host that ran it.
        rows = pg.sql("SELECT j.id::text, w.hostname, j.attempts FROM pgq.jobs j "
                      "JOIN pgq.workers w ON w.id = j.worker_id")
        assert {job_id: host for job_id, host, _ in rows} == \
            {job_id: host for job_id, host, _ in lines}
        assert {attempts for _, _, attempts in rows} == {1}
        # Children opened no connections of their own: still four per host.
        assert all(len(q) == CONNECTIONS for q in fleet.connections().values()), \
            fleet.connections()
        print(f"\nruns per host: {dict(sorted(per_host.items()))}; delay by {fleet.hosts.delay}")
    finally:
        for host in fleet.hosts:
            host.stop_processes()
    assert "Traceback" not in fleet.output(), fleet.output()[-3000:]


def test_a_lost_host_is_noticed_and_its_jobs_rerun_elsewhere(fleet):
    """Cut one host's link while it runs jobs: another host returns them to the queue after
    worker_lost_timeout and runs them; nothing is lost."""
    pg = fleet.pg
    pg.sql("TRUNCATE pgq.jobs, pgq.workers")
    runs = Path(pg.base) / "runs-lost"
    lost_timeout = {"PGQ_WORKER_LOST_TIMEOUT": "3"}
    try:
        host1, host2 = fleet.hosts.hosts[:2]
        fleet.start_worker(host1, "-c", "2", env=lost_timeout)
        wait_until(lambda: pg.sql("SELECT count(*) FROM pgq.worker_status WHERE alive")[0][0]
                   == 1, timeout=30, what="the first worker to register")
        app = App("fleet", dsn=pg.dsn())
        ids = [r.id for r in app.enqueue_many(
            [app.signature("fleet.where", (str(runs), 1.0)) for _ in range(2)])]
        wait_until(lambda: runs.exists() and len(runs.read_text().splitlines()) == 2,
                   timeout=20, what="host1 to start both jobs")
        subprocess.run(["ip", "link", "set", host1.veth_out, "down"], check=True)
        started = time.monotonic()
        fleet.start_worker(host2, "-c", "2", env=lost_timeout)
        wait_until(lambda: pg.sql("SELECT count(*) FROM pgq.jobs WHERE state = 'SUCCESS' "
                                  "AND id = ANY(%s)", ids)[0][0] == 2,
                   timeout=40, what="host2 to rerun host1's jobs")
        elapsed = time.monotonic() - started
        hosts = [line.split()[1] for line in runs.read_text().splitlines()]
        assert Counter(hosts) == {"host1": 2, "host2": 2}, hosts
        app.close()
        print(f"\nhost1's jobs finished on host2 {elapsed:.1f}s after its link went down")
    finally:
        subprocess.run(["ip", "link", "set", fleet.hosts.hosts[0].veth_out, "up"], check=False)
        for host in fleet.hosts:
            host.stop_processes()
