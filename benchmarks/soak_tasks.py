"""The soak test's task: record each execution, then work a little."""

from __future__ import annotations

import os
import random
import time

from pgq import App, Task

app = App("soak", dsn=os.environ.get("PGQ_DSN"), worker_lost_timeout=3,
          worker_heartbeat_interval=0.5)
RUN_LOG = os.environ.get("PGQ_SOAK_RUN_LOG", "soak-runs.log")


@app.task(bind=True, max_retries=20)
def work(self: Task, n: int) -> int:
    with open(RUN_LOG, "a") as fh:
        fh.write(f"{self.request.id} {time.time():.3f} {os.getppid()} {os.getpid()}\n")
    time.sleep(random.uniform(0.001, 0.05))
    return n
