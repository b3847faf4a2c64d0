"""Persist outcomes: one guarded statement per batch, the workflow steps that follow
(link, chain, chord counters, link_error) in the same transaction, and one NOTIFY per
batch for `get()` waiters."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from pgq import enqueue, security, serialization, workflow
from pgq.db.connection import execute
from pgq.errors import PgqError
from pgq.payload import loads_result
from pgq.worker.executor import Job, Outcome, job_options, takes_request_exc_traceback

if TYPE_CHECKING:
    from pgq.app import App

log = logging.getLogger("pgq.worker")
NOTIFY_PAYLOAD_MAX = 7800  # PostgreSQL's limit is 8000 bytes
CHORD_ERROR = "pgq.errors.ChordError"


def complete_params(outcomes: Sequence[Outcome], worker_id: str) -> dict[str, Any]:
    """The parameters of `_outcomes` (queries.sql): the batch as one JSON array of
    rows, in Outcome's field order."""
    rows = orjson.dumps([tuple(outcome) for outcome in outcomes]).decode()
    return {"outcomes": rows, "worker": worker_id}


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


class CarryForward:
    """What finished jobs set in motion, gathered for one transaction."""

    def __init__(self, app: App, conn: Any) -> None:
        self.app = app
        self.conn = conn
        self.plan = workflow.Plan()
        self.failed: list[dict[str, Any]] = []
        self.chord_successes: Counter[str] = Counter()

    def add(self, job: Job, outcome: Outcome) -> None:
        if job.options == "{}" or outcome.state == "RETRY":
            return
        if not security.trusted(self.app, job, outcome.exc_type):
            return  # its options may be forged: start nothing on their say-so
        options = job_options(job)
        lineage = {"root_id": job.root_id or job.id, "parent_id": job.id}
        if outcome.state == "SUCCESS":
            value = loads_result(self.app, outcome.result, own=True)
            for sig in options.get("link") or ():
                self._start(sig, [value], lineage)
            chain = options.get("chain")
            if chain:
                more = {"chain": chain[:-1]} if len(chain) > 1 else {}
                self._start(chain[-1], [value], {**lineage, **more})
            if options.get("chord"):
                self.chord_successes[options["chord"]] += 1
        elif outcome.state == "FAILURE":
            for sig in options.get("link_error") or ():
                if not takes_request_exc_traceback(self.app, sig):  # those ran in the child
                    self._start(sig, [job.id], lineage)
            error = (outcome.exc_type, outcome.exc_message, outcome.result, outcome.traceback)
            self._fail_rest_of_chain(options.get("chain") or [], error, job.id)
            if options.get("chord"):
                self._fail_chord(options["chord"], job, outcome)

    def _start(self, sig: Mapping[str, Any], args: list[Any], extra: dict[str, Any]) -> None:
        own = sig.get("options") or {}
        extra = {k: v for k, v in extra.items() if k not in own}
        step_plan, _ = workflow.plan(self.app, sig, args, None, extra)
        self.plan.add(step_plan)

    def _fail_rest_of_chain(self, chain: list[Any], error: tuple[Any, ...], cause: str,
                            meta: dict[str, Any] | None = None) -> None:
        """The steps after a failed one will never run: they fail with the same error, so
        the chain's result raises it."""
        exc_type, message, args, trace = error
        for step in chain:
            if step.get("subtask_type") == "chord":
                step = step["kwargs"]["body"]
            task_id = (step.get("options") or {}).get("task_id")
            if task_id:
                self.failed.append({
                    "id": task_id, "task": step.get("task", "pgq.chain"),
                    "queue": self.app.default_queue, "result": args, "exc_type": exc_type,
                    "exc_message": message, "traceback": trace,
                    "meta": serialization.dumps(meta or {"failed_step": cause}),
                    "root_id": step["options"].get("root_id"),
                    "parent_id": step["options"].get("parent_id"), "group_id": None})

    def _fail_chord(self, chord_id: str, job: Job, outcome: Outcome) -> None:
        q = self.app.queries
        rows = execute(self.conn, q.chord_failed, {"id": chord_id})
        if not rows:
            return  # already failed by another header job: error callbacks run once
        body_text, body_id, options_text = rows[0]
        body = serialization.loads(body_text)
        message = f"chord header job {job.id} failed: {outcome.exc_type}: {outcome.exc_message}"
        error = (CHORD_ERROR, message, serialization.dumps([message]), None)
        body_options = body.get("options") or {}
        self._fail_rest_of_chain([{**body, "options": {**body_options, "task_id": body_id}}],
                                 error, job.id, {"cause": job.id})
        self._fail_rest_of_chain(body_options.get("chain") or [], error, job.id,
                                 {"cause": job.id})
        callbacks = [*serialization.loads(options_text).get("link_error", []),
                     *(body_options.get("link_error") or [])]
        for sig in callbacks:
            self._start(sig, [job.id], {"root_id": job.root_id or job.id})

    def _count_chords(self) -> None:
        q = self.app.queries
        for chord_id, n in self.chord_successes.items():
            rows = execute(self.conn, q.chord_succeeded, {"id": chord_id, "n": n})
            if rows and rows[0][0] == "DONE":
                header_ids, body = rows[0][1], serialization.loads(rows[0][2])
                results = dict(execute(self.conn, q.header_results, {"ids": header_ids}))
                values = [loads_result(self.app, results.get(str(h)))
                          for h in header_ids]
                self._start(body, [values], {})

    def write(self) -> list[str]:
        """Insert everything gathered; return ids of jobs that finished without running."""
        self._count_chords()
        enqueue.insert_chords(self.app, self.conn, self.plan.chords)
        if self.plan.jobs:
            enqueue.insert(self.app, self.plan.jobs, self.conn, route=False)
        for row in self.failed:
            execute(self.conn, self.app.queries.insert_failed, row)
        return [str(row["id"]) for row in self.failed]


def write_outcomes(app: App, conn: Any, worker_id: str, outcomes: Sequence[Outcome],
                   jobs: Mapping[str, Job]) -> tuple[bool, set[str]]:
    """Write a batch of outcomes (guarded), start what follows them, and NOTIFY waiters and
    workers. Returns whether a job went back to its queue due now (an immediate retry), and
    the ids of the outcomes written (the others' jobs were revoked or rescued meanwhile)."""
    q = app.queries
    rows = execute(conn, q.complete, complete_params(outcomes, worker_id))
    written = {str(row[0]) for row in rows}
    if len(written) < len(outcomes):
        log.warning("%d outcome(s) discarded: their jobs were revoked or rescued meanwhile",
                    len(outcomes) - len(written))
    carry = CarryForward(app, conn)
    for outcome in outcomes:
        job = jobs.get(outcome.id)
        if job is not None and outcome.id in written:
            try:
                carry.add(job, outcome)
            except (PgqError, ValueError, KeyError) as exc:  # a bad callback or step
                log.error("job %s: cannot start what follows it: %s", job.id, exc)
    done = [str(r[0]) for r in rows if r[1] != "RETRY"] + carry.write()
    for payload in done_payloads(done):
        execute(conn, q.notify, {"channel": q.done_channel, "payload": payload})
    due_now = {r[2] for r in rows if r[1] == "RETRY" and r[3]}
    for queue in due_now:
        execute(conn, q.notify, {"channel": q.jobs_channel, "payload": queue})
    return bool(due_now), written
