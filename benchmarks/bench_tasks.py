"""The benchmark's task module, imported by `benchmarks/run.py` and by the worker it starts
(`pgq worker -A bench_tasks`, with benchmarks/ on PYTHONPATH).

The schema comes from $PGQ_BENCH_SCHEMA so every run uses its own fresh schema; the DSN from
$PGQ_DSN (the worker also gets `--dsn`)."""

from __future__ import annotations

import os

from pgq import App

SCHEMA_ENV = "PGQ_BENCH_SCHEMA"

app = App("bench", schema=os.environ.get(SCHEMA_ENV, "pgq_bench"))


@app.task(name="bench.noop")
def noop(i: int) -> None:
    """Does nothing: the benchmark measures pgq, not the task body."""
    del i
