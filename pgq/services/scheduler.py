"""The scheduler: periodic tasks from code, kept in the `schedules` table, enqueued when due.

Any number of schedulers may run (`pgq beat`, `pgq worker -B`). Each due run is enqueued by
exactly one of them: due schedules are taken with `FOR UPDATE SKIP LOCKED`, the run's job id
is derived from (schedule, due time) and inserted with ON CONFLICT DO NOTHING, and the
schedule's next due time moves on in the same transaction.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg

from pgq import enqueue, routing, serialization
from pgq.db.connection import execute, first_line
from pgq.schedules import Schedule, crontab, first_due, following, latest_due, parse

if TYPE_CHECKING:
    from pgq.app import App

log = logging.getLogger("pgq.beat")
RUN_NAMESPACE = uuid.UUID("5b2f3c1e-8d4a-4f6b-9c7e-2a1d0e9f8b7c")
MAX_SLEEP = 5.0  # schedules added by other processes are seen within this
RESYNC_EVERY = 60.0


@dataclass(frozen=True)
class Entry:
    name: str
    task: str
    schedule: Schedule
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]


def entries(app: App) -> list[Entry]:
    """Every schedule the app declares: add_periodic_task() and conf.beat_schedule."""
    found = [Entry(name, sig["task"], parse(schedule), list(sig["args"]), dict(sig["kwargs"]),
                   dict(sig["options"]))
             for name, (schedule, sig) in app.periodic_tasks.items()]
    beat: Mapping[str, Mapping[str, Any]] = app.conf.beat_schedule or {}
    for name, spec in beat.items():
        found.append(Entry(name, spec["task"], parse(spec["schedule"]),
                           list(spec.get("args") or ()), dict(spec.get("kwargs") or {}),
                           dict(spec.get("options") or {})))
    return found


def run_id(schema: str, name: str, due: datetime) -> str:
    return str(uuid.uuid5(RUN_NAMESPACE, f"{schema}:{name}:{due.astimezone(UTC).isoformat()}"))


class Scheduler:
    def __init__(self, app: App) -> None:
        self.app = app
        self.tz = str(app.conf.timezone or "UTC")
        self._stop = threading.Event()

    def sync(self, conn: psycopg.Connection[Any]) -> None:
        """Write the app's schedules to the table; disable the ones no longer in code."""
        q = self.app.queries
        now = datetime.now(UTC)
        current = entries(self.app)
        with conn.transaction():
            for e in current:
                execute(conn, q.schedule_upsert, {
                    "name": e.name, "task": e.task,
                    "args": serialization.dumps(e.args, "args"),
                    "kwargs": serialization.dumps(e.kwargs, "kwargs"),
                    "options": serialization.dumps(e.options, "options"),
                    "every_s": None if isinstance(e.schedule, crontab) else e.schedule,
                    "cron": e.schedule.expression if isinstance(e.schedule, crontab) else None,
                    "timezone": self.tz, "next_run_at": first_due(e.schedule, now, self.tz),
                })
            for (name,) in execute(conn, q.schedule_disable_missing,
                                   {"names": [e.name for e in current]}):
                log.warning("schedule %r is no longer in the code: disabled", name)

    def tick(self, conn: psycopg.Connection[Any]) -> float:
        """Enqueue every due run; return seconds until the next one is due."""
        q = self.app.queries
        with conn.transaction():
            for (name, task, args, kwargs, options, every_s, cron, tz, next_run_at,
                 now) in execute(conn, q.schedule_due):
                schedule: Schedule = crontab(cron) if cron else float(every_s)
                due = latest_due(schedule, next_run_at, now, tz)
                if due > next_run_at:
                    log.warning("schedule %r missed runs while no scheduler ran; "
                                "enqueueing only the latest (%s)", name, due.isoformat())
                job_options = {**serialization.loads(options), "eta": due,
                               "task_id": run_id(self.app.schema, name, due)}
                row = enqueue.build_row(self.app, task, serialization.loads(args),
                                        serialization.loads(kwargs), job_options,
                                        self.app.tasks.get(task))
                # A queue in another database (queue_databases) is written there in its own
                # transaction: the run id keeps it to one job however often that is retried.
                home = routing.database_for(self.app, row.queue) in (None, self.app.default_dsn)
                enqueue.insert(self.app, [row], conn if home else None)
                execute(conn, q.schedule_advance, {"name": name, "due": due,
                                                   "next": following(schedule, due, tz)})
                log.info("schedule %r: enqueued the run due %s", name, due.isoformat())
            (wait,) = execute(conn, q.schedule_next)[0]
        if wait is None:
            return MAX_SLEEP
        return min(MAX_SLEEP, max(0.0, float(wait.total_seconds())))

    def run(self) -> None:
        """Loop until stop(): sync, then tick at each due time; ride out database outages."""
        conn: psycopg.Connection[Any] | None = None
        last_sync = -RESYNC_EVERY
        import time

        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    # Schedules live in the app's own database, also under `-B` in a worker
                    # for queues of another one: every scheduler must share one table.
                    conn = self.app.connect(self.app.default_dsn)
                if time.monotonic() - last_sync >= RESYNC_EVERY:
                    self.sync(conn)
                    last_sync = time.monotonic()
                wait = self.tick(conn)
            except Exception as exc:
                log.error("scheduler: %s; retrying", first_line(exc))
                if conn is not None:
                    conn.close()
                conn = None
                wait = 1.0
            self._stop.wait(wait)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stop.set()

    def start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="pgq-beat", daemon=True)
        thread.start()
        return thread
