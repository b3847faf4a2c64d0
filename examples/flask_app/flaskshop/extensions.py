"""The extensions the factory wires up: Flask-SQLAlchemy's `db` and the pgq app `queue`."""

from typing import Any

from flask import Flask, has_app_context
from flask_sqlalchemy import SQLAlchemy
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import URL
from sqlalchemy.orm import DeclarativeBase

from pgq import App, Task


class Base(DeclarativeBase):
    pass


class FlaskTask(Task):
    """Celery's Flask pattern: every job runs inside the application context, so tasks use
    `db.session` and `current_app` as views do. pgq's worker calls this `__call__`."""

    flask_app: Flask | None = None  # set by create_app()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.flask_app is None or has_app_context():
            return super().__call__(*args, **kwargs)
        with self.flask_app.app_context():
            return super().__call__(*args, **kwargs)


db = SQLAlchemy(model_class=Base)
queue = App("flaskshop", task_cls=FlaskTask, include=["flaskshop.tasks"])


def database_url(dsn: str) -> str:
    """A SQLAlchemy URL (psycopg 3 driver) for the libpq DSN pgq uses, so both share one
    database."""
    parts = conninfo_to_dict(dsn)
    host = str(parts.get("host") or "")
    url = URL.create(
        "postgresql+psycopg", username=parts.get("user"), password=parts.get("password"),
        host=None if host.startswith("/") else host or None,
        port=int(parts["port"]) if parts.get("port") else None,
        database=parts.get("dbname"),
        query={"host": host} if host.startswith("/") else {},  # a Unix socket directory
    )
    return url.render_as_string(hide_password=False)
