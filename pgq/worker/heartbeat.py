"""The worker's background duties on their own connection: heartbeat its row, rescue jobs of
lost workers, and prune expired results (one worker at a time, by advisory lock)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg

from pgq.db.connection import execute, first_line

if TYPE_CHECKING:
    from pgq.app import App

log = logging.getLogger("pgq.worker")

PRUNE_EVERY = 60.0
PRUNE_BATCH = 5000


class Heartbeat:
    def __init__(self, app: App, worker_id: str, register: Callable[[Any], None],
                 probe_channel: str | None = None,
                 on_beat: Callable[[Any], None] | None = None) -> None:
        self.app = app
        self.on_beat = on_beat
        self.probe_channel = probe_channel
        self.worker_id = worker_id
        self.register = register
        self.interval = float(app.conf.worker_heartbeat_interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pgq-heartbeat", daemon=True)
        self._conn: psycopg.Connection[Any] | None = None
        self._last_prune = 0.0
        self.lost_timeout = float(app.conf.worker_lost_timeout)
        # A fresh worker may rescue at once (it connected to register, so the database is up).
        self._reachable_since: float | None = time.monotonic() - self.lost_timeout

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._conn is not None:
            self._conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self.app.connect()
                self.beat(self._conn)
            except Exception as exc:
                log.warning("heartbeat failed (%s); will retry", first_line(exc))
                self._reachable_since = None
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
            self._stop.wait(self.interval)

    def beat(self, conn: psycopg.Connection[Any]) -> None:
        q = self.app.queries
        if not execute(conn, q.heartbeat, {"id": self.worker_id}):
            log.error("this worker was declared lost (heartbeat too old); its running jobs "
                      "were requeued. Registering again.")
            self.register(conn)
        if self.probe_channel:  # proves to our own LISTEN connection that it still hears
            execute(conn, q.notify, {"channel": self.probe_channel, "payload": ""})
        now = time.monotonic()
        if self._reachable_since is None:
            self._reachable_since = now
        # After an outage every worker's heartbeat is old: the first one back must not declare
        # the others lost. Only a worker that has itself reached the database for a whole
        # worker_lost_timeout may judge that another has not.
        if now - self._reachable_since >= self.lost_timeout:
            rescue(self.app, conn)
        if self.on_beat is not None:
            self.on_beat(conn)
        if time.monotonic() - self._last_prune > PRUNE_EVERY:
            self._last_prune = time.monotonic()
            prune(self.app, conn, float(self.app.conf.result_expires))


def rescue(app: App, conn: psycopg.Connection[Any]) -> int:
    """Return jobs held by workers whose heartbeat is older than their lost timeout."""
    q = app.queries
    with conn.transaction():
        for worker_id, hostname, pid in execute(conn, q.mark_lost_workers):
            log.warning("worker %s (%s pid %s) is lost: its heartbeat is too old",
                        worker_id, hostname, pid)
        rescued = execute(conn, q.rescue_orphans)
        for queue in {row[1] for row in rescued}:
            execute(conn, q.notify, {"channel": q.jobs_channel, "payload": queue})
    if rescued:
        log.warning("returned %d job(s) of lost workers to their queues", len(rescued))
    return len(rescued)


def prune(app: App, conn: psycopg.Connection[Any], older_than: float) -> int:
    """Delete finished jobs older than `older_than` seconds, in bounded batches."""
    q = app.queries
    total = 0
    while True:
        with conn.transaction():
            if not execute(conn, q.lock_maintenance, {"key": f"{app.schema}.prune"})[0][0]:
                return total  # another worker is pruning
            cur = conn.execute(q.prune, {"older_than": older_than, "batch": PRUNE_BATCH})
            deleted = cur.rowcount
        total += deleted
        if deleted < PRUNE_BATCH:
            return total
