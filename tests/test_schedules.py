"""Schedules: countdown/eta on time, periodic tasks enqueued exactly once by many schedulers."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest
from apps.basic import whoami
from conftest import ROOT, wait_until

import pgq
from pgq import crontab
from pgq.schedules import first_due, following, latest_due, parse

PGQ = str(Path(sys.executable).parent / "pgq")
UTC = dt.UTC


# --- pure schedule arithmetic ----------------------------------------------------------------


def test_interval_first_runs_one_interval_after_first_seen():
    now = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert first_due(10.0, now, "UTC") == now + dt.timedelta(seconds=10)
    assert parse(dt.timedelta(minutes=1)) == 60.0


def test_after_downtime_only_the_latest_missed_run():
    start = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    now = start + dt.timedelta(seconds=95)
    assert latest_due(10.0, start, now, "UTC") == start + dt.timedelta(seconds=90)
    assert following(10.0, start + dt.timedelta(seconds=90), "UTC") == start + dt.timedelta(
        seconds=100)
    cron = crontab("*/15 * * * *")
    assert latest_due(cron, start, start + dt.timedelta(minutes=50), "UTC") == start + \
        dt.timedelta(minutes=45)


def test_crontab_fields_and_string_forms_agree():
    assert crontab(minute="*/5", hour="9-17").expression == "*/5 9-17 * * *"
    assert crontab("30 2 * * 1").day_of_week == "1"
    with pytest.raises(pgq.ConfigurationError):
        crontab("61 * * * *")


def test_crontab_honours_timezone_and_daylight_saving():
    # 02:30 does not exist in Berlin on 2026-03-29 (clocks jump 02:00 -> 03:00).
    daily = crontab(minute="30", hour="2")
    before = dt.datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    first = daily.next_after(before, "Europe/Berlin")
    assert first == dt.datetime(2026, 3, 29, 1, 30, tzinfo=UTC) or first.date() >= \
        dt.date(2026, 3, 29)
    # 09:00 Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
    nine = crontab(minute="0", hour="9")
    winter = nine.next_after(dt.datetime(2026, 3, 27, 10, 0, tzinfo=UTC), "Europe/Berlin")
    summer = nine.next_after(dt.datetime(2026, 3, 30, 10, 0, tzinfo=UTC), "Europe/Berlin")
    assert (winter.hour, summer.hour) == (8, 7)


# --- countdown / eta -------------------------------------------------------------------------


def test_eta_jobs_run_on_time_without_a_poll(app, start_worker):
    # A 60 s poll interval: only the worker's own next-due timer can run these on time.
    start_worker("-c", "2", env={"PGQ_WORKER_POLL_INTERVAL": "60"})
    now = dt.datetime.now(UTC)
    results = [whoami.apply_async(eta=now + dt.timedelta(seconds=0.5 + i * 0.25))
               for i in range(4)]
    late = []
    for r in results:
        r.get(timeout=15)
        row = app.AsyncResult(r.id)
        late.append((row.date_done - dt.datetime.fromisoformat(
            r.get()["eta"])).total_seconds())
    assert max(late) < 0.5, late


# --- periodic tasks across schedulers ----------------------------------------------------------


BEAT_APP = """
import os
from pgq import App, crontab

app = App("beat", dsn=os.environ["PGQ_DSN"], schema=os.environ["BEAT_SCHEMA"])

@app.task(name="beat.tick", bind=True)
def tick(self):
    return self.request.eta.isoformat() if self.request.eta else None

app.add_periodic_task(1.0, tick.s(), name="every-second")
if os.environ.get("BEAT_MORE"):
    app.add_periodic_task(crontab("* * * * *"), tick.s(), name="every-minute")
"""


@pytest.fixture
def beat_env(tmp_path, dsn):
    schema = "beat_" + os.urandom(4).hex()
    (tmp_path / "beatapp.py").write_text(textwrap.dedent(BEAT_APP))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ['PYTHONPATH']}",
           "BEAT_SCHEMA": schema}
    subprocess.run([PGQ, "migrate", "-A", "beatapp"], env=env, check=True, cwd=tmp_path,
                   capture_output=True)
    yield env, schema, tmp_path
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def start_beat(env, cwd, *args):
    return subprocess.Popen([PGQ, *args, "-A", "beatapp", "-l", "INFO"], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def runs(dsn, schema):
    with psycopg.connect(dsn) as conn:
        return conn.execute(f'SELECT eta FROM "{schema}".jobs WHERE task = %s ORDER BY eta',
                            ("beat.tick",)).fetchall()


@pytest.mark.timeout(180)
def test_three_schedulers_enqueue_each_due_run_once(beat_env, dsn):
    env, schema, cwd = beat_env
    beats = [start_beat(env, cwd, "beat") for _ in range(2)]
    beats.append(start_beat(env, cwd, "worker", "-B", "-c", "1"))
    try:
        time.sleep(60)  # a minute of a 1-second schedule
    finally:
        for proc in beats:
            proc.send_signal(signal.SIGTERM)
        for proc in beats:
            proc.wait(20)
    etas = [r[0] for r in runs(dsn, schema)]
    assert len(etas) >= 55
    assert len(etas) == len(set(etas)), "a due run was enqueued twice"
    gaps = {round((b - a).total_seconds(), 3) for a, b in itertools.pairwise(etas)}
    assert gaps == {1.0}, f"runs must be exactly one interval apart: {gaps}"


def test_restart_neither_repeats_nor_floods(beat_env, dsn):
    env, schema, cwd = beat_env
    first = start_beat(env, cwd, "beat")
    wait_until(lambda: len(runs(dsn, schema)) >= 2, what="first runs")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = len(runs(dsn, schema))
    time.sleep(4)  # downtime: ~4 runs missed
    second = start_beat(env, cwd, "beat")
    try:
        wait_until(lambda: len(runs(dsn, schema)) >= before + 2, what="runs after restart")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(20)
    etas = [r[0] for r in runs(dsn, schema)]
    assert len(etas) == len(set(etas))
    missed_gap = max((b - a).total_seconds() for a, b in itertools.pairwise(etas))
    assert missed_gap >= 3.5, "after downtime only the latest missed run is made up"


def test_removed_schedule_is_disabled_and_inspect_lists_schedules(beat_env, dsn):
    env, schema, cwd = beat_env
    more = start_beat({**env, "BEAT_MORE": "1"}, cwd, "beat")
    wait_until(lambda: len(runs(dsn, schema)) >= 1, what="a run")
    more.send_signal(signal.SIGTERM)
    more.wait(20)
    fewer = start_beat(env, cwd, "beat")
    try:
        def disabled():
            with psycopg.connect(dsn) as conn:
                return conn.execute(f'SELECT enabled FROM "{schema}".schedules WHERE name = '
                                    "'every-minute'").fetchone() == (False,)
        wait_until(disabled, what="the removed schedule to be disabled")
    finally:
        fewer.send_signal(signal.SIGTERM)
        fewer.wait(20)
    out = subprocess.run([PGQ, "inspect", "scheduled", "-A", "beatapp"], env=env, cwd=cwd,
                         capture_output=True, text=True)
    assert "every-second" in out.stdout and "every-minute" in out.stdout
    assert "1s" in out.stdout and "* * * * *" in out.stdout


def test_expired_periodic_job_is_revoked(app, start_worker):
    result = whoami.apply_async(eta=dt.datetime.now(UTC) - dt.timedelta(seconds=5), expires=0.01)
    time.sleep(0.05)
    start_worker("-c", "1")
    with pytest.raises(pgq.TaskRevokedError):
        result.get(timeout=10)


def test_beat_schedule_in_celery_dict_form(dsn):
    app = pgq.App("dictbeat", dsn=dsn)
    app.conf.beat_schedule = {
        "cleanup": {"task": "x.cleanup", "schedule": dt.timedelta(minutes=5), "args": (1,)},
        "report": {"task": "x.report", "schedule": crontab(hour="7", minute="30")},
    }
    from pgq.services.scheduler import entries

    found = {e.name: e for e in entries(app)}
    assert found["cleanup"].schedule == 300.0 and found["cleanup"].args == [1]
    assert found["report"].schedule == crontab(hour="7", minute="30")
    _ = ROOT
