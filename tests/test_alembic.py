"""An application's own alembic history that includes pgq's revisions (docs/alembic.md): a
throw-away alembic project with its own tables and two revisions calling
`pgq.migrate.alembic_upgrade`, run with the real `alembic` command against a fresh database."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql
from sqlalchemy import URL

import pgq
from pgq.migrate import MIGRATIONS
from pgq.testing import drain

ALEMBIC = str(Path(sys.executable).parent / "alembic")
SCHEMA = "shop_jobs"

ENV_PY = '''
import os

from alembic import context
from sqlalchemy import create_engine, pool

url = os.environ["APP_DATABASE_URL"]
if context.is_offline_mode():
    context.configure(url=url, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
'''

REVISIONS = {
    "a1_orders": '''
        import sqlalchemy as sa
        from alembic import op

        revision = "a1"
        down_revision = None

        def upgrade():
            op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True))

        def downgrade():
            op.drop_table("orders")
    ''',
    "a2_pgq": f'''
        import sqlalchemy as sa
        from alembic import op
        from pgq.migrate import alembic_downgrade, alembic_upgrade

        revision = "a2"
        down_revision = "a1"

        def upgrade():
            alembic_upgrade(op, "0003", schema="{SCHEMA}")
            op.create_table("invoices", sa.Column("id", sa.Integer, primary_key=True))

        def downgrade():
            op.drop_table("invoices")
            alembic_downgrade(op, "base", schema="{SCHEMA}")
    ''',
    "a3_pgq_upgrade": f'''
        from alembic import op
        from pgq.migrate import alembic_downgrade, alembic_upgrade

        revision = "a3"
        down_revision = "a2"

        def upgrade():  # a later pgq release: its new revisions, in a revision of ours
            alembic_upgrade(op, "head", schema="{SCHEMA}")

        def downgrade():
            alembic_downgrade(op, "0003", schema="{SCHEMA}")
    ''',
}


@pytest.fixture
def project(tmp_path: Path, dsn: str) -> Iterator[tuple[Path, str]]:
    """An alembic project in tmp_path, and the DSN of an empty database for it."""
    name = "pgq_alembic_" + os.environ.get("PYTEST_XDIST_WORKER", "main")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    (tmp_path / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    versions = tmp_path / "migrations" / "versions"
    versions.mkdir(parents=True)
    (tmp_path / "migrations" / "env.py").write_text(ENV_PY)
    for file, body in REVISIONS.items():
        (versions / f"{file}.py").write_text(textwrap.dedent(body))
    yield tmp_path, conninfo.make_conninfo(dsn, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def alembic(folder: Path, dsn: str, *args: str) -> str:
    parts = conninfo.conninfo_to_dict(dsn)
    url = URL.create("postgresql+psycopg", username=parts.get("user"),
                     password=parts.get("password") or None, database=parts.get("dbname"),
                     port=int(parts["port"]) if parts.get("port") else None,
                     query={"host": str(parts["host"])} if parts.get("host") else {})
    done = subprocess.run([ALEMBIC, *args], cwd=folder, capture_output=True, text=True,
                          env={**os.environ, "APP_DATABASE_URL": url.render_as_string(
                              hide_password=False)}, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {f"{s}.{t}" for s, t in conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema IN ('public', %s)", (SCHEMA,))}


def versions(dsn: str) -> tuple[Any, ...]:
    with psycopg.connect(dsn) as conn:
        app = conn.execute("SELECT version_num FROM public.alembic_version").fetchone()
        ours = conn.execute(sql.SQL("SELECT version_num FROM {}.alembic_version").format(
            sql.Identifier(SCHEMA))).fetchone()
    return (app[0] if app else None, ours[0] if ours else None)


def pgq_head() -> str:
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory(str(MIGRATIONS)).get_current_head())


def test_upgrade_head_creates_the_app_tables_and_pgq(project: tuple[Path, str]) -> None:
    folder, dsn = project
    alembic(folder, dsn, "upgrade", "a2")
    assert {"public.orders", "public.invoices", f"{SCHEMA}.jobs", f"{SCHEMA}.chords"} <= \
        tables(dsn)
    assert f"{SCHEMA}.schedules" not in tables(dsn)  # 0004: not yet
    assert versions(dsn) == ("a2", "0003")

    alembic(folder, dsn, "upgrade", "head")
    assert f"{SCHEMA}.schedules" in tables(dsn)
    assert versions(dsn) == ("a3", pgq_head())

    # pgq works against it, and its own migrate agrees there is nothing left to do.
    app = pgq.App("alembic-app", dsn=dsn, schema=SCHEMA)

    @app.task
    def double(x: int) -> int:
        return 2 * x

    result = double.delay(21)
    assert drain(app) == 1
    assert result.get(timeout=5) == 42
    app.migrate()
    assert versions(dsn) == ("a3", pgq_head())
    app.close()

    alembic(folder, dsn, "downgrade", "base")
    assert tables(dsn) == {"public.alembic_version", f"{SCHEMA}.alembic_version"}
    assert versions(dsn) == (None, None)


def test_pgq_migrate_first_then_the_app_history(project: tuple[Path, str]) -> None:
    """A database `pgq migrate` already set up: the app's revisions skip what is there."""
    folder, dsn = project
    pgq.App("first", dsn=dsn, schema=SCHEMA).migrate()
    alembic(folder, dsn, "upgrade", "head")
    assert versions(dsn) == ("a3", pgq_head())
    assert "public.orders" in tables(dsn)


def test_offline_sql_has_pgq_once(project: tuple[Path, str]) -> None:
    folder, dsn = project
    script = alembic(folder, dsn, "upgrade", "head", "--sql")
    assert script.count(f"CREATE TABLE {SCHEMA}.jobs") + script.count(
        f'CREATE TABLE "{SCHEMA}".jobs') == 1
    assert "CREATE TABLE orders" in script and "CREATE TABLE invoices" in script
    assert f"UPDATE {SCHEMA}.alembic_version SET version_num='{pgq_head()}'" in script
    assert tables(dsn) == set()  # --sql wrote nothing


def test_bad_schema_name_is_refused(project: tuple[Path, str]) -> None:
    folder, dsn = project
    alembic(folder, dsn, "upgrade", "a2")
    bad = folder / "migrations" / "versions" / "a3_pgq_upgrade.py"
    bad.write_text(bad.read_text().replace(f'schema="{SCHEMA}")', 'schema="x; DROP")', 1))
    with pytest.raises(AssertionError, match="not a plain identifier"):
        alembic(folder, dsn, "upgrade", "head")
    assert versions(dsn) == ("a2", "0003")  # a3 rolled back whole
