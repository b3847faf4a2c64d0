"""How late do countdown/eta jobs start? 1,000 jobs due over 10 seconds, one worker.

    .venv/bin/python benchmarks/eta_lateness.py [--jobs 1000] [--over 10] [--dsn DSN]

Lateness = the moment a worker claimed the job (started_at) minus its eta, both read from
PostgreSQL's clock. The worker's poll interval is set to 60 s, so only its own next-due timer
(and NOTIFY) can make jobs start on time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PGQ = str(Path(sys.executable).parent / "pgq")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--over", type=float, default=10.0, help="seconds the etas span")
    parser.add_argument("--dsn")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from common import local_app_worker

    args.dsn, worker = local_app_worker(args.dsn, "chord_bench_tasks",
                                        env={"PGQ_WORKER_POLL_INTERVAL": "60"})
    from chord_bench_tasks import app, noop

    try:
        time.sleep(1.5)
        start = datetime.now(UTC) + timedelta(seconds=2)
        step = args.over / args.jobs
        app.enqueue_many([noop.s(i).set(eta=start + timedelta(seconds=i * step))
                          for i in range(args.jobs)])
        with psycopg.connect(args.dsn) as conn:
            deadline = time.monotonic() + args.over + 30
            while time.monotonic() < deadline:
                left = conn.execute("SELECT count(*) FROM pgq.jobs WHERE state <> 'SUCCESS'"
                                    ).fetchone()[0]
                conn.commit()
                if left == 0:
                    break
                time.sleep(0.2)
            late = [row[0] * 1000 for row in conn.execute(
                "SELECT extract(epoch FROM started_at - eta)::float8 FROM pgq.jobs")]
    finally:
        worker.terminate()
        worker.wait(30)
    late.sort()

    def pct(p: float) -> float:
        return late[min(len(late) - 1, int(p / 100 * len(late)))]

    print(f"{'jobs':>6}{'over s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}"
          f"{'early':>7}")
    print(f"{len(late):>6}{args.over:>8.0f}{pct(50):>9.1f}{pct(95):>9.1f}{pct(99):>9.1f}"
          f"{late[-1]:>9.1f}{sum(1 for x in late if x < 0):>7}")
    print(f"mean {statistics.mean(late):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
