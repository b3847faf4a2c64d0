"""The CLI: migrate, status, bad input as one clear line with a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from apps.basic import add

PGQ = str(Path(sys.executable).parent / "pgq")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PGQ, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_bad_app_module(app):
    assert_one_line_error(run("worker", "-A", "no.such.module"), "cannot import app module")


def test_app_module_without_app():
    assert_one_line_error(run("status", "-A", "json"), "no pgq.App")


def test_malformed_dsn():
    assert_one_line_error(run("status", "--dsn", "host=x port"), "malformed DSN")


def test_unreachable_database():
    assert_one_line_error(
        run("migrate", "--dsn", "postgresql://nobody@127.0.0.1:1/x?connect_timeout=2"),
        "cannot connect to PostgreSQL")


def test_migrate_is_idempotent_and_safe_concurrently(dsn):
    schema = "m_" + uuid.uuid4().hex[:8]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: run("migrate", "--dsn", dsn, "--schema", schema),
                                range(3)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert run("migrate", "--dsn", dsn, "--schema", schema).returncode == 0
    with psycopg.connect(dsn) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,))}
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    assert {"jobs", "workers", "alembic_version", "queue_stats", "worker_status"} <= tables


def test_migrate_never_touches_the_applications_alembic_table(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.alembic_version (version_num text)")
        conn.execute("DELETE FROM public.alembic_version")
        conn.execute("INSERT INTO public.alembic_version VALUES ('app_rev_1')")
        assert run("migrate", "--dsn", dsn).returncode == 0
        assert conn.execute("SELECT version_num FROM public.alembic_version").fetchall() == [
            ("app_rev_1",)]
        conn.execute("DROP TABLE public.alembic_version")


def test_migrate_sql_prints_the_ddl():
    proc = run("migrate", "--sql")
    assert proc.returncode == 0, proc.stderr
    assert 'CREATE TABLE "pgq".jobs' in proc.stdout
    assert "jobs_ready" in proc.stdout


def test_status_shows_queues_and_workers(app, start_worker):
    start_worker("-c", "1", "-n", "status-host")
    add.delay(1, 2).get(timeout=10)
    add.apply_async((1, 2), queue="later", countdown=600)
    proc = run("status", "-A", "apps.basic")
    assert proc.returncode == 0, proc.stderr
    assert "default" in proc.stdout and "later" in proc.stdout
    assert "status-host" in proc.stdout
    as_json = run("status", "-A", "apps.basic", "--json")
    assert '"hostname": "status-host"' in as_json.stdout


def test_celery_style_global_app_option(app, start_worker):
    proc = run("-A", "apps.basic", "status")
    assert proc.returncode == 0, proc.stderr


def test_revoke_command(app):
    result = add.apply_async((1, 1), countdown=600)
    proc = run("revoke", "-A", "apps.basic", result.id)
    assert proc.returncode == 0 and "revoked" in proc.stdout
    assert result.state == "REVOKED"
    assert_one_line_error(run("revoke", "-A", "apps.basic", result.id), "not waiting")


def test_purge_needs_yes_when_not_interactive(app):
    add.delay(1, 1)
    assert_one_line_error(run("purge", "-A", "apps.basic"), "--yes")
    proc = run("purge", "-A", "apps.basic", "--yes")
    assert "purged 1" in proc.stdout


@pytest.mark.parametrize("command", ["worker", "migrate", "status", "revoke", "purge", "prune"])
def test_help(command):
    proc = run(command, "--help")
    assert proc.returncode == 0 and "--dsn" in proc.stdout


def test_every_command_help_has_examples():
    """`--help` of every command and subcommand shows at least one example line."""
    import click
    from click.testing import CliRunner

    from pgq.cli import main

    def walk(command: click.Command, path: tuple[str, ...]):
        yield path
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, (*path, name))

    missing = []
    for path in walk(main, ()):
        if not path:
            continue
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        if "Example" not in result.output:
            missing.append(" ".join(path))
    assert not missing, f"--help without examples: {missing}"
