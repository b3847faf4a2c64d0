"""Turn a signature of any kind (task, chain, group, chord) into the rows that start it, and
carry workflows forward when a job finishes. Pure planning: the callers insert the rows.

How the pieces relate (see docs/canvas.md):
- a chain's next steps ride in the running step's `options.chain` (a reversed list: the last
  element is the next step); each step's id is chosen up front so `.parent` works at once;
- a group's members share `group_id`;
- a chord is a row in `chords` with a counter of header jobs still to succeed; each header
  job carries `options.chord`; the body is enqueued by the transaction that takes the
  counter to zero, with the header results in header order.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgq import enqueue, serialization
from pgq.canvas import Signature, chain, chord, group, signature

if TYPE_CHECKING:
    from pgq.app import App


@dataclass(frozen=True)
class ChordRow:
    id: str
    header_ids: list[str]
    body: str  # JSON of the body signature (its task_id set, its continuation included)
    body_id: str
    options: str


@dataclass
class Plan:
    jobs: list[enqueue.JobRow] = field(default_factory=list)
    chords: list[ChordRow] = field(default_factory=list)

    def add(self, other: Plan) -> None:
        self.jobs.extend(other.jobs)
        self.chords.extend(other.chords)


@dataclass
class Started:
    """What the caller gets back: the id of the job whose result is the workflow's result,
    or a group's id and member ids."""

    result_id: str | None = None
    group_id: str | None = None
    member_ids: list[str] = field(default_factory=list)
    step_ids: list[str] = field(default_factory=list)  # a chain's steps, first to last


def plan(app: App, sig: Mapping[str, Any], args: Sequence[Any] | None = None,
         kwargs: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None
         ) -> tuple[Plan, Started]:
    sig = signature(sig)
    extra = dict(extra or {})
    kind = sig.get("subtask_type")
    if kind == "chain":
        return _plan_chain(app, sig, args, kwargs, extra)
    if kind == "group":
        return _plan_group(app, sig, args, kwargs, extra)
    if kind == "chord":
        return _plan_chord(app, sig, args, kwargs, extra)
    all_args, all_kwargs = sig.merged_args(args, kwargs)
    options = {**sig.options, **extra}
    row = enqueue.build_row(app, sig.task, all_args, all_kwargs, options,
                            app.tasks.get(sig.task))
    return Plan(jobs=[row]), Started(result_id=row.id)


def _continuation(extra: Mapping[str, Any]) -> list[Any]:
    return list(extra.get("chain") or [])


def _plan_chain(app: App, sig: Signature, args: Sequence[Any] | None,
                kwargs: Mapping[str, Any] | None, extra: dict[str, Any]) -> tuple[Plan, Started]:
    steps = _fold_groups(sig.tasks)  # type: ignore[attr-defined]
    if not steps:
        raise ValueError("an empty chain has nothing to run")
    outer = _continuation(extra)
    chord_id = extra.pop("chord", None)
    link_error = extra.pop("link_error", None)
    ids: list[str] = []
    for index, step in enumerate(steps):
        if link_error:  # Celery: a chain's error callback belongs to every step
            step.set(link_error=link_error)
        if step.get("subtask_type") is None:
            job_id = str(step.options.get("task_id") or enqueue.new_id())
            step.set(task_id=job_id)
            if ids:
                step.set(parent_id=ids[-1], root_id=extra.get("root_id") or ids[0])
            ids.append(job_id)
        elif step.get("subtask_type") == "chord":
            body = signature(step["kwargs"]["body"])
            body_id = str(body.options.get("task_id") or enqueue.new_id())
            step["kwargs"]["body"] = body.set(task_id=body_id)
            ids.append(body_id)
        if index == len(steps) - 1 and chord_id:
            _set_membership(step, chord_id)
    continuation = outer + [dict(s) for s in reversed(steps[1:])]
    first_extra = {k: v for k, v in extra.items() if k != "chain"}
    if continuation:
        first_extra["chain"] = continuation
    result_plan, first = plan(app, steps[0], args, kwargs, first_extra)
    return result_plan, Started(result_id=ids[-1] if ids else first.result_id, step_ids=ids)


def _set_membership(step: Signature, chord_id: str) -> None:
    """Make `step` (the last thing a chord header member runs) count for the chord."""
    kind = step.get("subtask_type")
    if kind == "chord":
        body = signature(step["kwargs"]["body"])
        step["kwargs"]["body"] = body.set(chord=chord_id)
    elif kind in ("chain", "group"):
        raise ValueError("a chord header member may be a task, a chain or a chord")
    else:
        step.set(chord=chord_id)


def _fold_groups(steps: list[Signature]) -> list[Signature]:
    """Celery's rule: in a chain, a group followed by another step is a chord."""
    folded: list[Signature] = []
    index = 0
    while index < len(steps):
        step = steps[index]
        if step.get("subtask_type") == "group" and index + 1 < len(steps):
            folded.append(chord(step.tasks, steps[index + 1]))  # type: ignore[attr-defined]
            index += 2
        else:
            folded.append(step)
            index += 1
    return folded


def _plan_group(app: App, sig: Signature, args: Sequence[Any] | None,
                kwargs: Mapping[str, Any] | None, extra: dict[str, Any]) -> tuple[Plan, Started]:
    if _continuation(extra):  # a group with something after it is a chord
        return _plan_chord(app, chord(sig.tasks, signature(extra["chain"][-1])),  # type: ignore[attr-defined]
                           args, kwargs, {**extra, "chain": extra["chain"][:-1]})
    group_id = str(extra.pop("group_id", None) or uuid.uuid4())
    result = Plan()
    members = []
    for member in sig.tasks:  # type: ignore[attr-defined]
        member_plan, started = plan(app, member, args, kwargs, {**extra, "group_id": group_id})
        result.add(member_plan)
        members.append(started.result_id or "")
    return result, Started(group_id=group_id, member_ids=members)


def _plan_chord(app: App, sig: Signature, args: Sequence[Any] | None,
                kwargs: Mapping[str, Any] | None, extra: dict[str, Any]) -> tuple[Plan, Started]:
    header = [signature(s) for s in sig["kwargs"]["header"]]
    body = signature(sig["kwargs"]["body"])
    body_id = str(body.options.get("task_id") or enqueue.new_id())
    link_error = extra.pop("link_error", None) or sig.options.get("link_error")
    body_extra = {k: v for k, v in extra.items() if k in ("chain", "chord", "root_id")}
    body = body.clone(**body_extra).set(task_id=body_id)
    if not header:
        body_plan, _ = plan(app, body, [[]])
        return body_plan, Started(result_id=body_id)
    chord_id = str(uuid.uuid4())
    result = Plan()
    header_ids = []
    header_extra = {k: v for k, v in extra.items() if k not in ("chain", "chord")}
    for member in header:
        member_plan, started = plan(app, member, args, kwargs,
                                    {**header_extra, "chord": chord_id, "group_id": chord_id})
        result.add(member_plan)
        header_ids.append(started.result_id or "")
    options = {"link_error": _as_list(link_error)} if link_error else {}
    result.chords.append(ChordRow(chord_id, header_ids, serialization.dumps(dict(body)),
                                  body_id, serialization.dumps(options)))
    return result, Started(result_id=body_id, group_id=chord_id, member_ids=header_ids)


def _as_list(value: Any) -> list[Any]:
    return [value] if isinstance(value, Mapping) else list(value)


@dataclass
class Batch:
    """`enqueue_many`'s plan: every row to insert, and how inserted ids map back to the
    signatures given (a workflow stands for the id of its result)."""

    jobs: list[enqueue.JobRow]
    chords: list[ChordRow]
    names: list[str]
    workflow_ids: list[str | None]  # None: a plain task signature, whose id comes from insert

    def result_ids(self, inserted: Sequence[str]) -> list[str]:
        plain = iter(inserted)
        return [next(plain) if wid is None else wid for wid in self.workflow_ids]


def plan_many(app: App, signatures: Iterable[Mapping[str, Any]]) -> Batch:
    """Rows for many signatures: plain task signatures first (built in one pass), then the
    rows of each workflow."""
    sigs = list(signatures)
    kinds = [is_workflow(s) for s in sigs]
    jobs = enqueue.build_rows(app, [s for s, is_flow in zip(sigs, kinds, strict=True)
                                    if not is_flow])
    chords: list[ChordRow] = []
    workflow_ids: list[str | None] = []
    for sig, is_flow in zip(sigs, kinds, strict=True):
        if not is_flow:
            workflow_ids.append(None)
            continue
        sig_plan, started = plan(app, sig)
        jobs.extend(sig_plan.jobs)
        chords.extend(sig_plan.chords)
        workflow_ids.append(started.result_id or started.group_id or "")
    return Batch(jobs, chords, [str(s["task"]) for s in sigs], workflow_ids)


def is_workflow(sig: Mapping[str, Any]) -> bool:
    return sig.get("subtask_type") in ("chain", "group", "chord")


__all__ = ["Batch", "ChordRow", "Plan", "Started", "chain", "chord", "group", "plan"]
