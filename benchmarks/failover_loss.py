"""What a failover to an asynchronous replica loses: acknowledged enqueues that vanish.

    .venv/bin/python benchmarks/failover_loss.py [--trials 5] [--seconds 2] [--producers 4]

Per trial: a PostgreSQL 15 primary (fsync on) and a streaming replica made with
pg_basebackup, the replication link `--link-delay-ms` long each way (a userspace forwarder,
tests/delay_proxy.py, stands for the network between two machines). Producer threads each
enqueue one job per transaction as fast as they can and remember every id whose COMMIT was
acknowledged. After `--seconds`, the primary fails, the replica is promoted, and the ids
missing from it are acknowledged enqueues lost by the failover. Two ways to fail:

- `crash`: the primary's processes and the replication link die at the same instant
  (SIGKILL; WAL still on the link is lost with them, as with a machine that dies);
- `partition`: the replication link is cut while producers still reach the primary for
  `--partition-s` (the time a failure detector takes to decide), then the primary is killed.

Each with asynchronous replication and with `synchronous_standby_names` set. Everything runs
on this machine (needs root or the postgres user; see tests/clusters.py).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from clusters import HERE, PgCluster, cluster_unavailable, free_port  # noqa: E402
from common import format_table, pgq_revision  # noqa: E402

from pgq import App  # noqa: E402

logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)  # reconnect noise after the kill


@dataclass
class Trial:
    acknowledged: int
    lost: int
    lag_bytes: int  # WAL written on the primary but not flushed by the replica, just before


class Producer(threading.Thread):
    def __init__(self, app: App, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.app, self.stop = app, stop
        self.acknowledged: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                result = self.app.send_task("fleet.where", ["/dev/null"])
            except Exception:
                return  # the primary is gone: what was acknowledged is what counts
            self.acknowledged.append(result.id)


def trial(synchronous: bool, link_delay_ms: float, seconds: float, producers: int,
          partition_s: float | None) -> Trial:
    with PgCluster("loss-primary", settings={"fsync": "on"}) as primary:
        primary.init().start()
        App("fleet", dsn=primary.dsn()).migrate()
        proxy_port = free_port()
        proxy = subprocess.Popen([sys.executable, str(HERE / "delay_proxy.py"),
                                  f"127.0.0.1:{proxy_port}", f"127.0.0.1:{primary.port}",
                                  str(link_delay_ms)])
        try:
            time.sleep(0.3)
            with primary.replica("loss-replica",
                                 stream_from=("127.0.0.1", proxy_port)) as replica:
                primary.wait_streaming()
                if synchronous:
                    primary.set(synchronous_standby_names="replica1")
                    primary.reload()
                    time.sleep(0.5)
                app = App("fleet", dsn=primary.tcp_dsn(), pool_max_size=producers)
                stop = threading.Event()
                threads = [Producer(app, stop) for _ in range(producers)]
                for thread in threads:
                    thread.start()
                time.sleep(seconds)
                ((lag,),) = primary.sql(
                    "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn), 0)::int8 "
                    "FROM pg_stat_replication")
                proxy.kill()  # what is on the link is lost
                if partition_s:
                    time.sleep(partition_s)
                primary.kill()
                stop.set()
                for thread in threads:
                    thread.join(30)
                replica.promote()
                app.close()
                acknowledged = [i for t in threads for i in t.acknowledged]
                found = {r[0] for r in replica.sql("SELECT id::text FROM pgq.jobs")}
                return Trial(len(acknowledged), len(set(acknowledged) - found), int(lag))
        finally:
            proxy.kill()
            proxy.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--scenario", choices=["crash", "partition"], default="crash")
    parser.add_argument("--partition-s", type=float, default=1.0)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--link-delay-ms", default="0,1,5",
                        help="one-way delays of the replication link to try, comma-separated")
    args = parser.parse_args(argv)
    reason = cluster_unavailable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    partition = args.partition_s if args.scenario == "partition" else None
    failure = (f"link cut, primary killed {partition:g} s later" if partition
               else "primary and link killed at once")
    print(f"pgq {pgq_revision()}; PostgreSQL 15 (fsync on), {args.producers} producer threads, "
          f"one job per transaction; after {args.seconds:g} s: {failure}; "
          f"{args.trials} trials each")
    rows = []
    for delay in [float(d) for d in args.link_delay_ms.split(",")]:
        for synchronous in (False, True):
            trials = [trial(synchronous, delay, args.seconds, args.producers, partition)
                      for _ in range(args.trials)]
            mode = "synchronous" if synchronous else "asynchronous"
            print(f"  {mode}, link {delay:g} ms: " + ", ".join(
                f"{t.lost}/{t.acknowledged} lost" for t in trials), flush=True)
            acknowledged = statistics.median(t.acknowledged for t in trials)
            rows.append([mode, f"{delay:g} ms", f"{acknowledged:,.0f}",
                         " / ".join(str(t.lost) for t in trials),
                         f"{sum(t.lost for t in trials) / sum(t.acknowledged for t in trials):.3%}",
                         f"{statistics.median(t.lag_bytes for t in trials):,.0f}"])
    print()
    print(format_table(["replication", "link (one way)", "acknowledged (median)",
                        "lost per trial", "lost share", "WAL not flushed (bytes, median)"],
                       rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
