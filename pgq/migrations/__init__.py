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
