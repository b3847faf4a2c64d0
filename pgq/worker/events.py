"""Publish the worker's events (pgq/events.py has the format and the reader).

The supervisor only appends to an in-memory buffer (one deque append per claimed, handed-out
or finished batch); a thread turns each batch into one wire entry, packs the entries into NOTIFY
payloads every FLUSH_INTERVAL and sends them in one transaction on its own connection, which
commits without waiting for the disk.
Events are best-effort: a batch that cannot be sent is dropped (and logged once), the buffer
keeps at most the newest MAX_BUFFERED; nothing here can slow, fail or block job processing."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson
import psycopg

from pgq.db.connection import first_line
from pgq.events import WIRE_VERSION
from pgq.worker.executor import Job, Outcome

if TYPE_CHECKING:
    from pgq.app import App

log = logging.getLogger("pgq.worker")

PAYLOAD_MAX = 7800  # PostgreSQL's NOTIFY limit is 8000 bytes
TEXT_MAX = 256  # args, kwargs, result and messages are cut to this many characters
TRACEBACK_MAX = 2000  # the end of a traceback is kept
_OUTCOME_EVENT = {"SUCCESS": "task-succeeded", "FAILURE": "task-failed",
                  "RETRY": "task-retried"}


def _cut(value: Any, limit: int = TEXT_MAX) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else (
        bytes(value).decode(errors="replace") if isinstance(value, bytes | memoryview)
        else str(value))
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _tail(text: str | None) -> str | None:
    if text is None or len(text) <= TRACEBACK_MAX:
        return text
    return "…" + text[-(TRACEBACK_MAX - 1):]


class EventPublisher:
    FLUSH_INTERVAL = 0.1
    MAX_BUFFERED = 50_000

    def __init__(self, app: App, worker_id: str, hostname: str, queues: list[str], *,
                 task_events: bool, heartbeats: bool, active: Callable[[], int]) -> None:
        self.app = app
        self.task_events = task_events
        self.heartbeats = heartbeats
        self.queues = queues
        self.active = active
        self.freq = float(app.conf.worker_heartbeat_interval)
        self.processed = 0
        self._buffer: deque[tuple[Any, ...]] = deque(maxlen=self.MAX_BUFFERED)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pgq-events", daemon=True)
        self._conn: psycopg.Connection[Any] | None = None
        self._retry_at = 0.0
        self._failing = False
        utcoffset = -(time.altzone if time.daylight and time.localtime().tm_isdst
                      else time.timezone) // 3600
        self._header = orjson.dumps({"v": WIRE_VERSION, "hostname": hostname,
                                     "pid": os.getpid(), "worker": worker_id,
                                     "utcoffset": utcoffset})[:-1] + b',"events":['
        # each payload: self._header + the encoded events without their "[" + "}"

    @property
    def enabled(self) -> bool:
        return self.task_events or self.heartbeats

    # --- called by the supervisor (cheap: one append per batch) ---------------------------

    def received(self, jobs: list[Job]) -> None:
        if self.task_events and jobs:
            self._buffer.append(("received", time.time(), jobs))

    def started(self, jobs: list[Job]) -> None:
        if self.task_events and jobs:
            self._buffer.append(("started", time.time(), jobs))

    def finished(self, outcomes: Iterable[Outcome], written: set[str],
                 jobs: Mapping[str, Job]) -> None:
        if self.task_events:
            done = [(o, jobs.get(o.id)) for o in outcomes if o.id in written]
            if done:
                self._buffer.append(("finished", time.time(), done))

    def revoked(self, job: Job, *, terminated: bool = False, signum: int | None = None,
                expired: bool = False) -> None:
        if self.task_events:
            self._buffer.append(("task-revoked", time.time(), job, terminated, signum, expired))

    # --- life -------------------------------------------------------------------------------

    def start(self) -> None:
        if not self.enabled:
            return
        self._worker_event("worker-online")
        self._thread.start()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._worker_event("worker-offline")
        self._stop.set()
        self._thread.join(5)

    def _worker_event(self, kind: str) -> None:
        if self.heartbeats:
            self._buffer.append((kind, time.time()))

    # --- the publishing thread --------------------------------------------------------------

    def _run(self) -> None:
        next_beat = time.monotonic() + self.freq
        while not self._stop.wait(self.FLUSH_INTERVAL):
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.freq
                self._worker_event("worker-heartbeat")
            self._flush_safely()
        self._retry_at = 0.0
        self._flush_safely()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()

    def _flush_safely(self) -> None:
        try:
            self._flush()
        except Exception:
            log.exception("events: cannot encode a batch; dropped")

    def _flush(self) -> None:
        if not self._buffer or time.monotonic() < self._retry_at:
            return
        entries: list[list[Any]] = []
        while self._buffer:
            entries.extend(self._wire(self._buffer.popleft()))
        payloads = self._payloads(entries)
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self.app.connect()
            self._send(self._conn, payloads)
            if self._failing:
                log.info("publishing events again")
                self._failing = False
        except Exception as exc:  # best-effort: never let events disturb the worker
            if not self._failing:
                log.warning("cannot publish events (%s); %d payload(s) dropped, retrying",
                            first_line(exc), len(payloads))
            self._failing = True
            self._retry_at = time.monotonic() + 2.0
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None

    def _send(self, conn: psycopg.Connection[Any], payloads: list[str]) -> None:
        """One transaction, pipelined; one pg_notify per payload (a text[] parameter of big
        JSON strings costs ~20x more client CPU to send)."""
        q = self.app.queries
        with conn.transaction():
            conn.execute(q.async_commit)
            conn.cursor().executemany(q.notify, [{"channel": q.events_channel, "payload": p}
                                                 for p in payloads])

    def _payloads(self, entries: list[list[Any]]) -> list[str]:
        """NOTIFY payloads under PAYLOAD_MAX bytes: each entry encoded once (a batched entry
        too big for one is split in halves), then as many as fit joined into each."""
        room = PAYLOAD_MAX - len(self._header) - 2
        payloads: list[str] = []
        parts: list[bytes] = []
        size = 0
        for body in self._encoded(entries, room):
            if parts and size + len(body) > room:
                payloads.append(self._payload(parts))
                parts, size = [], 0
            parts.append(body)
            size += len(body) + 1
        if parts:
            payloads.append(self._payload(parts))
        return payloads

    def _payload(self, parts: list[bytes]) -> str:
        return (self._header + b",".join(parts) + b"]}").decode()

    def _encoded(self, entries: list[list[Any]], room: int) -> Iterator[bytes]:
        for entry in entries:
            body = orjson.dumps(entry)
            if len(body) <= room:
                yield body
            elif (halves := _split(entry)) is not None:
                yield from self._encoded(halves, room)
            else:
                log.debug("an event of %d bytes does not fit a NOTIFY: dropped", len(body))

    def _wire(self, item: tuple[Any, ...]) -> list[list[Any]]:
        """The entries of one buffered item, in wire form (pgq/events.py)."""
        kind, timestamp = item[0], item[1]
        if kind == "received":
            return _batched("task-received", timestamp, [self._received(job) for job in item[2]])
        if kind == "started":
            return _batched("task-started", timestamp,
                            [(job.id, job.task, job.queue) for job in item[2]])
        if kind == "finished":
            return self._finished(timestamp, item[2])
        if kind.startswith("worker-"):
            return [[kind, timestamp, self.freq, self._active(), self.processed, _loadavg(),
                     self.queues, "pgq", _version(), platform.system()]]
        job: Job = item[2]
        return [[kind, timestamp, job.id, job.task, job.queue, *item[3:]]]

    @staticmethod
    def _received(job: Job) -> tuple[Any, ...]:
        return (job.id, job.task, job.queue, _cut(job.args) or "", _cut(job.kwargs) or "",
                job.retries, job.eta.isoformat() if job.eta else None,
                job.root_id if job.root_id != job.id else None, job.parent_id)

    def _finished(self, timestamp: float, done: list[tuple[Outcome, Job | None]]
                  ) -> list[list[Any]]:
        """Successes as one batched entry; failures and retries (rare, with tracebacks) one
        entry each."""
        self.processed += len(done)
        succeeded: list[tuple[Any, ...]] = []
        entries: list[list[Any]] = []
        for outcome, job in done:
            name, queue = (job.task, job.queue) if job else (None, None)
            if outcome.state == "SUCCESS":
                succeeded.append((outcome.id, name, queue, _cut(outcome.result),
                                  round(outcome.runtime_ms / 1000, 6)))
            else:
                entries.append([_OUTCOME_EVENT.get(outcome.state, "task-failed"), timestamp,
                                outcome.id, name, queue, outcome.exc_type,
                                _cut(outcome.exc_message), _tail(outcome.traceback)])
        return _batched("task-succeeded", timestamp, succeeded) + entries

    def _active(self) -> int | None:
        try:
            return self.active()
        except Exception:  # read from another thread while the pool changes
            return None


def _batched(kind: str, timestamp: float, rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Events of one task type and time as one batched entry (pgq/events.py): one list per
    field, or one value when all the events share it (their task's name and queue, mostly)."""
    if not rows:
        return []
    entry: list[Any] = [kind, timestamp]
    for k, column in enumerate(zip(*rows, strict=True)):
        values = list(column)
        shared = k > 0 and values.count(values[0]) == len(values)
        entry.append(values[0] if shared and not isinstance(values[0], list) else values)
    return [entry]


def _split(entry: list[Any]) -> list[list[Any]] | None:
    """A batched entry in two halves; None for a single event."""
    if len(entry) < 3 or not isinstance(entry[2], list) or len(entry[2]) < 2:
        return None
    half = len(entry[2]) // 2
    return [[*entry[:2], *(v[part] if isinstance(v, list) else v for v in entry[2:])]
            for part in (slice(None, half), slice(half, None))]


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _version() -> str:
    import pgq

    return pgq.__version__
