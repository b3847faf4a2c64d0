"""Type checking: mypy --strict on snippets of user code. `Task[P, R]` checks delay()'s
arguments and gives `AsyncResult[R].get()` the task's return type.

Each snippet line that should fail carries `# E: <error code>`, each `reveal_type` line
`# R: <revealed type>`; mypy must report exactly those (no more) on the snippet's lines."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parent.parent

TASKS = '''
from typing_extensions import reveal_type

from pgq import App, AsyncResult, Task

app = App("typing_snippet", dsn="postgresql://localhost/unused")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(queue="text", max_retries=1)
def concat(a: str, b: str = "") -> str:
    return a + b


@app.task(bind=True)
def bound(self: Task, n: int) -> list[int]:
    return [n, self.request.retries]


@app.task
async def fetch(url: str) -> bytes:
    return url.encode()


@app.task(bind=True, name="abound")
async def abound(self: Task, url: str, *, retries: int = 0) -> dict[str, int]:
    return {url: retries}
'''

GOOD = TASKS + '''
from pgq import chord, crontab, group

app.add_periodic_task(crontab(hour=6, minute=30), add.s(1, 2))  # numbers, as in Celery

def total(result: AsyncResult[int]) -> int:
    return result.get(timeout=1) + 1


async def produce() -> int:
    result = await add.adelay(1, 2)
    data: bytes = await (await fetch.aapply_async(("u",), countdown=1)).aget(timeout=5)
    return await result.aget() + len(data)


def use() -> None:
    n: int = add(2, 3)
    r: AsyncResult[int] = add.delay(1, 2)
    s: str = concat.delay("a", b="b").get()
    b: list[int] = bound.delay(3).get()
    f: bytes = fetch.delay("u").get()
    d: dict[str, int] = abound.delay("u", retries=2).get()
    total(add.apply_async((1, 2), countdown=5, queue="q"))
    add.s(1) | add.s(2)  # partial arguments: s() is not checked
    add.si(1, 2)
    m: int = add.s(1).delay(2).get()
    # Signatures of different tasks mix in chains, groups and chord headers.
    (add.s(1, 1) | concat.si("x") | add.s(1)).apply_async(link_error=concat.s())
    header = [add.s(1, 1), concat.s("a"), bound.si(2)]
    chord(header, add.s()).apply_async()
    group(header).apply_async().get()
    results = [add.delay(1, 2), concat.delay("a")]
    handlers: dict[str, Task] = {"add": add, "concat": concat, "bound": bound, "fetch": fetch}
    handlers["add"].delay(1, 2)
    print(n, r, s, b, f, d, m, [x.get() for x in results])


assert add(2, 3) == 5
assert concat("a", "b") == "ab"
assert bound(4)[0] == 4
assert add.s(1)(2) == 3 and add.si(1, 2)["args"] == [1, 2]
assert isinstance(fetch, Task) and isinstance(abound, Task)
print("ran")
'''

BAD = TASKS + '''
flag = bool(1)


@app.task(bind=flag)
def loose(self: Task, n: int) -> float:
    return 1.0


reveal_type(add)  # R: pgq.task.Task[[x: int, y: int], int]
reveal_type(add(2, 3))  # R: int
reveal_type(add.delay(1, 2))  # R: pgq.result.AsyncResult[int]
reveal_type(add.delay(1, 2).get())  # R: int
reveal_type(add.delay(1, 2).get(propagate=False))  # R: int | BaseException
reveal_type(add.apply_async((1, 2)).get())  # R: int
reveal_type(add.AsyncResult("id").get())  # R: int
reveal_type(concat.delay("a").get())  # R: str
reveal_type(bound)  # R: pgq.task.Task[[n: int], list[int]]
reveal_type(fetch.delay("u").get())  # R: bytes
coroutine = reveal_type(fetch("u"))  # R: typing.Coroutine[Any, Any, bytes]
coroutine.close()  # a direct call of an async task returns its coroutine
reveal_type(abound.delay("u").get())  # R: dict[str, int]
reveal_type(loose.delay("anything").get())  # R: float


async def producer() -> None:
    reveal_type(await add.adelay(1, 2))  # R: pgq.result.AsyncResult[int]
    reveal_type(await (await add.adelay(1, 2)).aget())  # R: int
    reveal_type(await (await fetch.aapply_async(("u",))).aget(timeout=1))  # R: bytes
    await add.adelay("x", 2)  # E: arg-type

reveal_type(add.s(1))  # R: pgq.canvas.Signature[int]
reveal_type(add.si(1, 2).delay().get())  # R: int
reveal_type(concat.s("a").set(queue="q").clone(("b",)).apply_async().get())  # R: str
reveal_type(add.s(1) | add.s(2))  # R: pgq.canvas.chain
reveal_type(add.s(1) | concat.si("a") | bound.s())  # R: pgq.canvas.chain
reveal_type([add.s(1), concat.s("a")])  # R: list[pgq.canvas.Signature[object]]
reveal_type(add.starmap([(1, 2)]).delay().get())  # R: list[int]

add.delay("x", 2)  # E: arg-type
add.delay(1)  # E: call-arg
add.delay(1, 2, 3)  # E: call-arg
add.delay(1, z=2)  # E: call-arg
add("x", 2)  # E: arg-type
add.si(1, "y")  # E: arg-type
concat.delay(1)  # E: arg-type
bound.delay("3")  # E: arg-type
bound.delay()  # E: call-arg
fetch.delay(b"u")  # E: arg-type
abound.delay("u", retries="2")  # E: arg-type
wrong: AsyncResult[str] = add.delay(1, 2)  # E: assignment
n: str = add.delay(1, 2).get()  # E: assignment
'''

_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<kind>error|note): (?P<text>.*)$")


def _mypy(path: Path) -> tuple[dict[int, list[str]], dict[int, str], str]:
    """Run mypy --strict on `path`; the snippet's errors (codes) and revealed types by line."""
    stdout, stderr, _ = api.run([str(path), "--strict", "--show-error-codes",
                                 "--no-error-summary", "--hide-error-context",
                                 "--cache-dir", str(ROOT / ".mypy_cache")])
    errors: dict[int, list[str]] = {}
    reveals: dict[int, str] = {}
    for line in stdout.splitlines():
        match = _LINE.match(line)
        if not match or Path(match["file"]).name != path.name:
            continue
        number, text = int(match["line"]), match["text"]
        if match["kind"] == "note" and text.startswith("Revealed type is "):
            reveals[number] = text.removeprefix("Revealed type is ").strip('"')
        elif match["kind"] == "error":
            errors.setdefault(number, []).append(text.rsplit("[", 1)[-1].rstrip("]"))
    return errors, reveals, stdout + stderr


def _expected(source: str, marker: str) -> dict[int, str]:
    return {number: line.split(f"# {marker}: ", 1)[1].strip()
            for number, line in enumerate(source.splitlines(), start=1)
            if f"# {marker}: " in line}


@pytest.fixture(scope="module")
def snippets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("typing")
    for name, source in (("good_snippet.py", GOOD), ("bad_snippet.py", BAD)):
        (folder / name).write_text(textwrap.dedent(source))
    return folder


@pytest.fixture
def in_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # mypy finds `pgq` from the checkout (the editable install's import hook is invisible
    # to it) and reads the project's [tool.mypy] settings.
    monkeypatch.chdir(ROOT)


def test_correct_calls_type_check_clean(snippets: Path, in_root: None) -> None:
    errors, _, output = _mypy(snippets / "good_snippet.py")
    assert errors == {}, output


def test_wrong_arguments_are_flagged_and_return_types_revealed(snippets: Path,
                                                               in_root: None) -> None:
    errors, reveals, output = _mypy(snippets / "bad_snippet.py")
    assert reveals == _expected(BAD, "R"), output
    assert errors == {n: [code] for n, code in _expected(BAD, "E").items()}, output


def test_the_typed_snippet_runs(snippets: Path) -> None:
    """The generic classes cost nothing at run time: bind=True and async def tasks register,
    calls and subscripted annotations work."""
    done = subprocess.run([sys.executable, str(snippets / "good_snippet.py")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ran"


def test_generic_aliases_exist_at_run_time() -> None:
    from pgq import AsyncResult, Task

    assert Task[[int, int], int].__origin__ is Task
    assert AsyncResult[int].__origin__ is AsyncResult
