"""Where jobs run: prefork children (default), threads, or the worker process itself (solo).

Every pool has the same small surface for the supervisor: `free()` (idle places),
`submit(jobs)` (one place; a prefork child takes several short jobs at once, see `batches`),
`waitables()` for its select loop, `collect(ready)` for finished jobs (including jobs whose
child died), `take_returned()` for jobs given to a child that ended before starting them,
`expire()` for hard time limits, `terminate(job_id)`, and `stop(cold)`."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import pickle
import queue
import resource
import signal
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

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


# Supervisor <-> child messages: a 4-byte length, then a pickle. The supervisor sends a child
# a list of jobs (one write) only when the child is idle, so neither side can block the other
# on a full pipe; the child writes each outcome as soon as its job ends (so a crash is always
# charged to the job that was running), and the supervisor reads every outcome that has
# arrived with one read.
_HEADER = struct.Struct("!I")
_READ_SIZE = 1 << 18


def _frame(message: Any) -> bytes:
    payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_message(inbox: BinaryIO) -> Any:
    """The next message, or None at end of file."""
    header = inbox.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    payload = inbox.read(size)
    return pickle.loads(payload) if len(payload) == size else None


def _child_main(config: PoolConfig, jobs_fd: int, outcomes_fd: int, parent_fds: list[int]
                ) -> None:
    # The supervisor decides when children stop; a terminal's Ctrl-C or a group SIGTERM must
    # not kill a job half-way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    for fd in parent_fds:
        os.close(fd)
    signals.worker_process_init.send(sender=None)
    try:
        _serve(config, os.fdopen(jobs_fd, "rb"), outcomes_fd)
    finally:
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)


def _serve(config: PoolConfig, inbox: BinaryIO, outcomes_fd: int) -> None:
    done = 0
    while True:
        try:
            jobs = _read_message(inbox)
        except OSError:
            return
        if jobs is None:
            return
        for job in jobs:
            outcome = execute(config.app, job, config.hostname, config.soft_time_limit)
            done += 1
            retiring = _should_retire(config, done)
            try:
                _write_all(outcomes_fd, _frame((outcome, retiring)))
            except OSError:
                return
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
        jobs_r, self.jobs_w = os.pipe()
        self.outcomes_r, outcomes_w = os.pipe()
        self.process = ctx.Process(target=_child_main, daemon=True, args=(
            config, jobs_r, outcomes_w, [self.jobs_w, self.outcomes_r]))
        self.process.start()
        os.close(jobs_r)
        os.close(outcomes_w)
        os.set_blocking(self.outcomes_r, False)
        self.jobs: deque[Job] = deque()  # sent, no outcome yet; jobs[0] is running
        self.received = bytearray()
        self.deadline: float | None = None  # of jobs[0]
        self.retiring = False
        self.closed = False
        self.idle_since = time.monotonic()

    @property
    def job(self) -> Job | None:
        """The job running now."""
        return self.jobs[0] if self.jobs else None

    def idle(self) -> bool:
        return not self.jobs and not self.retiring

    def stop(self) -> None:
        """Ask an idle child to exit (end of file on its job pipe: it is between jobs), and
        reap it."""
        self.close()
        self.process.join(2)
        if self.process.is_alive():
            self.kill()
            self.process.join(1)

    def send(self, jobs: list[Job]) -> None:
        # Only ever called on an idle child, which is blocked reading: this write cannot wait
        # for the child to write. A dead child is seen by collect() through its sentinel.
        with contextlib.suppress(OSError):
            _write_all(self.jobs_w, _frame(jobs))

    def receive(self) -> list[tuple[Outcome, bool]]:
        """Every (outcome, retiring) message that has arrived."""
        while not self.closed:
            try:
                data = os.read(self.outcomes_r, _READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            self.received += data
            if len(data) < _READ_SIZE:
                break
        messages = []
        buffer, offset = self.received, 0
        while len(buffer) - offset >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, offset)
            end = offset + _HEADER.size + size
            if end > len(buffer):
                break
            messages.append(pickle.loads(buffer[offset + _HEADER.size:end]))
            offset = end
        del buffer[:offset]
        return messages

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            if self.process.pid:
                os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(5)
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for fd in (self.jobs_w, self.outcomes_r):
                with contextlib.suppress(OSError):
                    os.close(fd)


class PreforkPool:
    name = "prefork"
    batches = True  # submit() takes several jobs for one child

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.children: list[_Child] = []
        self.returned: list[Job] = []  # sent to a child that ended before starting them

    def start(self) -> None:
        self.children = [_Child(self.config) for _ in range(self.config.size)]

    def free(self) -> int:
        return sum(1 for c in self.children if c.idle())

    def busy(self) -> int:
        return sum(1 for c in self.children if c.jobs)

    def outstanding(self) -> int:
        return sum(len(c.jobs) for c in self.children)

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
        return [c.jobs[0] for c in self.children if c.jobs]

    def has_ready(self) -> bool:
        return False

    def submit(self, jobs: list[Job]) -> None:
        """Give an idle child `jobs` to run one after the other."""
        child = next(c for c in self.children if c.idle())
        child.jobs.extend(jobs)
        self._started(child)
        child.send(jobs)

    def take_returned(self) -> list[Job]:
        returned, self.returned = self.returned, []
        return returned

    def _started(self, child: _Child) -> None:
        """jobs[0] starts now: its hard time limit runs from here."""
        limit = self.config.hard_limit(child.jobs[0]) if child.jobs else None
        child.deadline = time.monotonic() + limit if limit else None

    def _give_back(self, child: _Child, keep_first: bool = False) -> Job | None:
        """Remove the child's jobs; those it never started are returned for another child.
        Returns the running one when `keep_first` (it was started)."""
        running = child.jobs.popleft() if keep_first and child.jobs else None
        self.returned.extend(child.jobs)
        child.jobs.clear()
        child.deadline = None
        return running

    def waitables(self) -> list[Any]:
        return [c.outcomes_r for c in self.children] + [c.process.sentinel for c in self.children]

    def next_deadline(self) -> float | None:
        deadlines = [c.deadline for c in self.children if c.jobs and c.deadline]
        return min(deadlines) if deadlines else None

    def _receive(self, child: _Child) -> list[Outcome]:
        outcomes = []
        for outcome, retiring in child.receive():
            if not child.jobs or child.jobs[0].id != outcome.id:
                log.error("child %s sent an outcome for job %s it was not running: ignored",
                          child.process.pid, outcome.id)
                continue
            child.jobs.popleft()
            if not child.jobs:
                child.idle_since = time.monotonic()
            outcomes.append(outcome)
            if retiring:  # it exits now, without starting the rest
                child.retiring = True
                self._give_back(child)
            self._started(child)
        return outcomes

    def collect(self, ready: Sequence[Any]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        ready_set = set(ready)
        for index, child in enumerate(list(self.children)):
            if child.outcomes_r in ready_set:
                outcomes += self._receive(child)
            if child.process.sentinel in ready_set and not child.process.is_alive():
                outcomes += self._receive(child)  # what it wrote before it ended
                child.process.join()
                lost_job = None if child.retiring else self._give_back(child, keep_first=True)
                self._give_back(child)
                if lost_job is not None:
                    code = child.process.exitcode
                    log.error("child %s running job %s died (exit code %s)",
                              child.process.pid, lost_job.id, code)
                    task = self.config.app.tasks.get(lost_job.task)
                    outcomes.append(lost(task, lost_job, WorkerLostError(
                        f"worker process {child.process.pid} exited with code {code} "
                        f"while running {lost_job.task}")))
                child.close()
                self.children[index] = _Child(self.config)
        return outcomes

    def expire(self) -> list[Outcome]:
        now = time.monotonic()
        outcomes: list[Outcome] = []
        for index, child in enumerate(self.children):
            if child.jobs and child.deadline is not None and now >= child.deadline:
                outcomes += self._receive(child)  # it may have just finished
                if not child.jobs or child.deadline is None or now < child.deadline:
                    continue
                child.kill()
                job = self._give_back(child, keep_first=True)
                assert job is not None
                limit = self.config.hard_limit(job)
                log.error("job %s (%s) ran past its time limit of %ss: killed its child",
                          job.id, job.task, limit)
                task = self.config.app.tasks.get(job.task)
                outcomes.append(timed_out(task, job, TimeLimitExceeded(
                    f"{job.task} exceeded its time limit of {limit}s"), limit * 1000 if limit
                    else 0.0))
                self.children[index] = _Child(self.config)
        return outcomes

    def terminate(self, job_id: str) -> bool:
        for index, child in enumerate(self.children):
            if child.jobs and child.jobs[0].id == job_id:
                log.warning("terminating job %s (revoked): killing child %s", job_id,
                            child.process.pid)
                child.kill()
                self._give_back(child, keep_first=True)
                self.children[index] = _Child(self.config)
                return True
        return False

    def stop(self, cold: bool) -> list[Job]:
        """Stop every child. Cold: kill them and return the jobs they had (running or not)."""
        interrupted = self.take_returned()
        for child in self.children:
            if cold or child.jobs:
                interrupted.extend(child.jobs)
                child.jobs.clear()
                child.kill()
            else:
                child.send(None)  # type: ignore[arg-type]
        for child in self.children:
            child.process.join(5)
            if child.process.is_alive():
                child.kill()
            child.close()
        self.children = []
        return interrupted


# --- threads and solo --------------------------------------------------------------------------


class ThreadPool:
    """Jobs run in threads of the worker process (hard time limits cannot be enforced)."""

    name = "threads"
    batches = False

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

    outstanding = busy

    def running(self) -> list[Job]:
        return list(self.running_jobs.values())

    def has_ready(self) -> bool:
        return not self.outbox.empty()

    def submit(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.running_jobs[job.id] = job
            self.inbox.put(job)

    def take_returned(self) -> list[Job]:
        return []

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

    def submit(self, jobs: list[Job]) -> None:
        for job in jobs:
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
    batches: bool

    def start(self) -> None: ...
    def free(self) -> int: ...
    def busy(self) -> int: ...
    def outstanding(self) -> int: ...
    def running(self) -> list[Job]: ...
    def has_ready(self) -> bool: ...
    def submit(self, jobs: list[Job]) -> None: ...
    def take_returned(self) -> list[Job]: ...
    def waitables(self) -> list[Any]: ...
    def next_deadline(self) -> float | None: ...
    def collect(self, ready: Sequence[Any]) -> list[Outcome]: ...
    def expire(self) -> list[Outcome]: ...
    def terminate(self, job_id: str) -> bool: ...
    def stop(self, cold: bool) -> list[Job]: ...


POOLS: dict[str, Callable[[PoolConfig], Pool]] = {
    "prefork": PreforkPool, "threads": ThreadPool, "solo": SoloPool,
}
