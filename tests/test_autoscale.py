"""`pgq worker --autoscale MAX,MIN`: the prefork pool grows while jobs wait and shrinks when
its children sit idle, with real workers, counting their children in /proc."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from apps.basic import add, record_run, too_slow
from conftest import PGQ, ROOT, wait_until

import pgq

KEEPALIVE_1S = {"PGQ_WORKER_AUTOSCALE_KEEPALIVE": "1"}


def children(pid: int) -> int:
    """How many processes `pid` has (a prefork supervisor's children)."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        count += fields[1] == str(pid)
    return count


def runs(log: Path) -> list[list[str]]:
    """(job id, supervisor pid, child pid) per run `record_run` recorded."""
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def shown_concurrency(db, pid: int) -> int:
    row = db.execute("SELECT concurrency FROM pgq.worker_status WHERE pid = %s", (pid,))
    return row.fetchone()[0]


def test_autoscale_grows_under_a_burst_then_shrinks_to_min(app, start_worker, db, tmp_path):
    worker = start_worker("--autoscale", "4,1", env=KEEPALIVE_1S)
    assert children(worker.pid) == 1
    log = tmp_path / "runs"
    results = [record_run.delay(str(log), 0.5) for _ in range(12)]
    peak = 0

    def done() -> bool:
        nonlocal peak
        peak = max(peak, children(worker.pid))
        return all(r.ready() for r in results)

    wait_until(done, timeout=30, what="the burst to finish")
    assert peak == 4
    assert {r.state for r in results} == {"SUCCESS"}
    counts = Counter(run[0] for run in runs(log))
    assert counts == Counter({r.id: 1 for r in results}), "a job ran twice or not at all"
    assert len({run[2] for run in runs(log)}) == 4, "the jobs ran in four children"
    wait_until(lambda: children(worker.pid) == 1, timeout=10, what="the pool to shrink")
    wait_until(lambda: shown_concurrency(db, worker.pid) == 1, what="worker_status to follow")
    output = worker.output()
    assert re.search(r"job\(s\) waiting, growing the pool \d -> 4 \(max 4\)", output)
    assert re.search(r"idle for 1s, shrinking the pool \d -> 1 \(min 1\)", output)
    assert add.delay(2, 3).get(timeout=10) == 5, "the shrunk pool still serves"


def test_autoscale_from_zero_grows_for_long_jobs(app, start_worker, tmp_path):
    """MIN 0: no child until a job comes; jobs longer than the prefetch buffer's target are
    seen through the one extra job claimed while the pool is below MAX."""
    worker = start_worker("--autoscale", "3,0", "--prefetch-multiplier", "1", env=KEEPALIVE_1S)
    assert children(worker.pid) == 0
    log = tmp_path / "runs"
    results = [record_run.delay(str(log), 1.0) for _ in range(3)]
    wait_until(lambda: len(runs(log)) == 3, timeout=10, what="three jobs to run side by side")
    assert children(worker.pid) == 3
    assert [r.get(timeout=10) for r in results] == [1, 1, 1]
    wait_until(lambda: children(worker.pid) == 0, timeout=10, what="the pool to shrink to 0")
    assert add.delay(1, 1).get(timeout=10) == 2


def test_autoscale_with_max_tasks_per_child_and_time_limits(app, start_worker, tmp_path):
    worker = start_worker("--autoscale", "3,1", "--max-tasks-per-child", "2", env=KEEPALIVE_1S)
    log = tmp_path / "runs"
    slow = too_slow.delay()  # killed at its 0.5 s time limit; its child is replaced
    results = [record_run.delay(str(log), 0.2) for _ in range(12)]
    assert [r.get(timeout=30) for r in results] == [1] * 12
    with pytest.raises(pgq.TimeLimitExceeded):
        slow.get(timeout=15)
    counts = Counter(run[0] for run in runs(log))
    assert counts == Counter({r.id: 1 for r in results})
    assert len({run[2] for run in runs(log)}) >= 6, "children were recycled after 2 jobs"
    assert "growing the pool" in worker.output()
    wait_until(lambda: children(worker.pid) == 1, timeout=10, what="the pool to shrink")


def test_autoscale_ignores_concurrency_as_celery_does(app, start_worker):
    worker = start_worker("-c", "3", "--autoscale", "2,1")
    assert children(worker.pid) == 1
    assert "--autoscale 2,1 sizes the pool: concurrency 3 is ignored" in worker.output()


@pytest.mark.parametrize(("args", "message"), [
    (["--autoscale", "0"], "MAX must be at least 1"),
    (["--autoscale", "4,x"], "expected MAX,MIN"),
    (["--autoscale", "4,1", "--pool", "threads"], "--autoscale needs the prefork pool"),
])
def test_bad_autoscale_is_one_clear_error(app, args, message):
    done = subprocess.run([PGQ, "worker", "-A", "apps.basic", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_worker_autoscale_setting(app, start_worker):
    worker = start_worker(env={"PGQ_WORKER_AUTOSCALE": "3,2"})
    assert children(worker.pid) == 2
    assert "autoscale: 2 to 3 children" in worker.output()
