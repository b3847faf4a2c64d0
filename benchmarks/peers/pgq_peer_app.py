"""The tasks the peer-comparison benchmark runs on pgq (`pgq worker -A pgq_peer_app`).

The DSN comes from $PGQ_DSN, the schema from $PGQ_BENCH_SCHEMA (default `pgq`)."""

from __future__ import annotations

import os
import time
from typing import Any

from pgq import App

app = App("pgq_peer", schema=os.environ.get("PGQ_BENCH_SCHEMA", "pgq"))


@app.task(name="noop")
def noop(x: Any) -> Any:
    """The harness' task: `def noop(x): return x` (the result is stored, as Celery's is)."""
    return x


@app.task(name="sleep_10ms")
def sleep_10ms(x: Any) -> Any:
    """Workload F: a task that waits (I/O-like) for 10 ms."""
    time.sleep(0.010)
    return x


@app.task(name="cpu_5ms")
def cpu_5ms(x: Any) -> Any:
    """Workload F: a task that burns 5 ms of its own thread's CPU time."""
    end = time.thread_time() + 0.005
    n = 0
    while time.thread_time() < end:
        n += 1
    return x
