"""One LISTEN connection per process, read by a daemon thread that hands each notification to
the callbacks registered for its channel. It reconnects with backoff on its own and tells
`on_reconnect` callbacks, so waiters re-check what they may have missed."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg import sql

from pgq.db.connection import connect, first_line, redact

log = logging.getLogger("pgq.listener")

Callback = Callable[[str], None]


class SilentConnection(Exception):
    """The self-probe did not come back: the connection looks open but delivers nothing."""


class Listener:
    """`probe_channel`/`probe_timeout`: someone (the worker's heartbeat) NOTIFYs that channel
    regularly; when nothing arrives for `probe_timeout` seconds the connection is treated as
    dead (a hung backend, a half-open TCP connection) and replaced."""

    def __init__(self, dsn: str, channels: Iterable[str], *, probe_channel: str | None = None,
                 probe_timeout: float | None = None) -> None:
        self.dsn = dsn
        self.channels = list(channels) + ([probe_channel] if probe_channel else [])
        self.probe_channel = probe_channel
        self.probe_timeout = probe_timeout
        self._last_probe = 0.0
        self._heard = False  # this connection has heard its own probe
        self._deaf = 0  # connections in a row that never heard it
        self._callbacks: dict[str, list[Callback]] = defaultdict(list)
        self._reconnect_callbacks: list[Callable[[], None]] = []
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        # time.monotonic() when the current connection's LISTENs took effect; None while
        # there is none. Every notification committed after that reaches the callbacks.
        self.live_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="pgq-listener", daemon=True)

    def on(self, channel: str, callback: Callback) -> None:
        self._callbacks[channel].append(callback)

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self._reconnect_callbacks.append(callback)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        self._ready.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    def stop(self) -> None:
        self._stopped.set()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):  # closing anyway
                conn.cancel_safe(timeout=1)

    def _listen(self) -> psycopg.Connection[Any]:
        conn = connect(self.dsn, autocommit=True)
        for channel in self.channels:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        return conn

    DEAF_LIMIT = 3

    def _level(self) -> int:
        return logging.DEBUG if self._deaf > self.DEAF_LIMIT else logging.WARNING

    def _note_deaf(self) -> None:
        """Connections that never hear their own probe: notifications do not reach this DSN
        at all (PgBouncer in transaction mode). Say so once; reconnects then back off."""
        self._deaf += 1
        if self._deaf == self.DEAF_LIMIT:
            log.error("LISTEN over %r has not heard its own probe on %d connections in a row: "
                      "notifications do not reach it. Is it going through PgBouncer in "
                      "transaction mode? listen_dsn must be a direct connection to PostgreSQL "
                      "(or a session-mode pool); until then the worker only polls",
                      redact(self.dsn), self._deaf)

    def _check_probe(self) -> None:
        if self.probe_timeout and time.monotonic() - self._last_probe > self.probe_timeout:
            raise SilentConnection(f"no self-probe for {self.probe_timeout:.0f}s")

    def _run(self) -> None:
        delay = 0.1
        first = True
        while not self._stopped.is_set():
            try:
                self._conn = self._listen()
                self.live_since = time.monotonic()
                self._ready.set()
                if not first:
                    log.log(self._level(), "LISTEN connection re-established")
                    for reconnected in self._reconnect_callbacks:
                        reconnected()
                first = False
                if not self.probe_channel:
                    delay = 0.1
                self._last_probe = time.monotonic()
                self._heard = False
                while not self._stopped.is_set():
                    for note in self._conn.notifies(timeout=1.0):
                        if note.channel == self.probe_channel:
                            self._last_probe = time.monotonic()
                            self._heard, self._deaf, delay = True, 0, 0.1
                        for callback in self._callbacks.get(note.channel, ()):
                            callback(note.payload)
                    self._check_probe()
            except Exception as exc:
                self.live_since = None
                self._ready.clear()
                if self._stopped.is_set():
                    break
                if isinstance(exc, SilentConnection) and not self._heard:
                    self._note_deaf()
                log.log(self._level(), "LISTEN connection lost (%s); reconnecting in %.1fs",
                        first_line(exc), delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
