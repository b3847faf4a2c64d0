"""The test app with signal receivers connected, as a user's module would: `pgq worker -A
apps.signal_handlers`. Each receiver appends one JSON line to $PGQ_TEST_SIGNAL_LOG; with
$PGQ_TEST_SIGNAL_RAISE set, a second receiver on every signal raises."""

from __future__ import annotations

import json
import os
from typing import Any

from apps.basic import add, app
from pgq import signals

__all__ = ["app"]

LOG = os.environ.get("PGQ_TEST_SIGNAL_LOG")
WORKER_SIGNALS = ("task_received", "task_prerun", "task_postrun", "task_success",
                  "task_failure", "task_retry", "task_revoked", "worker_init",
                  "worker_process_init", "worker_process_shutdown", "worker_ready",
                  "worker_shutting_down", "worker_shutdown")


def _write(**entry: Any) -> None:
    if LOG:
        with open(LOG, "a") as fh:
            fh.write(json.dumps({"pid": os.getpid(), **entry}, default=repr) + "\n")


def _sender_name(sender: Any) -> Any:
    return getattr(sender, "name", None) if sender is not None else None


def _task_id(kwargs: dict[str, Any]) -> Any:
    if kwargs.get("task_id"):
        return kwargs["task_id"]
    request = kwargs.get("request")
    return getattr(request, "id", None)


def _make_recorder(name: str) -> Any:
    def record(sender: Any = None, **kwargs: Any) -> None:
        entry: dict[str, Any] = {"signal": name, "sender": _sender_name(sender),
                                 "task_id": _task_id(kwargs)}
        if name == "task_success":
            from pgq.request import current

            entry["result"] = kwargs["result"]
            request = current()
            entry["task_id"] = request.id if request else None
        elif name == "task_postrun":
            entry["state"] = kwargs["state"]
            entry["retval"] = repr(kwargs["retval"])
        elif name == "task_failure":
            entry["exception"] = type(kwargs["exception"]).__name__
            entry["has_einfo"] = "Traceback" in str(kwargs["einfo"])
        elif name == "task_retry":
            entry["reason"] = repr(kwargs["reason"])
            entry["cause"] = repr(getattr(kwargs["reason"], "exc", None))
        elif name == "task_revoked":
            entry.update(terminated=kwargs["terminated"], expired=kwargs["expired"],
                         signum=kwargs["signum"])
        elif name == "worker_shutting_down":
            entry["how"] = kwargs["how"]
        _write(**entry)
    return record


for _name in WORKER_SIGNALS:
    getattr(signals, _name).connect(_make_recorder(_name), dispatch_uid=f"record-{_name}")


@signals.task_success.connect(sender=add)
def only_add(sender: Any = None, result: Any = None, **kwargs: Any) -> None:
    _write(signal="task_success[add]", result=result)


if os.environ.get("PGQ_TEST_SIGNAL_RAISE"):
    def boom(sender: Any = None, **kwargs: Any) -> None:
        raise RuntimeError("handler boom")

    for _name in WORKER_SIGNALS:
        getattr(signals, _name).connect(boom)
