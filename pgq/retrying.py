"""Enqueue that survives a lost connection or a failover without ever enqueueing twice.

When the connection drops during COMMIT, the producer cannot know whether its jobs were
written. Sending them again with new ids could run them twice; not sending them could lose
them. `enqueue_retrying` fixes every job's id before the first attempt and sends the same
ids again until one attempt gets an answer: the insert is `ON CONFLICT DO NOTHING` on the id,
so an attempt after one that did commit writes nothing.

pgq's own `delay`/`apply_async` do not retry (Celery's `retry`/`retry_policy` options are
accepted and ignored): retrying may wait for as long as a failover takes, which the caller
should choose to do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg_pool

from pgq import workflow
from pgq.canvas import Signature, signature
from pgq.db.connection import DatabaseUnavailable, first_line
from pgq.enqueue import new_id

if TYPE_CHECKING:
    from pgq.app import App
    from pgq.result import AsyncResult

log = logging.getLogger("pgq.producer")

# What a lost connection, a server shutting down or a failover in progress looks like.
RETRYABLE: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,  # includes connection loss and admin shutdown
    psycopg.errors.ReadOnlySqlTransaction,  # reached a standby (or a demoted primary)
    psycopg_pool.PoolTimeout,
    DatabaseUnavailable,
)


def with_fixed_ids(signatures: Iterable[Mapping[str, Any]]) -> list[Signature]:
    """Copies of task signatures, each with a `task_id` (its own, or a new one)."""
    fixed = []
    for sig in signatures:
        sig = sig if isinstance(sig, Signature) else signature(sig)
        if workflow.is_workflow(sig):
            raise ValueError(
                "enqueue_retrying takes task signatures, not a chain/group/chord: a retried "
                "workflow could start twice. Send the workflow once and handle the error, or "
                "retry its first task with a fixed task_id")
        if not sig.options.get("task_id"):
            sig = sig.clone(task_id=new_id())
        fixed.append(sig)
    return fixed


def enqueue_retrying(app: App, signatures: Iterable[Mapping[str, Any]], *,
                     retry_for: float = 60.0, max_delay: float = 2.0) -> list[AsyncResult]:
    """Enqueue task signatures in one transaction, retrying on connection loss for up to
    `retry_for` seconds with the same job ids, so each job is written exactly once.

    `add.s(2, 2)` or `app.signature("shop.charge", (42,))` are task signatures; one given
    its own `task_id` keeps it. Raises the last connection error when time runs out."""
    sigs = with_fixed_ids(signatures)
    deadline = time.monotonic() + retry_for
    delay = 0.05
    while True:
        try:
            return app.enqueue_many(sigs)
        except RETRYABLE as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("enqueue of %d job(s) failed (%s); retrying the same ids in %.2fs",
                        len(sigs), first_line(exc), delay)
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
