"""The `pgq` command: parses arguments, calls library functions, prints. Nothing more."""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
import psycopg

from pgq.app import App
from pgq.config import parse_autoscale
from pgq.db.connection import check_dsn, execute, first_line
from pgq.errors import ConfigurationError, PgqError


def _load_app(spec: str | None, dsn: str | None) -> App:
    app = App() if spec is None else _import_app(spec)
    if dsn:
        app._dsn = check_dsn(dsn)
    return app


def _import_app(spec: str) -> App:
    module_name, _, attr = spec.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import app module {module_name!r} (-A {spec}): "
                                 f"{exc}") from None
    if attr:
        found = getattr(module, attr, None)
        if not isinstance(found, App):
            raise ConfigurationError(f"{module_name!r} has no pgq.App named {attr!r}")
        return found
    for name in ("app", "celery"):
        if isinstance(getattr(module, name, None), App):
            return getattr(module, name)  # type: ignore[no-any-return]
    apps = [v for v in vars(module).values() if isinstance(v, App)]
    if len(apps) == 1:
        return apps[0]
    raise ConfigurationError(
        f"module {module_name!r} has {'no' if not apps else 'several'} pgq.App instances; "
        f"name one with -A {module_name}:ATTRIBUTE"
    )


class Context:
    def __init__(self, app_spec: str | None, dsn: str | None, debug: bool) -> None:
        self.app_spec = app_spec
        self.dsn = dsn
        self.debug = debug

    def app(self, app_spec: str | None = None, dsn: str | None = None) -> App:
        return _load_app(app_spec or self.app_spec, dsn or self.dsn)


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One clear line on stderr and exit code 1 for every expected failure."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        obj = click.get_current_context().find_object(Context)
        debug = obj.debug if obj is not None else False
        try:
            return fn(*args, **kwargs)
        except (PgqError, psycopg.Error) as exc:
            if debug:
                raise
            click.echo(f"pgq: error: {first_line(exc)}", err=True)
            sys.exit(1)

    return wrapper


app_option = click.option("-A", "--app", "app_spec", metavar="MODULE[:ATTR]",
                          help="The module holding your pgq.App.")
dsn_option = click.option("--dsn", metavar="DSN", help="PostgreSQL DSN (default: $PGQ_DSN).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@app_option
@dsn_option
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, app_spec: str | None, dsn: str | None, debug: bool) -> None:
    """pgq: a task queue in which PostgreSQL is the only moving part."""
    ctx.obj = Context(app_spec, dsn, debug)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                 "logger": record.name, "pid": record.process, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


# click >= 8.2 types ParamType by its value; older releases (still allowed) are not generic.
if TYPE_CHECKING:
    _ParamType = click.ParamType[tuple[int, int]]
else:
    _ParamType = click.ParamType


class AutoscaleType(_ParamType):
    name = "MAX,MIN"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[int, int]:
        try:
            return parse_autoscale(value)
        except ConfigurationError as exc:
            self.fail(str(exc).partition(": ")[2], param, ctx)


def _setup_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])


@main.command()
@app_option
@dsn_option
@click.option("-Q", "--queues", help="Comma-separated queues to consume (default: the app's).")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), help="Child processes.")
@click.option("--autoscale", type=AutoscaleType(),
              help="Grow the prefork pool up to MAX children while jobs wait, shrink it to MIN "
              "when they sit idle (default: worker_autoscale).")
@click.option("-P", "--pool", type=click.Choice(["prefork", "threads", "solo"]),
              help="Where jobs run (default: worker_pool, prefork).")
@click.option("--max-tasks-per-child", type=click.IntRange(min=1),
              help="Replace a child process after it ran N jobs.")
@click.option("--max-memory-per-child", type=click.IntRange(min=1), metavar="KIB",
              help="Replace a child process once its memory (RSS) exceeds KIB.")
@click.option("--prefetch-multiplier", type=click.IntRange(min=1),
              help="Hold at most concurrency x N jobs (default: sized from run times).")
@click.option("--time-limit", type=click.FloatRange(min=0), metavar="S",
              help="Hard time limit for tasks that set none: the child is killed.")
@click.option("--soft-time-limit", type=click.FloatRange(min=0), metavar="S",
              help="Soft time limit for tasks that set none: SoftTimeLimitExceeded.")
@click.option("-B", "--beat", is_flag=True, help="Also run the scheduler in this worker.")
@click.option("-n", "--hostname", help="Name shown in self.request.hostname and worker_status "
              "(%h, %n, %d expand as in Celery).")
@click.option("-l", "--loglevel", default="INFO", show_default=True,
              help="DEBUG, INFO, WARNING or ERROR.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one JSON object per line, for log shippers.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Serve Prometheus metrics on this port (needs pgq-tasks[metrics]).")
@click.option("--reload", is_flag=True,
              help="Development: start a fresh worker when a .py file of the app changes "
              "(running jobs finish on the old code). Needs pgq-tasks[reload].")
@click.option("--reload-dir", "reload_dirs", multiple=True, metavar="DIR",
              help="With --reload: also watch this directory (repeatable).")
@click.option("-E", "--task-events/--without-task-events", default=None,
              help="Publish task events for `pgq events` (default: worker_send_task_events, "
              "on).")
@click.option("--without-heartbeat", is_flag=True,
              help="Publish no worker-online/heartbeat/offline events (the liveness "
              "heartbeat in the database goes on).")
@click.pass_obj
@_errors
def worker(obj: Context, app_spec: str | None, dsn: str | None, queues: str | None,
           concurrency: int | None, autoscale: tuple[int, int] | None, pool: str | None,
           max_tasks_per_child: int | None, max_memory_per_child: int | None,
           prefetch_multiplier: int | None, time_limit: float | None,
           soft_time_limit: float | None, beat: bool, hostname: str | None, loglevel: str,
           log_format: str, metrics_port: int | None, reload: bool,
           reload_dirs: tuple[str, ...], task_events: bool | None,
           without_heartbeat: bool) -> None:
    """Run a worker: claim jobs of its queues and run them in a pool.

    Examples:

    \b
        pgq worker -A shop.tasks -c 4
        pgq worker -A shop.tasks:app -Q payments,emails --pool threads -c 16
        pgq worker -A shop.tasks --autoscale 10,3
        pgq worker -A shop.tasks --reload          # development
    """
    _setup_logging(loglevel, log_format)
    if reload or reload_dirs:
        _reload(obj, app_spec, reload, reload_dirs, metrics_port)
    from pgq.worker.supervisor import Worker

    app = obj.app(app_spec, dsn)
    app.import_modules()
    _check_security(app)
    queue_list = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    code = Worker(app, queues=queue_list, concurrency=concurrency, beat=beat,
                  metrics_port=metrics_port, autoscale=autoscale,
                  pool=pool or app.conf.worker_pool,
                  hostname=hostname, max_tasks_per_child=max_tasks_per_child,
                  max_memory_per_child=max_memory_per_child,
                  prefetch_multiplier=prefetch_multiplier, time_limit=time_limit,
                  soft_time_limit=soft_time_limit, task_events=task_events,
                  heartbeat_events=not without_heartbeat).run()
    sys.exit(code)


def _reload(obj: Context, app_spec: str | None, reload: bool, reload_dirs: tuple[str, ...],
            metrics_port: int | None) -> None:
    """Become the reloader (exits), unless this process is the worker a reloader started."""
    from pgq.worker import reload as reloader

    if reloader.started_by_reloader():
        return
    if not reload:
        raise click.UsageError("--reload-dir needs --reload")
    if metrics_port:
        raise click.UsageError("--reload cannot serve --metrics-port: the old and the new "
                               "worker overlap while the old one finishes its jobs")
    dirs = reloader.source_dirs(app_spec or obj.app_spec, reload_dirs)
    sys.exit(reloader.Reloader(sys.argv[1:], dirs).run())


def _check_security(app: Any) -> None:
    """Bad keys fail the worker at start, not each job; a worker that must verify but cannot
    sign what it enqueues is warned."""
    from pgq import security

    for warning in security.check_worker_config(app):
        logging.getLogger("pgq.worker").warning("%s", warning)


@main.command()
@app_option
@dsn_option
@click.option("-l", "--loglevel", default="INFO", show_default=True,
              help="DEBUG, INFO, WARNING or ERROR.")
@click.pass_obj
@_errors
def beat(obj: Context, app_spec: str | None, dsn: str | None, loglevel: str) -> None:
    """Run the scheduler: enqueue periodic tasks when due.

    Run as many as you like: each due run is enqueued once.

    Examples:

    \b
        pgq beat -A shop.tasks
        pgq worker -A shop.tasks -B      # the same, inside a worker
    """
    import signal as signals

    from pgq.services.scheduler import Scheduler

    _setup_logging(loglevel)
    app = obj.app(app_spec, dsn)
    app.import_modules()
    scheduler = Scheduler(app)
    for sig in (signals.SIGTERM, signals.SIGINT):
        signals.signal(sig, lambda *_: scheduler.stop())
    logging.getLogger("pgq.beat").info("scheduler started (%d schedule(s) in code)",
                                       len(app.periodic_tasks) + len(app.conf.beat_schedule))
    scheduler.run()


@main.group()
def inspect() -> None:
    """Look at jobs, schedules and tasks: active, scheduled, registered, failed.

    Examples:

    \b
        pgq inspect active -A shop.tasks
        pgq -A shop.tasks inspect failed --limit 50
    """


def _print_rows(headers: list[str], rows: list[Any], empty: str) -> None:
    click.echo(_table(headers, [list(r) for r in rows]) if rows else empty)


@inspect.command("active")
@app_option
@dsn_option
@click.pass_obj
@_errors
def inspect_active(obj: Context, app_spec: str | None, dsn: str | None) -> None:
    """Jobs running now, with the worker running each.

    Examples:

    \b
        pgq inspect active -A shop.tasks
    """
    app = obj.app(app_spec, dsn)
    with app.connect() as conn:
        rows = execute(conn, app.queries.inspect_active)
    _print_rows(["ID", "TASK", "QUEUE", "WORKER HOST", "PID", "RUNNING FOR", "PAYLOAD"],
                [(r[0], r[1], r[2], r[3], r[4], _age(r[5]), _payload(r[6:])) for r in rows],
                "no active jobs")


@inspect.command("scheduled")
@app_option
@dsn_option
@click.pass_obj
@_errors
def inspect_scheduled(obj: Context, app_spec: str | None, dsn: str | None) -> None:
    """Periodic schedules (last and next run) and jobs waiting for their eta.

    Examples:

    \b
        pgq inspect scheduled -A shop.tasks
    """
    app = obj.app(app_spec, dsn)
    with app.connect() as conn:
        schedules = execute(conn, app.queries.schedules_list)
        waiting = execute(conn, app.queries.inspect_eta)
    _print_rows(["SCHEDULE", "TASK", "EVERY", "TZ", "ENABLED", "LAST RUN", "NEXT RUN"],
                schedules, "no periodic schedules")
    click.echo()
    _print_rows(["ID", "TASK", "QUEUE", "ETA", "PAYLOAD"],
                [(*r[:4], _payload(r[4:])) for r in waiting], "no jobs waiting for an eta")


@inspect.command("registered")
@app_option
@dsn_option
@click.pass_obj
@_errors
def inspect_registered(obj: Context, app_spec: str | None, dsn: str | None) -> None:
    """Tasks the app (-A) registers, with their queue and options.

    Examples:

    \b
        pgq inspect registered -A shop.tasks:app
    """
    app = obj.app(app_spec, dsn)
    app.import_modules()
    rows = [(t.name, t.queue or app.default_queue, t.max_retries, t.rate_limit or "",
             t.time_limit or "") for name, t in sorted(app.tasks.items())
            if not name.startswith("pgq.")]
    _print_rows(["TASK", "QUEUE", "MAX RETRIES", "RATE LIMIT", "TIME LIMIT"], rows,
                "no tasks registered")


@inspect.command("failed")
@app_option
@dsn_option
@click.option("--limit", default=50, show_default=True, help="Show at most this many.")
@click.pass_obj
@_errors
def inspect_failed(obj: Context, app_spec: str | None, dsn: str | None, limit: int) -> None:
    """The most recent failed jobs.

    Examples:

    \b
        pgq inspect failed -A shop.tasks --limit 50
    """
    app = obj.app(app_spec, dsn)
    with app.connect() as conn:
        rows = execute(conn, app.queries.inspect_failed, {"limit": limit})
    _print_rows(["ID", "TASK", "QUEUE", "FAILED AT", "RETRIES", "ERROR", "PAYLOAD"],
                [(*r[:6], _payload(r[6:])) for r in rows], "no failed jobs")


@main.command()
@app_option
@dsn_option
@click.option("--schema", help="Schema to migrate (default: the app's, else 'pgq').")
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it.")
@click.pass_obj
@_errors
def migrate(obj: Context, app_spec: str | None, dsn: str | None, schema: str | None,
            sql: bool) -> None:
    """Bring the database schema to the newest version (safe to run twice, or at once).

    Examples:

    \b
        pgq migrate --dsn postgresql://localhost/shop
        pgq migrate --sql > pgq.sql
    """
    from pgq.migrate import upgrade

    if sql and not (dsn or obj.dsn or app_spec or obj.app_spec):
        click.echo(upgrade("postgresql://", schema or "pgq", sql=True), nl=False)
        return
    app = obj.app(app_spec, dsn)
    target = schema or app.schema
    if sql:
        click.echo(upgrade(app.dsn, target, sql=True), nl=False)
        return
    # Without --dsn: every database the app's queues live in (queue_databases too).
    for where in [app.dsn] if (dsn or obj.dsn) else app.databases():
        upgrade(where, target)
    click.echo(f"pgq schema {target!r} is up to date")


def _payload(columns: Any) -> str:
    """`msgpack+zlib 1.2 kB (41.0 kB raw), hmac-sha256` from a job_payloads row's columns."""
    from pgq.payload import describe

    content_type, compression, scheme, stored, raw = columns
    label = f"{describe(content_type, compression)} {_bytes(stored)}"
    if raw is not None and raw != stored:
        label += f" ({_bytes(raw)} raw)"
    return f"{label}, {scheme}" if scheme else label


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    if n < 1000:
        return f"{n} B"
    return f"{n / 1000:.1f} kB" if n < 1_000_000 else f"{n / 1_000_000:.1f} MB"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _age(value: Any) -> str:
    if value is None:
        return ""
    seconds = value.total_seconds()
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


@main.command()
@app_option
@dsn_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--watch", type=click.FloatRange(min=0.2), metavar="SECONDS", is_flag=False,
              flag_value=2.0, help="Refresh in place every SECONDS (default 2) until Ctrl-C.")
@click.pass_obj
@_errors
def status(obj: Context, app_spec: str | None, dsn: str | None, as_json: bool,
           watch: float | None) -> None:
    """Show queues (jobs per state, oldest waiting, jobs/min) and workers.

    Examples:

    \b
        pgq status -A shop.tasks
        pgq status --watch          # refresh every 2 s
        pgq status --json | jq '.queues'
    """
    import time

    app = obj.app(app_spec, dsn)
    if watch is None:
        _print_status(app, as_json)
        return
    try:
        while True:
            click.echo("\x1b[H\x1b[2J", nl=False, color=True)  # cursor home, clear screen
            _print_status(app, as_json)
            time.sleep(watch)
    except KeyboardInterrupt:
        pass


def _print_status(app: App, as_json: bool) -> None:
    from pgq.monitor import snapshot

    snap = snapshot(app)
    if as_json:
        click.echo(json.dumps(snap, default=str, indent=2))
        return
    states = ["PENDING", "RETRY", "STARTED", "SUCCESS", "FAILURE", "REVOKED"]
    rows = [[q["queue"], *(q["states"].get(s, 0) for s in states),
             _age(q["oldest_waiting"]), q["per_minute"]] for q in snap["queues"]]
    click.echo(_table(["QUEUE", *states, "OLDEST WAITING", "JOBS/MIN"], rows)
               if rows else "no queues yet")
    click.echo()
    wrows = [[w["hostname"], w["pid"], ",".join(w["queues"]), w["concurrency"], w["running"],
              _age(w["heartbeat_age"]) + " ago", "yes" if w["alive"] else "no"]
             for w in snap["workers"]]
    click.echo(_table(["WORKER HOST", "PID", "QUEUES", "CONCURRENCY", "RUNNING",
                       "LAST HEARTBEAT", "ALIVE"], wrows) if wrows else "no workers")


@main.command()
@app_option
@dsn_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, for tools.")
@click.option("-Q", "--queues", help="Only task events of these queues (comma-separated).")
@click.option("-d", "--dump", is_flag=True, hidden=True, help="Celery's spelling; the default.")
@click.pass_obj
@_errors
def events(obj: Context, app_spec: str | None, dsn: str | None, as_json: bool,
           queues: str | None, dump: bool) -> None:
    """Print the live stream of worker and task events until Ctrl-C.

    Examples:

    \b
        pgq -A shop.tasks events
        pgq events --json | jq 'select(.type == "task-failed")'
    """
    import signal as signals

    from pgq.events import EventReceiver

    app = obj.app(app_spec, dsn)
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    receiver = EventReceiver(app, queues=names)
    signals.signal(signals.SIGTERM, lambda *_: setattr(receiver, "should_stop", True))
    receiver.start()
    click.echo(f"listening for events on {app.queries.events_channel} (Ctrl-C to stop)",
               err=True)
    try:
        for event in receiver:
            click.echo(orjson_line(event) if as_json else format_event(event))
    except KeyboardInterrupt:
        pass
    finally:
        receiver.close()


def orjson_line(event: dict[str, Any]) -> str:
    import orjson

    return orjson.dumps(event).decode()


def format_event(event: dict[str, Any]) -> str:
    """One readable line: time, host, type, task[id], then what the event says."""
    from datetime import datetime

    when = datetime.fromtimestamp(event["timestamp"]).strftime("%H:%M:%S.%f")[:-3]
    kind = event["type"]
    head = f"{when}  {event.get('hostname')}  {kind}"
    if not kind.startswith("task-"):
        return (f"{head}  pid={event.get('pid')} active={event.get('active')} "
                f"processed={event.get('processed')} queues={','.join(event.get('queues') or [])}")
    head += f"  {event.get('name')}[{event.get('uuid')}]"
    if kind == "task-received":
        return f"{head}  args={event.get('args')} kwargs={event.get('kwargs')}"
    if kind == "task-succeeded":
        runtime = float(event.get("runtime") or 0)
        return f"{head}  result={event.get('result')} runtime={runtime:.4f}s"
    if kind in ("task-failed", "task-retried"):
        return f"{head}  {event.get('exception')}"
    if kind == "task-revoked":
        return (f"{head}  terminated={event.get('terminated')} "
                f"expired={event.get('expired')}")
    return head


@main.command()
@app_option
@dsn_option
@click.argument("job_id")
@click.option("--terminate", is_flag=True, help="Kill the child running it.")
@click.pass_obj
@_errors
def revoke(obj: Context, app_spec: str | None, dsn: str | None, job_id: str,
           terminate: bool) -> None:
    """Revoke a job: it never runs (with --terminate: stop it if running).

    Examples:

    \b
        pgq revoke 6f1c7c3e-…              # not started yet: it never runs
        pgq revoke --terminate 6f1c7c3e-…  # running: its child is stopped too
    """
    app = obj.app(app_spec, dsn)
    if app.revoke(job_id, terminate=terminate):
        click.echo(f"revoked {job_id}")
    else:
        raise PgqError(f"job {job_id} is not waiting or running (unknown id or finished)")


@main.command()
@app_option
@dsn_option
@click.argument("job_ids", nargs=-1)
@click.option("--failed", is_flag=True, help="Every FAILURE job (of -Q queues).")
@click.option("-Q", "--queues", help="With --failed: only these queues (comma-separated).")
@click.pass_obj
@_errors
def retry(obj: Context, app_spec: str | None, dsn: str | None, job_ids: tuple[str, ...],
          failed: bool, queues: str | None) -> None:
    """Put finished jobs back in their queue under the same id.

    The result is cleared and the retry count reset.

    Examples:

    \b
        pgq retry 6f1c7c3e-…            # one job
        pgq retry --failed -Q payments  # every failed job of a queue
    """
    if bool(job_ids) == failed:
        raise PgqError("give job ids or --failed (not both)")
    app = obj.app(app_spec, dsn)
    names = [q.strip() for q in queues.split(",")] if queues else None
    q = app.queries
    with app.connect() as conn, conn.transaction():
        rows = execute(conn, q.retry_jobs, {"ids": list(job_ids) or None, "failed": failed,
                                            "queues": names})
        for queue in {row[1] for row in rows}:
            execute(conn, q.notify, {"channel": q.jobs_channel, "payload": queue})
    if job_ids and len(rows) < len(job_ids):
        missing = set(job_ids) - {row[0] for row in rows}
        raise PgqError(f"not finished or unknown: {', '.join(sorted(missing))}")
    click.echo(f"{len(rows)} job(s) back in their queue")


@main.command()
@app_option
@dsn_option
@click.option("--older-than", metavar="DURATION", help="e.g. 30s, 30m, 12h, 7d "
              "(default: result_expires).")
@click.pass_obj
@_errors
def prune(obj: Context, app_spec: str | None, dsn: str | None, older_than: str | None) -> None:
    """Delete finished jobs whose results have expired (workers also do this on their own).

    Examples:

    \b
        pgq prune -A shop.tasks                 # older than result_expires
        pgq prune --older-than 7d --dsn postgresql://localhost/shop
    """
    from pgq.worker.heartbeat import prune as prune_jobs

    app = obj.app(app_spec, dsn)
    seconds = parse_duration(older_than) if older_than else float(app.conf.result_expires)
    with app.connect() as conn:
        deleted = prune_jobs(app, conn, seconds)
    click.echo(f"pruned {deleted} finished job(s)")


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    try:
        return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        raise click.BadParameter(f"{text!r} is not a duration like 30s, 30m, 12h or 7d"
                                 ) from None


@main.command()
@app_option
@dsn_option
@click.option("-Q", "--queues", help="Only these queues (comma-separated).")
@click.option("--yes", "-f", "--force", "yes", is_flag=True, help="Do not ask.")
@click.pass_obj
@_errors
def purge(obj: Context, app_spec: str | None, dsn: str | None, queues: str | None,
          yes: bool) -> None:
    """Delete every waiting job (of -Q queues). Asks first unless --yes.

    Examples:

    \b
        pgq purge -A shop.tasks -Q emails
        pgq purge -A shop.tasks --yes     # every queue, no question (scripts)
    """
    app = obj.app(app_spec, dsn)
    names = [q.strip() for q in queues.split(",")] if queues else None
    where = f"queue(s) {', '.join(names)}" if names else "all queues"
    if not yes:
        if not sys.stdin.isatty():
            raise PgqError("refusing to purge without --yes when not interactive")
        click.confirm(f"Delete every waiting job of {where}?", abort=True)
    with app.connect() as conn:
        cur = conn.execute(app.queries.purge, {"queues": names})
        click.echo(f"purged {cur.rowcount} waiting job(s) from {where}")


@main.command()
@app_option
@dsn_option
@click.option("--producer", metavar="ROLE", help="May enqueue and read results only.")
@click.option("--worker", "worker_role", metavar="ROLE", help="May run workers.")
@click.option("--monitor", metavar="ROLE", help="May read the monitoring views only.")
@click.option("--create", is_flag=True, help="Create missing roles (LOGIN, no password).")
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it.")
@click.pass_obj
@_errors
def grant(obj: Context, app_spec: str | None, dsn: str | None, producer: str | None,
          worker_role: str | None, monitor: str | None, create: bool, sql: bool) -> None:
    """Grant least-privilege access to the pgq schema (run after pgq migrate).

    Examples:

    \b
        pgq grant --producer web --worker jobs --monitor grafana
        pgq grant --producer web --sql > grants.sql
    """
    from pgq.db.grants import grant_statements

    if not (producer or worker_role or monitor):
        raise PgqError("name at least one of --producer, --worker, --monitor")
    app = obj.app(app_spec, dsn)
    statements = grant_statements(app.schema, producer=producer, worker=worker_role,
                                  monitor=monitor, create=create)
    if sql:
        for statement in statements:
            click.echo(statement.as_string(None) + ";")
        return
    with app.connect() as conn, conn.transaction():
        for statement in statements:
            conn.execute(statement)
    click.echo(f"granted on schema {app.schema!r}")


@main.group()
def embedded() -> None:
    """The embedded development PostgreSQL in ./.pgq/pgdata.

    Examples:

    \b
        pgq embedded start     # prints its DSN; producers and workers without PGQ_DSN use it
        pgq embedded status
        pgq embedded stop
    """


@embedded.command("start")
@_errors
def embedded_start() -> None:
    """Start (or reuse) the embedded server and print its DSN.

    Examples:

    \b
        export PGQ_DSN="$(pgq embedded start)"
    """
    from pgq import embedded as emb

    click.echo(emb.ensure_server())


@embedded.command("stop")
@_errors
def embedded_stop() -> None:
    """Stop the embedded server.

    Examples:

    \b
        pgq embedded stop
    """
    from pgq import embedded as emb

    click.echo("stopped" if emb.stop_server() else "not running")


@embedded.command("status")
@_errors
def embedded_status() -> None:
    """Print the DSN of the running embedded server, or 'not running'.

    Examples:

    \b
        pgq embedded status
    """
    from pgq import embedded as emb

    click.echo(emb.running_dsn() or "not running")


@main.command(hidden=True)
@click.argument("job_id")
@app_option
@dsn_option
@click.pass_obj
@_errors
def result(obj: Context, job_id: str, app_spec: str | None, dsn: str | None) -> None:
    """Print a job's state and result.

    Examples:

    \b
        pgq result -A shop.tasks 6f1c7c3e-…
    """
    app = obj.app(app_spec, dsn)
    with app.connect() as conn:
        rows = execute(conn, app.queries.get_result, {"id": job_id})
    click.echo(rows[0] if rows else "PENDING")


if __name__ == "__main__":
    main()
