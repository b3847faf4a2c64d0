"""Live events: what workers publish on the `<schema>_events` NOTIFY channel, and how to read
them (Celery's event names and fields; see docs/events.md).

    for event in app.events():                       # every event, as a dict
        print(event["type"], event.get("uuid"))

    EventReceiver(app, handlers={"task-failed": on_failed, "*": on_any}).capture()

On the wire one NOTIFY carries a batch: `{"v": 2, "hostname", "pid", "worker", "utcoffset",
"events": [entry, ...]}`, so that many events fit PostgreSQL's 8000-byte payload limit. An
entry is one event, `[type, timestamp, value, ...]` with the values in the order of
`FIELDS[type]`, or (since version 2) events of one task type and time batched by field:
`[type, timestamp, [uuid, ...], field, ...]`, where a field is a list of one value per event
or a single value that they all share."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from pgq.errors import ConfigurationError

if TYPE_CHECKING:
    from pgq.app import App

log = logging.getLogger("pgq.events")

Event = dict[str, Any]
Handler = Callable[[Event], Any]

WIRE_VERSION = 2  # 2: batched entries; the reader takes both
_TASK = ("uuid", "name", "queue")
_WORKER = ("freq", "active", "processed", "loadavg", "queues", "sw_ident", "sw_ver", "sw_sys")
FIELDS: dict[str, tuple[str, ...]] = {
    "task-received": (*_TASK, "args", "kwargs", "retries", "eta", "root_id", "parent_id"),
    "task-started": _TASK,
    "task-succeeded": (*_TASK, "result", "runtime"),
    "task-failed": (*_TASK, "exc_type", "exc_message", "traceback"),
    "task-retried": (*_TASK, "exc_type", "exc_message", "traceback"),
    "task-revoked": (*_TASK, "terminated", "signum", "expired"),
    "worker-online": _WORKER,
    "worker-heartbeat": _WORKER,
    "worker-offline": _WORKER,
}
TASK_EVENTS = frozenset(k for k in FIELDS if k.startswith("task-"))


def expand(payload: str | bytes, received: float | None = None) -> list[Event]:
    """The events of one NOTIFY payload, as Celery-shaped dicts (unknown types skipped)."""
    batch = orjson.loads(payload)
    common = {"hostname": batch.get("hostname"), "pid": batch.get("pid"),
              "worker": batch.get("worker"), "utcoffset": batch.get("utcoffset", 0),
              "local_received": received if received is not None else time.time()}
    events = []
    for raw in batch.get("events", ()):
        kind, timestamp, *values = raw
        fields = FIELDS.get(kind)
        if fields is None:
            continue
        for one in _unbatch(kind, values):
            events.append(_event(kind, timestamp, common, fields, one))
    return events


def _unbatch(kind: str, values: list[Any]) -> list[list[Any]]:
    """The values of each event of an entry: one event, or a batch (a list of uuids)."""
    if kind not in TASK_EVENTS or not values or not isinstance(values[0], list):
        return [values]
    return [[v[i] if isinstance(v, list) else v for v in values] for i in range(len(values[0]))]


def _event(kind: str, timestamp: float, common: Event, fields: tuple[str, ...],
           values: list[Any]) -> Event:
    event: Event = {"type": kind, "timestamp": timestamp, **common,
                    **dict(zip(fields, values, strict=False))}
    if kind in ("task-failed", "task-retried"):
        short = str(event.get("exc_type") or "Exception").rpartition(".")[2]
        event["exception"] = f"{short}({event.get('exc_message')!r})"
    elif kind == "task-received" and event.get("root_id") is None:
        event["root_id"] = event.get("uuid")
    return event


def matches(event: Event, queues: Sequence[str] | None) -> bool:
    """Task events of these queues, and worker events of workers consuming one of them."""
    if not queues:
        return True
    if event["type"] in TASK_EVENTS:
        return event.get("queue") in queues
    return any(q in queues for q in event.get("queues") or ())


class EventReceiver:
    """Listens on the events channel and hands each event to `handlers[type]` (or
    `handlers["*"]`), as Celery's `app.events.Receiver` does; or iterate over it.

    The LISTEN connection is read by a thread that only queues raw payloads (up to `buffer`;
    beyond that it drops and warns), so a slow consumer never holds back PostgreSQL's shared
    notification queue."""

    def __init__(self, app: App, handlers: Mapping[str, Handler] | None = None,
                 queues: Sequence[str] | None = None, *, buffer: int = 10_000) -> None:
        self.app = app
        self.handlers = dict(handlers or {})
        self.queues = list(queues) if queues else None
        self.should_stop = False
        self._inbox: queue.Queue[tuple[float, str]] = queue.Queue(maxsize=buffer)
        self._dropped = 0
        self._listener: Any = None
        self._lock = threading.Lock()

    # --- connection -------------------------------------------------------------------------

    def _on_payload(self, payload: str) -> None:
        try:
            self._inbox.put_nowait((time.time(), payload))
        except queue.Full:
            if self._dropped == 0:
                log.warning("event consumer too slow: dropping events")
            self._dropped += 1

    def start(self) -> None:
        """LISTEN now (iterating or `capture` does it too); events sent from here on arrive."""
        from pgq.db.listener import Listener

        with self._lock:
            if self._listener is not None:
                return
            dsn = self.app.listen_dsn
            if dsn is None:
                raise ConfigurationError("events need LISTEN: with pgbouncer=on set listen_dsn "
                                         "to a direct connection to PostgreSQL")
            channel = self.app.queries.events_channel
            self._listener = Listener(dsn, [channel])
            self._listener.on(channel, self._on_payload)
            self._listener.start()

    def close(self) -> None:
        """Stop listening (a capture in progress returns)."""
        self.should_stop = True
        with self._lock:
            if self._listener is not None:
                self._listener.stop()
                self._listener = None

    def __enter__(self) -> EventReceiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- consuming --------------------------------------------------------------------------

    def itercapture(self, limit: int | None = None, timeout: float | None = None
                    ) -> Iterator[Event]:
        """Yield events as they come: until `limit` events, or `timeout` seconds without
        one, or `should_stop`."""
        self.start()
        count = 0
        last = time.monotonic()
        try:
            while not self.should_stop and (limit is None or count < limit):
                try:
                    received, payload = self._inbox.get(timeout=0.2)
                except queue.Empty:
                    if timeout is not None and time.monotonic() - last >= timeout:
                        return
                    continue
                last = time.monotonic()
                try:
                    events = expand(payload, received)
                except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError,
                        IndexError):
                    log.warning("skipping a malformed event payload: %.80s", payload)
                    continue
                for event in events:
                    if matches(event, self.queues):
                        yield event
                        count += 1
                        if limit is not None and count >= limit:
                            return
        finally:
            self.close()

    __iter__ = itercapture

    def capture(self, limit: int | None = None, timeout: float | None = None,
                wakeup: bool = True) -> None:
        """Call the handlers for each event (Celery's `Receiver.capture`; `wakeup` is
        accepted: heartbeats come every worker_heartbeat_interval anyway)."""
        for event in self.itercapture(limit, timeout):
            self.process(event["type"], event)

    def process(self, kind: str, event: Event) -> None:
        handler = self.handlers.get(kind) or self.handlers.get("*")
        if handler is not None:
            handler(event)


class Events:
    """`app.events`: `app.events()` iterates over live events; `app.events.Receiver(...)` is
    Celery's spelling of `EventReceiver`."""

    def __init__(self, app: App) -> None:
        self.app = app

    def __call__(self, queues: Sequence[str] | None = None, limit: int | None = None,
                 timeout: float | None = None) -> Iterator[Event]:
        return EventReceiver(self.app, queues=queues).itercapture(limit, timeout)

    def Receiver(self, connection: Any = None, handlers: Mapping[str, Handler] | None = None,
                 queues: Sequence[str] | None = None, **_: Any) -> EventReceiver:
        return EventReceiver(self.app, handlers, queues)


__all__ = ["FIELDS", "Event", "EventReceiver", "Events", "expand"]
