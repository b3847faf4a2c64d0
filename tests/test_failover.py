"""Failover: a primary with a synchronous streaming replica (pg_basebackup); producers and
workers use a multi-host DSN with target_session_attrs=read-write. The primary is killed
mid-run and the replica promoted: no job is lost, none is enqueued twice, all finish."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from clusters import PgCluster, cluster_unavailable, free_port
from conftest import ROOT, wait_until

from pgq import App
from pgq.retrying import RETRYABLE, enqueue_retrying, with_fixed_ids

REASON = cluster_unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"failover tests: {REASON}")
PGQ = str(Path(sys.executable).parent / "pgq")


class Pair:
    def __init__(self, primary: PgCluster, replica: PgCluster) -> None:
        self.primary = primary
        self.replica = replica
        self.dsn = (f"host=127.0.0.1,127.0.0.1 port={primary.port},{replica.port} "
                    "user=postgres dbname=postgres target_session_attrs=read-write "
                    "connect_timeout=2")


@pytest.fixture
def pair() -> Iterator[Pair]:
    with PgCluster("primary") as primary:
        primary.init().start()
        App("fleet", dsn=primary.dsn()).migrate()
        with primary.replica("replica") as replica:
            primary.wait_streaming()
            primary.set(synchronous_standby_names="replica1", synchronous_commit="on")
            primary.reload()
            wait_until(lambda: primary.sql("SELECT sync_state FROM pg_stat_replication")
                       == [("sync",)], what="the replica to be synchronous")
            yield Pair(primary, replica)


class Producer(threading.Thread):
    """Enqueues `n` jobs one by one, each retried on connection loss with its id fixed."""

    def __init__(self, app: App, runs: Path, n: int) -> None:
        super().__init__(daemon=True)
        self.app, self.runs, self.n = app, runs, n
        self.attempted: list[str] = []
        self.acknowledged: list[str] = []
        self.retried = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for _ in range(self.n):
                (sig,) = with_fixed_ids([self.app.signature("fleet.where",
                                                            (str(self.runs), 0.002))])
                self.attempted.append(sig.options["task_id"])
                before = time.monotonic()
                (result,) = enqueue_retrying(self.app, [sig], retry_for=40)
                self.retried += time.monotonic() - before > 0.5
                self.acknowledged.append(result.id)
                time.sleep(0.005)
        except BaseException as exc:
            self.error = exc


def test_promoted_replica_loses_nothing(pair, tmp_path):
    runs = tmp_path / "runs"
    env = {**os.environ, "PGQ_DSN": pair.dsn, "PGQ_WORKER_POLL_INTERVAL": "30",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    logs = [tmp_path / f"worker{k}.log" for k in range(2)]
    workers = [subprocess.Popen([PGQ, "worker", "-A", "apps.fleet", "-c", "2", "-l", "INFO",
                                 "-n", f"w{k}"], env=env, stdout=open(log, "w"),  # noqa: SIM115
                                stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
               for k, log in enumerate(logs)]
    app = App("fleet", dsn=pair.dsn)
    try:
        wait_until(lambda: all("ready" in log.read_text() for log in logs), timeout=30,
                   what="the workers to start")
        producers = [Producer(app, runs, 150) for _ in range(2)]
        for producer in producers:
            producer.start()
        wait_until(lambda: sum(len(p.acknowledged) for p in producers) >= 100,
                   what="load before the failover")
        pair.primary.kill()  # kill -9: no shutdown checkpoint, connections just drop
        time.sleep(0.5)
        pair.replica.promote()
        for producer in producers:
            producer.join(60)
            assert producer.error is None, repr(producer.error)
        attempted = [i for p in producers for i in p.attempted]
        acknowledged = [i for p in producers for i in p.acknowledged]
        assert len(acknowledged) == len(attempted) == 300

        new_primary = pair.replica
        wait_until(lambda: new_primary.sql("SELECT count(*) FROM pgq.jobs WHERE state = "
                                           "'SUCCESS'")[0][0] == 300,
                   timeout=40, what="every job to finish on the promoted replica")
        rows = new_primary.sql("SELECT id::text FROM pgq.jobs")
        assert sorted(r[0] for r in rows) == sorted(attempted), \
            "lost or duplicated jobs"  # one row per logical enqueue: ids are the producer's
        ran = Counter(line.split()[0] for line in runs.read_text().splitlines())
        assert set(ran) == set(attempted)
        output = "".join(log.read_text() for log in logs)
        assert "LISTEN connection re-established" in output
        assert all(w.poll() is None for w in workers), output[-3000:]
        print(f"\nfailover: {sum(p.retried for p in producers)} enqueue(s) waited for it; "
              f"{sum(n - 1 for n in ran.values())} job(s) ran a second time (at least once: "
              "their claim or outcome was not yet on the replica)")
    finally:
        app.close()
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, 9)
                worker.wait()


def test_a_retried_enqueue_after_an_unknown_outcome_writes_once(pair):
    """The commit happens but the answer never reaches the producer: sending the same ids
    again writes nothing, and the ids stand for the jobs already there."""
    app = App("fleet", dsn=pair.primary.dsn())
    sigs = with_fixed_ids([app.signature("fleet.where", ("/dev/null",)) for _ in range(3)])
    first = app.enqueue_many(sigs)
    again = enqueue_retrying(app, sigs)  # what a retry after a lost COMMIT answer does
    assert [r.id for r in again] == [r.id for r in first]
    assert pair.primary.sql("SELECT count(*) FROM pgq.jobs")[0][0] == 3
    app.close()


def test_enqueue_retrying_rejects_workflows_and_gives_up_in_time(pair):
    from pgq import chain

    app = App("fleet", dsn=pair.primary.dsn())
    with pytest.raises(ValueError, match="not a chain/group/chord"):
        enqueue_retrying(app, [chain(app.signature("fleet.where", ("/dev/null",)),
                                     app.signature("fleet.where", ("/dev/null",)))])
    gone = App("fleet", dsn=f"host=127.0.0.1 port={free_port()} user=postgres "
                            "connect_timeout=1")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(RETRYABLE):
        enqueue_retrying(gone, [app.signature("fleet.where", ("/dev/null",))], retry_for=1.0)
    assert time.monotonic() - started < 5
    app.close()
    gone.close()


def test_async_failover_reruns_jobs_whose_outcome_was_lost(tmp_path):
    """Asynchronous replication: outcomes the primary acknowledged but never sent are gone
    after the promotion, leaving jobs STARTED under a worker that is alive and thinks them
    done. On reconnecting the worker returns every job the database says it holds and it
    does not (release_unknown); they run again and finish."""
    import signal

    from clusters import HERE

    runs = tmp_path / "runs"
    with PgCluster("async-primary") as primary:
        primary.init().start()
        App("fleet", dsn=primary.dsn()).migrate()
        link_port = free_port()
        link = subprocess.Popen([sys.executable, str(HERE / "delay_proxy.py"),
                                 f"127.0.0.1:{link_port}", f"127.0.0.1:{primary.port}", "0"])
        worker = None
        try:
            wait_until(lambda: link.poll() is None and _accepts(link_port), what="the link")
            with primary.replica("async-replica", stream_from=("127.0.0.1", link_port)) \
                    as replica:
                primary.wait_streaming()
                pair = Pair(primary, replica)
                env = {**os.environ, "PGQ_DSN": pair.dsn,
                       "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
                log = tmp_path / "worker.log"
                worker = subprocess.Popen([PGQ, "worker", "-A", "apps.fleet", "-c", "4",
                                           "-l", "INFO"], env=env, stdout=open(log, "w"),  # noqa: SIM115
                                          stderr=subprocess.STDOUT, cwd=ROOT,
                                          start_new_session=True)
                app = App("fleet", dsn=primary.dsn())
                ids = [r.id for r in app.enqueue_many(
                    [app.signature("fleet.where", (str(runs), 1.5)) for _ in range(4)])]
                app.close()
                started = "SELECT count(*) FROM pgq.jobs WHERE state = 'STARTED'"
                wait_until(lambda: replica.sql(started)[0][0] == 4, timeout=30,
                           what="the four claims to reach the replica")
                link.send_signal(signal.SIGSTOP)  # the link hangs: nothing more arrives
                wait_until(lambda: primary.sql("SELECT count(*) FROM pgq.jobs WHERE state = "
                                               "'SUCCESS'")[0][0] == 4, timeout=30,
                           what="the primary to acknowledge the four outcomes")
                primary.kill()
                link.kill()
                replica.promote()
                assert replica.sql(started)[0][0] == 4, "the outcomes should be lost"
                wait_until(lambda: replica.sql("SELECT count(*) FROM pgq.jobs WHERE state = "
                                               "'SUCCESS'")[0][0] == 4, timeout=40,
                           what="the jobs to run again on the promoted replica")
                ran = Counter(line.split()[0] for line in runs.read_text().splitlines())
                assert ran == {job_id: 2 for job_id in ids}
                assert "returned 4 job(s) claimed during a lost connection" in log.read_text()
        finally:
            link.kill()
            link.wait()
            if worker is not None:
                worker.terminate()
                try:
                    worker.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, 9)
                    worker.wait()


def _accepts(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False
