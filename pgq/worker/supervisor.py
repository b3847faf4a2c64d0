"""`pgq worker`: one loop that waits (LISTEN, children, timers), writes finished jobs and
claims new ones in one transaction, and hands jobs to the pool."""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import os
import queue
import select
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from pgq import signals
from pgq.db.connection import DatabaseUnavailable, execute, first_line
from pgq.db.listener import Listener
from pgq.task import rate_interval
from pgq.worker.autoscale import Autoscaler, initial_size
from pgq.worker.completer import complete_params, write_outcomes
from pgq.worker.events import EventPublisher
from pgq.worker.executor import Job, Outcome, job_request
from pgq.worker.heartbeat import Heartbeat
from pgq.worker.metrics import Metrics, PrometheusMetrics
from pgq.worker.metrics import serve as serve_metrics
from pgq.worker.pool import POOLS, PoolConfig, PreforkPool

if TYPE_CHECKING:
    from pgq.app import App

log = logging.getLogger("pgq.worker")
RATE_TOLERANCE = timedelta(milliseconds=2)


def expand_hostname(template: str | None) -> str:
    host = socket.gethostname()
    if not template:
        return host
    name, _, domain = host.partition(".")
    return template.replace("%h", host).replace("%n", name).replace("%d", domain)


class FdWait:
    """Wait until some of the given file descriptors are readable. The loop waits a few times
    per job: multiprocessing.connection.wait() builds a new selector at every call (~15 us
    here), this one poll object is updated only when the descriptors change (children
    replaced). poll(), unlike epoll, names descriptors by number at every call, so a number
    closed and reused by a new pipe is simply watched again."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._fds: frozenset[int] = frozenset()

    def __call__(self, fds: list[int], timeout: float) -> list[int]:
        wanted = frozenset(fds)
        if wanted != self._fds:
            for fd in self._fds - wanted:
                self._poll.unregister(fd)
            for fd in wanted - self._fds:
                self._poll.register(fd, select.POLLIN)
            self._fds = wanted
        return [fd for fd, _ in self._poll.poll(math.ceil(timeout * 1000))]


class SqlThread:
    """Runs one statement at a time on the worker's connection, so the loop can go on
    feeding children meanwhile (the connection is only used by one thread at a time: the
    loop touches it only while nothing is in flight)."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self.wake = wake
        self.requests: queue.SimpleQueue[tuple[Any, str, dict[str, Any]] | None] = \
            queue.SimpleQueue()
        self.results: queue.SimpleQueue[list[tuple[Any, ...]] | BaseException] = \
            queue.SimpleQueue()
        self.thread: threading.Thread | None = None

    def submit(self, conn: psycopg.Connection[Any], query: str, params: dict[str, Any]
               ) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="pgq-sql", daemon=True)
            self.thread.start()
        self.requests.put((conn, query, params))

    def result(self, timeout: float | None = None
               ) -> list[tuple[Any, ...]] | BaseException | None:
        """The finished statement's rows or error; None if it is still running."""
        try:
            return self.results.get(timeout=timeout) if timeout else self.results.get_nowait()
        except queue.Empty:
            return None

    def _run(self) -> None:
        while (request := self.requests.get()) is not None:
            conn, query, params = request
            try:
                result: list[tuple[Any, ...]] | BaseException = execute(conn, query, params)
            except BaseException as exc:  # handed to the loop, which decides
                result = exc
            self.results.put(result)
            self.wake()

    def stop(self) -> None:
        if self.thread is not None:
            self.requests.put(None)
            self.thread.join(5)


class Worker:
    def __init__(
        self,
        app: App,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        pool: str = "prefork",
        hostname: str | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        prefetch_multiplier: int | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        beat: bool = False,
        metrics_port: int | None = None,
        autoscale: tuple[int, int] | None = None,
        task_events: bool | None = None,
        heartbeat_events: bool = True,
    ) -> None:
        conf = app.conf
        self.app = app
        self.queues = queues or [app.default_queue]
        app.serve_queues(self.queues)  # queue_databases: connect where these queues live
        if pool == "solo":
            concurrency = 1
        self.concurrency = concurrency or conf.worker_concurrency or os.cpu_count() or 1
        autoscale = autoscale or conf.worker_autoscale
        if autoscale:
            self.concurrency = initial_size(autoscale, pool,
                                            concurrency or conf.worker_concurrency)
        # None: size the prefetch from measured run times (see _buffer).
        self.fixed_prefetch = prefetch_multiplier or conf.worker_prefetch_multiplier
        self.hostname = expand_hostname(hostname)
        self.id = str(uuid.uuid4())
        # Unique per worker; kept short (NOTIFY channels are at most 63 bytes).
        self.probe_channel = "pgq_probe_" + self.id.replace("-", "")
        self.pool_name = pool
        self.beat = beat
        self.metrics_port = metrics_port
        self.metrics = Metrics()
        self.pool = POOLS[pool](PoolConfig(
            app, self.concurrency, self.hostname,
            max_tasks_per_child=max_tasks_per_child or conf.worker_max_tasks_per_child,
            max_memory_per_child=max_memory_per_child or conf.worker_max_memory_per_child,
            time_limit=time_limit or conf.task_time_limit,
            soft_time_limit=soft_time_limit or conf.task_soft_time_limit,
        ))
        self.autoscaler: Autoscaler | None = None
        if autoscale and isinstance(self.pool, PreforkPool):
            self.autoscaler = Autoscaler(self.pool, autoscale[0], autoscale[1],
                                         float(conf.worker_autoscale_keepalive))
        self.shown_concurrency = self.concurrency  # as in the workers table
        self.poll_interval = float(conf.worker_poll_interval)
        self.inflight: dict[str, Job] = {}
        self.held: deque[Job] = deque()
        self.pending: list[Outcome] = []
        self.pending_since = 0.0
        self.claimed_at: dict[str, float] = {}
        self.runtime_ms = 10.0  # moving average of job run time
        self.to_terminate: list[str] = []
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.notified = True
        self.claim_more = True
        self.last_claim = 0.0
        self.stopping = False
        self.cold = False
        self.conn: psycopg.Connection[Any] | None = None
        self.claim_uncertain = True  # at start: release anything claimed in our name
        self.due_times: list[float] = []  # heap: monotonic times deferred jobs come due
        self.eta_due = float("inf")  # when the earliest waiting (eta/countdown) job is due
        self.db_retry_at = 0.0
        self.db_backoff = 0.1
        self.sql = SqlThread(self._wake)
        self.wait = FdWait()
        self.writing: tuple[list[Outcome], int] | None = None  # in flight on the SQL thread
        self.events = EventPublisher(
            app, self.id, self.hostname, self.queues,
            task_events=conf.worker_send_task_events if task_events is None else task_events,
            heartbeats=heartbeat_events, active=self.pool.busy)

    # --- wake-ups ---------------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self.wake_w, b"x")

    def _on_jobs(self, queue: str) -> None:
        if queue in self.queues:
            self.notified = True
            self._wake()

    def _on_control(self, payload: str) -> None:
        command, _, job_id = payload.partition(":")
        if command == "terminate" and job_id in self.inflight:
            self.to_terminate.append(job_id)
            self._wake()

    def _on_reconnect(self) -> None:
        self.notified = True  # notifications may have been missed: claim to catch up
        self._wake()

    def _on_signal(self, signum: int, frame: Any) -> None:
        signals.worker_shutting_down.send(sender=self.hostname, sig=signal.Signals(signum).name,
                                          how="Cold" if self.stopping else "Warm", exitcode=0)
        if self.stopping:
            log.warning("second signal: cold shutdown, returning running jobs to the queue")
            self.cold = True
        else:
            log.warning("signal %s: warm shutdown (finishing running jobs; again for cold)",
                        signal.Signals(signum).name)
            self.stopping = True
        self._wake()

    # --- database ---------------------------------------------------------------------------

    def _register(self, conn: psycopg.Connection[Any]) -> None:
        execute(conn, self.app.queries.register_worker, {
            "id": self.id, "hostname": self.hostname, "pid": os.getpid(),
            "queues": self.queues, "concurrency": self.concurrency, "pool": self.pool_name,
            "lost_timeout": float(self.app.conf.worker_lost_timeout),
        })

    def _connection(self) -> psycopg.Connection[Any] | None:
        if self.conn is not None and not self.conn.closed:
            return self.conn
        if time.monotonic() < self.db_retry_at:
            return None
        try:
            return self._adopt(self.app.connect())
        except Exception as exc:
            self._db_failed(exc)
            return None

    STARTUP_RETRY_S = 60.0

    def _first_connection(self) -> psycopg.Connection[Any] | None:
        """Connect and register. A database that is restarting, or not up yet (a worker
        started beside it), is waited for with backoff, said at each try, for up to
        STARTUP_RETRY_S; then the error stands. None: a signal stopped the wait."""
        deadline = time.monotonic() + self.STARTUP_RETRY_S
        delay = 0.1
        while True:
            conn: psycopg.Connection[Any] | None = None
            try:
                conn = self.app.connect()
                self._register(conn)
                return conn
            except (DatabaseUnavailable, psycopg.OperationalError) as exc:
                if conn is not None:
                    conn.close()
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("database not reachable at start (%s); retrying in %.1fs",
                            first_line(exc), delay)
            stop = time.monotonic() + delay
            while not (self.stopping or self.cold) and time.monotonic() < stop:
                time.sleep(0.05)
            if self.stopping or self.cold:
                return None
            delay = min(delay * 2, 5.0)

    def _adopt(self, conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
        """Make `conn` the connection that claims and completes."""
        self.conn = conn
        if not self.app.conf.pgbouncer:  # (a SET would outlive our turn on its server)
            execute(conn, self.app.queries.plan_once)
        self.db_backoff = 0.1
        self.notified = True
        # A new connection (maybe to a promoted replica that never saw our last commits):
        # return any job the database says we hold and we do not (release_unknown).
        self.claim_uncertain = True
        return conn

    def _db_failed(self, exc: BaseException) -> None:
        log.error("database error (%s); retrying in %.1fs; %d outcome(s) kept to write",
                  first_line(exc), self.db_backoff, len(self.pending))
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None
        self.db_retry_at = time.monotonic() + self.db_backoff
        self.db_backoff = min(self.db_backoff * 2, 5.0)

    def _flush_and_claim(self, want: int) -> None:
        """Write pending outcomes and claim up to `want` jobs, in one transaction."""
        conn = self._connection()
        if conn is None:
            return
        if all(map(self._ends_alone, self.pending)):
            self._flush_and_claim_at_once(conn, want)
            return
        q = self.app.queries
        outcomes = self.pending
        try:
            if self.claim_uncertain:
                self._release_unknown(conn)
            claimed: list[Job] = []
            written: set[str] = set()
            with conn.transaction():
                if outcomes:
                    written = self._complete(conn, outcomes)
                if want:
                    self.claim_uncertain = True
                    rows = execute(conn, q.claim, {"queues": self.queues, "limit": want,
                                                   "worker": self.id})
                    claimed = self._apply_rate_limits(conn, rows)
                    if len(rows) < want:
                        self._learn_next_due(conn)
            self.claim_uncertain = False
        except (psycopg.DataError, psycopg.ProgrammingError, psycopg.IntegrityError) as exc:
            self._unstorable(conn, outcomes, exc)
            return
        except psycopg.Error as exc:
            self._db_failed(exc)
            return
        self.pending = []
        self._flushed(outcomes, written, want, claimed)

    def _finish_sql(self, timeout: float = 30.0) -> None:
        """Wait for the statement in flight (at shutdown)."""
        if self.writing is not None and (result := self.sql.result(timeout)) is not None:
            assert self.conn is not None
            self._written(self.conn, result)

    def _ends_alone(self, outcome: Outcome) -> bool:
        """Nothing follows this outcome in the same transaction (no link, chain or chord)."""
        job = self.inflight.get(outcome.id)
        return job is None or job.options == "{}" or outcome.state == "RETRY"

    def _flush_and_claim_at_once(self, conn: psycopg.Connection[Any], want: int) -> None:
        """The hot path: outcomes, their NOTIFYs and the next claim in one statement (one
        round trip and one commit instead of five). While children have work, the statement
        runs on the SQL thread and this loop goes on feeding them; idle, it runs right here
        (no hand-over on the latency path)."""
        q = self.app.queries
        outcomes = self.pending
        try:
            if self.claim_uncertain:
                self._release_unknown(conn)
        except psycopg.Error as exc:
            self._db_failed(exc)
            return
        if want:
            self.claim_uncertain = True
        # The same summary and rows from each; a part with nothing to do still costs the
        # server time, so an idle worker's claim or a busy one's write runs alone.
        params: dict[str, Any] = {"queues": self.queues, "limit": want, "worker": self.id}
        if outcomes:
            params.update(complete_params(outcomes, self.id), done_channel=q.done_channel,
                          results_channel=q.results_channel, jobs_channel=q.jobs_channel)
        query = (q.complete_and_claim if outcomes and want else
                 q.claim_and_due if want else q.complete_and_notify)
        self.pending = []
        self.writing = (outcomes, want)
        if self.pool.outstanding() or self.held:
            self.sql.submit(conn, query, params)
            return
        try:
            result: list[tuple[Any, ...]] | BaseException = execute(conn, query, params)
        except psycopg.Error as exc:
            result = exc
        self._written(conn, result)

    def _take_sql_result(self) -> None:
        if self.writing is not None and (result := self.sql.result()) is not None:
            assert self.conn is not None
            self._written(self.conn, result)

    def _written(self, conn: psycopg.Connection[Any],
                 result: list[tuple[Any, ...]] | BaseException) -> None:
        """Finish a `complete_and_claim`: its rows, or the error it raised."""
        assert self.writing is not None
        (outcomes, want), self.writing = self.writing, None
        try:
            if isinstance(result, BaseException):
                raise result
            rows = result  # the summary's 4 columns, then the claim's (run_at last)
            claim_rows = [row[4:-1] for row in rows if len(row) > 4 and row[4] is not None]
            claimed = [Job(*row[:-1]) for row in claim_rows]
            if self._rate_limited(claimed):
                # In a transaction of their own: claimed jobs were never safer than this
                # (a worker lost before running them has them rescued either way).
                with conn.transaction():
                    claimed = self._apply_rate_limits(conn, claim_rows)
            if want and len(claim_rows) < want:
                self._sleep_until_due(rows[0][3])
            self.claim_uncertain = False
        except (psycopg.DataError, psycopg.ProgrammingError, psycopg.IntegrityError) as exc:
            self.pending = outcomes + self.pending
            if outcomes:
                self._unstorable(conn, self.pending, exc)
            else:  # the claim itself (say, a schema not migrated): back off, do not spin
                self._db_failed(exc)
            return
        except psycopg.Error as exc:
            self.pending = outcomes + self.pending  # written again (guarded) once reconnected
            self._db_failed(exc)
            return
        written, woken = {o.id for o in outcomes} - set(rows[0][0]), rows[0][1]
        if len(written) < len(outcomes):
            log.warning("%d outcome(s) discarded: their jobs were revoked or rescued meanwhile",
                        len(outcomes) - len(written))
        if woken:
            self.notified = True  # a job went back to our queues for an immediate retry
        self._flushed(outcomes, written, want, claimed)

    def _rate_limited(self, jobs: list[Job]) -> bool:
        tasks = self.app.tasks
        return any((task := tasks.get(job.task)) is not None and task.rate_limit for job in jobs)

    def _unstorable(self, conn: psycopg.Connection[Any], outcomes: list[Outcome],
                    exc: psycopg.Error) -> None:
        # Not the connection: some outcome cannot be stored. Find it, fail it, go on.
        log.error("cannot write a batch of outcomes (%s); writing them one by one",
                  first_line(exc))
        self.pending = [self._storable(conn, o) for o in outcomes]

    def _flushed(self, outcomes: list[Outcome], written: set[str], want: int,
                 claimed: list[Job]) -> None:
        self.events.finished(outcomes, written, self.inflight)
        self.metrics.finished(outcomes, self.inflight)
        for outcome in outcomes:
            self.inflight.pop(outcome.id, None)
            self.claimed_at.pop(outcome.id, None)
        if want:
            now = time.monotonic()
            self.last_claim = now
            self.claim_more = len(claimed) >= want
            self.metrics.claimed(claimed)
            for job in claimed:
                if job.state == "STARTED":
                    self.inflight[job.id] = job
                    self.claimed_at[job.id] = now
                    self.held.append(job)
                else:
                    log.info("job %s (%s) expired before it started: REVOKED", job.id, job.task)
                    self._revoked(job, expired=True)
            self._received(claimed)

    def _storable(self, conn: psycopg.Connection[Any], outcome: Outcome) -> Outcome:
        """`outcome` if it can be written, else a FAILURE saying why it could not."""
        try:
            with conn.transaction(force_rollback=True):
                self._complete(conn, [outcome])
            return outcome
        except (psycopg.DataError, psycopg.ProgrammingError, psycopg.IntegrityError) as exc:
            return Outcome(outcome.id, outcome.attempts, "FAILURE", None,
                           "pgq.errors.EncodeError",
                           f"the job's outcome cannot be stored in PostgreSQL: {first_line(exc)}",
                           None, 0.0, outcome.runtime_ms)

    def _learn_next_due(self, conn: psycopg.Connection[Any]) -> None:
        """Sleep until the earliest waiting job comes due (countdown/eta/retry), not a poll
        interval: a NOTIFY for a newly inserted job wakes us to look again."""
        ((wait,),) = execute(conn, self.app.queries.next_due, {"queues": self.queues})
        self._sleep_until_due(wait)

    def _sleep_until_due(self, wait: timedelta | None) -> None:
        self.eta_due = float("inf") if wait is None else \
            time.monotonic() + max(0.0, wait.total_seconds())

    def _release_unknown(self, conn: psycopg.Connection[Any]) -> None:
        """The last claim's commit may have happened without our seeing its rows: put any job
        claimed in our name that we do not hold back in its queue."""
        q = self.app.queries
        with conn.transaction():
            rows = execute(conn, q.release_unknown, {"worker": self.id,
                                                     "known": list(self.inflight)})
            for queue in {row[1] for row in rows}:
                execute(conn, q.notify, {"channel": q.jobs_channel, "payload": queue})
        if rows:
            log.warning("returned %d job(s) claimed during a lost connection", len(rows))
        self.claim_uncertain = False

    def _apply_rate_limits(self, conn: psycopg.Connection[Any],
                           rows: list[tuple[Any, ...]]) -> list[Job]:
        """Keep the jobs whose task is under its rate limit; give every other job of a
        rate-limited task its own future slot (GCRA), so it is neither run early nor polled."""
        jobs: list[Job] = []
        limited: dict[str, list[Job]] = {}
        for row in rows:
            job, reserved = Job(*row[:-1]), row[-1]
            task = self.app.tasks.get(job.task)
            if reserved or job.state != "STARTED" or task is None or not task.rate_limit:
                jobs.append(job)
            else:
                limited.setdefault(job.task, []).append(job)
        deferred_ids, deferred_at = [], []
        q = self.app.queries
        for name, group in limited.items():
            interval = rate_interval(self.app.tasks[name].rate_limit) or 0.0
            ((first, now),) = execute(conn, q.rate_slots, {"task": name, "n": len(group),
                                                           "interval": interval})
            for k, job in enumerate(group):
                slot = first + timedelta(seconds=k * interval)
                if slot <= now + RATE_TOLERANCE:
                    jobs.append(job)
                else:
                    deferred_ids.append(job.id)
                    deferred_at.append(slot)
        if deferred_ids:
            execute(conn, q.defer, {"ids": deferred_ids, "run_ats": deferred_at,
                                    "worker": self.id})
            offset = time.monotonic() - time.time()
            for slot in deferred_at:
                heapq.heappush(self.due_times, slot.timestamp() + offset)
        return jobs

    def _complete(self, conn: psycopg.Connection[Any], outcomes: list[Outcome]) -> set[str]:
        due_now, written = write_outcomes(self.app, conn, self.id, outcomes, self.inflight)
        if due_now:
            self.notified = True  # a job went back to our queues for an immediate retry
        return written

    # --- signals and events about jobs ------------------------------------------------------

    def _received(self, claimed: list[Job]) -> None:
        started = [job for job in claimed if job.state == "STARTED"]
        self.events.received(started)
        if signals.task_received.receivers:
            for job in started:
                signals.task_received.send(sender=self, request=job_request(job, self.hostname))

    def _revoked(self, job: Job | None, *, terminated: bool = False, signum: int | None = None,
                 expired: bool = False) -> None:
        if job is None:
            return
        self.events.revoked(job, terminated=terminated, signum=signum, expired=expired)
        if signals.task_revoked.receivers:
            signals.task_revoked.send(sender=self.app.tasks.get(job.task),
                                      request=job_request(job, self.hostname),
                                      terminated=terminated, signum=signum, expired=expired)

    def _requeue(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        conn = self._connection()
        if conn is None:
            return  # the rescuer returns them once this worker's heartbeat is old
        q = self.app.queries
        try:
            with conn.transaction():
                rows = execute(conn, q.requeue_mine, {"worker": self.id,
                                                      "ids": [j.id for j in jobs]})
                for queue in {row[1] for row in rows}:
                    execute(conn, q.notify, {"channel": q.jobs_channel, "payload": queue})
            for job in jobs:
                self.inflight.pop(job.id, None)
                self.claimed_at.pop(job.id, None)
            log.info("returned %d job(s) to their queues", len(rows))
        except psycopg.Error as exc:
            self._db_failed(exc)

    def _listener(self) -> Listener | None:
        """LISTEN for new jobs and control messages, or None: poll-only (PgBouncer)."""
        listen_dsn = self.app.listen_dsn
        if listen_dsn is None:
            log.warning("pgbouncer=on and no listen_dsn: poll-only mode, claiming every %ss "
                        "(set listen_dsn to a direct connection to be woken at once; "
                        "revoke(terminate=True) needs it too)", self.poll_interval)
            return None
        q = self.app.queries
        listener = Listener(listen_dsn, [q.jobs_channel, q.control_channel],
                            probe_channel=self.probe_channel,
                            probe_timeout=max(3 * float(self.app.conf.worker_heartbeat_interval),
                                              2.0))
        listener.on(q.jobs_channel, self._on_jobs)
        listener.on(q.control_channel, self._on_control)
        listener.on_reconnect(self._on_reconnect)
        listener.start()
        return listener

    def _on_beat(self, conn: psycopg.Connection[Any]) -> None:
        """Every heartbeat: show an autoscaled pool's size; refresh the gauges (cheap; only
        when metrics are served)."""
        if self.concurrency != self.shown_concurrency:  # autoscaled
            self.shown_concurrency = self.concurrency
            execute(conn, self.app.queries.worker_concurrency, {
                "id": self.id, "concurrency": self.shown_concurrency})
        if isinstance(self.metrics, PrometheusMetrics):
            self.metrics.children(self.pool.busy(), self.concurrency)
            rows = execute(conn, self.app.queries.queue_depth, {"queues": self.queues})
            self.metrics.queue_depth({queue: depth for queue, depth in rows})

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        signals.worker_init.send(sender=self)
        conn = self._first_connection()
        if conn is None:  # stopped by a signal before the database came
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            return 0
        self._adopt(conn)  # the first claim need not wait for a second connection
        if self.metrics_port:
            self.metrics = serve_metrics(self.metrics_port, self.id)
        q = self.app.queries
        listener = self._listener()
        heartbeat = Heartbeat(self.app, self.id, self._register, self.probe_channel,
                              on_beat=self._on_beat)
        heartbeat.start()
        scheduler = None
        if self.beat:
            from pgq.services.scheduler import Scheduler

            scheduler = Scheduler(self.app)
            scheduler.start_thread()
        in_process = self.pool_name != "prefork"  # threads, solo: jobs run in this process
        if in_process:
            signals.worker_process_init.send(sender=None)
        self.pool.start()
        log.info("worker %s ready: host %s, queues %s, %s pool of %d", self.id, self.hostname,
                 ",".join(self.queues), self.pool_name, self.concurrency)
        self.events.start()
        signals.worker_ready.send(sender=self)
        try:
            self._loop()
        finally:
            self._finish_sql()
            interrupted = self.pool.stop(cold=True) if self.cold else self.pool.stop(cold=False)
            self._requeue([*interrupted, *self.held])
            self.held.clear()
            if self.pending:
                self._flush_and_claim(0)
                self._finish_sql()
            self.sql.stop()
            self.events.stop()
            if in_process:
                signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
            signals.worker_shutdown.send(sender=self)
            if listener is not None:
                listener.stop()
            heartbeat.stop()
            if scheduler is not None:
                scheduler.stop()
            with contextlib.suppress(Exception), self.app.connect() as last:
                execute(last, q.stop_worker, {"id": self.id})
            if self.conn is not None:
                self.conn.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("worker %s stopped", self.id)
        return 0

    def _loop(self) -> None:
        while True:
            if self.cold:
                return
            if self.stopping and self.writing is None:
                if self.held:
                    self._requeue(list(self.held))
                    self.held.clear()
                if self.pool.outstanding() == 0 and not self.pending:
                    return
            ready = self.wait([*self.pool.waitables(), self.wake_r], self._timeout())
            if self.wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
            self._note(self.pool.collect(ready))
            self._note(self.pool.expire())
            while self.to_terminate:
                self._terminate(self.to_terminate.pop())
            self.held.extendleft(reversed(self.pool.take_returned()))
            self._take_sql_result()
            if self.writing is None:  # the connection is free
                self._return_stale_held()
                want = self._want()
                if want or self._should_flush():
                    self._flush_and_claim(want)
            if self.autoscaler is not None and not self.stopping:
                self.concurrency = self.autoscaler.scale(len(self.held) - self.pool.free())
            self._submit_held()

    def _submit_held(self) -> None:
        """Hand held jobs to idle children: short jobs several at a time per child (one
        message each way per batch instead of per job), spread evenly over the idle ones."""
        while self.held and (free := self.pool.free()) > 0:
            size = 1
            if self.pool.batches and self.runtime_ms < self.BATCH_TARGET_MS:
                size = min(-(-len(self.held) // free), self.MAX_BATCH,
                           max(1, int(self.BATCH_TARGET_MS / max(self.runtime_ms, 0.001))))
            jobs = [self.held.popleft() for _ in range(min(size, len(self.held)))]
            self.events.started(jobs)
            self.pool.submit(jobs)
            if self.pool.has_ready():
                self._note(self.pool.collect([]))

    def _terminate(self, job_id: str) -> None:
        """revoke(terminate=True): the pool kills the child running it (the job is REVOKED
        already, so no outcome is written for it)."""
        if self.pool.terminate(job_id):
            self._revoked(self.inflight.pop(job_id, None), terminated=True,
                          signum=int(signal.SIGKILL))
            self.claimed_at.pop(job_id, None)

    def _note(self, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        if not self.pending:
            self.pending_since = time.monotonic()
        self.pending.extend(outcomes)
        for outcome in outcomes:
            self.runtime_ms += (outcome.runtime_ms - self.runtime_ms) * 0.1

    # --- batching ---------------------------------------------------------------------------
    # Outcomes are written in batches, and claims take more than the free slots when jobs are
    # short: one commit then carries many jobs. The extra ("held") jobs are sized so they wait
    # about HOLD_TARGET_MS in this process; any held longer than MAX_HOLD_S (children stuck on
    # long jobs) go back to the queue for other workers.

    HOLD_TARGET_MS = 50.0
    MAX_HOLD_S = 1.0
    # A child is given at most about this much work at once (by the moving average of run
    # times), so a job queued behind a longer one than usual waits little.
    BATCH_TARGET_MS = 2.0
    MAX_BATCH = 64
    FLUSH_AFTER_S = 0.02
    FLUSH_BATCH = 256
    MAX_BUFFER_PER_SLOT = 128
    MAX_BUFFER = 512

    def _buffer(self) -> int:
        if self.fixed_prefetch is not None:
            return self.concurrency * (self.fixed_prefetch - 1)
        per_slot = self.HOLD_TARGET_MS / max(self.runtime_ms, 0.05)
        return min(int(self.concurrency * per_slot), self.concurrency * self.MAX_BUFFER_PER_SLOT,
                   self.MAX_BUFFER)

    def _capacity(self) -> int:
        if self.stopping:
            return 0
        headroom = self.autoscaler.headroom() if self.autoscaler is not None else 0
        return (self.concurrency + self._buffer() + headroom - self.pool.outstanding()
                - len(self.held))

    def _may_claim(self) -> bool:
        """Room to claim: free capacity, and no more than half the buffer still held."""
        return self._capacity() > 0 and len(self.held) <= self._buffer() // 2

    def _want(self) -> int:
        if not self._may_claim():
            return 0
        capacity = self._capacity()
        now = time.monotonic()
        poll_due = now - self.last_claim >= self.poll_interval
        while self.due_times and self.due_times[0] <= now:
            heapq.heappop(self.due_times)
            poll_due = True
        if self.eta_due <= now:
            self.eta_due = float("inf")
            poll_due = True
        if self.notified or self.claim_more or poll_due:
            self.notified = False
            return capacity
        return 0

    def _should_flush(self) -> bool:
        if not self.pending:
            return False
        idle = self.pool.outstanding() == 0 and not self.held
        return (idle or self.stopping or len(self.pending) >= self.FLUSH_BATCH
                or time.monotonic() - self.pending_since >= self.FLUSH_AFTER_S)

    def _return_stale_held(self) -> None:
        if self.held and self.pool.free() == 0:
            oldest = self.held[0]
            if time.monotonic() - self.claimed_at.get(oldest.id, 0) > self.MAX_HOLD_S:
                log.info("children busy: returning %d claimed job(s) to the queue",
                         len(self.held))
                self._requeue(list(self.held))
                self.held.clear()
                self.runtime_ms = max(self.runtime_ms, self.MAX_HOLD_S * 1000)

    def _timeout(self) -> float:
        if self.pool.has_ready():
            return 0.0
        now = time.monotonic()
        timeout = self.poll_interval  # with no room, only a finishing child matters
        # (Without room, a pending NOTIFY or a full last claim must not make the wait 0:
        # the loop would spin until the held jobs drain.)
        if self.writing is not None:
            pass  # the statement's result wakes the loop; nothing else to claim or flush now
        elif self._may_claim():
            timeout = max(0.0, self.poll_interval - (now - self.last_claim))
            next_due = min(self.due_times[0] if self.due_times else float("inf"), self.eta_due)
            timeout = max(0.0, min(timeout, next_due - now))
            if self.notified or self.claim_more:
                timeout = 0.0
        if self.pending and self.writing is None:
            timeout = min(timeout, max(0.0, self.pending_since + self.FLUSH_AFTER_S - now))
        if self.held:
            timeout = min(timeout, self.MAX_HOLD_S)
        deadline = self.pool.next_deadline()
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - now))
        if self.autoscaler is not None and not self.stopping:
            shrink = self.autoscaler.seconds_to_next_shrink()
            if shrink is not None:
                timeout = min(timeout, shrink)
        if self.conn is None:
            timeout = min(timeout, max(0.01, self.db_retry_at - now))
        return timeout
