"""Shared by the benchmark scripts: which PostgreSQL to use, a fresh schema per run, machine
details, and plain-text tables."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from pgq.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
BENCH_PGDATA = ROOT / ".pgq" / "benchdata"


def resolve_dsn(dsn: str | None) -> str:
    """`--dsn`, else $PGQ_DSN, else the embedded server in ./.pgq/benchdata (started if needed,
    and left running)."""
    if dsn:
        return dsn
    env = os.environ.get("PGQ_DSN")
    if env:
        return env
    from pgq import embedded

    return str(embedded.ensure_server(BENCH_PGDATA))


def new_schema_name(prefix: str) -> str:
    return f"{prefix}_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"


def drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextmanager
def fresh_schema(dsn: str, prefix: str, keep: bool = False) -> Iterator[str]:
    """A newly migrated pgq schema, dropped afterwards unless `keep`."""
    schema = new_schema_name(prefix)
    upgrade(dsn, schema)
    try:
        yield schema
    finally:
        if not keep:
            drop_schema(dsn, schema)


def _proc_field(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        return None
    return None


def _ram() -> str:
    total = _proc_field("/proc/meminfo", "MemTotal")
    if total is None:
        return "unknown"
    kib = int(total.split()[0])
    return f"{kib / 1024 / 1024:.1f} GiB"


def pgq_revision() -> str:
    """The pgq code the figures belong to: this checkout's commit (and whether pgq/ had
    uncommitted changes), or, for a copy put first on PYTHONPATH, the REVISION file in it."""
    import pgq

    source = Path(pgq.__file__).resolve().parent.parent
    if source != ROOT:
        marker = source / "REVISION"
        return marker.read_text().strip() if marker.exists() else f"imported from {source}"

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False)
        return done.stdout.rstrip("\n") if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "pgq").splitlines()
    if not dirty:
        return head
    return f"{head} + uncommitted changes in {', '.join(line[3:] for line in dirty)}"


def machine_details(dsn: str) -> list[tuple[str, str]]:
    """What the figures depend on: CPU, cores, RAM, PostgreSQL and its durability settings."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        def show(name: str) -> str:
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            return str(row[0]) if row else "?"

        version = show("server_version")
        settings = ", ".join(f"{name}={show(name)}" for name in
                             ("fsync", "synchronous_commit", "shared_buffers", "max_connections"))
        host = conn.info.host
    where = "local" if host.startswith("/") or host in ("localhost", "127.0.0.1") else "remote"
    return [
        ("CPU", _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown"),
        ("cores", str(os.cpu_count())),
        ("RAM", _ram()),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("PostgreSQL", f"{version} ({where}: {host})"),
        ("settings", settings),
        ("pgq", pgq_revision()),
    ]


# --- CPU accounting: was the machine quiet? ------------------------------------------------------


def _machine_busy_s() -> float:
    """CPU-seconds all cores spent busy since boot (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _process_cpu_s(pid: int, with_reaped_children: bool) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def local_postmaster(dsn: str) -> int | None:
    """The pid of the server's postmaster when it runs on this machine (the parent of our
    backend, seen in /proc), else None."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        host = conn.info.host
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    if not (host.startswith("/") or host in ("localhost", "127.0.0.1", "::1")) or row is None:
        return None
    try:
        parent = int(Path(f"/proc/{row[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])
        if Path(f"/proc/{parent}/comm").read_text().strip() in ("postgres", "postmaster"):
            return parent
    except (OSError, ValueError, IndexError):
        pass
    return None


def server_cpu_s(postmaster: int | None) -> float:
    """CPU-seconds of a local server's postmaster and its backends (exited ones count
    through the postmaster), or 0 when the server is not ours to see."""
    if postmaster is None:
        return 0.0
    return _process_cpu_s(postmaster, True) + sum(
        _process_cpu_s(child, False) for child in _children(postmaster))


def tree_cpu_s(pid: int) -> float:
    """CPU-seconds of a process, its live children and the children it has reaped."""
    return _process_cpu_s(pid, True) + sum(_process_cpu_s(c, False) for c in _children(pid))


def own_cpu_s() -> float:
    """CPU-seconds of this process and of its children that have exited (the worker)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@dataclass
class CpuMeter:
    """How much CPU this benchmark used, and how much other processes used meanwhile."""

    postmaster: int | None
    started: float = 0.0
    busy: float = 0.0
    ours: float = 0.0
    available: float = 0.0
    others: float = 0.0

    def __enter__(self) -> CpuMeter:
        self.started = time.monotonic()
        self.busy = _machine_busy_s()
        self.ours = own_cpu_s() + server_cpu_s(self.postmaster)
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self.started
        self.available = wall * (os.cpu_count() or 1)
        self.busy = _machine_busy_s() - self.busy
        self.ours = own_cpu_s() + server_cpu_s(self.postmaster) - self.ours
        self.others = max(0.0, self.busy - self.ours)

    @property
    def disturbed(self) -> bool:
        return self.others > 0.05 * self.available

    def summary(self) -> str:
        server = ("its PostgreSQL" if self.postmaster
                  else "not PostgreSQL, which is remote or not visible from here")
        return (f"CPU during the run: {self.busy:.1f} of {self.available:.1f} CPU-s busy; "
                f"this benchmark (client, worker, {server}) {self.ours:.1f} CPU-s, "
                f"other processes {self.others:.1f} CPU-s "
                f"({self.others / self.available:.0%} of the machine)")


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def print_details(details: Sequence[tuple[str, str]]) -> None:
    for name, value in details:
        print(f"{name + ':':<12}{value}")


def local_app_worker(dsn: str | None, tasks_module: str, *, env: dict[str, str] | None = None,
                     concurrency: int = 2) -> tuple[str, subprocess.Popen[bytes]]:
    """For the small single-purpose benchmarks: the DSN (as resolve_dsn), the `pgq` schema
    migrated and emptied, and a `pgq worker -A tasks_module` started on it."""
    import sys

    dsn = resolve_dsn(dsn)
    os.environ["PGQ_DSN"] = dsn
    upgrade(dsn, "pgq")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgq.jobs, pgq.workers, pgq.chords")
    here = str(Path(__file__).resolve().parent)
    pgq_bin = str(Path(sys.executable).parent / "pgq")
    worker = subprocess.Popen(
        [pgq_bin, "worker", "-A", tasks_module, "-c", str(concurrency), "-l", "WARNING"],
        env={**os.environ, "PYTHONPATH": here, **(env or {})})
    return dsn, worker
