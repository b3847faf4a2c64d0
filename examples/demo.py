"""pgq in one minute: embedded PostgreSQL, migrate, a real worker, jobs, results, status.

Run it with `bash scripts/demo.sh` (or `python examples/demo.py` inside the venv).
Stop the embedded server afterwards with `.venv/bin/pgq embedded stop`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from demo_tasks import add, app, crunch, fail, flaky  # noqa: E402

import pgq  # noqa: E402


def main() -> None:
    os.chdir(HERE.parent)  # the embedded server lives in ./.pgq/pgdata
    print(f"database: {app.dsn}")
    app.migrate()
    print("schema migrated")
    pgq_bin = str(Path(sys.executable).parent / "pgq")
    env = {**os.environ, "PGQ_DSN": app.dsn, "PYTHONPATH": str(HERE)}
    worker = subprocess.Popen([pgq_bin, "worker", "-A", "demo_tasks", "-c", "2", "-l", "WARNING"],
                              env=env)
    try:
        time.sleep(1.0)
        started = time.perf_counter()
        results = [add.delay(i, i) for i in range(10)]
        print("add results:", [r.get(timeout=30) for r in results],
              f"({(time.perf_counter() - started) * 1000:.0f} ms for 10 round trips)")
        print("flaky:", flaky.delay(2).get(timeout=30))
        failing = fail.delay("this one fails on purpose")
        try:
            failing.get(timeout=30)
        except ValueError as exc:
            print(f"fail: raised {exc!r}; state={failing.state}")
        progress = crunch.delay(200)
        time.sleep(0.1)
        print(f"crunch while running: state={progress.state} info={progress.info}")
        print("crunch result:", progress.get(timeout=30))
        pending = add.apply_async((1, 2), countdown=3600)
        pending.revoke()
        print(f"a job revoked before it ran: state={pending.state}")
        try:
            pending.get(timeout=5)
        except pgq.TaskRevokedError:
            print("  get() raised TaskRevokedError")
        print()
        subprocess.run([pgq_bin, "status"], env=env, check=True)
    finally:
        worker.terminate()
        worker.wait(30)
    print("\nworker stopped. Stop the embedded server with: .venv/bin/pgq embedded stop")


if __name__ == "__main__":
    main()
