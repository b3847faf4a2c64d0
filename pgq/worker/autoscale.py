"""`pgq worker --autoscale MAX,MIN`: size the prefork pool by demand, as Celery's autoscaler.

The pool starts with MIN children. It grows (up to MAX) as soon as claimed jobs wait with no
free child for them, and it shrinks (down to MIN) by stopping children that have had no job
for `worker_autoscale_keepalive` seconds (30, Celery's AUTOSCALE_KEEPALIVE). Only idle
children are stopped, so shrinking never interrupts a job; claimed jobs always reach a child.

While the pool is below MAX the supervisor claims one job more than its free children (and
its prefetch buffer) can take: that is how it sees work waiting in the database when every
child is busy with long jobs and the buffer is empty.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from pgq.errors import ConfigurationError

log = logging.getLogger("pgq.worker")


def initial_size(autoscale: tuple[int, int], pool: str, concurrency: int | None) -> int:
    """The pool's size at start (MIN), after checking the options go together."""
    if pool != "prefork":
        raise ConfigurationError(f"--autoscale needs the prefork pool, not --pool {pool} "
                                 "(threads and solo pools have a fixed size)")
    if concurrency:
        # As Celery: deployment files often pass both; --autoscale decides.
        log.warning("--autoscale %d,%d sizes the pool: concurrency %d is ignored", *autoscale,
                    concurrency)
    return autoscale[1]


class Resizable(Protocol):
    def size(self) -> int: ...
    def grow(self, n: int) -> None: ...
    def idle_since(self) -> list[float]: ...
    def retire_idle(self, n: int, idle_for: float) -> int: ...


class Autoscaler:
    def __init__(self, pool: Resizable, maximum: int, minimum: int, keepalive: float) -> None:
        self.pool = pool
        self.maximum = maximum
        self.minimum = minimum
        self.keepalive = max(0.0, keepalive)
        log.info("autoscale: %d to %d children; growing when claimed jobs wait, shrinking "
                 "after %gs idle", minimum, maximum, self.keepalive)

    def headroom(self) -> int:
        """Extra jobs to claim beyond the current size: one while the pool may still grow."""
        return 1 if self.pool.size() < self.maximum else 0

    def scale(self, waiting: int) -> int:
        """Grow for `waiting` claimed jobs that no free child can take, else retire children
        idle past the keepalive. Returns the pool's new size."""
        size = self.pool.size()
        if waiting > 0 and size < self.maximum:
            self.pool.grow(min(waiting, self.maximum - size))
            log.info("autoscale: %d job(s) waiting, growing the pool %d -> %d (max %d)",
                     waiting, size, self.pool.size(), self.maximum)
        elif size > self.minimum:
            retired = self.pool.retire_idle(size - self.minimum, self.keepalive)
            if retired:
                log.info("autoscale: %d child(ren) idle for %gs, shrinking the pool %d -> %d "
                         "(min %d)", retired, self.keepalive, size, self.pool.size(),
                         self.minimum)
        return self.pool.size()

    def seconds_to_next_shrink(self) -> float | None:
        """How long until an idle child passes the keepalive, if the pool may shrink."""
        idle = self.pool.idle_since()
        if self.pool.size() <= self.minimum or not idle:
            return None
        return max(0.0, min(idle) + self.keepalive - time.monotonic())
