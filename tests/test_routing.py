"""queue_databases: a queue routed to another database (here a second database on the test
server) is enqueued there, served by workers connected there, read from there; a workflow
that would span two databases fails at the call, writing nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from conftest import ROOT, wait_until
from psycopg import conninfo, sql

import pgq
from pgq import App, chain, chord, group
from pgq.routing import CrossDatabaseWorkflow
from pgq.services.scheduler import Scheduler

ADD, TSUM, PROGRESS = "apps.basic.add", "apps.basic.tsum", "apps.basic.progress"


@pytest.fixture(scope="module")
def heavy_dsn() -> Iterator[str]:
    """A second database beside the test database, migrated."""
    main = os.environ["PGQ_DSN"]
    name = conninfo.conninfo_to_dict(main)["dbname"] + "_heavy"
    with psycopg.connect(main, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = conninfo.make_conninfo(main, dbname=name)
    App("heavy", dsn=dsn).migrate()
    yield dsn
    with psycopg.connect(main, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


@pytest.fixture
def routed(app, heavy_dsn, dsn) -> Iterator[App]:
    with psycopg.connect(heavy_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgq.jobs, pgq.workers, pgq.chords, pgq.schedules")
    producer = App("routed", dsn=dsn, queue_databases={"heavy": heavy_dsn})
    yield producer
    producer.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgq.schedules")


def env_for(heavy_dsn: str) -> dict[str, str]:
    return {"PGQ_QUEUE_DATABASES": orjson.dumps({"heavy": heavy_dsn}).decode()}


def count(dsn: str, query: str = "SELECT count(*) FROM pgq.jobs") -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute(query).fetchone()[0])


def test_a_routed_queue_lives_in_its_own_database(routed, heavy_dsn, dsn, start_worker,
                                                  tmp_path):
    heavy = start_worker("-Q", "heavy", "-c", "2", env=env_for(heavy_dsn), ready=False)
    wait_until(lambda: "ready" in heavy.output(), what="the heavy worker")
    light = start_worker("-c", "1", env=env_for(heavy_dsn))

    result = routed.send_task(ADD, [20, 22], queue="heavy")
    assert result.get(timeout=20) == 42  # woken by LISTEN on the heavy database
    plain = routed.send_task(ADD, [1, 1])
    assert plain.get(timeout=20) == 2
    assert count(heavy_dsn) == 1 and count(dsn) == 1
    # Each worker registered (and heartbeats) in the database of its queues.
    assert count(heavy_dsn, "SELECT count(*) FROM pgq.workers") == 1
    assert count(dsn, "SELECT count(*) FROM pgq.workers") == 1
    # An AsyncResult by id alone finds the job in whichever database holds it.
    assert routed.AsyncResult(result.id).get(timeout=5) == 42
    assert routed.AsyncResult(result.id).state == "SUCCESS"
    # A task's update_state in a routed worker's child writes to the job's database.
    release = tmp_path / "release"
    running = routed.send_task(PROGRESS, [str(release)], queue="heavy")
    wait_until(lambda: routed.AsyncResult(running.id).state == "PROGRESS",
               what="PROGRESS from the heavy database")
    release.touch()
    assert running.get(timeout=20) == "done"
    # A chain, group and chord within the heavy database run there end to end.
    heavy_add = routed.signature(ADD, (1, 2), queue="heavy")
    flow = chain(heavy_add, routed.signature(ADD, (10,), queue="heavy"), app=routed)
    assert flow.apply_async().get(timeout=20) == 13
    fan_in = chord([routed.signature(ADD, (i, i), queue="heavy") for i in range(4)],
                   routed.signature(TSUM, queue="heavy"), app=routed)
    assert fan_in.apply_async().get(timeout=20) == 12
    assert count(dsn) == 1, "nothing of the heavy workflows reached the default database"
    assert "Traceback" not in heavy.output() + light.output()


@pytest.mark.parametrize("build", ["chain", "group", "chord_body", "link", "enqueue_many"])
def test_a_call_spanning_two_databases_raises_and_writes_nothing(routed, heavy_dsn, dsn,
                                                                   build):
    heavy = routed.signature(ADD, (1, 2), queue="heavy")
    light = routed.signature(ADD, (3,))
    call: Any = {
        "chain": lambda: chain(heavy, light, app=routed).apply_async(),
        "group": lambda: group([heavy, light], app=routed).apply_async(),
        "chord_body": lambda: chord([heavy, heavy], routed.signature(TSUM),
                                    app=routed).apply_async(),
        "link": lambda: routed.send_task(ADD, [1, 2], queue="heavy", link=light),
        "enqueue_many": lambda: routed.enqueue_many([heavy, light]),
    }[build]
    with pytest.raises(CrossDatabaseWorkflow, match=r"span databases.*'heavy'.*'default'"):
        call()
    assert count(heavy_dsn) == 0 and count(dsn) == 0


def test_a_worker_serves_one_database(routed, heavy_dsn, dsn):
    proc = subprocess.run([str(Path(sys.executable).parent / "pgq"), "worker", "-A",
                           "apps.basic", "-Q", "heavy,default"],
                          env={**os.environ, **env_for(heavy_dsn)}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "different databases" in proc.stderr and "one worker per database" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_transactional_enqueue_needs_a_connection_to_the_queues_database(routed, heavy_dsn,
                                                                          dsn):
    with psycopg.connect(dsn) as conn, \
            pytest.raises(CrossDatabaseWorkflow, match="connection= reaches another database"):
        routed.send_task(ADD, [1, 2], queue="heavy", connection=conn)
    with psycopg.connect(heavy_dsn) as conn:
        result = routed.send_task(ADD, [1, 2], queue="heavy", connection=conn)
        assert count(heavy_dsn) == 0  # not committed yet
        conn.commit()
    assert count(heavy_dsn) == 1 and count(dsn) == 0
    assert routed.AsyncResult(result.id).state == "PENDING"
    with psycopg.connect(dsn) as conn:  # the default queue on the default database: fine
        routed.send_task(ADD, [1, 2], connection=conn)
        conn.commit()
    assert count(dsn) == 1


def test_async_enqueue_and_results_on_a_routed_queue(routed, heavy_dsn, dsn, start_worker):
    heavy = start_worker("-Q", "heavy", "-c", "2", env=env_for(heavy_dsn), ready=False)
    wait_until(lambda: "ready" in heavy.output(), what="the heavy worker")

    async def main() -> tuple[Any, ...]:
        one = await routed.asend_task(ADD, [20, 22], queue="heavy")
        flow = chain(routed.signature(ADD, (1, 2), queue="heavy"),
                     routed.signature(ADD, (10,), queue="heavy"), app=routed)
        (many,) = await routed.aenqueue_many([routed.signature(ADD, (2, 2), queue="heavy")])
        values = (await one.aget(timeout=20), await (await flow.aapply_async()).aget(timeout=20),
                  await many.aget(timeout=20))
        by_id = routed.AsyncResult(one.id)  # no database known: found where it lives
        found = (await by_id.aget(timeout=5), await by_id.astate())
        await routed.aclose()
        return values, found

    assert asyncio.run(main()) == ((42, 13, 4), (42, "SUCCESS"))
    assert count(heavy_dsn) == 4 and count(dsn) == 0


def test_async_calls_keep_the_routing_rules(routed, heavy_dsn, dsn):
    heavy = routed.signature(ADD, (1, 2), queue="heavy")

    async def main() -> str:
        with pytest.raises(CrossDatabaseWorkflow, match="span databases"):
            await routed.aenqueue_many([heavy, routed.signature(ADD, (3, 4))])
        with pytest.raises(CrossDatabaseWorkflow, match="span databases"):
            await chain(heavy, routed.signature(ADD, (3,)), app=routed).aapply_async()
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            with pytest.raises(CrossDatabaseWorkflow, match="connection= reaches another"):
                await routed.asend_task(ADD, [1, 2], queue="heavy", connection=conn)
        async with await psycopg.AsyncConnection.connect(heavy_dsn) as conn:
            result = await heavy.aapply_async(connection=conn)
            assert count(heavy_dsn) == 0  # the caller's transaction, not committed yet
        by_id = routed.AsyncResult(result.id)
        assert await by_id.astate() == "PENDING"
        await by_id.arevoke()
        assert await by_id.astate() == "REVOKED"
        await by_id.aforget()
        await routed.aclose()
        return result.id

    asyncio.run(main())
    assert count(heavy_dsn) == 0 and count(dsn) == 0


def test_revoke_and_forget_reach_the_jobs_database(routed, heavy_dsn):
    result = routed.send_task(ADD, [1, 2], queue="heavy", countdown=60)
    by_id = routed.AsyncResult(result.id)
    by_id.revoke()
    assert by_id.state == "REVOKED"
    by_id.forget()
    assert count(heavy_dsn) == 0


def test_a_schedule_for_a_routed_queue_enqueues_there_once(routed, heavy_dsn, dsn):
    routed.add_periodic_task(0.2, routed.signature(ADD, (1, 1), queue="heavy"), name="heavy")
    scheduler = Scheduler(routed)
    with routed.connect(routed.default_dsn) as conn:
        scheduler.sync(conn)
        wait_until(lambda: scheduler.tick(conn) is not None and count(heavy_dsn) >= 1,
                   what="the first run")
        ((name,),) = conn.execute("SELECT name FROM pgq.schedules").fetchall()
    assert name == "heavy"
    assert count(dsn) == 0, "the schedule lives in the default database, its jobs do not"
    assert count(heavy_dsn) == 1


def test_migrate_covers_every_database(routed, heavy_dsn, dsn):
    with psycopg.connect(heavy_dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS pgq_routed CASCADE")
    target = App("routed", dsn=dsn, schema="pgq_routed", queue_databases={"heavy": heavy_dsn})
    try:
        target.migrate()
        for where in (dsn, heavy_dsn):
            assert count(where, "SELECT count(*) FROM pgq_routed.jobs") == 0
    finally:
        for where in (dsn, heavy_dsn):
            with psycopg.connect(where, autocommit=True) as conn:
                conn.execute("DROP SCHEMA IF EXISTS pgq_routed CASCADE")


@pytest.mark.parametrize("value", [["heavy"], {"heavy": 3}, {"": "dbname=x"},
                                   {"heavy": "host='unterminated"}])
def test_bad_queue_databases_are_refused(value):
    with pytest.raises(pgq.ConfigurationError, match=r"queue_databases|malformed DSN"):
        App("bad", dsn="dbname=x", queue_databases=value)


def test_queue_databases_from_the_environment(monkeypatch):
    monkeypatch.setenv("PGQ_QUEUE_DATABASES", '{"heavy": "dbname=other"}')
    assert App("env", dsn="dbname=x").conf.queue_databases == {"heavy": "dbname=other"}
