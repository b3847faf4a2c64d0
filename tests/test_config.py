"""Settings and App construction: Celery names, PGQ_* environment, typos, DSNs."""

from __future__ import annotations

import warnings

import pytest

import pgq
from pgq import App


def test_celery_constructor_shape_with_postgres_broker():
    app = App("shop", broker="postgresql://u@localhost/shop", backend="redis://localhost",
              include=["x.tasks"])
    assert app._dsn == "postgresql://u@localhost/shop"
    assert "x.tasks" in app.conf.include


def test_non_postgres_broker_warns_naming_pgq_dsn():
    with pytest.warns(UserWarning, match="PGQ_DSN"):
        App("shop", broker="redis://localhost:6379/0")


def test_unknown_setting_raises():
    with pytest.raises(pgq.ConfigurationError, match="task_acks_latte"):
        App("x", task_acks_latte=True)
    app = App("y")
    with pytest.raises(pgq.ConfigurationError, match="worker_concurency"):
        app.conf.update(worker_concurency=4)


def test_celery_only_setting_is_accepted_with_one_warning():
    app = App("x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app.conf.update(broker_transport_options={"visibility_timeout": 3600})
        app.conf.update(broker_transport_options={"visibility_timeout": 3600})
    assert len([w for w in caught if "broker_transport_options" in str(w.message)]) == 1


def test_environment_settings_and_explicit_code_wins(monkeypatch):
    monkeypatch.setenv("PGQ_WORKER_LOST_TIMEOUT", "5")
    monkeypatch.setenv("PGQ_TASK_DEFAULT_QUEUE", "from-env")
    monkeypatch.setenv("PGQ_NOT_A_SETTING", "ignored")
    app = App("x", task_default_queue="from-code")
    assert app.conf.worker_lost_timeout == 5.0
    assert app.conf.task_default_queue == "from-code"
    assert app.default_queue == "from-code"


def test_bad_environment_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PGQ_WORKER_LOST_TIMEOUT", "soon")
    with pytest.raises(pgq.ConfigurationError, match="PGQ_WORKER_LOST_TIMEOUT"):
        App("x").conf.worker_lost_timeout  # noqa: B018


def test_config_from_object_takes_plain_values():
    class Config:
        task_default_queue = "cfg"
        result_expires = 60
        worker_concurrency = 2

    app = App("x")
    app.config_from_object(Config)
    assert (app.conf.task_default_queue, app.conf.result_expires) == ("cfg", 60.0)


def test_malformed_dsn_is_a_configuration_error():
    with pytest.raises(pgq.ConfigurationError, match="malformed DSN"):
        App("x", dsn="host=localhost port")


def test_unreachable_database_is_one_clear_error():
    app = App("x", dsn="postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(pgq.PgqError, match="cannot connect to PostgreSQL"):
        app.send_task("t", args=[1])


def test_two_tasks_with_one_name_raise():
    app = App("x")

    @app.task(name="same")
    def one() -> None: ...

    with pytest.raises(pgq.ConfigurationError, match="already registered"):
        @app.task(name="same")
        def two() -> None: ...


def test_default_task_name_and_options():
    app = App("x")

    @app.task(queue="q", priority=5, max_retries=None, rate_limit="10/s", expires=60)
    def charge(order: int) -> int:
        return order

    assert charge.name == f"{__name__}.test_default_task_name_and_options.<locals>.charge"
    assert (charge.queue, charge.priority, charge.max_retries) == ("q", 5, None)
    assert charge(3) == 3


def test_task_base_class():
    app = App("x")

    class Base(pgq.Task):
        max_retries = 9

    @app.task(base=Base)
    def job() -> None: ...

    assert isinstance(job, Base) and job.max_retries == 9


def test_public_names():
    for name in ["App", "Task", "AsyncResult", "GroupResult", "Signature", "signature", "chain",
                 "group", "chord", "crontab", "PgqError", "ConfigurationError", "EncodeError",
                 "NotRegistered", "TaskError", "TaskRevokedError", "TimeoutError", "Retry",
                 "MaxRetriesExceededError", "SoftTimeLimitExceeded", "TimeLimitExceeded",
                 "WorkerLostError", "ChordError"]:
        assert name in pgq.__all__
    assert issubclass(pgq.TimeoutError, TimeoutError)
    assert all(issubclass(getattr(pgq, n), pgq.PgqError) for n in pgq.__all__
               if n.endswith(("Error", "Exceeded")) or n in ("Retry", "NotRegistered"))


def test_task_always_eager_runs_in_process_and_writes_nothing(db):
    app = App("eager", task_always_eager=True)

    @app.task
    def double(x: int) -> int:
        return 2 * x

    @app.task
    def broken() -> None:
        raise KeyError("nope")

    assert double.delay(21).get() == 42
    result = broken.delay()
    assert result.state == "FAILURE"
    with pytest.raises(KeyError):
        result.get()
    app.conf.update(task_eager_propagates=True)
    with pytest.raises(KeyError):
        broken.delay()
    assert db.execute("SELECT count(*) FROM pgq.jobs WHERE task LIKE '%double%'").fetchone()[0] == 0


def test_broker_and_backend_non_postgres_warn_once():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        App("x", broker="redis://a", backend="rpc://")
    assert len([w for w in caught if "PGQ_DSN" in str(w.message)]) == 1
