"""Prometheus metrics for `pgq worker --metrics-port N` (needs `pgq-tasks[metrics]`).

The supervisor counts what it claims and writes; queue depth is read by the heartbeat
thread (one index-backed count per queue). Without --metrics-port every call is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pgq.errors import ConfigurationError

if TYPE_CHECKING:
    from pgq.worker.executor import Job, Outcome

RUNTIME_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                   300, 900)


class Metrics:
    """The no-op recorder; `serve()` returns the real one."""

    def claimed(self, jobs: Iterable[Job]) -> None: ...
    def finished(self, outcomes: Iterable[Outcome], jobs: dict[str, Job]) -> None: ...
    def children(self, busy: int, total: int) -> None: ...
    def queue_depth(self, depths: dict[str, int]) -> None: ...


def serve(port: int, worker_id: str) -> Metrics:
    try:
        import prometheus_client as prom
    except ImportError:
        raise ConfigurationError("--metrics-port needs prometheus-client: "
                                 "pip install 'pgq-tasks[metrics]'") from None
    registry = prom.CollectorRegistry()
    recorder = PrometheusMetrics(prom, registry)
    prom.start_http_server(port, registry=registry)
    return recorder


class PrometheusMetrics(Metrics):
    def __init__(self, prom: Any, registry: Any) -> None:
        labels = ["task", "queue"]
        self.claimed_total = prom.Counter("pgq_jobs_claimed", "Jobs claimed", labels,
                                          registry=registry)
        self.succeeded_total = prom.Counter("pgq_jobs_succeeded", "Jobs that succeeded",
                                            labels, registry=registry)
        self.failed_total = prom.Counter("pgq_jobs_failed", "Jobs that failed", labels,
                                         registry=registry)
        self.retried_total = prom.Counter("pgq_jobs_retried", "Retries scheduled", labels,
                                          registry=registry)
        self.runtime = prom.Histogram("pgq_job_runtime_seconds", "Run time of a job",
                                      labels, buckets=RUNTIME_BUCKETS, registry=registry)
        self.depth = prom.Gauge("pgq_queue_depth", "Jobs waiting (due now or later)",
                                ["queue"], registry=registry)
        self.busy = prom.Gauge("pgq_children_busy", "Pool slots running a job",
                               registry=registry)
        self.slots = prom.Gauge("pgq_children", "Pool slots", registry=registry)

    def claimed(self, jobs: Iterable[Job]) -> None:
        for job in jobs:
            self.claimed_total.labels(job.task, job.queue).inc()

    def finished(self, outcomes: Iterable[Outcome], jobs: dict[str, Job]) -> None:
        counters = {"SUCCESS": self.succeeded_total, "FAILURE": self.failed_total,
                    "RETRY": self.retried_total}
        for outcome in outcomes:
            job = jobs.get(outcome.id)
            if job is None:
                continue
            counters[outcome.state].labels(job.task, job.queue).inc()
            self.runtime.labels(job.task, job.queue).observe(outcome.runtime_ms / 1000)

    def children(self, busy: int, total: int) -> None:
        self.busy.set(busy)
        self.slots.set(total)

    def queue_depth(self, depths: dict[str, int]) -> None:
        for queue, depth in depths.items():
            self.depth.labels(queue).set(depth)
