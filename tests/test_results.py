"""Results and states: retries, progress, revoke, forget, ignore_result, expiry, pruning."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from apps.basic import (
    add,
    always_connection_error,
    ignored,
    progress,
    retry_until,
    sleep,
)
from conftest import wait_until

import pgq
import pgq.result

PGQ = str(Path(sys.executable).parent / "pgq")


def test_self_retry_until_success(app, start_worker):
    start_worker("-c", "1")
    result = retry_until.delay(2)
    assert result.get(timeout=10) == 2
    assert result.retries == 2


def test_retry_past_max_reraises_the_exception(app, start_worker):
    start_worker("-c", "1")
    result = retry_until.delay(10)  # max_retries=3
    with pytest.raises(KeyError):
        result.get(timeout=15)
    assert result.retries == 3


def test_autoretry_for_with_backoff_then_failure(app, start_worker, db):
    start_worker("-c", "1")
    result = always_connection_error.delay()
    with pytest.raises(ConnectionError, match="attempt 2"):
        result.get(timeout=15)
    assert result.retries == 2
    assert result.state == "FAILURE"


def test_update_state_is_visible_at_once(app, start_worker, tmp_path):
    start_worker("-c", "1")
    release = tmp_path / "release"
    result = progress.delay(str(release))
    deadline_state = None
    for _ in range(500):
        deadline_state = result.state
        if deadline_state == "PROGRESS":
            break
        import time
        time.sleep(0.01)
    assert deadline_state == "PROGRESS"
    assert result.info == {"step": 1}
    release.write_text("go")
    assert result.get(timeout=10) == "done"
    assert result.state == "SUCCESS"


def test_started_state_while_running(app, start_worker):
    start_worker("-c", "1")
    result = sleep.delay(1.0)
    import time
    deadline = time.monotonic() + 10
    while result.state != "STARTED" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert result.state == "STARTED"
    assert result.get(timeout=10) == 1.0


def test_revoke_pending_job_never_runs(app, start_worker, db):
    result = add.delay(1, 2)
    result.revoke()
    assert result.state == "REVOKED"
    start_worker("-c", "1")
    with pytest.raises(pgq.TaskRevokedError):
        result.get(timeout=5)
    started = db.execute("SELECT started_at FROM pgq.jobs WHERE id = %s", (result.id,))
    assert started.fetchone()[0] is None


def test_expired_job_is_revoked_not_run(app, start_worker, db):
    result = add.apply_async((1, 2), expires=0.01)
    import time
    time.sleep(0.05)
    start_worker("-c", "1")
    with pytest.raises(pgq.TaskRevokedError):
        result.get(timeout=10)
    assert result.state == "REVOKED"


def test_forget_deletes_the_result(app, start_worker):
    start_worker("-c", "1")
    result = add.delay(2, 2)
    assert result.get(timeout=10) == 4
    result.forget()
    assert app.AsyncResult(result.id).state == "PENDING"


def test_unknown_id_reads_pending(app, dsn):
    latest = pgq.App("latest", dsn=dsn)  # AsyncResult(id) uses the most recently created App
    result = pgq.AsyncResult("00000000-0000-0000-0000-000000000001")
    assert result.app is latest
    assert result.state == "PENDING" and result.result is None and not result.ready()


def test_ignore_result_tracks_state_but_not_value(app, start_worker):
    start_worker("-c", "1")
    result = ignored.delay(7)
    assert result.get(timeout=10) is None
    assert result.state == "SUCCESS"


def test_prune_deletes_results_past_expiry(app, start_worker, db, dsn):
    start_worker("-c", "1")
    old, new = add.delay(1, 1), add.delay(2, 2)
    old.get(timeout=10), new.get(timeout=10)
    db.execute("UPDATE pgq.jobs SET finished_at = now() - interval '2 days' WHERE id = %s",
               (old.id,))
    out = subprocess.run([PGQ, "prune", "-A", "apps.basic"], capture_output=True, text=True,
                         check=True)
    assert "pruned 1" in out.stdout
    assert app.AsyncResult(old.id).state == "PENDING"
    assert app.AsyncResult(new.id).state == "SUCCESS"
    out = subprocess.run([PGQ, "prune", "-A", "apps.basic", "--older-than", "0s"],
                         capture_output=True, text=True, check=True)
    assert "pruned 1" in out.stdout


def reads_of(result, monkeypatch) -> list[str]:
    """Count the reads of the job's row that `get()` makes."""
    reads: list[str] = []
    original = type(result)._row

    def counted(self):
        reads.append(self.id)
        return original(self)

    monkeypatch.setattr(type(result), "_row", counted)
    return reads


def finished(db, *results) -> bool:
    ids = [r.id for r in results]
    return db.execute("SELECT count(*) FROM pgq.jobs WHERE id = ANY(%s::uuid[]) "
                      "AND finished_at IS NOT NULL", (ids,)).fetchone()[0] == len(ids)


def test_get_of_a_job_enqueued_while_listening_waits_without_reading_first(app, start_worker,
                                                                          monkeypatch):
    """The process has heard every job finish since before it enqueued this one: get()
    waits for the notification, which carries a small result (no read at all); a big one is
    read once, when the job is done."""
    monkeypatch.setattr(pgq.result, "SAFETY_RECHECK_S", 60.0)  # only the notification wakes
    start_worker("-c", "1")
    assert add.delay(1, 1).get(timeout=30) == 2  # the process now listens
    small, big = sleep.delay(0.5), add.delay("x" * 150, "y" * 150)
    reads = reads_of(small, monkeypatch)
    assert small.get(timeout=30) == 0.5
    assert big.get(timeout=30) == "x" * 150 + "y" * 150
    assert reads == [big.id]
    assert small.date_done is not None and reads == [big.id, small.id]  # the rest: read


def test_get_takes_the_result_the_notification_carries(app, db):
    """A result on the results channel, then the id on the done channel, answer get() by
    themselves (here for a job that is not in the table: reading it would find nothing)."""
    job_id = "01234567-89ab-cdef-0123-456789abcdef"
    result = app.AsyncResult(job_id)
    waiting = threading.Thread(target=lambda: found.append(result.get(timeout=30)))
    found: list[object] = []
    waiter = app._result_waiter(app.dsn)
    wait_until(lambda: waiter.listener.live_since is not None, what="the LISTEN connection")
    waiting.start()
    wait_until(lambda: job_id in waiter._waiting, what="get() to wait")
    db.execute("SELECT pg_notify('pgq_results', %s), pg_notify('pgq_done', %s)",
               (f'{{"{job_id}": [1, "a"]}}', job_id))
    waiting.join(30)
    assert found == [[1, "a"]]
    assert waiter._heard == {}


def test_get_again_answers_at_once(app, start_worker):
    start_worker("-c", "1")
    result = add.delay(2, 3)
    assert result.get(timeout=30) == 5
    assert result.get(timeout=0.1) == 5
    assert result.get(timeout=0.1) == 5


def test_a_job_heard_finishing_before_anyone_waited_wakes_its_waiter_at_once(
        app, start_worker, db, monkeypatch):
    start_worker("-c", "1")
    assert add.delay(1, 1).get(timeout=30) == 2
    result = add.delay(2, 2)
    wait_until(lambda: finished(db, result), timeout=30, what="the job to finish")
    waiter = app._result_waiter(app.dsn)
    wait_until(lambda: result.id in waiter._recent, timeout=30, what="the notification")
    assert waiter.heard_all_since(result._unseen_before)
    event = waiter.register([result.id])
    assert event.is_set()
    waiter.unregister([result.id], event)
    reads = reads_of(result, monkeypatch)
    assert result.get(timeout=30) == 4
    assert reads == [result.id]


def test_get_reads_first_when_the_notification_may_be_forgotten(app, start_worker, db,
                                                               monkeypatch):
    """Once more jobs finished than the process remembers, the id may have been dropped:
    get() reads the row first (and finds it done) instead of waiting for a notification."""
    start_worker("-c", "1")
    assert add.delay(1, 1).get(timeout=30) == 2
    monkeypatch.setattr(pgq.result.ResultWaiter, "RECENT", 3)
    first = add.delay(2, 2)
    later = [add.delay(i, i) for i in range(6)]
    wait_until(lambda: finished(db, first, *later), timeout=30, what="the jobs to finish")
    waiter = app._result_waiter(app.dsn)
    wait_until(lambda: len(waiter._recent) == 3, timeout=30, what="the notifications")
    assert not waiter.heard_all_since(first._unseen_before)
    reads = reads_of(first, monkeypatch)
    assert first.get(timeout=30) == 4
    assert reads == [first.id]


def test_get_reads_first_after_the_listener_reconnected(app, start_worker, db, monkeypatch):
    """A notification sent while the LISTEN connection was down is lost: a job enqueued
    before the reconnect is read first."""
    start_worker("-c", "1")
    assert add.delay(1, 1).get(timeout=30) == 2
    result = add.delay(2, 2)
    waiter = app._result_waiter(app.dsn)
    before = waiter.listener.live_since
    # This process's LISTEN connection only: other xdist processes listen on the same server.
    db.execute("SELECT pg_terminate_backend(%s)", (waiter.listener._conn.info.backend_pid,))
    wait_until(lambda: (waiter.listener.live_since or 0) > before, timeout=30,
               what="the LISTEN connection to come back")
    assert not waiter.heard_all_since(result._unseen_before)
    assert result.get(timeout=30) == 4
