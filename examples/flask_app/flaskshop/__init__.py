"""A Flask + Flask-SQLAlchemy shop whose jobs are enqueued inside the request's session
transaction. `create_app()` is the factory; `flaskshop.worker` is what `pgq worker -A` loads."""

import os

import click
from flask import Flask

from flaskshop.extensions import FlaskTask, database_url, db, queue


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = (os.environ.get("DATABASE_URL")
                                             or database_url(queue.dsn))
    db.init_app(app)
    FlaskTask.flask_app = app
    app.extensions["pgq"] = queue

    from flaskshop import views

    app.register_blueprint(views.bp)

    @app.cli.command("init-db")
    def init_db() -> None:
        """Create the example's table."""
        db.create_all()
        click.echo("created flaskshop_order")

    return app
