"""Where jobs run: prefork children (default), threads, or the worker process itself (solo).

Every pool has the same small surface for the supervisor: `free()`, `submit(job)`,
`waitables()` for its select loop, `collect(ready)` for finished jobs (including jobs whose
child died), `expire()` for hard time limits, `terminate(job_id)`, and `stop(cold)`."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import queue
import resource
import signal
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Protocol

from pgq import signals
from pgq.errors import TimeLimitExceeded, WorkerLostError
from pgq.worker.executor import Job, Outcome, execute, job_options, lost, timed_out

if TYPE_CHECKING:
    from pgq.app import App

log = logging.getLogger("pgq.worker")


class PoolConfig:
    def __init__(self, app: App, size: int, hostname: str, *, max_tasks_per_child: int | None,
                 max_memory_per_child: int | None, time_limit: float | None,
                 soft_time_limit: float | None) -> None:
        self.app = app
        self.size = size
        self.hostname = hostname
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self.time_limit = time_limit
        self.soft_time_limit = soft_time_limit

    def hard_limit(self, job: Job) -> float | None:
        task = self.app.tasks.get(job.task)
        limit = job_options(job).get("time_limit") if job.options != "{}" else None
        return limit or (task.time_limit if task else None) or self.time_limit


# --- prefork -----------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send this process `sig` when its parent dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


def _child_main(config: PoolConfig, conn: Connection) -> None:
    # The supervisor decides when children stop; a terminal's Ctrl-C or a group SIGTERM must
    # not kill a job half-way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    signals.worker_process_init.send(sender=None)
    try:
        _serve(config, conn)
    finally:
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)


def _serve(config: PoolConfig, conn: Connection) -> None:
    done = 0
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        outcome = execute(config.app, job, config.hostname, config.soft_time_limit)
        done += 1
        retiring = _should_retire(config, done)
        conn.send((outcome, retiring))
        if retiring:
            return


def _should_retire(config: PoolConfig, done: int) -> bool:
    if config.max_tasks_per_child and done >= config.max_tasks_per_child:
        return True
    if config.max_memory_per_child:
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if rss_kib > config.max_memory_per_child:
            log.info("child %d uses %d KiB > --max-memory-per-child: replacing it",
                     os.getpid(), rss_kib)
            return True
    return False


class _Child:
    def __init__(self, config: PoolConfig) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_child_main, args=(config, child_conn), daemon=True)
        self.process.start()
        child_conn.close()
        self.job: Job | None = None
        self.deadline: float | None = None
        self.retiring = False
        self.idle_since = time.monotonic()

    def idle(self) -> bool:
        return self.job is None and not self.retiring

    def stop(self) -> None:
        """Ask an idle child to exit (it is between jobs), and reap it."""
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(2)
        if self.process.is_alive():
            self.kill()
        self.conn.close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            if self.process.pid:
                os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(5)
        self.conn.close()


class PreforkPool:
    name = "prefork"

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.children: list[_Child] = []

    def start(self) -> None:
        self.children = [_Child(self.config) for _ in range(self.config.size)]

    def free(self) -> int:
        return sum(1 for c in self.children if c.idle())

    def busy(self) -> int:
        return sum(1 for c in self.children if c.job is not None)

    # Resizing, for --autoscale (the supervisor's loop is the only caller: no locking).

    def size(self) -> int:
        return len(self.children)

    def grow(self, n: int) -> None:
        self.children.extend(_Child(self.config) for _ in range(n))

    def idle_since(self) -> list[float]:
        return [c.idle_since for c in self.children if c.idle()]

    def retire_idle(self, n: int, idle_for: float) -> int:
        """Stop up to `n` children that have had no job for `idle_for` seconds, longest idle
        first. Only idle children: a running job is never cut short by shrinking."""
        now = time.monotonic()
        idle = sorted((c for c in self.children if c.idle() and now - c.idle_since >= idle_for),
                      key=lambda c: c.idle_since)[:n]
        for child in idle:
            self.children.remove(child)
            child.stop()
        return len(idle)

    def running(self) -> list[Job]:
        return [c.job for c in self.children if c.job is not None]

    def has_ready(self) -> bool:
        return False

    def submit(self, job: Job) -> None:
        child = next(c for c in self.children if c.idle())
        child.job = job
        limit = self.config.hard_limit(job)
        child.deadline = time.monotonic() + limit if limit else None
        # If the child died, collect() sees its sentinel and reports the job as lost.
        with contextlib.suppress(OSError):
            child.conn.send(job)

    def waitables(self) -> list[Any]:
        return [c.conn for c in self.children] + [c.process.sentinel for c in self.children]

    def next_deadline(self) -> float | None:
        deadlines = [c.deadline for c in self.children if c.job is not None and c.deadline]
        return min(deadlines) if deadlines else None

    def collect(self, ready: Sequence[Any]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        ready_set = set(map(id, ready))
        for index, child in enumerate(list(self.children)):
            if id(child.conn) in ready_set:
                try:
                    while child.conn.poll():
                        outcome, retiring = child.conn.recv()
                        outcomes.append(outcome)
                        child.job, child.deadline = None, None
                        child.idle_since = time.monotonic()
                        child.retiring = child.retiring or retiring
                except (EOFError, OSError):
                    pass  # handled below as a dead child
            if not child.process.is_alive():
                child.process.join()
                if child.job is not None:
                    code = child.process.exitcode
                    log.error("child %s running job %s died (exit code %s)",
                              child.process.pid, child.job.id, code)
                    task = self.config.app.tasks.get(child.job.task)
                    outcomes.append(lost(task, child.job, WorkerLostError(
                        f"worker process {child.process.pid} exited with code {code} "
                        f"while running {child.job.task}")))
                child.conn.close()
                self.children[index] = _Child(self.config)
        return outcomes

    def expire(self) -> list[Outcome]:
        now = time.monotonic()
        outcomes: list[Outcome] = []
        for index, child in enumerate(self.children):
            if child.job is not None and child.deadline is not None and now >= child.deadline:
                job = child.job
                limit = self.config.hard_limit(job)
                log.error("job %s (%s) ran past its time limit of %ss: killing its child",
                          job.id, job.task, limit)
                child.kill()
                task = self.config.app.tasks.get(job.task)
                outcomes.append(timed_out(task, job, TimeLimitExceeded(
                    f"{job.task} exceeded its time limit of {limit}s"), limit * 1000 if limit
                    else 0.0))
                self.children[index] = _Child(self.config)
        return outcomes

    def terminate(self, job_id: str) -> bool:
        for index, child in enumerate(self.children):
            if child.job is not None and child.job.id == job_id:
                log.warning("terminating job %s (revoked): killing child %s", job_id,
                            child.process.pid)
                child.kill()
                self.children[index] = _Child(self.config)
                return True
        return False

    def stop(self, cold: bool) -> list[Job]:
        """Stop every child. Cold: kill them and return the jobs they were running."""
        interrupted = []
        for child in self.children:
            if cold or child.job is not None:
                if child.job is not None:
                    interrupted.append(child.job)
                child.kill()
            else:
                with contextlib.suppress(OSError):
                    child.conn.send(None)
        for child in self.children:
            child.process.join(5)
            if child.process.is_alive():
                child.kill()
        self.children = []
        return interrupted


# --- threads and solo --------------------------------------------------------------------------


class ThreadPool:
    """Jobs run in threads of the worker process (hard time limits cannot be enforced)."""

    name = "threads"

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.outbox: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self.running_jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.threads: list[threading.Thread] = []

    def _run(self) -> None:
        while True:
            job = self.inbox.get()
            if job is None:
                return
            outcome = execute(self.config.app, job, self.config.hostname)
            self.outbox.put(outcome)
            os.write(self.wake_w, b"x")

    def start(self) -> None:
        for n in range(self.config.size):
            thread = threading.Thread(target=self._run, name=f"pgq-pool-{n}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def free(self) -> int:
        return self.config.size - len(self.running_jobs)

    def busy(self) -> int:
        return len(self.running_jobs)

    def running(self) -> list[Job]:
        return list(self.running_jobs.values())

    def has_ready(self) -> bool:
        return not self.outbox.empty()

    def submit(self, job: Job) -> None:
        self.running_jobs[job.id] = job
        self.inbox.put(job)

    def waitables(self) -> list[Any]:
        return [self.wake_r]

    def next_deadline(self) -> float | None:
        return None

    def collect(self, ready: Sequence[Any]) -> list[Outcome]:
        with contextlib.suppress(BlockingIOError):
            os.read(self.wake_r, 4096)
        outcomes = []
        while not self.outbox.empty():
            outcome = self.outbox.get()
            self.running_jobs.pop(outcome.id, None)
            outcomes.append(outcome)
        return outcomes

    def expire(self) -> list[Outcome]:
        return []

    def terminate(self, job_id: str) -> bool:
        return False  # a thread cannot be killed; the revoked job's ack is discarded

    def stop(self, cold: bool) -> list[Job]:
        for _ in self.threads:
            self.inbox.put(None)
        if cold:
            return list(self.running_jobs.values())
        for thread in self.threads:
            thread.join()
        return []


class SoloPool(ThreadPool):
    """One job at a time, in the `pgq worker` process itself."""

    name = "solo"

    def start(self) -> None:
        pass

    def free(self) -> int:
        return 1 - len(self.running_jobs)

    def submit(self, job: Job) -> None:
        self.running_jobs[job.id] = job
        outcome = execute(self.config.app, job, self.config.hostname,
                          self.config.soft_time_limit)
        self.outbox.put(outcome)

    def waitables(self) -> list[Any]:
        return []

    def stop(self, cold: bool) -> list[Job]:
        return []


class Pool(Protocol):
    name: str

    def start(self) -> None: ...
    def free(self) -> int: ...
    def busy(self) -> int: ...
    def running(self) -> list[Job]: ...
    def has_ready(self) -> bool: ...
    def submit(self, job: Job) -> None: ...
    def waitables(self) -> list[Any]: ...
    def next_deadline(self) -> float | None: ...
    def collect(self, ready: Sequence[Any]) -> list[Outcome]: ...
    def expire(self) -> list[Outcome]: ...
    def terminate(self, job_id: str) -> bool: ...
    def stop(self, cold: bool) -> list[Job]: ...


POOLS: dict[str, Callable[[PoolConfig], Pool]] = {
    "prefork": PreforkPool, "threads": ThreadPool, "solo": SoloPool,
}
