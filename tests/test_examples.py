"""The framework examples in examples/, run for real: each one's web app in this process (its
own test client), its tasks in a real `pgq worker` started on the example's pgq app, all on
the test database."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _on_path(example: str) -> dict[str, str]:
    """Import the example here, and give its worker the same path."""
    folder = str(EXAMPLES / example)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return {"PYTHONPATH": os.pathsep.join([folder, os.environ["PYTHONPATH"]])}


def _jobs(db: psycopg.Connection[Any], task: str) -> int:
    row = db.execute("SELECT count(*) FROM pgq.jobs WHERE task = %s", (task,)).fetchone()
    return int(row[0]) if row else 0


# --- Django ------------------------------------------------------------------------------------


@pytest.fixture
def django_shop(app: Any) -> dict[str, str]:
    env = {**_on_path("django_shop"), "DJANGO_SETTINGS_MODULE": "shop_site.settings"}
    os.environ["DJANGO_SETTINGS_MODULE"] = "shop_site.settings"
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return env


def test_django_order_and_job_commit_together(django_shop: dict[str, str], db: Any,
                                              start_worker: Any) -> None:
    from django.test import Client

    import pgq

    start_worker("-c", "1", app="shop_site.pgq_app", env=django_shop)
    client = Client()
    created = client.post("/orders/", {"item": "book"})
    assert created.status_code == 201, created.content
    body = created.json()
    assert pgq.AsyncResult(body["job"]).get(timeout=15) == "book"
    shown = client.get(f"/orders/{body['order']}/").json()
    assert shown["status"] == "confirmed"


def test_django_rollback_leaves_no_job(django_shop: dict[str, str], db: Any) -> None:
    from django.test import Client
    from orders.models import Order

    before = Order.objects.count()
    declined = Client().post("/orders/", {"item": "lamp", "card": "declined"})
    assert declined.status_code == 402
    assert Order.objects.count() == before
    assert _jobs(db, "orders.tasks.confirm_order") == 0


def test_django_connection_follows_atomic_blocks(django_shop: dict[str, str], db: Any) -> None:
    from django.db import connection, connections, transaction
    from orders.tasks import confirm_order

    with transaction.atomic():
        kept = confirm_order.apply_async((1,), connection=connection)
        bulk = confirm_order.app.enqueue_many([confirm_order.s(i) for i in range(120)],
                                              connection=connection)  # COPY
        try:
            with transaction.atomic():  # a savepoint
                dropped = confirm_order.apply_async((2,), connection=connections["default"])
                raise RuntimeError("roll the savepoint back")
        except RuntimeError:
            pass
        assert _jobs(db, "orders.tasks.confirm_order") == 0  # not committed yet
    ids = {r[0] for r in db.execute("SELECT id::text FROM pgq.jobs")}
    assert kept.id in ids and dropped.id not in ids and {r.id for r in bulk} <= ids
    # Outside atomic(), Django autocommits: the job is there at once, like a save().
    alone = confirm_order.apply_async((3,), connection=connection)
    assert db.execute("SELECT 1 FROM pgq.jobs WHERE id = %s", (alone.id,)).fetchone()


def test_django_connection_must_be_postgresql(django_shop: dict[str, str], db: Any) -> None:
    from orders.tasks import confirm_order

    import pgq

    sqlite = type("DatabaseWrapper", (), {"vendor": "sqlite", "__module__": "django.db.x"})()
    with pytest.raises(pgq.ConfigurationError, match="Django sqlite connection"):
        confirm_order.apply_async((1,), connection=sqlite)
    assert _jobs(db, "orders.tasks.confirm_order") == 0


# --- Flask + Flask-SQLAlchemy ------------------------------------------------------------------


@pytest.fixture
def flask_shop(app: Any) -> tuple[Any, dict[str, str]]:
    env = _on_path("flask_app")
    from flaskshop import create_app
    from flaskshop.extensions import db

    flask_app = create_app()
    with flask_app.app_context():
        db.create_all()
    return flask_app, env


def test_flask_order_and_job_commit_together(flask_shop: Any, start_worker: Any) -> None:
    flask_app, env = flask_shop
    start_worker("-c", "1", app="flaskshop.worker", env=env)
    client = flask_app.test_client()
    created = client.post("/orders", json={"item": "kettle"})
    assert created.status_code == 201, created.data
    body = created.json
    assert flask_app.extensions["pgq"].AsyncResult(body["job"]).get(timeout=15) == "kettle"
    assert client.get(f"/orders/{body['order']}").json["status"] == "receipt sent"
    assert client.get(f"/jobs/{body['job']}").json == {
        "job": body["job"], "state": "SUCCESS", "result": "kettle"}


def test_flask_rollback_leaves_no_job(flask_shop: Any, db: Any) -> None:
    flask_app, _ = flask_shop
    before = db.execute("SELECT count(*) FROM flaskshop_order").fetchone()[0]
    declined = flask_app.test_client().post("/orders", json={"item": "x", "card": "declined"})
    assert declined.status_code == 402
    assert db.execute("SELECT count(*) FROM flaskshop_order").fetchone()[0] == before
    assert _jobs(db, "flaskshop.tasks.send_receipt") == 0


# --- FastAPI (async endpoints, an async task) --------------------------------------------------


@pytest.fixture
def fastapi_signup(app: Any) -> tuple[Any, dict[str, str]]:
    env = _on_path("fastapi_app")
    from fastapi.testclient import TestClient
    from signup.main import api

    with TestClient(api) as client:
        yield client, env


def test_fastapi_user_and_job_commit_together(fastapi_signup: Any, start_worker: Any) -> None:
    client, env = fastapi_signup
    start_worker("-c", "1", app="signup.tasks", env=env)
    created = client.post("/users", json={"email": "ada@example.com"})
    assert created.status_code == 201, created.text
    body = created.json()
    done = client.get(f"/jobs/{body['job']}", params={"wait": 15}).json()
    assert done["state"] == "SUCCESS"
    assert done["result"] == f"welcomed ada@example.com (job {body['job']})"
    assert client.get(f"/users/{body['user']}").json()["welcomed"] is True


def test_fastapi_rollback_leaves_no_job(fastapi_signup: Any, db: Any) -> None:
    client, _ = fastapi_signup
    dry = client.post("/users", json={"email": "bob@example.com", "dry_run": True})
    assert dry.status_code == 201 and dry.json() == {"user": None, "job": None}
    assert db.execute("SELECT count(*) FROM signup_user WHERE email = 'bob@example.com'"
                      ).fetchone()[0] == 0
    assert _jobs(db, "signup.tasks.send_welcome") == 0
