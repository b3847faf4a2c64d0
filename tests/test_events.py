"""Live events: a real worker publishes, `pgq events` (a subprocess) and the Python API read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from apps.basic import add, fail_value, retry_until, sleep
from conftest import PGQ, ROOT, wait_until

from pgq.events import FIELDS, WIRE_VERSION, EventReceiver, expand
from pgq.worker.events import PAYLOAD_MAX, EventPublisher
from pgq.worker.executor import Job, Outcome


class EventsProcess:
    """`pgq -A apps.basic events ARGS`, its output in files."""

    def __init__(self, tmp_path: Path, args: list[str]) -> None:
        self.out_path = tmp_path / f"events-{time.monotonic_ns()}.out"
        self.err_path = self.out_path.with_suffix(".err")
        self.out, self.err = open(self.out_path, "w"), open(self.err_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen([PGQ, "-A", "apps.basic", "events", *args],
                                     stdout=self.out, stderr=self.err, cwd=ROOT,
                                     start_new_session=True)
        wait_until(lambda: "listening" in self.err_path.read_text() or self.proc.poll(),
                   what="pgq events to listen")
        assert self.proc.poll() is None, self.err_path.read_text()

    def text(self) -> str:
        return self.out_path.read_text()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text().splitlines() if line.strip()]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.out.close()
        self.err.close()
        return self.proc.returncode


@pytest.fixture
def pgq_events(tmp_path: Path) -> Iterator[Callable[..., EventsProcess]]:
    started: list[EventsProcess] = []

    def start(*args: str) -> EventsProcess:
        process = EventsProcess(tmp_path, list(args))
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def _of(events: list[dict[str, Any]], job_id: str) -> list[str]:
    return [e["type"] for e in events if e.get("uuid") == job_id]


def test_pgq_events_json_reports_each_job_and_the_worker(app: Any, start_worker: Any,
                                                         pgq_events: Any) -> None:
    stream = pgq_events("--json")
    worker = start_worker("-c", "2")
    ok, failed, retried = add.delay(2, 3), fail_value.delay("bad"), retry_until.delay(1)
    for result in (ok, failed, retried):
        result.get(timeout=15, propagate=False)
    wait_until(lambda: _of(stream.events(), retried.id).count("task-succeeded") == 1,
               what="the retried job's task-succeeded event")
    events = stream.events()
    assert _of(events, ok.id) == ["task-received", "task-started", "task-succeeded"]
    assert _of(events, failed.id) == ["task-received", "task-started", "task-failed"]
    assert _of(events, retried.id) == ["task-received", "task-started", "task-retried",
                                       "task-received", "task-started", "task-succeeded"]
    received = next(e for e in events if e.get("uuid") == ok.id
                    and e["type"] == "task-received")
    assert received["name"] == add.name and received["args"] == "[2, 3]"
    assert received["root_id"] == ok.id and received["queue"] == "default"
    succeeded = next(e for e in events if e.get("uuid") == ok.id
                     and e["type"] == "task-succeeded")
    assert succeeded["result"] == "5" and succeeded["runtime"] >= 0
    assert succeeded["hostname"] and succeeded["pid"] == worker.pid
    failure = next(e for e in events if e["type"] == "task-failed")
    assert failure["exception"] == "ValueError('bad')" and "Traceback" in failure["traceback"]
    retry = next(e for e in events if e["type"] == "task-retried")
    assert retry["exc_type"] == "KeyError"
    assert any(e["type"] == "worker-online" and e["pid"] == worker.pid for e in events)
    wait_until(lambda: any(e["type"] == "worker-heartbeat" for e in stream.events()),
               what="a worker-heartbeat event")
    assert worker.stop() == 0
    wait_until(lambda: any(e["type"] == "worker-offline" for e in stream.events()),
               what="worker-offline")
    assert stream.stop() == 0


def test_pgq_events_prints_readable_lines_and_filters_queues(app: Any, start_worker: Any,
                                                             pgq_events: Any) -> None:
    readable = pgq_events("-Q", "other")
    start_worker("-c", "1", "-Q", "default,other")
    mine = add.apply_async((1, 1), queue="other")
    theirs = add.apply_async((2, 2), queue="default")
    mine.get(timeout=10)
    theirs.get(timeout=10)
    wait_until(lambda: "task-succeeded" in readable.text(), what="a readable event line")
    text = readable.text()
    assert f"task-succeeded  {add.name}[{mine.id}]  result=2" in text
    assert theirs.id not in text
    assert "worker-online" in text  # the worker consumes "other" too


def test_task_events_can_be_switched_off(app: Any, start_worker: Any, pgq_events: Any
                                         ) -> None:
    stream = pgq_events("--json")
    start_worker("-c", "1", "--without-task-events")
    add.delay(1, 1).get(timeout=10)
    wait_until(lambda: any(e["type"] == "worker-heartbeat" for e in stream.events()),
               what="a heartbeat")
    assert {e["type"] for e in stream.events()} <= {"worker-online", "worker-heartbeat"}


def test_the_setting_and_without_heartbeat_switch_off_everything(
        app: Any, start_worker: Any, pgq_events: Any) -> None:
    stream = pgq_events("--json")
    quiet = start_worker("-c", "1", "--without-heartbeat",
                         env={"PGQ_WORKER_SEND_TASK_EVENTS": "false"})
    add.delay(1, 1).get(timeout=10)
    time.sleep(1.0)  # several flush and heartbeat intervals
    assert quiet.stop() == 0
    assert stream.events() == []
    with_flag = start_worker("-c", "1", "-E", "--without-heartbeat",
                             env={"PGQ_WORKER_SEND_TASK_EVENTS": "false"})
    job = add.delay(2, 2)
    job.get(timeout=10)
    wait_until(lambda: "task-succeeded" in _of(stream.events(), job.id), what="-E events")
    assert with_flag.proc.poll() is None


def test_revoked_events_for_terminate_and_expiry(app: Any, start_worker: Any,
                                                 pgq_events: Any) -> None:
    stream = pgq_events("--json")
    expired = add.apply_async((1, 1), expires=0.01)
    start_worker("-c", "1")
    running = sleep.delay(30)
    wait_until(lambda: running.state == "STARTED", what="job to start")
    running.revoke(terminate=True)
    wait_until(lambda: "task-revoked" in _of(stream.events(), running.id),
               what="task-revoked (terminated)")
    events = stream.events()
    terminated = next(e for e in events if e.get("uuid") == running.id
                      and e["type"] == "task-revoked")
    assert terminated["terminated"] is True and terminated["signum"] == signal.SIGKILL
    gone = next(e for e in events if e.get("uuid") == expired.id)
    assert gone["type"] == "task-revoked" and gone["expired"] is True


def test_python_api_handlers_and_iteration(app: Any, start_worker: Any) -> None:
    seen: list[dict[str, Any]] = []
    failed: list[str] = []
    receiver = app.events.Receiver(handlers={"task-failed": lambda e: failed.append(e["uuid"]),
                                             "*": seen.append})
    receiver.start()
    thread = threading.Thread(target=receiver.capture, kwargs={"timeout": 20}, daemon=True)
    thread.start()
    start_worker("-c", "1")
    ok, bad = add.delay(1, 2), fail_value.delay("no")
    ok.get(timeout=10)
    bad.get(timeout=10, propagate=False)
    wait_until(lambda: failed == [bad.id], what="the task-failed handler")
    wait_until(lambda: "task-succeeded" in _of(seen, ok.id), what="the catch-all handler")
    assert "task-failed" not in [e["type"] for e in seen]  # its own handler took it
    receiver.should_stop = True
    thread.join(5)
    assert not thread.is_alive()

    third = add.delay(3, 3)
    types = []
    for event in app.events(timeout=10):
        if event.get("uuid") == third.id:
            types.append(event["type"])
            if event["type"] == "task-succeeded":
                break
    assert types[-1] == "task-succeeded"


def test_events_without_listen_say_what_to_do(app: Any) -> None:
    from pgq import App, ConfigurationError

    bouncer = App("bouncer", dsn=os.environ["PGQ_DSN"], pgbouncer=True)
    with pytest.raises(ConfigurationError, match="listen_dsn"):
        next(iter(bouncer.events()))


# --- the wire format, without a database ---------------------------------------------------------


def _job(n: int, args: str = "[1]") -> Job:
    return Job(f"00000000-0000-4000-8000-{n:012d}", "apps.basic.add", "STARTED", args, "{}",
               "{}", "default", 0, None, 0, 1, None, None, None)


def test_batches_fit_the_notify_limit_and_lose_nothing(app: Any) -> None:
    publisher = EventPublisher(app, "w", "host", ["default"], task_events=True,
                               heartbeats=True, active=lambda: 0)
    jobs = [_job(n, "[" + "9" * 500 + "]") for n in range(300)]
    outcomes = [Outcome(j.id, 1, "FAILURE", None, "builtins.ValueError", "m" * 5000,
                        "Traceback\n" + "x" * 50_000) for j in jobs]
    publisher.received(jobs)
    publisher.finished(outcomes, {o.id for o in outcomes}, {j.id: j for j in jobs})
    wire = []
    while publisher._buffer:
        wire.extend(publisher._wire(publisher._buffer.popleft()))
    payloads = publisher._payloads(wire)
    assert len(payloads) > 1
    assert all(len(p.encode()) <= PAYLOAD_MAX for p in payloads)
    events = [e for p in payloads for e in expand(p)]
    assert [e["type"] for e in events] == ["task-received"] * 300 + ["task-failed"] * 300
    assert len(events[0]["args"]) == 256 and events[-1]["traceback"].startswith("…")
    assert events[-1]["exception"].startswith("ValueError('mmm")
    assert set(FIELDS["task-failed"]) <= set(events[-1])


def test_batched_entries_expand_to_each_jobs_own_fields(app: Any) -> None:
    publisher = EventPublisher(app, "w", "host", ["default", "other"], task_events=True,
                               heartbeats=False, active=lambda: 0)
    jobs = [_job(n, f"[{n}]") for n in range(4)]
    jobs[3] = jobs[3]._replace(task="apps.basic.sleep", queue="other")
    outcomes = [Outcome(j.id, 1, "SUCCESS", str(n), runtime_ms=n) for n, j in enumerate(jobs)]
    outcomes[1] = Outcome(jobs[1].id, 1, "RETRY", None, "builtins.KeyError", "k", "tb")
    publisher.received(jobs)
    publisher.started(jobs[:2])
    publisher.started(jobs[2:])
    publisher.finished(outcomes, {o.id for o in outcomes}, {j.id: j for j in jobs})
    entries = []
    while publisher._buffer:
        entries.extend(publisher._wire(publisher._buffer.popleft()))
    assert len(entries) == 5  # received, started twice, the successes, the retry
    assert isinstance(entries[0][3], list)  # the received jobs' names differ: one each
    assert entries[1][3] == "apps.basic.add"  # the first two started share theirs: sent once
    (payload,) = publisher._payloads(entries)
    assert orjson.loads(payload)["v"] == WIRE_VERSION == 2
    events = expand(payload)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)
    assert [e["uuid"] for e in by_type["task-received"]] == [j.id for j in jobs]
    assert [e["uuid"] for e in by_type["task-started"]] == [j.id for j in jobs]
    assert [(e["name"], e["queue"], e["args"]) for e in by_type["task-received"]] == [
        (j.task, j.queue, j.args) for j in jobs]
    assert [(e["uuid"], e["result"], e["runtime"]) for e in by_type["task-succeeded"]] == [
        (jobs[n].id, str(n), n / 1000) for n in (0, 2, 3)]
    assert by_type["task-succeeded"][2]["name"] == "apps.basic.sleep"
    (retried,) = by_type["task-retried"]
    assert retried["uuid"] == jobs[1].id and retried["exception"] == "KeyError('k')"
    assert all(e["hostname"] == "host" and e["root_id"] == e["uuid"]
               for e in by_type["task-received"])


def test_version_1_payloads_still_expand(app: Any) -> None:
    """A worker of an older version sends one entry per event."""
    payload = json.dumps({"v": 1, "hostname": "old", "pid": 1, "worker": "w", "utcoffset": 0,
                          "events": [["task-succeeded", 1.5, "id-1", "t", "q", "3", 0.01],
                                     ["worker-heartbeat", 2.0, 2.0, 0, 7, [0.1], ["q"], "pgq",
                                      "0.1", "Linux"]]})
    events = expand(payload)
    assert [(e["type"], e.get("uuid"), e.get("result")) for e in events] == [
        ("task-succeeded", "id-1", "3"), ("worker-heartbeat", None, None)]
    assert events[1]["queues"] == ["q"] and events[1]["loadavg"] == [0.1]


def test_outcomes_not_written_make_no_event(app: Any) -> None:
    publisher = EventPublisher(app, "w", "host", ["default"], task_events=True,
                               heartbeats=False, active=lambda: 0)
    job = _job(1)
    publisher.finished([Outcome(job.id, 1, "SUCCESS", "2")], set(), {job.id: job})
    assert not publisher._buffer


def test_a_malformed_payload_is_skipped(app: Any) -> None:
    receiver = EventReceiver(app)
    receiver._listener = object()  # pretend to be listening
    receiver._on_payload("not json")
    receiver._on_payload(json.dumps({"events": [["task-started", 1.0, ["a", "b"], ["t"], "q"]]}))
    receiver._on_payload(json.dumps({"events": [["task-started", 1.0, "id", "t", "q"],
                                                ["some-future-event", 2.0]]}))
    receiver.close = lambda: None  # type: ignore[method-assign]
    events = list(receiver.itercapture(limit=1, timeout=1))
    assert [e["type"] for e in events] == ["task-started"]
