"""Run one job and return its outcome. No database here: the completer writes outcomes."""

from __future__ import annotations

import functools
import inspect
import logging
import math
import signal
import threading
import time
import traceback as tb
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from pgq import loops, payload, security, serialization, signals
from pgq import request as request_context
from pgq.errors import (
    ContentDisallowed,
    EncodeError,
    NotRegistered,
    Retry,
    SecurityError,
    SoftTimeLimitExceeded,
    WorkerLostError,
)
from pgq.request import Request
from pgq.task import Task

if TYPE_CHECKING:
    from pgq.app import App


log = logging.getLogger("pgq.worker")


class Job(NamedTuple):
    id: str
    task: str
    state: str
    args: str
    kwargs: str
    options: str
    queue: str
    priority: int
    eta: datetime | None
    retries: int
    attempts: int
    root_id: str | None
    parent_id: str | None
    group_id: str | None
    # NULL for plain JSON jobs (pgq/payload.py, pgq/security.py)
    content_type: str | None = None
    compression: str | None = None
    payload: bytes | None = None
    signature: str | None = None


class Outcome(NamedTuple):
    id: str
    attempts: int
    state: str  # SUCCESS | FAILURE | RETRY
    result: str | None  # JSON: the value, or the exception's args for FAILURE/RETRY
    exc_type: str | None = None
    exc_message: str | None = None
    traceback: str | None = None
    countdown: float = 0.0
    runtime_ms: float = 0.0


def job_options(job: Job) -> dict[str, Any]:
    return serialization.loads(job.options) if job.options != "{}" else {}


def failure(job: Job, exc: BaseException, runtime_ms: float = 0.0,
            with_traceback: bool = True) -> Outcome:
    return Outcome(job.id, job.attempts, "FAILURE", *_exception_fields(exc, with_traceback),
                   0.0, runtime_ms)


def retry(job: Job, exc: BaseException | None, countdown: float,
          runtime_ms: float = 0.0) -> Outcome:
    if not math.isfinite(countdown):
        return failure(job, ValueError(
            f"cannot retry in {countdown} seconds: give retry() a finite countdown or an eta"),
            runtime_ms, with_traceback=False)
    if exc is None:
        return Outcome(job.id, job.attempts, "RETRY", None, None, None, None, countdown,
                       runtime_ms)
    return Outcome(job.id, job.attempts, "RETRY", *_exception_fields(exc), countdown,
                   runtime_ms)


def _exception_fields(exc: BaseException, with_traceback: bool = True
                      ) -> tuple[str | None, str, str, str | None]:
    """An outcome's result (the exception's args), exc_type, exc_message and traceback."""
    trace = _storable_text("".join(tb.format_exception(exc))) if with_traceback else None
    return (_exc_args(exc), serialization.exception_type_name(exc), _storable_text(str(exc)),
            trace)


def _storable_text(text: str) -> str:
    """An exception's message or traceback as PostgreSQL text can hold it: NUL characters and
    lone surrogates (PostgreSQL and UTF-8 refuse both) escaped as Python writes them."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode(errors="backslashreplace").decode()
    return text


def _exc_args(exc: BaseException) -> str | None:
    args = serialization.exception_args(exc)
    try:
        return None if args is None else serialization.dumps(args)
    except EncodeError:  # rebuilt from its message instead
        return None


def max_retries_for(task: Task | None, options: dict[str, Any]) -> int | None:
    if options.get("max_retries") is not None:
        return int(options["max_retries"])
    return task.effective_max_retries() if task is not None else 0


def on_error(task: Task | None, job: Job, exc: BaseException, runtime_ms: float) -> Outcome:
    """FAILURE, or RETRY when the task's `autoretry_for` names the error and retries remain."""
    options = job_options(job)
    if task is not None and task.autoretry_for and isinstance(exc, task.autoretry_for):
        limit = max_retries_for(task, options)
        if limit is None or job.retries < limit:
            return retry(job, exc, task.autoretry_countdown(job.retries), runtime_ms)
    return failure(job, exc, runtime_ms)


def lost(task: Task | None, job: Job, exc: BaseException) -> Outcome:
    """The child running `job` died: retry at once if retries remain (a crash is not the
    task's failure, so no retry delay applies), else FAILURE."""
    limit = max_retries_for(task, job_options(job))
    if task is not None and (limit is None or job.retries < limit):
        outcome = retry(job, exc, 0.0)
    else:
        outcome = failure(job, exc, with_traceback=False)
    announce_end(task, job_request(job), outcome, exc)
    return outcome


def timed_out(task: Task | None, job: Job, exc: BaseException, runtime_ms: float) -> Outcome:
    """The child running `job` was killed at its hard time limit."""
    outcome = on_error(task, job, exc, runtime_ms)
    announce_end(task, job_request(job), outcome, exc)
    return outcome


@contextmanager
def soft_time_limit(seconds: float | None) -> Iterator[None]:
    """Raise SoftTimeLimitExceeded inside the task after `seconds` (main thread only)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise SoftTimeLimitExceeded(f"soft time limit ({seconds}s) exceeded")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def execute(app: App, job: Job, hostname: str, default_soft_limit: float | None = None
            ) -> Outcome:
    task = app.tasks.get(job.task)
    if task is None:
        return failure(job, NotRegistered(
            f"task {job.task!r} is not registered in this worker (check -A and include)"),
            with_traceback=False)
    started = time.perf_counter()
    policy = payload.worker_policy(app)
    try:
        if job.signature is not None or policy.require_signature:
            security.check(app, job)
        options = job_options(job)
        limit = max_retries_for(task, options)
        if limit is not None and job.retries > limit:  # its worker was lost once too often
            return failure(job, WorkerLostError(
                f"the worker running {job.task} was lost {job.retries} time(s); "
                f"max_retries is {limit}"), with_traceback=False)
        args, kwargs = payload.decode_arguments(policy, job, options)
    except (SecurityError, ContentDisallowed) as exc:  # refused unread: nothing ran
        return failure(job, exc, with_traceback=False)
    except Exception as exc:
        return failure(job, exc)
    request = Request(
        id=job.id, task=job.task, args=args, kwargs=kwargs, retries=job.retries,
        queue=job.queue, priority=job.priority,
        eta=job.eta.astimezone(UTC) if job.eta else None, hostname=hostname,
        root_id=job.root_id or job.id, parent_id=job.parent_id, group_id=job.group_id,
        headers=options.get("headers") or {}, attempts=job.attempts, called_directly=False,
    )
    soft_limit = options.get("soft_time_limit") or task.soft_time_limit or default_soft_limit
    request_context.push(request)
    try:
        if signals.task_prerun.receivers:
            signals.task_prerun.send(sender=task, task_id=job.id, task=task, args=args,
                                     kwargs=kwargs)
        outcome, retval = _run(app, policy, task, job, request, options, soft_limit,
                               started)
        announce_end(task, request, outcome, retval)
        if signals.task_postrun.receivers:
            signals.task_postrun.send(sender=task, task_id=job.id, task=task, args=args,
                                      kwargs=kwargs, retval=retval, state=outcome.state)
        return outcome
    finally:
        request_context.pop()


def _run(app: App, policy: payload.WorkerPolicy, task: Task, job: Job, request: Request,
         options: dict[str, Any], soft_limit: float | None, started: float
         ) -> tuple[Outcome, Any]:
    """Run the task: its outcome, and its return value or the exception it raised."""
    try:
        value = run_body(task, request.args, request.kwargs, soft_limit)
        runtime_ms = (time.perf_counter() - started) * 1000
        ignore = options.get("ignore_result",
                             task.ignore_result or app.conf.task_ignore_result)
        encoded = None if ignore else payload.encode_result(app, policy, value)
        return Outcome(job.id, job.attempts, "SUCCESS", encoded, runtime_ms=runtime_ms), value
    except Retry as signal_retry:
        runtime_ms = (time.perf_counter() - started) * 1000
        try:
            countdown = _countdown(signal_retry.when)
        except (TypeError, ValueError) as exc:
            return failure(job, exc, runtime_ms), exc
        return retry(job, signal_retry.exc, countdown, runtime_ms), signal_retry
    except EncodeError as exc:
        return failure(job, exc, (time.perf_counter() - started) * 1000), exc
    except Exception as exc:
        outcome = on_error(task, job, exc, (time.perf_counter() - started) * 1000)
        if outcome.state == "FAILURE":
            run_request_errbacks(app, options, request, exc)
        return outcome, exc


def announce_end(task: Task | None, request: Request, outcome: Outcome, retval: Any) -> None:
    """task_success / task_failure / task_retry for a job's outcome (`retval`: the value
    returned, or the exception raised)."""
    if task is None:
        return
    if outcome.state == "SUCCESS":
        if signals.task_success.receivers:
            signals.task_success.send(sender=task, result=retval)
    elif outcome.state == "FAILURE":
        if signals.task_failure.receivers:
            signals.task_failure.send(
                sender=task, task_id=request.id, exception=retval, args=request.args,
                kwargs=request.kwargs, traceback=retval.__traceback__,
                einfo=signals.ExceptionInfo(retval))
    elif signals.task_retry.receivers:
        signals.task_retry.send(sender=task, request=request, reason=retval,
                                einfo=signals.ExceptionInfo(retval))


def job_request(job: Job, hostname: str | None = None) -> Request:
    """The request of a job that is not running here (lost, timed out, revoked), for the
    signals about it; arguments decoded where they can be."""
    try:
        args, kwargs = serialization.loads(job.args), serialization.loads(job.kwargs)
    except Exception:
        args, kwargs = [], {}
    return Request(id=job.id, task=job.task, args=args if isinstance(args, list) else [],
                   kwargs=kwargs if isinstance(kwargs, dict) else {}, retries=job.retries,
                   queue=job.queue, priority=job.priority, eta=job.eta, hostname=hostname,
                   root_id=job.root_id or job.id, parent_id=job.parent_id,
                   group_id=job.group_id, attempts=job.attempts, called_directly=False)


def run_body(task: Task, args: list[Any], kwargs: dict[str, Any],
             soft_limit: float | None) -> Any:
    """Call the task's body: through its own `__call__` when a Task subclass defines one (as
    Celery does: Flask's app-context pattern relies on it), and an `async def` body on this
    thread's event loop."""
    call = task.run
    if type(task).__call__ is not Task.__call__:
        call = functools.partial(request_context.worker_call, task)
    if inspect.iscoroutinefunction(task.run):
        return loops.run(call(*args, **kwargs), soft_limit)
    with soft_time_limit(soft_limit):
        return call(*args, **kwargs)


def takes_request_exc_traceback(app: App, sig: Any) -> bool:
    """Celery 5's errback form: a task whose parameters are exactly (request, exc, traceback)
    is called in the worker with those, instead of being enqueued with the failed job's id."""
    task = app.tasks.get(sig.get("task", "")) if isinstance(sig, dict) else None
    if task is None:
        return False
    fn = type(task).__dict__.get("__wrapped__")  # the plain function, not a bound method
    try:
        params = list(inspect.signature(fn).parameters) if fn else []
    except (TypeError, ValueError):
        return False
    if task.bind:
        params = params[1:]
    return params == ["request", "exc", "traceback"]


def run_request_errbacks(app: App, options: dict[str, Any], request: Request,
                         exc: BaseException) -> None:
    for sig in options.get("link_error") or ():
        if takes_request_exc_traceback(app, sig):
            try:
                app.tasks[sig["task"]](request, exc, exc.__traceback__)
            except Exception:
                log.exception("error callback %s raised", sig["task"])


def _countdown(when: Any) -> float:
    if isinstance(when, datetime):
        moment = when if when.tzinfo else when.replace(tzinfo=UTC)
        return max(0.0, (moment - datetime.now(UTC)).total_seconds())
    seconds = float(when or 0)
    return 0.0 if seconds < 0 else seconds  # nan and inf pass, for retry() to refuse
