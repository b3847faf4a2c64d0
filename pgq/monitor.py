"""Read-only queries over the SQL views, shaped for `pgq status`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pgq.db.connection import execute

if TYPE_CHECKING:
    from pgq.app import App

WAITING = ("PENDING", "RETRY")


def snapshot(app: App) -> dict[str, Any]:
    q = app.queries
    with app.connect() as conn:
        stats = execute(conn, q.queue_stats)
        per_minute = dict(execute(conn, q.throughput))
        workers = execute(conn, q.worker_status)
    queues: dict[str, dict[str, Any]] = {}
    for queue, state, jobs, oldest in stats:
        entry = queues.setdefault(queue, {"queue": queue, "states": {}, "oldest_waiting": None,
                                          "per_minute": per_minute.get(queue, 0)})
        entry["states"][state] = jobs
        if state in WAITING and (entry["oldest_waiting"] is None
                                 or oldest > entry["oldest_waiting"]):
            entry["oldest_waiting"] = oldest
    now = datetime.now(UTC)
    return {
        "queues": list(queues.values()),
        "workers": [
            {"worker": str(w[0]), "hostname": w[1], "pid": w[2], "queues": w[3],
             "concurrency": w[4], "running": w[5], "started_at": w[6],
             "last_heartbeat": w[7], "heartbeat_age": now - w[7], "alive": w[8]}
            for w in workers
        ],
    }
