"""Tasks for benchmarks/chord_bench.py (imported by its worker)."""

from __future__ import annotations

import os

from pgq import App

app = App("chordbench", dsn=os.environ.get("PGQ_DSN"))


@app.task(name="bench.noop")
def noop(x: int) -> int:
    return x


@app.task(name="bench.total")
def total(values: list[int]) -> int:
    return sum(values)
