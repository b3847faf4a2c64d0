"""pgq: a distributed task queue for Python in which PostgreSQL is the only moving part."""

from pgq.app import App
from pgq.canvas import Signature, chain, chord, group, signature
from pgq.errors import (
    ChordError,
    ConfigurationError,
    ContentDisallowed,
    EncodeError,
    MaxRetriesExceededError,
    NotRegistered,
    PgqError,
    Retry,
    SecurityError,
    SoftTimeLimitExceeded,
    TaskError,
    TaskRevokedError,
    TimeLimitExceeded,
    TimeoutError,
    WorkerLostError,
)
from pgq.result import AsyncResult, GroupResult
from pgq.schedules import crontab
from pgq.task import Task

Celery = App  # so `from pgq import Celery` works for a quick port

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncResult",
    "Celery",
    "ChordError",
    "ConfigurationError",
    "ContentDisallowed",
    "EncodeError",
    "GroupResult",
    "MaxRetriesExceededError",
    "NotRegistered",
    "PgqError",
    "Retry",
    "SecurityError",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskError",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "WorkerLostError",
    "chain",
    "chord",
    "crontab",
    "group",
    "signature",
]
