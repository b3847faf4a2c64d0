"""Helpers for testing code that uses pgq (as Oban.Testing and River's rivertest do).

- `eager(app)`: a context manager in which `delay()`/`apply_async()` run tasks inline, with
  no database (for unit tests of your own code).
- `drain(app, queues)`: run every job that is due in these queues, in this process, until
  none is left (for integration tests against a real database).
- `pgq.testing.pytest_plugin`: fixtures giving a migrated database and an app.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from pgq.db.connection import execute
from pgq.worker.completer import write_outcomes
from pgq.worker.executor import Job
from pgq.worker.executor import execute as execute_job

if TYPE_CHECKING:
    from pgq.app import App

__all__ = ["drain", "eager"]


@contextmanager
def eager(app: App, propagate: bool = True) -> Iterator[App]:
    """Run tasks inline while inside the block (`task_always_eager`)."""
    before = (app.conf.task_always_eager, app.conf.task_eager_propagates)
    app.conf.update(task_always_eager=True, task_eager_propagates=propagate)
    try:
        yield app
    finally:
        app.conf.update(task_always_eager=before[0], task_eager_propagates=before[1])


def drain(app: App, queues: Sequence[str] | None = None, *, max_jobs: int | None = None,
          batch: int = 100) -> int:
    """Run the due jobs of `queues` (default: the app's default queue) here, one at a time,
    through the worker's own executor and completer, until none is left — including jobs
    that running jobs enqueue (chains, callbacks, chord bodies). Returns how many ran."""
    queue_list = list(queues or [app.default_queue])
    worker_id = str(uuid.uuid4())
    q = app.queries
    ran = 0
    with app.connect() as conn:
        execute(conn, q.register_worker, {
            "id": worker_id, "hostname": f"pgq-testing@{socket.gethostname()}",
            "pid": os.getpid(), "queues": queue_list, "concurrency": 1, "pool": "drain",
            "lost_timeout": 3600.0})
        try:
            while max_jobs is None or ran < max_jobs:
                with conn.transaction():
                    rows = execute(conn, q.claim, {"queues": queue_list, "limit": batch,
                                                   "worker": worker_id})
                if not rows:
                    return ran
                jobs = [Job(*row[:-1]) for row in rows]
                for job in jobs:
                    if job.state != "STARTED":  # expired before it ran: REVOKED by the claim
                        continue
                    outcome = execute_job(app, job, "pgq-testing")
                    with conn.transaction():
                        write_outcomes(app, conn, worker_id, [outcome], {job.id: job})
                    ran += 1
            return ran
        finally:
            execute(conn, q.stop_worker, {"id": worker_id})


