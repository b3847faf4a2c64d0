"""Operating pgq: retry, the monitoring views, status --watch, the testing helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from apps.basic import add, fail_value, retry_until, tsum
from conftest import wait_until

import pgq
from pgq.testing import drain, eager

PGQ = str(Path(sys.executable).parent / "pgq")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PGQ, *args], capture_output=True, text=True, timeout=60)


def test_retry_one_job_and_all_failed(app, db):
    bad = [fail_value.delay(f"x{i}") for i in range(3)]
    assert drain(app) == 3
    assert all(r.state == "FAILURE" for r in bad)
    proc = run("retry", "-A", "apps.basic", bad[0].id)
    assert proc.returncode == 0, proc.stderr
    again = app.AsyncResult(bad[0].id)  # a finished result is cached: read it afresh
    assert again.state == "PENDING" and again.retries == 0
    proc = run("retry", "-A", "apps.basic", "--failed")
    assert "2 job(s)" in proc.stdout
    assert {app.AsyncResult(r.id).state for r in bad} == {"PENDING"}
    assert run("retry", "-A", "apps.basic").returncode == 1  # neither ids nor --failed


def test_retry_of_a_waiting_job_is_an_error(app):
    waiting = add.apply_async((1, 1), countdown=600)
    proc = run("retry", "-A", "apps.basic", waiting.id)
    assert proc.returncode == 1 and "not finished" in proc.stderr


def test_task_stats_and_recent_failures(app, db):
    for i in range(4):
        add.delay(i, i)
    fail_value.delay("boom")
    retry_until.delay(1)
    add.apply_async((1, 1), countdown=600)
    drain(app)
    time.sleep(0.25)  # let the retry come due
    drain(app)
    rows = {r[0]: r[1:] for r in db.execute(
        "SELECT task, pending, started, succeeded, failed, retried, p50_ms, p95_ms, p99_ms "
        "FROM pgq.task_stats").fetchall()}
    pending, started, succeeded, failed, _retried, p50, p95, p99 = rows["apps.basic.add"]
    assert (pending, started, succeeded, failed) == (1, 0, 4, 0)
    assert p50 is not None and p50 <= p95 <= p99
    assert rows["apps.basic.fail_value"][3] == 1
    assert rows["apps.basic.retry_until"][4] == 1
    failure = db.execute("SELECT task, queue, retries, exc_type, exc_message "
                         "FROM pgq.recent_failures LIMIT 1").fetchone()
    assert failure == ("apps.basic.fail_value", "default", 0, "ValueError", "boom")


LIVE_COUNTS = """
SELECT queue, state, count(*) FROM pgq.jobs GROUP BY queue, state ORDER BY queue, state
"""


def view_counts(db) -> list[tuple]:
    return db.execute("SELECT queue, state, jobs FROM pgq.queue_stats "
                      "ORDER BY queue, state").fetchall()


def test_queue_stats_counters_follow_every_path(app, db):
    """Finished jobs are counted by triggers, not by scanning: the view must agree with a
    full count after workers, revoke, retry, prune, purge, forget and an operator's SQL."""
    done = [add.delay(i, i) for i in range(5)]
    failed = [fail_value.delay("x") for _ in range(3)]
    add.apply_async((0, 0), queue="other")
    doomed = add.apply_async((1, 1), countdown=600)
    drain(app)
    assert view_counts(db) == db.execute(LIVE_COUNTS).fetchall()
    doomed.revoke()
    assert run("retry", "-A", "apps.basic", "--failed").returncode == 0  # FAILURE -> PENDING
    drain(app)  # they fail again
    done[0].forget()
    db.execute("DELETE FROM pgq.jobs WHERE id = %s", (done[1].id,))  # an operator's own SQL
    db.execute("UPDATE pgq.jobs SET finished_at = now() - interval '30 days' WHERE id = %s",
               (done[2].id,))
    assert run("prune", "-A", "apps.basic", "--older-than", "7d").returncode == 0
    add.apply_async((2, 2), queue="other")
    assert run("purge", "-A", "apps.basic", "-Q", "other", "--yes").returncode == 0
    # Rows inserted already finished, one still to run, and in one transaction a statement
    # with finished rows then one without (the trigger's flag must not leak or stick).
    db.execute("INSERT INTO pgq.jobs (id, task, queue, state, args) "
               "SELECT gen_random_uuid(), 'add', q, s, '[]' FROM unnest("
               "'{default,default,imported,imported}'::text[], "
               "'{SUCCESS,REVOKED,FAILURE,PENDING}'::text[]) AS x(q, s)")
    with db.transaction():
        db.execute("INSERT INTO pgq.jobs (id, task, queue, state, args) "
                   "VALUES (gen_random_uuid(), 'add', 'imported', 'SUCCESS', '[]')")
        db.execute("INSERT INTO pgq.jobs (id, task, queue, args) "
                   "VALUES (gen_random_uuid(), 'add', 'imported', '[]')")
    expected = db.execute(LIVE_COUNTS).fetchall()
    assert view_counts(db) == expected
    assert ("default", "SUCCESS", 3) in expected and ("default", "FAILURE", 3) in expected
    assert ("imported", "FAILURE", 1) in expected and ("imported", "SUCCESS", 1) in expected
    oldest, live = db.execute(
        "SELECT (SELECT oldest_age FROM pgq.queue_stats"
        "        WHERE queue = 'default' AND state = 'FAILURE'),"
        "       (SELECT now() - min(created_at) FROM pgq.jobs"
        "        WHERE queue = 'default' AND state = 'FAILURE')").fetchone()
    assert oldest == live and len(failed) == 3
    db.execute("TRUNCATE pgq.jobs")
    assert view_counts(db) == []


def test_drain_runs_workflows_in_process(app):
    chain_result = (add.s(1, 1) | add.s(1)).apply_async()
    chord_result = pgq.chord([add.s(i, i) for i in range(3)], tsum.s()).apply_async()
    assert drain(app) == 2 + 3 + 1
    assert chain_result.get(timeout=1) == 3
    assert chord_result.get(timeout=1) == 6


def test_eager_mode_needs_no_worker(app, db):
    with eager(app):
        assert add.delay(2, 2).get() == 4
        with pytest.raises(ValueError):
            fail_value.delay("inline")
    assert db.execute("SELECT count(*) FROM pgq.jobs").fetchone()[0] == 0
    assert not app.conf.task_always_eager


def test_status_watch_refreshes_until_interrupted(app, tmp_path):
    screen = tmp_path / "screen"
    with screen.open("w") as out:
        proc = subprocess.Popen([PGQ, "status", "-A", "apps.basic", "--watch", "0.2"],
                                stdout=out, text=True)
        # Three refreshes, however slowly a loaded machine starts the command.
        wait_until(lambda: screen.read_text().count("\x1b[2J") >= 3, timeout=30,
                   what="three refreshes")
        proc.send_signal(2)
        assert proc.wait(timeout=10) == 0


PLUGIN_TEST = '''
import pgq
pytest_plugins = ["pgq.testing.pytest_plugin"]

app = pgq.App("user-app")

@app.task
def mul(x, y):
    return x * y

def test_with_the_plugin(pgq_app, pgq_drain):
    bound = pgq_app(app)
    result = mul.delay(6, 7)
    assert pgq_drain(bound) == 1
    assert result.get(timeout=5) == 42
'''


def test_pytest_plugin(tmp_path, dsn):
    (tmp_path / "test_user.py").write_text(PLUGIN_TEST)
    env = {**os.environ, "PGQ_TEST_DSN": dsn}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(tmp_path / "test_user.py")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_prometheus_metrics(app, start_worker):
    import urllib.request

    from conftest import wait_until

    port = free_port()
    start_worker("-c", "2", "--metrics-port", str(port))
    for i in range(5):
        add.delay(i, i).get(timeout=10)
    fail_value.apply_async(("x",), queue="default")
    add.apply_async((1, 1), countdown=600)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()

    text = wait_until(lambda: (t := scrape()) and 'pgq_queue_depth{queue="default"} 1.0' in t and
                      'pgq_jobs_failed_total{queue="default",task="apps.basic.fail_value"} 1.0'
                      in t and t, what="metrics")
    assert 'pgq_jobs_succeeded_total{queue="default",task="apps.basic.add"} 5.0' in text
    assert 'pgq_jobs_claimed_total{queue="default",task="apps.basic.add"} 5.0' in text
    assert "pgq_job_runtime_seconds_bucket" in text
    assert 'pgq_queue_depth{queue="default"} 1.0' in text
    assert "pgq_children 2.0" in text


def test_json_logs(app, start_worker):
    import json

    worker = start_worker("-c", "1", "--log-format", "json")
    add.delay(1, 1).get(timeout=10)
    lines = [line for line in worker.output().splitlines() if line.startswith("{")]
    assert lines, worker.output()
    entry = json.loads(lines[-1])
    assert {"time", "level", "logger", "pid", "message"} <= set(entry)


def test_least_privilege_roles(app, dsn, db):
    import psycopg
    from psycopg import conninfo

    from pgq.db.grants import VIEWS
    from pgq.db.queries import queries_for

    suffix = os.urandom(3).hex()
    producer, worker, monitor = f"p_{suffix}", f"w_{suffix}", f"m_{suffix}"
    proc = run("grant", "-A", "apps.basic", "--producer", producer, "--worker", worker,
               "--monitor", monitor, "--create")
    assert proc.returncode == 0, proc.stderr
    as_role = {role: conninfo.make_conninfo(dsn, user=role)
               for role in (producer, worker, monitor)}
    # The producer enqueues and reads results ...
    producer_app = pgq.App("producer", dsn=as_role[producer])
    job = producer_app.send_task("apps.basic.add", args=[20, 22])
    assert drain(app) == 1
    assert producer_app.AsyncResult(job.id).get(timeout=5) == 42
    # ... but cannot claim.
    claim = queries_for("pgq").claim
    with psycopg.connect(as_role[producer]) as conn, pytest.raises(
            psycopg.errors.InsufficientPrivilege):
        conn.execute(claim, {"queues": ["default"], "limit": 1,
                             "worker": "00000000-0000-0000-0000-000000000000"})
    # Jobs it inserts already finished are counted (by the owner-rights counter), and it
    # cannot call that counter itself.
    with psycopg.connect(as_role[producer], autocommit=True) as conn:
        conn.execute("INSERT INTO pgq.jobs (id, task, queue, state, args) VALUES "
                     "(gen_random_uuid(), 'add', 'imported_by_producer', 'SUCCESS', '[]')")
        with pytest.raises(psycopg.errors.RaiseException, match="trigger only"):
            conn.execute("SELECT pgq.count_finished_added('imported_by_producer', "
                         "'{SUCCESS}')")
    assert db.execute("SELECT jobs FROM pgq.queue_stats WHERE queue = "
                      "'imported_by_producer'").fetchall() == [(1,)]
    # The monitor reads the views and nothing else.
    with psycopg.connect(as_role[monitor]) as conn:
        for view in VIEWS:  # job_payloads included
            conn.execute(f"SELECT * FROM pgq.{view}").fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM pgq.jobs")
    # The worker role can claim.
    with psycopg.connect(as_role[worker]) as conn:
        conn.execute(claim, {"queues": ["default"], "limit": 1,
                             "worker": "00000000-0000-0000-0000-000000000000"})
    producer_app.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for role in (producer, worker, monitor):
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


def test_every_migration_downgrades_and_upgrades_again(dsn, db):
    """Each revision's downgrade undoes it: base and back to head in a schema of its own."""
    from alembic import command

    from pgq.migrate import alembic_config, upgrade

    schema = "pgq_roundtrip"
    db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    upgrade(dsn, schema)
    command.downgrade(alembic_config(dsn, schema), "base")
    tables = db.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s "
                        "AND tablename <> 'alembic_version'", (schema,)).fetchone()[0]
    assert tables == 0
    upgrade(dsn, schema)
    assert db.execute(f"SELECT count(*) FROM {schema}.queue_stats").fetchone() == (0,)
    db.execute(f"DROP SCHEMA {schema} CASCADE")


def test_insert_trigger_notifies_once_per_queue_unless_skipped(dsn, db):
    """`jobs_inserted` (revision 0008): one NOTIFY per distinct queue of a statement, at
    commit, none with `pgq.skip_notify`, none on rollback. In a schema of its own, so its
    channel hears no other test's jobs."""
    from pgq.migrate import upgrade

    schema = "pgq_notify_check"
    db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    upgrade(dsn, schema)
    insert = (f"INSERT INTO {schema}.jobs (id, task, queue, args) "
              "SELECT gen_random_uuid(), 't', q, '[]' FROM unnest(%s::text[]) AS q")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {schema}_jobs")
        db.execute(insert, (["a", "b", "a", "a"],))
        with db.transaction():
            db.execute("SET LOCAL pgq.skip_notify = on")
            db.execute(insert, (["skipped"],))
        with pytest.raises(ZeroDivisionError), db.transaction():
            db.execute(insert, (["rolled_back"],))
            raise ZeroDivisionError
        db.execute(insert, (["c"],))
        heard = [n.payload for n in listener.notifies(timeout=1.0)]
    assert sorted(heard) == ["a", "b", "c"]
    assert db.execute(f"SELECT count(*) FROM {schema}.jobs").fetchone() == (6,)
    db.execute(f"DROP SCHEMA {schema} CASCADE")
