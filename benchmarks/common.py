"""Shared by the benchmark scripts: which PostgreSQL to use, a fresh schema per run, machine
details, and plain-text tables."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from pgq.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
BENCH_PGDATA = ROOT / ".pgq" / "benchdata"


def resolve_dsn(dsn: str | None) -> str:
    """`--dsn`, else $PGQ_DSN, else the embedded server in ./.pgq/benchdata (started if needed;
    it keeps running afterwards: `pgq embedded stop` does not know this path, see the doc)."""
    if dsn:
        return dsn
    env = os.environ.get("PGQ_DSN")
    if env:
        return env
    from pgq import embedded

    return embedded.ensure_server(BENCH_PGDATA)


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
    ]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def print_details(details: Sequence[tuple[str, str]]) -> None:
    for name, value in details:
        print(f"{name + ':':<12}{value}")
