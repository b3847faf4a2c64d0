"""Tasks the end-to-end tests enqueue and real `pgq worker` processes run."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from pgq import App, Task

app = App("tests", dsn=os.environ.get("PGQ_DSN"), worker_lost_timeout=3,
          worker_heartbeat_interval=0.5)


class Unrebuildable(Exception):
    def __init__(self, a: Any, b: Any) -> None:
        super().__init__(f"{a}/{b}")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def echo(*args: Any, **kwargs: Any) -> Any:
    return {"args": list(args), "kwargs": kwargs}


@app.task
def identity(value: Any) -> Any:
    return value


@app.task
def types_of(*args: Any, **kwargs: Any) -> list[str]:
    return [type(a).__name__ for a in args] + [f"{k}:{type(v).__name__}" for k, v in
                                               sorted(kwargs.items())]


@app.task
def fail_value(message: str) -> None:
    raise ValueError(message)


@app.task
def fail_custom() -> None:
    raise Unrebuildable(1, 2)


@app.task
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task(bind=True)
def whoami(self: Task) -> dict[str, Any]:
    r = self.request
    return {"id": r.id, "pid": os.getpid(), "hostname": r.hostname, "retries": r.retries,
            "queue": r.queue, "delivery_info": r.delivery_info, "root_id": r.root_id,
            "parent_id": r.parent_id, "headers": r.headers,
            "eta": r.eta.isoformat() if r.eta else None}


@app.task(bind=True, max_retries=3, default_retry_delay=0.1)
def retry_until(self: Task, succeed_on: int) -> int:
    if self.request.retries < succeed_on:
        raise self.retry(exc=KeyError("not yet"))
    return self.request.retries


@app.task(autoretry_for=(ConnectionError,), max_retries=2, retry_backoff=0.1,
          retry_backoff_max=0.5, bind=True)
def always_connection_error(self: Task) -> None:
    raise ConnectionError(f"attempt {self.request.retries}")


@app.task(bind=True)
def progress(self: Task, release_file: str) -> str:
    self.update_state(state="PROGRESS", meta={"step": 1})
    deadline = time.monotonic() + 20
    while not os.path.exists(release_file) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "done"


@app.task
def record(path: str, label: str) -> str:
    with open(path, "a") as fh:
        fh.write(label + "\n")
    return label


@app.task(unique=True)
def unique_add(x: int, y: int) -> int:
    return x + y


@app.task(ignore_result=True)
def ignored(x: int) -> int:
    return x


@app.task
def crash() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(time_limit=0.5)
def too_slow() -> None:
    time.sleep(10)


@app.task
def exit_hard(code: int) -> None:
    os._exit(code)


@app.task
def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


@app.task(bind=True)
def record_run(self: Task, path: str, seconds: float = 0.0) -> int:
    """Append this run (job id, worker pid) to `path`, sleep, return the attempt number."""
    with open(path, "a") as fh:
        fh.write(f"{self.request.id} {os.getppid()} {os.getpid()}\n")
    time.sleep(seconds)
    return self.request.attempts


@app.task(soft_time_limit=0.3)
def soft_limited() -> str:
    from pgq import SoftTimeLimitExceeded

    try:
        time.sleep(5)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "not interrupted"


@app.task
def sleep_unguarded(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"


@app.task(rate_limit="5/s")
def limited(path: str) -> None:
    with open(path, "a") as fh:
        fh.write(f"{time.time()}\n")


@app.task
def child_pid() -> int:
    return os.getpid()


@app.task
def returns_nul() -> str:
    return "a\x00b"


@app.task(max_retries=1)
def kill_my_worker() -> None:
    os.killpg(os.getpgid(0), signal.SIGKILL)


@app.task
def tsum(values: list[int]) -> int:
    return sum(values)


@app.task
def count_body(values: list[Any], path: str) -> int:
    with open(path, "a") as fh:
        fh.write(f"{len(values)}\n")
    return len(values)


@app.task
def errback_with_request(request: Any, exc: BaseException, traceback: Any) -> None:
    with open(request.kwargs["path"], "w") as fh:
        fh.write(f"{request.id} {type(exc).__name__} {traceback is not None}")


@app.task
def fail_with_path(path: str) -> None:
    raise RuntimeError(path)


# --- serializers, compression, signing (tests/test_payload.py) ---------------------------------


class Point:
    """Not JSON: travels only by pickle."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (other.x, other.y) == (self.x, self.y)


@app.task
def make_point(x: int, y: int) -> Point:
    return Point(x, y)


@app.task
def point_sum(point: Point) -> int:
    return point.x + point.y


@app.task(serializer="yaml")
def yaml_echo(*args: Any, **kwargs: Any) -> Any:
    return {"args": list(args), "kwargs": kwargs}


@app.task(compression="bzip2")
def measure(text: str) -> int:
    return len(text)


@app.task
def raises_unstorable_text() -> None:
    raise ValueError("half a character: \ud800, a NUL: \x00")


@app.task(bind=True)
def retries_in(self: Any, countdown: Any) -> None:
    raise self.retry(countdown=countdown)
