"""alembic environment for pgq's own revisions (run through `pgq.migrate`, not alembic's CLI)."""

from __future__ import annotations

import psycopg
from alembic import context
from sqlalchemy import create_engine, pool, text

from pgq.migrations import MIGRATION_LOCK_KEY, VERSION_TABLE, quote_ident

config = context.config
schema: str = config.attributes["schema"]


def run_offline() -> None:
    context.configure(
        dialect_name="postgresql",
        version_table=VERSION_TABLE,
        version_table_schema=schema,
        literal_binds=True,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        context.run_migrations()


def run_online() -> None:
    dsn = config.attributes["dsn"]
    engine = create_engine("postgresql+psycopg://", poolclass=pool.NullPool,
                           creator=lambda: psycopg.connect(dsn))
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(hashtext(:key))"),
                           {"key": MIGRATION_LOCK_KEY})
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}"))
        connection.commit()
        context.configure(
            connection=connection,
            version_table=VERSION_TABLE,
            version_table_schema=schema,
            transaction_per_migration=False,
        )
        try:
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(hashtext(:key))"),
                               {"key": MIGRATION_LOCK_KEY})
            connection.commit()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
