"""Signals: hooks user code connects to, with Celery's names and arguments.

    from pgq.signals import task_success

    @task_success.connect
    def on_success(sender=None, result=None, **kwargs): ...

    @task_success.connect(sender=add)        # only for this task (or sender="tasks.add")
    def on_add(sender=None, result=None, **kwargs): ...

A receiver gets `signal=` and `sender=` plus the signal's own keyword arguments, so it must
accept `**kwargs`. A receiver that raises is logged with its traceback and never breaks the
job, the enqueue or the worker that sent the signal (Celery's behaviour). See docs/signals.md
for where each signal is sent and with what."""

from __future__ import annotations

import inspect
import logging
import threading
import traceback as tb
import weakref
from collections.abc import Callable, Hashable, Iterable
from types import TracebackType
from typing import Any

log = logging.getLogger("pgq.signals")

Receiver = Callable[..., Any]
_Key = tuple[Hashable, Hashable]  # (receiver or dispatch_uid, sender)


def _sender_key(sender: Any) -> Hashable:
    """Senders are matched by identity, strings (task names) by value, as in Celery."""
    if sender is None or isinstance(sender, str | bytes):
        return sender
    return id(sender)


def _receiver_key(receiver: Receiver) -> Hashable:
    if inspect.ismethod(receiver):
        return (id(receiver.__self__), id(receiver.__func__))
    return id(receiver)


def _accepts_kwargs(receiver: Receiver) -> bool:
    try:
        params = inspect.signature(receiver).parameters.values()
    except (TypeError, ValueError):
        return True  # a builtin or C callable: trust it
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class Signal:
    """A named hook. `connect` adds a receiver, `disconnect` removes it, `send` calls them."""

    def __init__(self, name: str, providing_args: Iterable[str] = ()) -> None:
        self.name = name
        self.providing_args = frozenset(providing_args)
        # (key, sender key, receiver or weak reference to it); replaced, never mutated, so
        # `send` can iterate without the lock while another thread connects.
        self.receivers: tuple[tuple[_Key, Hashable, Any], ...] = ()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Signal: {self.name}>"

    def connect(self, receiver: Receiver | None = None, *, sender: Any = None,
                weak: bool = False, dispatch_uid: Hashable | None = None) -> Any:
        """Connect `receiver`; usable as `@sig.connect` or `@sig.connect(sender=...)`.

        `weak=True` keeps only a weak reference (the receiver goes away with its last
        reference, as Celery's default does); `dispatch_uid` makes connecting idempotent."""
        if receiver is None:
            def decorator(fn: Receiver) -> Receiver:
                self.connect(fn, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
                return fn
            return decorator
        if not callable(receiver):
            raise TypeError(f"{self.name}.connect() needs a callable, got {receiver!r}")
        if not _accepts_kwargs(receiver):
            raise ValueError(f"signal receiver {receiver!r} must accept keyword arguments "
                             f"(add **kwargs to its parameters)")
        key: _Key = (dispatch_uid if dispatch_uid is not None else _receiver_key(receiver),
                     _sender_key(sender))
        ref: Any = receiver
        if weak:
            ref = (weakref.WeakMethod(receiver) if inspect.ismethod(receiver)
                   else weakref.ref(receiver))
        with self._lock:
            if not any(k == key for k, _, _ in self.receivers):
                self.receivers = (*self.receivers, (key, key[1], (weak, ref)))
        return receiver

    def disconnect(self, receiver: Receiver | None = None, sender: Any = None,
                   dispatch_uid: Hashable | None = None) -> bool:
        """Remove a receiver (as connected: same sender, or same dispatch_uid). True if one
        was connected."""
        if dispatch_uid is not None:
            key: _Key = (dispatch_uid, _sender_key(sender))
        elif receiver is not None:
            key = (_receiver_key(receiver), _sender_key(sender))
        else:
            raise TypeError("disconnect() needs the receiver or its dispatch_uid")
        with self._lock:
            kept = tuple(r for r in self.receivers if r[0] != key)
            removed = len(kept) < len(self.receivers)
            self.receivers = kept
        return removed

    def has_listeners(self, sender: Any = None) -> bool:
        """Whether any receiver would be called for `sender`."""
        return bool(self._live_receivers(sender))

    def _live_receivers(self, sender: Any) -> list[Receiver]:
        wanted = _sender_key(sender)
        name = getattr(sender, "name", None)  # a task also matches its name (sender="tasks.add")
        found: list[Receiver] = []
        dead = False
        for _, sender_key, (weak, ref) in self.receivers:
            if sender_key is not None and sender_key != wanted and (
                    name is None or sender_key != name):
                continue
            receiver = ref() if weak else ref
            if receiver is None:
                dead = True
            else:
                found.append(receiver)
        if dead:
            with self._lock:
                self.receivers = tuple(r for r in self.receivers
                                       if not r[2][0] or r[2][1]() is not None)
        return found

    def send(self, sender: Any, **named: Any) -> list[tuple[Receiver, Any]]:
        """Call every receiver connected for `sender` (or for any sender). Returns
        `[(receiver, response)]`; a receiver that raised has its exception as response."""
        if not self.receivers:
            return []
        responses: list[tuple[Receiver, Any]] = []
        for receiver in self._live_receivers(sender):
            try:
                response = receiver(signal=self, sender=sender, **named)
            except Exception as exc:
                log.exception("Signal handler %r (%s) raised: %r", receiver, self.name, exc)
                response = exc
            responses.append((receiver, response))
        return responses

    send_robust = send  # every send is robust here, as in Celery


class ExceptionInfo:
    """What Celery passes as `einfo`: the exception, its type, traceback object and text."""

    def __init__(self, exc: BaseException) -> None:
        self.exception = exc
        self.type: type[BaseException] = type(exc)
        self.tb: TracebackType | None = exc.__traceback__
        self.traceback = "".join(tb.format_exception(exc))

    def __str__(self) -> str:
        return self.traceback

    def __repr__(self) -> str:
        return f"<ExceptionInfo: {self.exception!r}>"


# --- the signals (Celery's names and arguments) ------------------------------------------------

# Producer side: for each job row written, in the process that enqueues it.
before_task_publish = Signal("before_task_publish", {
    "body", "exchange", "routing_key", "headers", "properties", "declare", "retry_policy"})
after_task_publish = Signal("after_task_publish", {"body", "exchange", "routing_key", "headers"})

# Worker, per job. prerun/postrun/success/failure/retry run where the job runs (the child).
task_received = Signal("task_received", {"request"})
task_prerun = Signal("task_prerun", {"task_id", "task", "args", "kwargs"})
task_postrun = Signal("task_postrun", {"task_id", "task", "args", "kwargs", "retval", "state"})
task_success = Signal("task_success", {"result"})
task_failure = Signal("task_failure", {
    "task_id", "exception", "args", "kwargs", "traceback", "einfo"})
task_retry = Signal("task_retry", {"request", "reason", "einfo"})
task_revoked = Signal("task_revoked", {"request", "terminated", "signum", "expired"})

# Worker life.
worker_init = Signal("worker_init")
worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown", {"pid", "exitcode"})
worker_ready = Signal("worker_ready")
worker_shutting_down = Signal("worker_shutting_down", {"sig", "how", "exitcode"})
worker_shutdown = Signal("worker_shutdown")

__all__ = [
    "ExceptionInfo",
    "Signal",
    "after_task_publish",
    "before_task_publish",
    "task_failure",
    "task_postrun",
    "task_prerun",
    "task_received",
    "task_retry",
    "task_revoked",
    "task_success",
    "worker_init",
    "worker_process_init",
    "worker_process_shutdown",
    "worker_ready",
    "worker_shutdown",
    "worker_shutting_down",
]
