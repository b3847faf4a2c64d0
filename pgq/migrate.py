"""`pgq migrate`: run pgq's packaged alembic revisions against one schema."""

from __future__ import annotations

import io
from pathlib import Path

from alembic import command
from alembic.config import Config

from pgq.db.connection import connect


def alembic_config(dsn: str, schema: str, out: io.StringIO | None = None) -> Config:
    config = Config(output_buffer=out) if out is not None else Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
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
