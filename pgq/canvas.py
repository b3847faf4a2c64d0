"""Signatures and workflows as plain data. A Signature is a dict (it survives a JSON round
trip); chain and group turn into job rows, and the worker carries a chain forward."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic

from typing_extensions import TypeVar

if TYPE_CHECKING:
    from pgq.app import App
    from pgq.result import AsyncResult, GroupResult


def _current_app(app: App | None) -> App:
    from pgq.app import current_app

    return app or current_app()


# The task's return type; a bare Signature is Signature[Any]. Covariant: a list of signatures
# of different tasks is a list[Signature[object]], which chain/group/chord accept.
R = TypeVar("R", covariant=True, default=Any)


class Signature(dict[str, Any], Generic[R]):
    """`add.s(2, 3)`: a task name with partial args, kwargs and calling options.
    `Signature[R]`: its `delay().get()` returns the task's `R`.

    A signature is a plain `dict` (`task`, `args`, `kwargs`, `options`, `immutable`,
    `subtask_type`), so it survives a JSON round trip; `pgq.signature(d)` rebuilds one.
    `a | b` makes a chain.
    """

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

    def set(self, immutable: bool | None = None, **options: Any) -> Signature[R]:
        """Add calling options (`queue=`, `countdown=`, `priority=`, …) in place; returns the
        signature itself."""
        if immutable is not None:
            self["immutable"] = immutable
        self["options"] = {**self["options"], **options}
        return self

    def clone(self, args: Sequence[Any] | None = None,
              kwargs: Mapping[str, Any] | None = None, **options: Any) -> Signature[R]:
        """A copy with more arguments (positional ones go first) and options."""
        sig: Signature[R] = Signature(dict(self), app=self._app)
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
                    kwargs: Mapping[str, Any] | None = None, **options: Any) -> AsyncResult[R]:
        """Enqueue the task with the signature's arguments plus these (positional ones go
        first), and its options updated with these (as `Task.apply_async`)."""
        all_args, all_kwargs = self.merged_args(args, kwargs)
        return self.app.send_task(self.task, all_args, all_kwargs,
                                  **{**self.options, **options})

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        """`apply_async(args, kwargs)` without options."""
        return self.apply_async(args, kwargs)

    async def aapply_async(self, args: Sequence[Any] | None = None,
                           kwargs: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """`apply_async` for async code (see docs/async.md): a workflow's rows go in on an
        async connection (`connection=`) or the app's async pool."""
        from pgq import aio

        if self.get("subtask_type") is None:
            all_args, all_kwargs = self.merged_args(args, kwargs)
            return await aio.send_task(self.app, self.task, all_args, all_kwargs,
                                       **{**self.options, **options})
        return self._started_result(await aio.start(self, args, kwargs, dict(options)))

    async def adelay(self, *args: Any, **kwargs: Any) -> Any:
        return await self.aapply_async(args, kwargs)

    def _started_result(self, started: Any) -> Any:
        raise NotImplementedError  # workflows only

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        """Run the task body here, with the signature's partial arguments."""
        all_args, all_kwargs = self.merged_args(args, kwargs)
        value: R = self.app.tasks[self.task](*all_args, **all_kwargs)
        return value

    def __or__(self, other: Signature) -> chain:  # type: ignore[override]  # not dict's merge
        """`a | b`: a chain of the two."""
        return chain(self, other)

    if TYPE_CHECKING:
        # For `a | b` of two signatures of different return types, mypy looks at the right
        # operand's reflected operator first (dict's, a dict merge); at run time `a.__or__`
        # answers. So the reflected one is declared, for type checkers only, as a chain too.
        def __ror__(self, other: Signature) -> chain: ...  # type: ignore[override]

    def __repr__(self) -> str:
        args = ", ".join([*map(repr, self["args"]),
                          *(f"{k}={v!r}" for k, v in self["kwargs"].items())])
        return f"{self['task']}({args}){'!' if self.immutable else ''}"


def signature(value: Mapping[str, Any] | str, *args: Any, **kwargs: Any) -> Signature:
    """Rebuild a signature from its dict form (or build one from a task name)."""
    if isinstance(value, Mapping):
        app = getattr(value, "_app", None)  # a Signature object keeps the app it was made by
        kind = value.get("subtask_type")
        if kind == "chain":
            return chain(*[signature(s) for s in value["kwargs"]["tasks"]], app=app)
        if kind == "group":
            return group([signature(s) for s in value["kwargs"]["tasks"]], app=app)
        if kind == "chord":
            body = value["kwargs"].get("body")
            return chord([signature(s) for s in value["kwargs"]["header"]],
                         signature(body) if body else None, app=app)
        return Signature(value, app=app)
    return Signature(value, *args, **kwargs)


def _app_of(members: Iterable[Signature | None], app: App | None) -> App | None:
    """A workflow belongs to the app given, else to the app of its first member that has
    one (as in Celery), and only then to the most recently created App."""
    return app or next((m._app for m in members if m is not None and m._app), None)


def _start(sig: Signature, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None,
           options: dict[str, Any]) -> Any:
    """Plan a workflow and insert all its first rows in one transaction."""
    from pgq import enqueue, workflow

    app = sig.app
    connection = options.pop("connection", None)
    sig_plan, started = workflow.plan(app, sig, args, kwargs, options)
    enqueue.insert_plan(app, sig_plan.jobs, sig_plan.chords, connection)
    return started


class chain(Signature):
    """`a | b | c`: each result becomes the first argument of the next step."""

    def __init__(self, *tasks: Signature | Iterable[Signature], app: App | None = None) -> None:
        flat: list[Signature] = []
        items: Iterable[Any] = tasks[0] if len(tasks) == 1 and not isinstance(
            tasks[0], Mapping) else tasks
        for task in items:
            flat.extend(task.tasks if isinstance(task, chain) else [signature(task)])
        super().__init__("pgq.chain", (), {"tasks": flat}, subtask_type="chain",
                         app=_app_of(flat, app))

    @property
    def tasks(self) -> list[Signature]:
        """The steps, in order."""
        return [signature(s) for s in self["kwargs"]["tasks"]]

    def __or__(self, other: Signature) -> chain:  # type: ignore[override]
        return chain(*self.tasks, other)

    def apply_async(self, args: Sequence[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None, **options: Any) -> AsyncResult:
        """Enqueue the chain (its first step's row; `connection=` works as for a task).
        `args`/`kwargs` go to the first step. Returns the last step's result, whose
        `.parent` walks back through the steps."""
        return self._started_result(_start(self, args, kwargs, options))

    def _started_result(self, started: Any) -> AsyncResult:
        from pgq.result import AsyncResult

        result: AsyncResult | None = None
        for job_id in started.step_ids:
            result = AsyncResult(job_id, app=self.app, parent=result)
        assert result is not None
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)


class group(Signature):
    """Run signatures in parallel; results come back in the group's order."""

    def __init__(self, *tasks: Signature | Iterable[Signature], app: App | None = None) -> None:
        items: Iterable[Any] = tasks[0] if len(tasks) == 1 and not isinstance(
            tasks[0], Mapping) else tasks
        members = [signature(t) for t in items]
        super().__init__("pgq.group", (), {"tasks": members}, subtask_type="group",
                         app=_app_of(members, app))

    @property
    def tasks(self) -> list[Signature]:
        """The members, in order."""
        return [signature(s) for s in self["kwargs"]["tasks"]]

    def apply_async(self, args: Sequence[Any] | None = None,  # type: ignore[override]
                    kwargs: Mapping[str, Any] | None = None, **options: Any) -> GroupResult:
        """Enqueue every member in one transaction (`connection=` works as for a task).
        `args`/`kwargs` go to every member."""
        return self._started_result(_start(self, args, kwargs, options))

    def _started_result(self, started: Any) -> GroupResult:
        from pgq.result import AsyncResult, GroupResult

        results = [AsyncResult(i, app=self.app) for i in started.member_ids]
        return GroupResult(started.group_id or "", results, app=self.app)

    def __call__(self, *args: Any, **kwargs: Any) -> GroupResult:
        return self.apply_async(args, kwargs)


class chord(Signature):
    """`chord(header, body)`: the body runs once, with every header result, after every
    header job has succeeded."""

    def __init__(self, header: Iterable[Signature] | Signature,
                 body: Signature | None = None, app: App | None = None) -> None:
        if isinstance(header, Mapping) and header.get("subtask_type") == "group":
            header = signature(header).tasks  # type: ignore[attr-defined]
        members = [signature(t) for t in header]
        body_sig = signature(body) if body else None
        super().__init__("pgq.chord", (), {"header": members, "body": body_sig},
                         subtask_type="chord", app=_app_of([*members, body_sig], app))

    @property
    def tasks(self) -> list[Signature]:
        """The header's signatures."""
        return [signature(s) for s in self["kwargs"]["header"]]

    @property
    def body(self) -> Signature | None:
        """The body's signature, or `None` until one is given."""
        body = self["kwargs"]["body"]
        return signature(body) if body else None

    def apply_async(self, args: Sequence[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None, **options: Any) -> AsyncResult:
        """Enqueue the header jobs and the chord's counter row in one transaction. Returns
        the body's result: it fails with `ChordError` if a header job fails."""
        self._check_body()
        return self._started_result(_start(self, args, kwargs, options))

    async def aapply_async(self, args: Sequence[Any] | None = None,
                           kwargs: Mapping[str, Any] | None = None, **options: Any) -> Any:
        self._check_body()
        return await super().aapply_async(args, kwargs, **options)

    def _check_body(self) -> None:
        from pgq.errors import PgqError

        if self.body is None:
            raise PgqError("a chord needs a body: chord(header, body) or chord(header)(body)")

    def _started_result(self, started: Any) -> AsyncResult:
        from pgq.result import AsyncResult

        return AsyncResult(started.result_id or "", app=self.app)

    def __call__(self, body: Signature | None = None, **options: Any) -> AsyncResult:
        """`chord(header)(body)`: set the body and enqueue, as Celery's shorthand."""
        if body is not None:
            self["kwargs"]["body"] = body
        return self.apply_async(**options)
