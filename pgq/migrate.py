"""`pgq migrate`: run pgq's packaged alembic revisions against one schema — on their own, or
from a revision of the application's own alembic history (`alembic_upgrade`)."""

from __future__ import annotations

import io
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from pgq.db.connection import connect
from pgq.errors import ConfigurationError
from pgq.migrations import LOCK_STATEMENT, VERSION_TABLE, create_schema_statement

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(dsn: str, schema: str, out: io.StringIO | None = None) -> Config:
    config = Config(output_buffer=out) if out is not None else Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["schema"] = schema
    config.attributes["dsn"] = dsn
    return config


def upgrade(dsn: str, schema: str, sql: bool = False) -> str | None:
    """Bring `schema` to the newest revision; with `sql`, return the SQL instead."""
    if sql:
        out = io.StringIO()
        command.upgrade(alembic_config(dsn, schema, out), "head", sql=True)
        return out.getvalue()
    connect(dsn).close()  # an unreachable server fails here, with one clear line
    command.upgrade(alembic_config(dsn, schema), "head")
    return None


# --- inside an application's alembic history -----------------------------------------------------


def alembic_upgrade(op: Any, revision: str = "head", *, schema: str = "pgq") -> None:
    """Bring pgq's schema to `revision`, from one of *your* alembic revisions' `upgrade()`:

        from alembic import op
        from pgq.migrate import alembic_upgrade, alembic_downgrade

        def upgrade():
            alembic_upgrade(op, "0005")

        def downgrade():
            alembic_downgrade(op, "base")

    pgq's revisions run on your migration's connection, in its transaction (and into its
    script with `alembic upgrade --sql`), and are recorded in pgq's own version table in
    `schema` — so `pgq migrate` and your history agree on what has been applied, and
    revisions already there are skipped. Pin a revision for a reproducible history; add one
    more such revision of yours when a pgq release brings new ones (docs/alembic.md)."""
    _run(op, schema, revision, upgrade=True)


def alembic_downgrade(op: Any, revision: str = "base", *, schema: str = "pgq") -> None:
    """Take pgq's schema back to `revision` from your revision's `downgrade()`."""
    _run(op, schema, revision, upgrade=False)


# In `--sql` mode nothing can be read from the database: where pgq's schema stands is what the
# earlier calls of the same run emitted.
_offline_heads: weakref.WeakKeyDictionary[MigrationContext, dict[str, str | None]] = \
    weakref.WeakKeyDictionary()


def _run(op: Any, schema: str, destination: str, upgrade: bool) -> None:
    from pgq.app import _is_valid_schema

    if not _is_valid_schema(schema):
        raise ConfigurationError(f"schema {schema!r} is not a plain identifier (letters, "
                                 "digits, _)")
    outer: MigrationContext = op.get_context()
    script = ScriptDirectory(str(MIGRATIONS))

    def steps(heads: Any, _: MigrationContext) -> Any:
        if upgrade:
            return script._upgrade_revs(destination, heads)
        return script._downgrade_revs(destination, heads)

    opts: dict[str, Any] = {"version_table": VERSION_TABLE, "version_table_schema": schema,
                            "fn": steps, "script": script,
                            "transaction_per_migration": False}
    if outer.as_sql:
        emitted = _offline_heads.setdefault(outer, {})
        opts.update(as_sql=True, literal_binds=True, output_buffer=outer.output_buffer,
                    starting_rev=emitted.get(schema))
        inner = MigrationContext.configure(dialect_name="postgresql", opts=opts)
    else:
        inner = MigrationContext.configure(connection=outer.connection, opts=opts)
    with _outer_op_restored(), Operations.context(inner) as inner_op:
        inner_op.execute(LOCK_STATEMENT)
        inner_op.execute(create_schema_statement(schema))
        inner.run_migrations()
    if outer.as_sql:
        emitted[schema] = script.get_revision(destination).revision \
            if destination not in ("base", None) else None


@contextmanager
def _outer_op_restored() -> Iterator[None]:
    """`alembic.op` points at the running context; running pgq's revisions re-points it and,
    at their end, removes it. Put the application's back for the rest of its revision."""
    from alembic import op as op_module

    outer = getattr(op_module, "_proxy", None)
    try:
        yield
    finally:
        if outer is not None:
            outer._install_proxy()
