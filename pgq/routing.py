"""Queues on other PostgreSQL databases: the `queue_databases` setting.

`queue_databases={"heavy": "postgresql://db2/jobs"}` puts the `heavy` queue's jobs (and their
results) in that database; every other queue stays in the app's own. A job is written where
its queue lives, `pgq worker -Q heavy` connects there, AsyncResult reads from there. A
workflow (chain, group, chord, link callbacks) is carried forward by the worker that finishes
each step, inside one database transaction, so all its steps must live in one database:
asking for more raises `CrossDatabaseWorkflow` at the call, before anything is written.
(Celery's `task_routes` maps task names to queues; this maps queues to databases.)
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from pgq.db.connection import execute, redact
from pgq.errors import ConfigurationError, PgqError

if TYPE_CHECKING:
    from pgq.app import App
    from pgq.enqueue import JobRow
    from pgq.workflow import ChordRow


class CrossDatabaseWorkflow(PgqError, ValueError):
    """The jobs of one call (a workflow, a bulk enqueue) would live in different databases."""


def routes(app: App) -> Mapping[str, str]:
    return app.conf.queue_databases or {}


def database_for(app: App, queue: str) -> str | None:
    """The DSN of `queue`'s database; None when no queue is routed (everything is in the
    app's own database)."""
    table = routes(app)
    if not table:
        return None
    return table.get(queue) or app.default_dsn


def databases(app: App) -> list[str]:
    """Every database the app's jobs may live in: its own first."""
    return list(dict.fromkeys([app.default_dsn, *routes(app).values()]))


def describe(app: App, dsn: str) -> str:
    return "the app's own database" if dsn == app.default_dsn else repr(redact(dsn))


# --- which queues a call touches ---------------------------------------------------------------


def signature_queues(app: App, sig: Mapping[str, Any]) -> Iterator[str]:
    """The queues of every job `sig` may ever enqueue: its steps, members, chord body and
    callbacks (not the arguments: a dict argument is data, never a signature)."""
    from pgq.enqueue import _queue

    kind = sig.get("subtask_type")
    kwargs = sig.get("kwargs") or {}
    if kind in ("chain", "group"):
        for step in kwargs.get("tasks") or ():
            yield from signature_queues(app, step)
    elif kind == "chord":
        for member in kwargs.get("header") or ():
            yield from signature_queues(app, member)
        if kwargs.get("body"):
            yield from signature_queues(app, kwargs["body"])
    else:
        name = str(sig["task"])
        yield _queue(app, name, app.tasks.get(name), sig.get("options") or {})
    yield from options_queues(app, sig.get("options") or {})


def options_queues(app: App, options: Mapping[str, Any]) -> Iterator[str]:
    """Queues of what a job's options will start: link, link_error, the rest of its chain."""
    for key in ("link", "link_error", "chain"):
        value = options.get(key)
        for sig in [value] if isinstance(value, Mapping) else value or ():
            yield from signature_queues(app, sig)


def database_of(app: App, rows: Sequence[JobRow],
                chords: Iterable[ChordRow] = ()) -> str | None:
    """The one database these rows (and all they will start) belong to; None when nothing is
    routed. Raises `CrossDatabaseWorkflow` when they span two."""
    if not routes(app) or not rows:
        return None
    queues: dict[str, None] = {}
    for row in rows:
        queues[row.queue] = None
        if row.options != "{}":
            queues.update(dict.fromkeys(options_queues(app, orjson.loads(row.options))))
    for chord in chords:
        queues.update(dict.fromkeys(signature_queues(app, orjson.loads(chord.body))))
    where: dict[str, list[str]] = {}
    for queue in queues:
        where.setdefault(database_for(app, queue) or app.default_dsn, []).append(queue)
    if len(where) > 1:
        parts = "; ".join(f"queue(s) {', '.join(map(repr, qs))} in {describe(app, dsn)}"
                          for dsn, qs in where.items())
        raise CrossDatabaseWorkflow(
            f"these jobs would span databases ({parts}): a workflow or a bulk enqueue is "
            "written, and carried forward, in one transaction of one database; route all its "
            "queues to one database (queue_databases) or send the parts separately")
    return next(iter(where))


# --- transactional enqueue on the caller's connection --------------------------------------

# The identity of the database a connection reaches; pgq.aio runs it on async connections.
IDENTITY_SQL = "SELECT system_identifier::text, current_database() FROM pg_control_system()"
_identities: weakref.WeakKeyDictionary[Any, tuple[str, str]] = weakref.WeakKeyDictionary()
_dsn_identities: dict[str, tuple[str, str]] = {}


def known_identity(conn: Any) -> tuple[str, str] | None:
    try:
        return _identities.get(conn)
    except TypeError:  # not weak-referenceable: ask each time
        return None


def remember_identity(conn: Any, rows: Sequence[tuple[Any, ...]]) -> tuple[str, str]:
    """The identity in `rows` (IDENTITY_SQL's answer on `conn`), kept for `conn`."""
    found = _parse_identity(rows)
    with contextlib.suppress(TypeError):
        _identities[conn] = found
    return found


def known_database(dsn: str) -> tuple[str, str] | None:
    return _dsn_identities.get(dsn)


def remember_database(dsn: str, rows: Sequence[tuple[Any, ...]]) -> tuple[str, str]:
    """The identity of database `dsn`, from IDENTITY_SQL's `rows` on one of its connections."""
    _dsn_identities[dsn] = found = _parse_identity(rows)
    return found


def _parse_identity(rows: Sequence[tuple[Any, ...]]) -> tuple[str, str]:
    ((system, database),) = rows
    return str(system), str(database)


def _identity(conn: Any) -> tuple[str, str]:
    return known_identity(conn) or remember_identity(conn, execute(conn, IDENTITY_SQL))


def check_connection(app: App, conn: Any, dsn: str) -> None:
    """The caller's connection must reach the database the jobs belong to (same cluster —
    a promoted replica counts — and same database name)."""
    expected = known_database(dsn)
    if expected is None:
        with app.pool_for(dsn).connection() as own:
            expected = remember_database(dsn, execute(own, IDENTITY_SQL))
    check_identity(app, _identity(conn), expected, dsn)


def check_identity(app: App, found: tuple[str, str], expected: tuple[str, str],
                   dsn: str) -> None:
    if found != expected:
        raise CrossDatabaseWorkflow(
            f"connection= reaches another database than these jobs' queue, which lives in "
            f"{describe(app, dsn)} (queue_databases): pass a connection to that database, or "
            "enqueue without connection=")


# --- workers ---------------------------------------------------------------------------------


def worker_database(app: App, queues: Sequence[str]) -> str | None:
    """The one database a worker for `queues` connects to (None: the app's own, nothing
    routed). A worker serves one database: queues in two raise `ConfigurationError`."""
    if not routes(app):
        return None
    where: dict[str, list[str]] = {}
    for queue in queues:
        where.setdefault(database_for(app, queue) or app.default_dsn, []).append(queue)
    if len(where) > 1:
        parts = "; ".join(f"{', '.join(qs)} in {describe(app, dsn)}"
                          for dsn, qs in where.items())
        raise ConfigurationError(
            f"-Q names queues in different databases ({parts}): run one worker per database "
            "(queue_databases)")
    return next(iter(where))
