"""Persist outcomes: one guarded statement per batch, the follow-up jobs (link, chain,
link_error) in the same transaction, and one NOTIFY per batch for `get()` waiters."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pgq import enqueue, serialization
from pgq.canvas import Signature, signature
from pgq.worker.executor import Job, Outcome, job_options

if TYPE_CHECKING:
    from pgq.app import App

NOTIFY_PAYLOAD_MAX = 7800  # PostgreSQL's limit is 8000 bytes


def complete_params(outcomes: Sequence[Outcome], worker_id: str) -> dict[str, Any]:
    return {
        "ids": [o.id for o in outcomes],
        "attempts": [o.attempts for o in outcomes],
        "states": [o.state for o in outcomes],
        "results": [o.result for o in outcomes],
        "exc_types": [o.exc_type for o in outcomes],
        "exc_messages": [o.exc_message for o in outcomes],
        "tracebacks": [o.traceback for o in outcomes],
        "countdowns": [o.countdown for o in outcomes],
        "runtimes": [o.runtime_ms for o in outcomes],
        "worker": worker_id,
    }


def done_payloads(job_ids: Iterable[str]) -> list[str]:
    """Job ids joined by commas, in chunks that fit one NOTIFY payload."""
    payloads: list[str] = []
    current: list[str] = []
    size = 0
    for job_id in job_ids:
        if size + len(job_id) + 1 > NOTIFY_PAYLOAD_MAX:
            payloads.append(",".join(current))
            current, size = [], 0
        current.append(job_id)
        size += len(job_id) + 1
    if current:
        payloads.append(",".join(current))
    return payloads


def followups(app: App, job: Job, outcome: Outcome) -> list[enqueue.JobRow]:
    """Jobs to enqueue because `job` finished: its link callbacks and the next chain step
    on success; its link_error callbacks on final failure."""
    if job.options == "{}" or outcome.state == "RETRY":
        return []
    options = job_options(job)
    rows: list[enqueue.JobRow] = []
    lineage = {"root_id": job.root_id or job.id, "parent_id": job.id}
    if outcome.state == "SUCCESS":
        value = serialization.loads(outcome.result) if outcome.result is not None else None
        for sig in options.get("link") or ():
            rows.append(_row(app, signature(sig), [value], lineage))
        chain = options.get("chain")
        if chain:
            next_step, rest = signature(chain[-1]), chain[:-1]
            extra = {"chain": rest} if rest else {}
            rows.append(_row(app, next_step, [value], {**lineage, **extra}))
    elif outcome.state == "FAILURE":
        for sig in options.get("link_error") or ():
            rows.append(_row(app, signature(sig), [job.id], lineage))
    return rows


def _row(app: App, sig: Signature, args: list[Any], extra: dict[str, Any]) -> enqueue.JobRow:
    all_args, kwargs = sig.merged_args(args)
    options = {**sig.options, **{k: v for k, v in extra.items() if k not in sig.options}}
    return enqueue.build_row(app, sig.task, all_args, kwargs, options, app.tasks.get(sig.task))
