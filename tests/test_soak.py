"""One minute of the soak test (benchmarks/soak.py): load plus random faults, nothing lost."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.timeout(400)
@pytest.mark.skipif(os.environ.get("PGQ_SKIP_EMBEDDED") == "1", reason="needs the embedded server")
def test_soak_one_minute_loses_nothing():
    pgdata = ROOT / ".pgq" / ("soakdata-" + os.environ.get("PYTEST_XDIST_WORKER", "main"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--seconds", "60",
         "--fault-every", "4", "--rate", "80", "--pgdata", str(pgdata)],
        capture_output=True, text=True, timeout=380, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "PGQ_DSN"},
    )
    # no report: the soak itself failed, and its stderr says why
    report = proc.stdout[proc.stdout.find("duration"):] if "duration" in proc.stdout else ""
    print(report)
    assert "jobs lost            0" in proc.stdout, report or proc.stderr[-3000:]
    assert "RESULT OK" in proc.stdout, report
    assert proc.returncode == 0
