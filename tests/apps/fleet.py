"""Tasks for workers on other "hosts" (network namespaces) and for failover tests: each run
appends one line — job id, the worker's -n hostname, the pid that ran it — to a shared file."""

from __future__ import annotations

import os
import time

from pgq import App, Task

app = App("fleet", dsn=os.environ.get("PGQ_DSN"), worker_heartbeat_interval=0.5)


@app.task(bind=True, name="fleet.where")
def where(self: Task, path: str, seconds: float = 0.0) -> str:
    with open(path, "a") as fh:  # one short O_APPEND write per run: lines never interleave
        fh.write(f"{self.request.id} {self.request.hostname} {os.getpid()}\n")
    if seconds:
        time.sleep(seconds)
    return str(self.request.hostname)
