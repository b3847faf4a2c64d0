"""`pgq worker --reload`: a task module in tmp_path is edited under a running worker."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import PGQ, ROOT, WorkerProcess, wait_until

TASKS = '''
import os
import time

from pgq import App

app = App("reloadtest", dsn=os.environ["PGQ_DSN"], worker_heartbeat_interval=0.5,
          worker_lost_timeout=3)
VERSION = {version!r}


@app.task(name="reloadtest.version")
def version():
    return VERSION


@app.task(name="reloadtest.slow_version")
def slow_version(seconds):
    time.sleep(seconds)
    return VERSION
'''


def ready_lines(worker: WorkerProcess) -> int:
    return worker.output().count(" ready: host ")


def live_workers(db) -> list[int]:
    rows = db.execute("SELECT pid FROM pgq.worker_status WHERE alive ORDER BY started_at")
    return [row[0] for row in rows]


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def reloading(start_worker, tmp_path):
    """Start `pgq worker -A reload_tasks --reload` on a module written in tmp_path."""

    def start(version: str, *args: str) -> tuple[WorkerProcess, Path]:
        module = tmp_path / "reload_tasks.py"
        module.write_text(TASKS.format(version=version))
        env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ["PYTHONPATH"]])}
        worker = start_worker("-A", "reload_tasks", "--reload", "-c", "2", *args, env=env,
                              ready=False)
        wait_until(lambda: ready_lines(worker) == 1, what="the first worker to be ready")
        return worker, module

    return start


def test_edit_reloads_new_jobs_and_running_job_finishes_on_old_code(app, reloading, db):
    reloader, module = reloading("old")
    assert f"watching {module.parent}" in reloader.output()
    assert app.send_task("reloadtest.version").get(timeout=10) == "old"
    (first,) = live_workers(db)
    assert first != reloader.pid, "the reloader runs the worker in a child process"
    running = app.send_task("reloadtest.slow_version", args=[3])
    wait_until(lambda: running.state == "STARTED", what="the slow job to start")

    module.write_text(TASKS.format(version="new code"))
    wait_until(lambda: ready_lines(reloader) == 2, what="a new worker to be ready")
    assert app.send_task("reloadtest.version").get(timeout=10) == "new code"
    assert running.get(timeout=15) == "old", "the running job finished on the old code"
    assert running.retries == 0
    wait_until(lambda: live_workers(db) != [first] and first not in live_workers(db),
               what="the old worker to stop")
    wait_until(lambda: f"old worker process {first} exited (code 0)" in reloader.output(),
               what="the reloader to see the old worker exit")
    assert f"{module} changed: worker process {first} finishes" in reloader.output()
    assert reloader.stop() == 0
    assert live_workers(db) == []


def test_broken_edit_waits_for_the_next_change(app, reloading):
    reloader, module = reloading("one")
    module.write_text("this is not python\n")
    wait_until(lambda: "exited (code 1); it starts again when a watched file changes"
               in reloader.output(), what="the broken worker to exit")
    assert reloader.proc.poll() is None, "the reloader waits"
    module.write_text(TASKS.format(version="fixed"))
    assert app.send_task("reloadtest.version").get(timeout=20) == "fixed"


def test_workers_stop_when_the_reloader_is_killed(app, reloading, db):
    reloader, _ = reloading("v")
    (pid,) = live_workers(db)
    reloader.signal(signal.SIGKILL)
    wait_until(lambda: live_workers(db) == [], what="the orphaned worker to stop itself")
    wait_until(lambda: not running(pid), what="its process to exit")


def test_reload_refuses_metrics_port(app):
    done = subprocess.run([PGQ, "worker", "-A", "apps.basic", "--reload", "--metrics-port",
                           "9999"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--reload cannot serve --metrics-port" in done.stderr


def test_reload_dir_must_exist(app, tmp_path):
    done = subprocess.run([PGQ, "worker", "-A", "apps.basic", "--reload", "--reload-dir",
                           str(tmp_path / "nope")], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 1
    assert f"--reload-dir {tmp_path / 'nope'}: no such directory" in done.stderr
