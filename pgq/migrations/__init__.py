"""pgq's alembic migrations, shipped inside the package so `pgq migrate` works from a wheel.

Revisions write their DDL with a `{schema}` placeholder; `ddl()` binds it to the schema being
migrated (validated, quoted), so one set of revisions serves any schema name.
"""

from __future__ import annotations

from alembic import op


def ddl(statement: str) -> None:
    schema = op.get_context().opts["version_table_schema"]
    op.execute(statement.replace("{schema}", quote_ident(schema)))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


VERSION_TABLE = "alembic_version"
# Serialises concurrent migrations of one database: `pgq migrate` holds it for its session,
# a run from an application's alembic history for its transaction (the two conflict).
MIGRATION_LOCK_KEY = "pgq.migrate"
LOCK_STATEMENT = f"SELECT pg_advisory_xact_lock(hashtext('{MIGRATION_LOCK_KEY}'))"


def create_schema_statement(schema: str) -> str:
    return f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}"
