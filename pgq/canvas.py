"""Signatures and workflows as plain data. A Signature is a dict (it survives a JSON round
trip); chain and group turn into job rows, and the worker carries a chain forward."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgq.app import App
    from pgq.result import AsyncResult, GroupResult


def _current_app(app: App | None) -> App:
    from pgq.app import current_app

    return app or current_app()


class Signature(dict[str, Any]):
    """`add.s(2, 3)`: a task name with partial args, kwargs and calling options."""

    def __init__(
        self,
        task: str | Mapping[str, Any],
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
        subtask_type: str | None = None,
        app: App | None = None,
    ) -> None:
        if isinstance(task, Mapping):  # rebuilding from a dict
            super().__init__(task)
            self.setdefault("args", [])
            self.setdefault("kwargs", {})
            self.setdefault("options", {})
            self.setdefault("immutable", False)
            self.setdefault("subtask_type", None)
        else:
            super().__init__(task=task, args=list(args or ()), kwargs=dict(kwargs or {}),
                             options=dict(options or {}), immutable=immutable,
                             subtask_type=subtask_type)
        self._app = app

    @property
    def app(self) -> App:
        return _current_app(self._app)

    @property
    def task(self) -> str:
        return str(self["task"])

    @property
    def args(self) -> list[Any]:
        return list(self["args"])

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self["kwargs"])

    @property
    def options(self) -> dict[str, Any]:
        return dict(self["options"])

    @property
    def immutable(self) -> bool:
        return bool(self["immutable"])

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        if immutable is not None:
            self["immutable"] = immutable
        self["options"] = {**self["options"], **options}
        return self

    def clone(self, args: Sequence[Any] | None = None,
              kwargs: Mapping[str, Any] | None = None, **options: Any) -> Signature:
        sig = Signature(dict(self), app=self._app)
        sig["args"], sig["kwargs"] = self.merged_args(args, kwargs)
        sig["options"] = {**self["options"], **options}
        return sig

    def merged_args(self, args: Sequence[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None) -> tuple[list[Any], dict[str, Any]]:
        """Celery's rule: new positional args go first (a chain passes the parent's result as
        the first argument); an immutable signature ignores them."""
        if self.immutable:
            return self.args, self.kwargs
        return [*(args or ()), *self.args], {**self.kwargs, **(kwargs or {})}

    def apply_async(self, args: Sequence[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None, **options: Any) -> AsyncResult:
        all_args, all_kwargs = self.merged_args(args, kwargs)
        return self.app.send_task(self.task, all_args, all_kwargs,
                                  **{**self.options, **options})

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task body here, with the signature's partial arguments."""
        all_args, all_kwargs = self.merged_args(args, kwargs)
        return self.app.tasks[self.task](*all_args, **all_kwargs)

    def __or__(self, other: Signature) -> chain:  # type: ignore[override]
        return chain(self, other)

    def __repr__(self) -> str:
        args = ", ".join([*map(repr, self["args"]),
                          *(f"{k}={v!r}" for k, v in self["kwargs"].items())])
        return f"{self['task']}({args}){'!' if self.immutable else ''}"


def signature(value: Mapping[str, Any] | str, *args: Any, **kwargs: Any) -> Signature:
    """Rebuild a signature from its dict form (or build one from a task name)."""
    if isinstance(value, Mapping):
        kind = value.get("subtask_type")
        if kind == "chain":
            return chain(*[signature(s) for s in value["kwargs"]["tasks"]])
        if kind == "group":
            return group([signature(s) for s in value["kwargs"]["tasks"]])
        return Signature(value)
    return Signature(value, *args, **kwargs)


class chain(Signature):
    """`a | b | c`: each result becomes the first argument of the next step."""

    def __init__(self, *tasks: Signature | Iterable[Signature], app: App | None = None) -> None:
        flat: list[Signature] = []
        items: Iterable[Any] = tasks[0] if len(tasks) == 1 and not isinstance(
            tasks[0], Mapping) else tasks
        for task in items:
            flat.extend(task.tasks if isinstance(task, chain) else [signature(task)])
        super().__init__("pgq.chain", (), {"tasks": flat}, subtask_type="chain", app=app)

    @property
    def tasks(self) -> list[Signature]:
        return [signature(s) for s in self["kwargs"]["tasks"]]

    def __or__(self, other: Signature) -> chain:  # type: ignore[override]
        return chain(*self.tasks, other)

    def apply_async(self, args: Sequence[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None, **options: Any) -> AsyncResult:
        from pgq.result import AsyncResult

        steps = self.tasks
        if not steps:
            raise ValueError("an empty chain has nothing to run")
        # Ids are chosen now so the returned result can walk back with .parent at once.
        ids = [str(s.options.get("task_id") or uuid.uuid4()) for s in steps]
        for step, job_id in zip(steps, ids, strict=True):
            step.set(task_id=job_id)
        for later, earlier_id in zip(steps[1:], ids, strict=False):
            later.set(parent_id=earlier_id, root_id=ids[0])
        first, rest = steps[0], steps[1:]
        first_options = {**options}
        if rest:
            first_options["chain"] = [dict(s) for s in reversed(rest)]
        first.apply_async(args, kwargs, **first_options)
        result: AsyncResult | None = None
        for job_id in ids:
            result = AsyncResult(job_id, app=self.app, parent=result)
        assert result is not None
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult:  # type: ignore[override]
        return self.apply_async(args, kwargs)


class group(Signature):
    """Run signatures in parallel; results come back in the group's order."""

    def __init__(self, *tasks: Signature | Iterable[Signature], app: App | None = None) -> None:
        items: Iterable[Any] = tasks[0] if len(tasks) == 1 and not isinstance(
            tasks[0], Mapping) else tasks
        super().__init__("pgq.group", (), {"tasks": [signature(t) for t in items]},
                         subtask_type="group", app=app)

    @property
    def tasks(self) -> list[Signature]:
        return [signature(s) for s in self["kwargs"]["tasks"]]

    def apply_async(self, args: Sequence[Any] | None = None,  # type: ignore[override]
                    kwargs: Mapping[str, Any] | None = None, *, connection: Any = None,
                    **options: Any) -> GroupResult:
        from pgq.result import GroupResult

        group_id = str(options.pop("group_id", None) or uuid.uuid4())
        members = [s.clone(args, kwargs, **options).set(group_id=group_id) for s in self.tasks]
        results = self.app.enqueue_many(members, connection=connection)
        return GroupResult(group_id, results, app=self.app)

    def __call__(self, *args: Any, **kwargs: Any) -> GroupResult:  # type: ignore[override]
        return self.apply_async(args, kwargs)


class chord(Signature):
    """`chord(header, body)`: the body runs once with every header result."""

    def __init__(self, header: Iterable[Signature], body: Signature | None = None,
                 app: App | None = None) -> None:
        super().__init__("pgq.chord", (), {"header": [signature(t) for t in header],
                                            "body": signature(body) if body else None},
                         subtask_type="chord", app=app)

    def apply_async(self, args: Sequence[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None, **options: Any) -> AsyncResult:
        from pgq.errors import PgqError

        raise PgqError("chord is not available yet in this version of pgq")

    def __call__(self, body: Signature | None = None, **options: Any) -> AsyncResult:  # type: ignore[override]
        if body is not None:
            self["kwargs"]["body"] = body
        return self.apply_async(**options)
