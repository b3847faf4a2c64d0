"""Turn (task name, args, kwargs, options) into job rows and insert them: on the caller's
connection (inside its transaction) or through the app's pool. One statement per batch."""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from collections.abc import Generator, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

import psycopg

from pgq import payload, routing, serialization, signals
from pgq import request as request_context
from pgq.db.connection import dbapi_connection, execute
from pgq.errors import InvalidOption

if TYPE_CHECKING:
    from pgq.app import App
    from pgq.task import Task


# Per-call options the worker needs at run time; stored in the row's `options` column.
RUNTIME_OPTIONS = ("time_limit", "soft_time_limit", "ignore_result", "headers", "link",
                   "link_error", "shadow", "max_retries", "chain", "chord")
# Accepted for Celery compatibility; they change nothing here.
IGNORED_OPTIONS = frozenset({"retry", "retry_policy", "exchange",
                             "exchange_type", "delivery_mode", "mandatory", "immediate",
                             "add_to_parent", "reply_to", "producer", "publisher",
                             "correlation_id", "group_index",
                             "routing_key", "task_id", "connection", "unique_key", "queue",
                             "priority", "countdown", "eta", "expires", "subtask_type"})

# How the arguments are encoded: they shape the row itself (docs/serialization.md).
PAYLOAD_OPTIONS = ("serializer", "compression")

ALLOWED_OPTIONS = (frozenset(RUNTIME_OPTIONS) | IGNORED_OPTIONS | frozenset(PAYLOAD_OPTIONS)
                   | {"group_id", "root_id", "parent_id"})


class JobRow(NamedTuple):
    id: str
    task: str
    queue: str
    priority: int
    args: str
    kwargs: str
    options: str
    run_at: datetime | None
    expires_at: datetime | None
    unique_key: str | None
    root_id: str | None
    parent_id: str | None
    group_id: str | None
    chosen_id: bool = False  # the caller gave task_id: it may already exist
    # Set only for jobs that are not plain JSON, or are signed (pgq/payload.py, security.py).
    content_type: str | None = None
    compression: str | None = None
    payload: bytes | None = None
    payload_size: int | None = None
    signature: str | None = None


def build_row(
    app: App,
    name: str,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    options: Mapping[str, Any],
    task: Task | None = None,
) -> JobRow:
    if options and not options.keys() <= ALLOWED_OPTIONS:
        unknown = sorted(set(options) - ALLOWED_OPTIONS)
        raise InvalidOption(f"unknown calling option(s) {unknown} for task {name!r}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise InvalidOption(f"kwargs for {name!r} must be a mapping, not "
                            f"{type(kwargs).__name__}")
    args = list(args or ())
    kwargs = dict(kwargs or {})
    policy = payload.producer_policy(app)
    encoded = _encode(app, policy, task, options, args, kwargs)
    runtime = {key: options[key] for key in RUNTIME_OPTIONS if options.get(key) is not None}
    for callbacks in ("link", "link_error"):  # one signature or a list of them
        if isinstance(runtime.get(callbacks), Mapping):
            runtime[callbacks] = [runtime[callbacks]]
    parent = request_context.current()
    if parent is None or parent.called_directly or parent.id is None:
        parent = None
    row = JobRow(
        id=_task_id(options.get("task_id")),
        task=name,
        queue=_queue(app, name, task, options),
        priority=_priority(app, task, options.get("priority")),
        args=encoded.args,
        kwargs=encoded.kwargs,
        options=serialization.dumps(runtime, "options") if runtime else "{}",
        run_at=_run_at(options.get("countdown"), options.get("eta")),
        expires_at=_expires_at(options.get("expires", task.expires if task else None)),
        unique_key=_unique_key(name, task, encoded, args, kwargs, options.get("unique_key")),
        root_id=options.get("root_id") or (parent.root_id if parent else None),
        parent_id=options.get("parent_id") or (parent.id if parent else None),
        group_id=options.get("group_id"),
        chosen_id=options.get("task_id") is not None,
        content_type=encoded.content_type,
        compression=encoded.compression,
        payload=encoded.payload,
        payload_size=encoded.payload_size,
    )
    signer = policy.signer
    return row if signer is None else row._replace(signature=signer.sign(row))


def build_rows(app: App, signatures: Sequence[Mapping[str, Any]]) -> list[JobRow]:
    """Rows for many task signatures. Signatures without options share everything but their
    id and arguments, so each task's row is built once and copied (the bulk fast path)."""
    templates: dict[str, JobRow] = {}
    rows = []
    plain_app = payload.producer_policy(app).plain
    for sig in signatures:
        name, options = sig["task"], sig["options"]
        task = app.tasks.get(name)
        if options or not plain_app or (task is not None and (
                task.unique or task.serializer or task.compression)):
            rows.append(build_row(app, name, sig["args"], sig["kwargs"], options, task))
            continue
        template = templates.get(name)
        if template is None:
            template = templates[name] = build_row(app, name, (), None, {}, task)
        kwargs = sig["kwargs"]
        rows.append(template._replace(
            id=new_id(),
            args=serialization.dumps(sig["args"], "args"),
            kwargs=serialization.dumps(kwargs, "kwargs") if kwargs else "{}",
        ))
    return rows


def _encode(app: App, policy: payload.ProducerPolicy, task: Task | None,
            options: Mapping[str, Any], args: list[Any], kwargs: dict[str, Any]
            ) -> payload.Encoded:
    """Per call, else per task, else the app's serializer and compression."""
    serializer = compression = None
    if options:
        serializer, compression = options.get("serializer"), options.get("compression")
    if task is not None:
        serializer = serializer or task.serializer
        compression = compression or task.compression
    return payload.encode_arguments(app, policy, serializer or policy.serializer,
                                    compression or policy.compression, args, kwargs)


def new_id() -> str:
    """A time-ordered UUID (version 7, RFC 9562: Unix milliseconds, then 74 random bits) as
    text. Every update of a job adds an entry for its id to the primary key (no update of
    `jobs` can be HOT): with random ids those land on random pages of an index that also holds
    every finished job kept, and a big history made each drain several times slower; with
    time-ordered ids they stay together at the index's newest end."""
    h = f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"
    return f"{h[:8]}-{h[8:12]}-7{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def _task_id(value: Any) -> str:
    if value is None:
        return new_id()
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise InvalidOption(f"task_id {value!r} is not a UUID") from None


def _queue(app: App, name: str, task: Task | None, options: Mapping[str, Any]) -> str:
    queue = options.get("queue") or options.get("routing_key")
    if queue is None:
        queue = app.route_for(name)
    if queue is None and task is not None:
        queue = task.queue
    queue = queue or app.default_queue
    if isinstance(queue, dict):  # Celery's {"queue": name} form
        queue = queue.get("queue") or app.default_queue
    if not isinstance(queue, str) or not queue:
        raise InvalidOption(f"queue must be a non-empty string, got {queue!r}")
    return queue


def _priority(app: App, task: Task | None, value: Any) -> int:
    if value is None:
        value = task.priority if task is not None and task.priority is not None else None
    if value is None:
        value = app.conf.task_default_priority
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise InvalidOption(f"priority must be an int from 0 to 9 (9 runs first), got {value!r}")
    return value


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _run_at(countdown: Any, eta: Any) -> datetime | None:
    if countdown is not None and eta is not None:
        raise InvalidOption("give countdown or eta, not both")
    if countdown is not None:
        if isinstance(countdown, timedelta):
            countdown = countdown.total_seconds()
        if isinstance(countdown, bool) or not isinstance(countdown, int | float):
            raise InvalidOption(f"countdown must be a number of seconds, got {countdown!r}")
        if countdown < 0:
            raise InvalidOption(f"countdown must not be negative, got {countdown!r}")
        return datetime.now(UTC) + timedelta(seconds=countdown) if countdown else None
    if eta is not None:
        if not isinstance(eta, datetime):
            raise InvalidOption(f"eta must be a datetime, got {type(eta).__name__}")
        return _aware(eta)
    return None


def _expires_at(expires: Any) -> datetime | None:
    if expires is None:
        return None
    if isinstance(expires, datetime):
        return _aware(expires)
    if isinstance(expires, timedelta):
        expires = expires.total_seconds()
    if isinstance(expires, bool) or not isinstance(expires, int | float) or expires < 0:
        raise InvalidOption(f"expires must be seconds (>= 0) or a datetime, got {expires!r}")
    return datetime.now(UTC) + timedelta(seconds=expires)


def _unique_key(name: str, task: Task | None, encoded: payload.Encoded, args: list[Any],
                kwargs: dict[str, Any], key: Any) -> str | None:
    if key is not None:
        return str(key)
    if task is not None and task.unique:
        source = payload.unique_digest_source(encoded, args, kwargs)
        return name + ":" + hashlib.sha256(source).hexdigest()
    return None


def insert(app: App, rows: Sequence[JobRow], connection: Any = None, *,
           route: bool = True) -> list[str]:
    """Insert `rows` in one statement; return the id that stands for each row (for a unique
    key that was already queued, the id of the job already there). The rows go to their
    queue's database (`queue_databases`); `route=False`: the worker carrying a workflow
    forward on its own connection, where the workflow was checked to live."""
    if (connection is None and len(rows) == 1 and _is_new(rows[0])
            and not (signals.before_task_publish.receivers
                     or signals.after_task_publish.receivers)):
        return [_insert_new(app, rows[0], route)]
    return insert_plan(app, rows, (), connection, route=route)


def _insert_new(app: App, row: JobRow, route: bool) -> str:
    """The `delay()` path: one new job, one statement on a pooled connection. The same
    statement `insert_plan` would run, without its machinery (~15 us a call)."""
    dsn = routing.database_of(app, [row]) if route else None
    with app.pool_for(dsn or app.dsn).connection() as conn:
        conn.execute(*_new_statement(app, row))
    return row.id


COPY_THRESHOLD = 100


def insert_plan(app: App, jobs: Sequence[JobRow], chords: Sequence[Any],
                connection: Any = None, *, route: bool = True) -> list[str]:
    """Insert a workflow's job rows and chord rows atomically, in their queues' database
    (`route` as for `insert`)."""
    if not jobs and not chords:
        return []
    dsn = routing.database_of(app, jobs, chords) if route else None
    if connection is not None:
        conn = dbapi_connection(connection)
        if dsn is not None:
            routing.check_connection(app, conn, dsn)
        return run_steps(conn, plan_steps(app, jobs, chords, _can_copy(conn)))
    with app.pool_for(dsn or app.dsn).connection() as conn:
        steps = plan_steps(app, jobs, chords, can_copy=True)
        if not chords:  # one statement is atomic on its own
            return run_steps(conn, steps)
        with conn.transaction():
            return run_steps(conn, steps)


def insert_chords(app: App, conn: Any, chords: Sequence[Any]) -> None:
    if chords:
        execute(conn, *_chords_statement(app, chords))


# --- the statements of an insert, apart from how they run (sync here, async in pgq.aio) ----


class Copy(NamedTuple):
    """A step that COPYs `rows` (tuples) with `query` instead of executing a statement."""

    query: str
    rows: Iterable[tuple[Any, ...]]


Step = tuple[str, Mapping[str, Any]] | Copy
Steps = Generator[Step, list[tuple[Any, ...]], list[str]]


def plan_steps(app: App, jobs: Sequence[JobRow], chords: Sequence[Any], can_copy: bool
               ) -> Steps:
    """The statements that insert `chords` and `jobs`; each step receives its rows back, and
    the generator returns the id that stands for each job row. The publish signals are sent
    here, so that the sync and async drivers both send them: before_task_publish before the
    first statement, after_task_publish once the rows are written (inside the transaction
    that writes them, before it commits)."""
    if signals.before_task_publish.receivers:
        jobs = [_before_publish(app, row) for row in jobs]
    if chords:
        yield _chords_statement(app, chords)
    if not jobs:
        return []
    ids = yield from _job_steps(app, jobs, can_copy)
    if signals.after_task_publish.receivers:
        _after_publish(app, jobs, ids)
    return ids


def _job_steps(app: App, jobs: Sequence[JobRow], can_copy: bool) -> Steps:
    if len(jobs) == 1 and _is_new(jobs[0]):
        yield _new_statement(app, jobs[0])
        return [jobs[0].id]
    if len(jobs) == 1:
        inserted = {str(r[0]) for r in (yield app.queries.enqueue_one, _one_params(jobs[0]))}
    elif (can_copy and len(jobs) >= COPY_THRESHOLD
          and not any(r.unique_key or r.chosen_id for r in jobs)):
        yield _copy_step(app, jobs)
        return [r.id for r in jobs]
    else:
        inserted = {str(r[0]) for r in (yield app.queries.enqueue, _arrays(jobs))}
    ids = [r.id for r in jobs]
    skipped_keys = [r.unique_key for r in jobs if r.id not in inserted and r.unique_key]
    if skipped_keys:
        existing = {key: str(job_id) for key, job_id in
                    (yield app.queries.find_unique, {"keys": skipped_keys})}
        ids = [existing.get(r.unique_key, r.id) if r.id not in inserted and r.unique_key
               else r.id for r in jobs]
    return ids


def run_steps(conn: Any, steps: Steps) -> list[str]:
    """Run `steps` on a DB-API connection."""
    try:
        step = next(steps)
        while True:
            if isinstance(step, Copy):
                with conn.cursor().copy(step.query) as copy:
                    for values in step.rows:
                        copy.write_row(values)
                step = steps.send([])
            else:
                step = steps.send(execute(conn, *step))
    except StopIteration as done:
        return list(done.value)


def _after_publish(app: App, jobs: Sequence[JobRow], ids: Sequence[str]) -> None:
    for row, job_id in zip(jobs, ids, strict=True):
        if job_id == row.id:  # not a unique key's existing job
            headers, body, _ = _message(app, row)
            signals.after_task_publish.send(sender=row.task, body=body, exchange="",
                                            routing_key=row.queue, headers=headers)


# Celery's message headers (protocol 2) that describe the job; any other header a
# before_task_publish receiver adds is the user's and reaches `self.request.headers`.
MESSAGE_HEADERS = frozenset({"lang", "task", "id", "shadow", "eta", "expires", "group",
                             "group_index", "retries", "timelimit", "root_id", "parent_id",
                             "ignore_result", "origin", "argsrepr", "kwargsrepr"})


def _message(app: App, row: JobRow) -> tuple[dict[str, Any], tuple[Any, Any, dict[str, Any]],
                                             dict[str, Any]]:
    """What Celery's publish signals see: headers, body (args, kwargs, embed), and the
    row's runtime options."""
    options = serialization.loads(row.options) if row.options != "{}" else {}
    try:
        args, kwargs = payload.decode_arguments(payload.worker_policy(app), row, options)
    except Exception:  # a content type this process does not read: pass it as stored
        args, kwargs = row.args, row.kwargs
    headers = {
        "lang": "py", "task": row.task, "id": row.id, "shadow": options.get("shadow"),
        "eta": row.run_at.isoformat() if row.run_at else None,
        "expires": row.expires_at.isoformat() if row.expires_at else None,
        "group": row.group_id, "group_index": None, "retries": 0,
        "timelimit": [options.get("time_limit"), options.get("soft_time_limit")],
        "root_id": row.root_id or row.id, "parent_id": row.parent_id,
        "ignore_result": bool(options.get("ignore_result", False)),
        "origin": f"gen{os.getpid()}@{socket.gethostname()}",
        **(options.get("headers") or {}),
    }
    embed = {"callbacks": options.get("link"), "errbacks": options.get("link_error"),
             "chain": options.get("chain"), "chord": options.get("chord")}
    return headers, (args, kwargs, embed), options


def _before_publish(app: App, row: JobRow) -> JobRow:
    """Send before_task_publish; keep the headers its receivers added or changed (a signed
    job is signed again: its options are part of what is signed)."""
    headers, body, options = _message(app, row)
    own = options.get("headers") or {}
    signals.before_task_publish.send(
        sender=row.task, body=body, exchange="", routing_key=row.queue, headers=headers,
        properties={"correlation_id": row.id, "priority": row.priority,
                    "content_type": row.content_type or "application/json",
                    "content_encoding": "binary" if row.payload is not None else "utf-8"},
        declare=[], retry_policy=None)
    custom = {k: v for k, v in headers.items() if k not in MESSAGE_HEADERS or k in own}
    if custom == own:
        return row
    if custom:
        options["headers"] = custom
    else:
        options.pop("headers", None)
    row = row._replace(options=serialization.dumps(options, "options") if options else "{}")
    signer = payload.producer_policy(app).signer
    return row if row.signature is None or signer is None else row._replace(
        signature=signer.sign(row))


def _can_copy(conn: Any) -> bool:
    return isinstance(conn, psycopg.Connection)


def _chords_statement(app: App, chords: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    return app.queries.insert_chords, {
        "ids": [c.id for c in chords],
        "pendings": [len(c.header_ids) for c in chords],
        "header_ids": ["{" + ",".join(c.header_ids) + "}" for c in chords],
        "bodies": [c.body for c in chords],
        "body_ids": [c.body_id for c in chords],
        "options": [c.options for c in chords],
    }


def _is_new(row: JobRow) -> bool:
    """Nothing can conflict with this row: pgq made its id and it has no unique key."""
    return row.unique_key is None and not row.chosen_id


def _new_statement(app: App, row: JobRow) -> tuple[str, dict[str, Any]]:
    if _is_plain(row):
        return app.queries.enqueue_plain, _plain_params(row)
    return app.queries.enqueue_new, _one_params(row)


def _is_plain(row: JobRow) -> bool:
    """Nothing but the columns `enqueue_plain` writes (the others are NULL)."""
    return (row.run_at is None and row.expires_at is None and row.root_id is None
            and row.parent_id is None and row.group_id is None and row.payload is None
            and row.content_type is None and row.signature is None)


def _plain_params(row: JobRow) -> dict[str, Any]:
    return {"id": row.id, "task": row.task, "queue": row.queue, "priority": row.priority,
            "args": row.args, "kwargs": row.kwargs, "options": row.options}


def _one_params(row: JobRow) -> dict[str, Any]:
    return {
        "id": row.id, "task": row.task, "queue": row.queue, "priority": row.priority,
        "args": row.args, "kwargs": row.kwargs, "options": row.options, "run_at": row.run_at,
        "expires_at": row.expires_at, "unique_key": row.unique_key, "root_id": row.root_id,
        "parent_id": row.parent_id, "group_id": row.group_id,
        "content_type": row.content_type, "compression": row.compression,
        "payload": row.payload, "payload_size": row.payload_size, "signature": row.signature,
    }


def _arrays(rows: Sequence[JobRow]) -> dict[str, list[Any]]:
    return {
        "ids": [r.id for r in rows],
        "tasks": [r.task for r in rows],
        "queues": [r.queue for r in rows],
        "priorities": [r.priority for r in rows],
        "args": [r.args for r in rows],
        "kwargs": [r.kwargs for r in rows],
        "options": [r.options for r in rows],
        "run_ats": [r.run_at for r in rows],
        "expires": [r.expires_at for r in rows],
        "unique_keys": [r.unique_key for r in rows],
        "root_ids": [r.root_id for r in rows],
        "parent_ids": [r.parent_id for r in rows],
        "group_ids": [r.group_id for r in rows],
        "content_types": [r.content_type for r in rows],
        "compressions": [r.compression for r in rows],
        "payloads": [r.payload for r in rows],
        "payload_sizes": [r.payload_size for r in rows],
        "signatures": [r.signature for r in rows],
    }


def _copy_step(app: App, rows: Sequence[JobRow]) -> Copy:
    """COPY the rows; with the payload columns only when a row uses them."""
    now = datetime.now(UTC)
    if any(r.content_type or r.signature for r in rows):
        return Copy(app.queries.enqueue_copy_payload, (
            (r.id, r.task, r.queue, r.priority, r.args, r.kwargs, r.options, r.run_at or now,
             r.run_at, r.expires_at, r.root_id or r.id, r.parent_id, r.group_id,
             r.content_type, r.compression, r.payload, r.payload_size, r.signature)
            for r in rows))
    return Copy(app.queries.enqueue_copy, (
        (r.id, r.task, r.queue, r.priority, r.args, r.kwargs, r.options, r.run_at or now,
         r.run_at, r.expires_at, r.root_id or r.id, r.parent_id, r.group_id) for r in rows))
