"""pytest fixtures for projects that use pgq. Enable with, in your conftest.py:

    pytest_plugins = ["pgq.testing.pytest_plugin"]

Fixtures:
- `pgq_dsn` (session): a PostgreSQL DSN — `$PGQ_TEST_DSN` if set, else an embedded server
  in `./.pgq/testdata` (needs `pgq-tasks[embedded]`).
- `pgq_schema` (function): a fresh schema, migrated, dropped after the test.
- `pgq_app` (function): a factory — `pgq_app(my_app)` points your App at the test database
  and schema and returns it.
- `pgq_drain` (function): `pgq_drain(app, queues=None)` runs the queued jobs in-process.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pgq.app import App
from pgq.db.connection import connect
from pgq.migrate import upgrade
from pgq.testing import drain


@pytest.fixture(scope="session")
def pgq_dsn() -> str:
    """A PostgreSQL DSN: `$PGQ_TEST_DSN`, else an embedded server in `./.pgq/testdata`
    (needs `pgq-tasks[embedded]`). Session-scoped."""
    env = os.environ.get("PGQ_TEST_DSN")
    if env:
        return env
    from pgq import embedded

    return embedded.ensure_server(Path(".pgq") / "testdata")


@pytest.fixture
def pgq_schema(pgq_dsn: str) -> Iterator[str]:
    """A fresh schema name, migrated for this test and dropped after it."""
    schema = "pgq_test_" + uuid.uuid4().hex[:10]
    upgrade(pgq_dsn, schema)
    yield schema
    with connect(pgq_dsn) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pgq_app(pgq_dsn: str, pgq_schema: str) -> Iterator[Callable[[App], App]]:
    """A function: `pgq_app(my_app)` points your App at the test database and schema for
    this test (restored afterwards) and returns it."""
    bound: list[tuple[App, Any, str]] = []

    def bind(app: App) -> App:
        bound.append((app, app._dsn, app.schema))
        app.close()
        app._dsn, app.schema = pgq_dsn, pgq_schema  # close() dropped the old pools
        return app

    yield bind
    for app, dsn, schema in bound:
        app.close()
        app._dsn, app.schema = dsn, schema


@pytest.fixture
def pgq_drain() -> Callable[..., int]:
    """`pgq.testing.drain`: `pgq_drain(app, queues=None)` runs the due jobs in-process."""
    return drain
