"""Median (and spread) of several `benchmarks/run.py --json FILE` runs.

    .venv/bin/python benchmarks/summarize.py benchmarks/results/run-*.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from common import format_table


def load(paths: list[Path]) -> list[dict[str, Any]]:
    runs = [json.loads(path.read_text()) for path in paths]
    revisions = {run["details"].get("pgq") for run in runs}
    if len(revisions) > 1:
        print(f"warning: the runs measured different pgq code: {sorted(map(str, revisions))}")
    return runs


def format_value(value: float, unit: str) -> str:
    return f"{value:,.2f} ms" if unit == "ms" else f"{value:,.0f} {unit}"


def summary_rows(runs: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for first in runs[0]["results"]:
        values = [r["value"] for run in runs for r in run["results"] if r["key"] == first["key"]]
        median = statistics.median(values)
        spread = (max(values) - min(values)) / median * 100 if median else 0.0
        rows.append((first["label"], format_value(median, first["unit"]),
                     " / ".join(format_value(v, first["unit"]) for v in values),
                     f"{spread:.0f}%", first["aim"]))
    return rows


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    runs = load([Path(arg) for arg in argv])
    print(f"{len(runs)} runs; pgq {runs[0]['details'].get('pgq')}")
    for path, run in zip(argv, runs, strict=True):
        cpu = run.get("cpu") or {}
        if cpu.get("available"):
            print(f"  {path}: other processes used {cpu['others'] / cpu['available']:.0%} "
                  "of the machine's CPU during the run")
    print()
    print(format_table(("benchmark", "median", "each run", "spread (max-min)/median", "aim"),
                       summary_rows(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
