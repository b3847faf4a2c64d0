"""Connections: checking DSNs, opening connections with clear errors, the producer pool, and
running pgq's statements on a connection the caller handed us (transactional enqueue)."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool
from psycopg import conninfo, pq

from pgq.errors import ConfigurationError, PgqError


class DatabaseUnavailable(PgqError, ConnectionError):
    """PostgreSQL cannot be reached (or refused the connection)."""


def check_dsn(dsn: str) -> str:
    try:
        conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"malformed DSN {redact(dsn)!r}: {first_line(exc)}") from None
    return dsn


def redact(dsn: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", re.sub(r"password=\S+", "password=***", dsn))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# A peer that vanished without closing (lost host, dropped network) is noticed in ~25 s
# instead of the kernel's ~15 minutes. Ignored on Unix sockets; a DSN's own values win.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
              "keepalives_count": 3, "tcp_user_timeout": 25000}


def connect(dsn: str, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open a connection; an unreachable server becomes one clear `DatabaseUnavailable`."""
    given = conninfo.conninfo_to_dict(dsn)
    extra: dict[str, Any] = {k: v for k, v in KEEPALIVES.items()
                             if k not in given and k not in kwargs}
    try:
        return psycopg.connect(dsn, autocommit=autocommit, **extra, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL at {redact(dsn)!r}: {first_line(exc)} "
            "(check --dsn / PGQ_DSN and that the server is running)"
        ) from None


class ProducerPool:
    """A psycopg pool per process (a forked child gets a fresh one, never its parent's)."""

    def __init__(self, dsn: str, max_size: int, kwargs: dict[str, Any] | None = None) -> None:
        self.dsn = dsn
        self.max_size = max_size
        self.kwargs = kwargs or {}
        self._pid = -1
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        self._lock = threading.Lock()

    def _get(self) -> psycopg_pool.ConnectionPool[psycopg.Connection[Any]]:
        if self._pool is None or self._pid != os.getpid():
            with self._lock:
                if self._pool is None or self._pid != os.getpid():
                    connect(self.dsn).close()  # fail fast, with a clear message
                    self._pool = psycopg_pool.ConnectionPool(
                        self.dsn, min_size=1, max_size=self.max_size, timeout=30,
                        kwargs={"autocommit": True, **self.kwargs}, open=True,
                        name="pgq",
                    )
                    self._pid = os.getpid()
        return self._pool

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        # getconn/putconn rather than the pool's own context manager, which also enters the
        # connection's (a commit call, a no-op in autocommit): ~10 us off every delay().
        # putconn still rolls back a transaction left open and replaces a broken connection.
        pool = self._get()
        conn = pool.getconn()
        try:
            yield conn
        finally:
            pool.putconn(conn)

    def close(self) -> None:
        if self._pool is not None and self._pid == os.getpid():
            self._pool.close()
        self._pool = None


def dbapi_connection(connection: Any) -> Any:
    """The DB-API connection under what the caller passed (psycopg, SQLAlchemy Connection or
    Session, Django's connection, or any DB-API connection), with a transaction begun where
    SQLAlchemy needs one so that the caller's own `commit()` commits our rows."""
    if isinstance(connection, psycopg.Connection):
        return connection
    module = type(connection).__module__
    if isinstance(connection, psycopg.AsyncConnection) or module.startswith(
            "sqlalchemy.ext.asyncio"):
        raise ConfigurationError(
            f"{type(connection).__name__} is an async connection: use the async calls "
            "(await task.aapply_async(..., connection=...), adelay, asend_task, "
            "aenqueue_many)"
        )
    if module.startswith("django."):
        return django_connection(connection)
    if module.startswith("sqlalchemy"):
        if hasattr(connection, "get_bind"):  # orm.Session
            connection = connection.connection()
        if not connection.in_transaction():
            connection.begin()
        return connection.connection.dbapi_connection
    if hasattr(connection, "cursor"):
        return connection
    raise ConfigurationError(
        f"connection= must be a psycopg Connection, a SQLAlchemy Connection or Session, "
        f"not {type(connection).__name__}"
    )


def django_connection(connection: Any) -> Any:
    """The driver connection under Django's `connection` / `connections[alias]`. Writing on it
    joins whatever Django is doing: inside `transaction.atomic()` its transaction (or
    savepoint); outside one, Django's autocommit, like an ORM `save()`."""
    if getattr(connection, "vendor", None) != "postgresql":
        raise ConfigurationError(
            f"connection= got a Django {getattr(connection, 'vendor', '?')} connection: pgq "
            "needs the PostgreSQL database that holds its schema"
        )
    connection.ensure_connection()
    return connection.connection


def execute(
    conn: Any, query: str, params: Mapping[str, Any] | Sequence[Any] | None = None
) -> list[tuple[Any, ...]]:
    """Run one statement on a DB-API connection and return its rows (if any)."""
    if isinstance(conn, psycopg.Connection):
        cur = conn.execute(query, params)
        # (Not `description`, which builds a Column object per column at every call.)
        result = cur.pgresult
        has_rows = result is not None and result.status == pq.ExecStatus.TUPLES_OK
    else:
        cur = conn.cursor()
        cur.execute(query, params)
        has_rows = cur.description is not None
    return list(cur.fetchall()) if has_rows else []
