"""Signals: the Signal class, producer-side publish signals, and worker signals sent by real
`pgq worker` processes to receivers connected in the app module (apps/signal_handlers.py)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
from pathlib import Path
from typing import Any

import pytest
from apps.basic import add, fail_value, identity, retry_until, sleep, too_slow, whoami
from conftest import wait_until

from pgq import chain, group, signals
from pgq.signals import Signal

# --- the Signal class ----------------------------------------------------------------------------


def test_connect_as_decorator_send_and_disconnect() -> None:
    sig = Signal("test")
    calls: list[dict[str, Any]] = []

    @sig.connect
    def receiver(sender: Any = None, **kwargs: Any) -> str:
        calls.append({"sender": sender, **kwargs})
        return "ok"

    responses = sig.send(sender="me", value=1)
    assert responses == [(receiver, "ok")]
    assert calls == [{"sender": "me", "signal": sig, "value": 1}]
    assert sig.disconnect(receiver) is True
    assert sig.disconnect(receiver) is False
    assert sig.send(sender="me") == []


def test_sender_filtering_by_object_and_by_task_name() -> None:
    sig = Signal("test")
    seen: list[str] = []
    sig.connect(lambda sender=None, **kw: seen.append("any"))
    sig.connect(lambda sender=None, **kw: seen.append("add"), sender=add)
    sig.connect(lambda sender=None, **kw: seen.append("by-name"), sender=add.name)
    sig.send(sender=identity)
    assert seen == ["any"]
    seen.clear()
    sig.send(sender=add)
    assert seen == ["any", "add", "by-name"]
    seen.clear()
    sig.send(sender=add.name)  # publish signals send the task name
    assert seen == ["any", "by-name"]


def test_dispatch_uid_connects_once_and_disconnects() -> None:
    sig = Signal("test")
    seen: list[int] = []
    for _ in range(3):
        sig.connect(lambda **kw: seen.append(1), dispatch_uid="one")
    sig.send(sender=None)
    assert seen == [1]
    assert sig.disconnect(dispatch_uid="one") is True
    assert not sig.has_listeners()


def test_connect_with_sender_as_decorator_factory() -> None:
    sig = Signal("test")
    seen: list[Any] = []

    @sig.connect(sender="a")
    def receiver(sender: Any = None, **kwargs: Any) -> None:
        seen.append(sender)

    sig.send(sender="b")
    sig.send(sender="a")
    assert seen == ["a"]
    assert sig.disconnect(receiver, sender="a") is True


def test_weak_receivers_go_away_with_their_last_reference() -> None:
    sig = Signal("test")

    def receiver(**kwargs: Any) -> None:
        pass

    sig.connect(receiver, weak=True)
    assert sig.has_listeners()
    del receiver
    gc.collect()
    assert not sig.has_listeners()
    assert sig.receivers == ()


def test_strong_reference_is_the_default() -> None:
    sig = Signal("test")
    sig.connect(lambda **kw: "kept")
    gc.collect()
    assert [r for _, r in sig.send(sender=None)] == ["kept"]


def test_receiver_without_kwargs_is_refused_clearly() -> None:
    sig = Signal("test")
    with pytest.raises(ValueError, match=r"must accept keyword arguments"):
        sig.connect(lambda sender: None)
    with pytest.raises(TypeError, match="needs a callable"):
        sig.connect(42)  # type: ignore[arg-type]


def test_a_raising_receiver_is_logged_and_the_others_still_run(caplog: Any) -> None:
    sig = Signal("test")
    seen: list[str] = []

    def bad(**kwargs: Any) -> None:
        raise RuntimeError("boom")

    sig.connect(bad)
    sig.connect(lambda **kw: seen.append("good"))
    with caplog.at_level(logging.ERROR, logger="pgq.signals"):
        responses = sig.send(sender=None)
    assert seen == ["good"]
    assert isinstance(responses[0][1], RuntimeError)
    assert "Signal handler" in caplog.text and "boom" in caplog.text
    assert caplog.records[0].exc_info is not None  # logged with its traceback


# --- publish signals (producer side) ------------------------------------------------------------


@pytest.fixture
def published() -> Any:
    seen: list[tuple[str, str, dict[str, Any]]] = []

    def before(sender: Any = None, headers: Any = None, body: Any = None,
               routing_key: Any = None, **kwargs: Any) -> None:
        seen.append(("before", sender, {"headers": dict(headers), "body": body,
                                        "routing_key": routing_key}))

    def after(sender: Any = None, headers: Any = None, body: Any = None,
              routing_key: Any = None, **kwargs: Any) -> None:
        seen.append(("after", sender, {"headers": dict(headers), "body": body,
                                       "routing_key": routing_key}))

    signals.before_task_publish.connect(before)
    signals.after_task_publish.connect(after)
    yield seen
    signals.before_task_publish.disconnect(before)
    signals.after_task_publish.disconnect(after)


def test_delay_sends_before_and_after_publish(app: Any, published: Any) -> None:
    result = add.apply_async((2, 3), queue="other", headers={"mine": 1})
    assert [(when, sender) for when, sender, _ in published] == [
        ("before", add.name), ("after", add.name)]
    for _, _, message in published:
        assert message["headers"]["id"] == result.id
        assert message["headers"]["task"] == add.name
        assert message["headers"]["root_id"] == result.id
        assert message["headers"]["mine"] == 1
        assert message["routing_key"] == "other"
        assert message["body"][0] == [2, 3] and message["body"][1] == {}


def test_enqueue_many_and_canvas_send_publish_signals_per_job(app: Any, published: Any
                                                               ) -> None:
    results = app.enqueue_many([add.s(i, i) for i in range(3)])
    ids = [r.id for r in results]
    assert [m["headers"]["id"] for w, _, m in published if w == "after"] == ids
    published.clear()
    group_result = group(add.s(1, 1), add.s(2, 2)).apply_async()
    after = [m for w, _, m in published if w == "after"]
    assert sorted(m["headers"]["id"] for m in after) == sorted(r.id for r in
                                                                 group_result.results)
    assert {m["headers"]["group"] for m in after} == {group_result.id}
    published.clear()
    chain(add.s(1, 1), add.s(2)).apply_async()
    # the second step is published by the worker when the first succeeds, as in Celery
    assert [w for w, _, _ in published] == ["before", "after"]
    assert published[0][2]["body"][2]["chain"]


def test_no_publish_signal_for_a_unique_job_already_queued(app: Any, published: Any) -> None:
    from apps.basic import unique_add

    first = unique_add.delay(1, 2)
    published.clear()
    second = unique_add.delay(1, 2)
    assert second.id == first.id
    assert [w for w, _, _ in published] == ["before"]


def test_a_raising_publish_receiver_does_not_stop_the_enqueue(app: Any, db: Any,
                                                              caplog: Any) -> None:
    def bad(**kwargs: Any) -> None:
        raise RuntimeError("publish boom")

    signals.before_task_publish.connect(bad)
    signals.after_task_publish.connect(bad)
    try:
        with caplog.at_level(logging.ERROR, logger="pgq.signals"):
            result = add.delay(1, 1)
    finally:
        signals.before_task_publish.disconnect(bad)
        signals.after_task_publish.disconnect(bad)
    assert db.execute("SELECT state FROM pgq.jobs WHERE id = %s", (result.id,)).fetchone() \
        == ("PENDING",)
    assert len([r for r in caplog.records if "publish boom" in r.getMessage()]) == 2


def test_unencodable_header_from_a_receiver_writes_nothing(app: Any, db: Any) -> None:
    def bad(headers: Any = None, **kwargs: Any) -> None:
        headers["obj"] = object()

    signals.before_task_publish.connect(bad)
    try:
        with pytest.raises(Exception, match="options"):
            add.delay(1, 1)
    finally:
        signals.before_task_publish.disconnect(bad)
    assert db.execute("SELECT count(*) FROM pgq.jobs").fetchone() == (0,)


def test_headers_added_before_publish_reach_the_task(app: Any, start_worker: Any) -> None:
    def trace(headers: Any = None, **kwargs: Any) -> None:
        headers["traceparent"] = "00-abc-def-01"

    signals.before_task_publish.connect(trace)
    try:
        result = whoami.delay()
    finally:
        signals.before_task_publish.disconnect(trace)
    start_worker("-c", "1")
    assert result.get(timeout=10)["headers"] == {"traceparent": "00-abc-def-01"}


def test_async_enqueue_sends_publish_signals_per_job(app: Any, db: Any, published: Any
                                                     ) -> None:
    """The async producers run the same statement plan as the sync ones, signals included:
    one task, a bulk enqueue (its COPY path too), a group."""
    def trace(headers: Any = None, **kwargs: Any) -> None:
        headers["traceparent"] = "00-abc-def-01"

    async def main() -> tuple[Any, ...]:
        one = await add.aapply_async((2, 3), queue="other", headers={"mine": 1})
        many = await app.aenqueue_many([add.s(i, i) for i in range(3)])
        bulk = await app.aenqueue_many([add.s(i, i) for i in range(120)])  # COPY
        flow = await group(add.s(1, 1), add.s(2, 2)).aapply_async()
        named = await app.asend_task(add.name, (1, 1))
        await app.aclose()
        return one, many, bulk, flow, named

    signals.before_task_publish.connect(trace)
    try:
        one, many, bulk, flow, named = asyncio.run(main())
    finally:
        signals.before_task_publish.disconnect(trace)
    expected = [one.id, *(r.id for r in many), *(r.id for r in bulk)]
    for when in ("before", "after"):
        ids = [m["headers"]["id"] for w, _, m in published if w == when]
        assert ids[:len(expected)] == expected
        assert sorted(ids[len(expected):-1]) == sorted(r.id for r in flow.results)
        assert ids[-1] == named.id
    first = [m for _, _, m in published[:2]]
    assert all(m["headers"]["mine"] == 1 and m["routing_key"] == "other" for m in first)
    # headers a before_task_publish receiver adds are written with the row
    headers = db.execute("SELECT options->'headers' FROM pgq.jobs WHERE id = ANY(%s)",
                         ([one.id, bulk[-1].id, named.id],)).fetchall()
    assert [h["traceparent"] for (h,) in headers] == ["00-abc-def-01"] * 3


# --- worker signals, with receivers connected in the app module ---------------------------------


def _entries(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _for(entries: list[dict[str, Any]], task_id: str) -> list[str]:
    return [e["signal"] for e in entries if e.get("task_id") == task_id]


@pytest.fixture
def signal_log(tmp_path: Path) -> Path:
    return tmp_path / "signals.jsonl"


def _start(start_worker: Any, log: Path, *args: str, raising: bool = False) -> Any:
    env = {"PGQ_TEST_SIGNAL_LOG": str(log)}
    if raising:
        env["PGQ_TEST_SIGNAL_RAISE"] = "1"
    return start_worker("-A", "apps.signal_handlers", *args, env=env)


def test_task_signals_in_order_in_the_child(app: Any, start_worker: Any, signal_log: Path
                                            ) -> None:
    worker = _start(start_worker, signal_log, "-c", "2")
    ok, failed, retried = add.delay(2, 3), fail_value.delay("bad"), retry_until.delay(1)
    other = identity.delay("x")
    for r in (ok, failed, retried, other):
        r.get(timeout=15, propagate=False)
    wait_until(lambda: len(_for(_entries(signal_log), retried.id)) >= 8, what="signals")
    entries = _entries(signal_log)

    assert _for(entries, ok.id) == ["task_received", "task_prerun", "task_success",
                                    "task_postrun"]
    assert _for(entries, failed.id) == ["task_received", "task_prerun", "task_failure",
                                        "task_postrun"]
    assert _for(entries, retried.id) == ["task_received", "task_prerun", "task_retry",
                                         "task_postrun", "task_received", "task_prerun",
                                         "task_success", "task_postrun"]
    mine = [e for e in entries if e.get("task_id") == ok.id]
    assert mine[0]["pid"] == worker.pid  # received: in the supervisor
    child = {e["pid"] for e in mine[1:]}
    assert len(child) == 1 and worker.pid not in child  # the job's signals: in its child
    assert all(e["sender"] == add.name for e in mine[1:])
    success = next(e for e in mine if e["signal"] == "task_success")
    assert success["result"] == 5
    postrun = next(e for e in mine if e["signal"] == "task_postrun")
    assert postrun["state"] == "SUCCESS" and postrun["retval"] == "5"
    failure = next(e for e in entries if e["signal"] == "task_failure")
    assert failure["exception"] == "ValueError" and failure["has_einfo"]
    assert next(e for e in entries if e.get("task_id") == failed.id
                and e["signal"] == "task_postrun")["state"] == "FAILURE"
    retry = next(e for e in entries if e["signal"] == "task_retry")
    assert retry["reason"].startswith("Retry(") and "not yet" in retry["cause"]
    # connected with sender=add: for add's job only
    assert [e["result"] for e in entries if e["signal"] == "task_success[add]"] == [5]


def test_worker_lifecycle_signals_and_process_init_in_each_child(
        app: Any, start_worker: Any, signal_log: Path) -> None:
    worker = _start(start_worker, signal_log, "-c", "2")
    wait_until(lambda: sum(e["signal"] == "worker_process_init"
                           for e in _entries(signal_log)) == 2, what="two children")
    assert worker.stop() == 0
    entries = _entries(signal_log)
    names = [e["signal"] for e in entries]
    for once in ("worker_init", "worker_ready", "worker_shutting_down", "worker_shutdown"):
        assert names.count(once) == 1, once
        assert next(e for e in entries if e["signal"] == once)["pid"] == worker.pid
    assert names.index("worker_init") < names.index("worker_ready") \
        < names.index("worker_shutdown")
    children = [e["pid"] for e in entries if e["signal"] == "worker_process_init"]
    assert len(set(children)) == 2 and worker.pid not in children
    ended = [e["pid"] for e in entries if e["signal"] == "worker_process_shutdown"]
    assert sorted(ended) == sorted(children)
    assert next(e for e in entries if e["signal"] == "worker_shutting_down")["how"] == "Warm"


def test_a_replaced_child_runs_worker_process_init_again(app: Any, start_worker: Any,
                                                        signal_log: Path) -> None:
    from apps.basic import crash

    _start(start_worker, signal_log, "-c", "1")
    crash.apply_async(max_retries=0).get(timeout=15, propagate=False)
    wait_until(lambda: len({e["pid"] for e in _entries(signal_log)
                            if e["signal"] == "worker_process_init"}) == 2,
               what="a second child's worker_process_init")


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_process_init_once_in_the_worker_for_threads_and_solo(
        app: Any, start_worker: Any, signal_log: Path, pool: str) -> None:
    worker = _start(start_worker, signal_log, "--pool", pool, "-c", "2")
    assert add.delay(1, 2).get(timeout=10) == 3
    assert worker.stop() == 0
    entries = _entries(signal_log)
    inits = [e["pid"] for e in entries if e["signal"] == "worker_process_init"]
    assert inits == [worker.pid]
    assert [e["pid"] for e in entries if e["signal"] == "task_prerun"] == [worker.pid]


def test_raising_receivers_are_logged_and_break_nothing(app: Any, start_worker: Any,
                                                        signal_log: Path) -> None:
    worker = _start(start_worker, signal_log, "-c", "2", raising=True)
    assert add.delay(2, 2).get(timeout=15) == 4
    with pytest.raises(ValueError, match="bad"):
        fail_value.delay("bad").get(timeout=15)
    assert retry_until.delay(1).get(timeout=15) == 1
    assert worker.stop() == 0
    output = worker.log_path.read_text()
    assert "Signal handler" in output and "RuntimeError: handler boom" in output
    assert "Traceback" in output
    names = [e["signal"] for e in _entries(signal_log)]
    for name in ("worker_init", "worker_process_init", "worker_ready", "task_prerun",
                 "task_success", "task_failure", "task_retry", "task_postrun",
                 "worker_shutdown"):
        assert name in names, name


def test_revoke_terminate_and_expiry_send_task_revoked(app: Any, start_worker: Any,
                                                       signal_log: Path) -> None:
    expired = add.apply_async((1, 1), expires=0.01)
    worker = _start(start_worker, signal_log, "-c", "1")
    running = sleep.delay(30)
    wait_until(lambda: running.state == "STARTED", what="job to start")
    running.revoke(terminate=True)
    wait_until(lambda: "task_revoked" in _for(_entries(signal_log), running.id),
               what="task_revoked after terminate")
    entries = _entries(signal_log)
    terminated = next(e for e in entries if e["signal"] == "task_revoked"
                      and e["task_id"] == running.id)
    assert terminated["terminated"] is True and terminated["signum"] == signal.SIGKILL
    assert terminated["sender"] == sleep.name and terminated["pid"] == worker.pid
    gone = next(e for e in entries if e["signal"] == "task_revoked"
                and e["task_id"] == expired.id)
    assert gone["expired"] is True and gone["terminated"] is False
    assert add.delay(1, 1).get(timeout=10) == 2  # the worker goes on


def test_hard_time_limit_sends_task_failure_from_the_supervisor(
        app: Any, start_worker: Any, signal_log: Path) -> None:
    worker = _start(start_worker, signal_log, "-c", "1")
    result = too_slow.delay()
    result.get(timeout=15, propagate=False)
    wait_until(lambda: "task_failure" in _for(_entries(signal_log), result.id),
               what="task_failure")
    failure = next(e for e in _entries(signal_log) if e["signal"] == "task_failure")
    assert failure["exception"] == "TimeLimitExceeded" and failure["pid"] == worker.pid


@pytest.fixture
def conf(app: Any) -> Any:
    saved = dict(app.conf._explicit)
    yield app.conf
    app.conf._explicit.clear()
    app.conf._explicit.update(saved)
    app.conf._resolved.clear()
    app.conf._memo.clear()


def test_a_header_added_to_a_signed_msgpack_job_is_signed_too(app: Any, conf: Any,
                                                              start_worker: Any) -> None:
    conf.update(security_hmac_key="s3cret", accept_content=["json", "msgpack"])
    bodies: list[Any] = []

    def trace(headers: Any = None, body: Any = None, **kwargs: Any) -> None:
        headers["traceparent"] = "00-signed-01"
        bodies.append(body)

    signals.before_task_publish.connect(trace)
    try:
        result = whoami.apply_async(serializer="msgpack")
    finally:
        signals.before_task_publish.disconnect(trace)
    assert bodies[0][0] == [] and bodies[0][1] == {}  # decoded from msgpack
    start_worker("-c", "1", env={"PGQ_SECURITY_HMAC_KEY": "s3cret",
                                 "PGQ_SECURITY_REQUIRE_SIGNATURE": "1",
                                 "PGQ_ACCEPT_CONTENT": "json,msgpack"})
    assert result.get(timeout=10)["headers"] == {"traceparent": "00-signed-01"}
