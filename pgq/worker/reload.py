"""`pgq worker --reload`, for development: a fresh worker whenever a watched .py file changes.

The `pgq worker --reload` process is only a reloader: it never imports the app. It runs the
real worker as a child process (`python -m pgq worker …`, same arguments) and watches the
app's source with watchfiles. On a change it sends that worker SIGTERM — its warm shutdown:
it stops claiming, returns the jobs it holds but has not started, lets running jobs finish on
the code they started with, writes their outcomes and exits — and at once starts a new worker,
which imports the changed code and takes the next jobs. Re-importing modules inside a running
process is what made Celery's own `--autoreload` unreliable (it was removed in Celery 4);
starting a new process is what uvicorn and watchfiles' own CLI do.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from pgq.errors import ConfigurationError

log = logging.getLogger("pgq.worker")

# Set in each worker the reloader starts: the reloader's pid.
RELOADER_ENV = "PGQ_WORKER_RELOADER"
CHECK_EVERY_MS = 500  # how often the reloader looks at its workers while no file changes


def started_by_reloader() -> bool:
    """In a worker the reloader started: warm-stop if the reloader dies. False elsewhere."""
    reloader = os.environ.pop(RELOADER_ENV, None)  # not for processes this one starts
    if reloader is None:
        return False
    from pgq.worker.pool import die_with_parent

    die_with_parent(signal.SIGTERM)
    if os.getppid() != int(reloader):
        raise SystemExit(0)  # the reloader is already gone
    return True


def source_dirs(app_spec: str | None, extra: Iterable[str]) -> list[Path]:
    """What to watch: the `-A` module's top-level package (or the directory of a top-level
    module), found without importing it, plus `extra`; the current directory otherwise."""
    dirs = [Path(d).resolve() for d in extra]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise ConfigurationError(f"--reload-dir {missing[0]}: no such directory")
    root = _module_root(app_spec.partition(":")[0]) if app_spec else None
    return [root or Path.cwd(), *dirs]


def _module_root(module: str) -> Path | None:
    sys.path.insert(0, os.getcwd())  # as -A imports it
    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations)))
    elif spec.origin and spec.origin not in ("built-in", "frozen"):
        root = Path(spec.origin).parent
    else:
        return None
    if {"site-packages", "dist-packages"} & set(root.parts):
        return None  # an installed app: edits to it are not the ones to follow
    return root.resolve()


def _shown(path: str) -> str:
    """A changed file as the user knows it: relative to the current directory if inside."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _source_filter() -> Callable[[Any, str], bool]:
    from watchfiles import PythonFilter

    class SourceFilter(PythonFilter):
        ignore_dirs = (*PythonFilter.ignore_dirs, ".pgq")  # the embedded server's data

    return SourceFilter()


class Reloader:
    def __init__(self, args: Sequence[str], dirs: Sequence[Path]) -> None:
        self.command = [sys.executable, "-m", "pgq", *args]
        self.dirs = list(dirs)
        self.current: subprocess.Popen[bytes] | None = None
        self.draining: list[subprocess.Popen[bytes]] = []
        self.signals = 0
        self.stop = threading.Event()

    def run(self) -> int:
        try:
            from watchfiles import watch
        except ImportError:
            raise ConfigurationError("--reload needs watchfiles: "
                                     "pip install 'pgq-tasks[reload]'") from None
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            log.info("reload: watching %s for changes to .py files",
                     ", ".join(map(str, self.dirs)))
            self._start()
            try:
                for changes in watch(*self.dirs, watch_filter=_source_filter(),
                                     stop_event=self.stop, rust_timeout=CHECK_EVERY_MS,
                                     yield_on_timeout=True, raise_interrupt=False):
                    self._reap()
                    if changes and not self.stop.is_set():
                        self._restart(sorted({path for _, path in changes}))
            except OSError as exc:  # e.g. the system's limit of inotify watches
                self._on_signal(signal.SIGTERM, None)
                self._wait_all()
                raise ConfigurationError(f"--reload cannot watch "
                                         f"{', '.join(map(str, self.dirs))}: {exc}") from None
            return self._wait_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # The first signal is the current worker's warm shutdown (older ones are in theirs
        # already); a second one is everybody's cold shutdown, as for a plain worker.
        self.signals += 1
        targets = [self.current] if self.signals == 1 else [self.current, *self.draining]
        for proc in targets:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signum)
        self.stop.set()

    def _start(self) -> None:
        env = {**os.environ, RELOADER_ENV: str(os.getpid())}
        # Its own session: a terminal's Ctrl-C reaches the reloader only, which passes it on.
        self.current = subprocess.Popen(self.command, env=env, start_new_session=True)
        log.info("reload: started worker process %d", self.current.pid)

    def _restart(self, paths: list[str]) -> None:
        shown = ", ".join(_shown(p) for p in paths[:3])
        more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
        old = self.current
        if old is not None and old.poll() is None:
            log.info("reload: %s%s changed: worker process %d finishes its running jobs on "
                     "the old code and exits; a new one takes the next jobs", shown, more,
                     old.pid)
            old.send_signal(signal.SIGTERM)
            self.draining.append(old)
        else:
            log.info("reload: %s%s changed: starting the worker again", shown, more)
        self._start()

    def _reap(self) -> None:
        for proc in [p for p in self.draining if p.poll() is not None]:
            self.draining.remove(proc)
            log.info("reload: old worker process %d exited (code %s)", proc.pid,
                     proc.returncode)
        if self.current is not None and self.current.poll() is not None:
            log.error("reload: worker process %d exited (code %s); it starts again when a "
                      "watched file changes", self.current.pid, self.current.returncode)
            self.current = None

    def _wait_all(self) -> int:
        code = 0
        for proc in [p for p in (self.current, *self.draining) if p is not None]:
            with contextlib.suppress(ProcessLookupError):
                proc.wait()
            if proc is self.current:
                code = proc.returncode
        return code
