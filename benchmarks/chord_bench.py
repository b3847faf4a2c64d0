"""How much a chord's bookkeeping costs: a chord of N no-op jobs against a plain group of N.

    .venv/bin/python benchmarks/chord_bench.py [--size 10000] [--dsn DSN]

Both run on one `pgq worker -c 2`; a group is done when every member has a result (read with
one query), a chord when its body has run. The difference is what the counter row and the
body's enqueue cost.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PGQ = str(Path(sys.executable).parent / "pgq")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--dsn")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from common import local_app_worker

    _, worker = local_app_worker(args.dsn, "chord_bench_tasks")
    from chord_bench_tasks import noop, total

    from pgq import chord, group

    try:
        time.sleep(1.5)
        rows = []
        for kind in ("group", "chord"):
            started = time.perf_counter()
            sigs = [noop.s(i) for i in range(args.size)]
            if kind == "group":
                result = group(sigs).apply_async()
                enqueued = time.perf_counter() - started
                while not result.ready():
                    time.sleep(0.05)
            else:
                body = chord(sigs, total.s()).apply_async()
                enqueued = time.perf_counter() - started
                assert body.get(timeout=600) == sum(range(args.size))
            rows.append((kind, enqueued, time.perf_counter() - started))
    finally:
        worker.terminate()
        worker.wait(60)
    print(f"{'workflow':<10}{'size':>8}{'enqueue s':>12}{'done s':>10}{'jobs/s':>10}")
    for kind, enqueued, done in rows:
        print(f"{kind:<10}{args.size:>8}{enqueued:>12.2f}{done:>10.2f}{args.size / done:>10.0f}")
    overhead = rows[1][2] / rows[0][2] - 1
    print(f"chord bookkeeping: {overhead * 100:+.0f}% of the group's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
