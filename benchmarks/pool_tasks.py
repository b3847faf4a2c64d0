"""Tasks for benchmarks/pools.py (imported by the workers it starts, with benchmarks/ on
PYTHONPATH; the schema comes from $PGQ_BENCH_SCHEMA)."""

from __future__ import annotations

import os
import time

from pgq import App

app = App("poolbench", schema=os.environ.get("PGQ_BENCH_SCHEMA", "pgq_bench"))

IO_SECONDS = 0.010
CPU_SECONDS = 0.005


@app.task(name="bench.io")
def io(i: int) -> None:
    """Waits 10 ms without using the CPU: a stand-in for an HTTP call or a slow query."""
    del i
    time.sleep(IO_SECONDS)


@app.task(name="bench.cpu")
def cpu(i: int) -> int:
    """Burns 5 ms of its own thread's CPU time (however long that takes on the wall clock)."""
    del i
    end = time.thread_time() + CPU_SECONDS
    spins = 0
    while time.thread_time() < end:
        spins += 1
    return spins
