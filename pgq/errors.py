"""The PgqError tree (SPEC §10). Control-flow signals (Retry) live here too, kept apart below."""

from __future__ import annotations

import builtins
from typing import Any


class PgqError(Exception):
    """Base class of every error pgq raises."""


class ConfigurationError(PgqError):
    """A setting, DSN, app path or environment is wrong; the message says how to fix it."""


class EncodeError(PgqError):
    """An argument or result cannot be serialized; nothing was written."""


class InvalidOption(PgqError, ValueError):
    """A calling option (countdown, priority, queue, serializer, ...) has a value pgq cannot
    use."""


class ContentDisallowed(PgqError):
    """A job's (or result's) content type is not in this process's `accept_content` (or
    `result_accept_content`): it was refused unread."""


class SecurityError(PgqError):
    """A job's signature is missing, malformed or wrong: it was never executed."""


class NotRegistered(PgqError):
    """A job names a task that this worker (or app) does not have."""


class TaskError(PgqError):
    """A task failed with an exception type that could not be rebuilt here."""

    def __init__(self, exc_type: str, message: str, traceback: str | None = None) -> None:
        super().__init__(f"{exc_type}: {message}")
        self.exc_type = exc_type
        self.message = message
        self.remote_traceback = traceback


class TaskRevokedError(PgqError):
    """The job was revoked (or expired) and will never run."""


class TimeoutError(PgqError, builtins.TimeoutError):
    """`AsyncResult.get(timeout=...)` ran out of time."""


class MaxRetriesExceededError(PgqError):
    """`self.retry()` was called past `max_retries` without an exception to re-raise."""


class SoftTimeLimitExceeded(PgqError):
    """Raised inside a task when its `soft_time_limit` has passed."""


class TimeLimitExceeded(PgqError):
    """The task ran past its hard `time_limit`; its child process was killed."""


class WorkerLostError(PgqError):
    """The process running the job died (or its worker vanished) before it finished."""


class ChordError(PgqError):
    """A chord header job failed, so the chord body never ran."""


# --- control flow ------------------------------------------------------------------------------


class Retry(PgqError):
    """Raised by `Task.retry()`; tells the worker to schedule the job again."""

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: float | Any = None,
    ) -> None:
        super().__init__(message or f"Retry in {when}s" if when is not None else "Retry")
        self.exc = exc
        self.when = when


__all__ = [
    "ChordError",
    "ConfigurationError",
    "ContentDisallowed",
    "EncodeError",
    "InvalidOption",
    "MaxRetriesExceededError",
    "NotRegistered",
    "PgqError",
    "Retry",
    "SecurityError",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "WorkerLostError",
]
