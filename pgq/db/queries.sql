-- Every statement pgq runs at run time, by name. `{schema}` is bound once (as an identifier)
-- when the file is loaded; values are always parameters, never formatted in.
-- Job states: PENDING (waiting, possibly for run_at), RETRY (waiting to be retried), STARTED,
-- SUCCESS, FAILURE, REVOKED. Custom states from update_state() live in progress_state.

-- name: enqueue
INSERT INTO {schema}.jobs (id, task, queue, priority, args, kwargs, options, run_at, eta,
                           expires_at, unique_key, root_id, parent_id, group_id,
                           content_type, compression, payload, payload_size, signature)
SELECT id, task, queue, priority, args, kwargs, options, coalesce(run_at, now()), run_at,
       expires_at, unique_key, coalesce(root_id, id), parent_id, group_id,
       content_type, compression, payload, payload_size, signature
FROM unnest(%(ids)s::uuid[], %(tasks)s::text[], %(queues)s::text[], %(priorities)s::int2[],
            %(args)s::jsonb[], %(kwargs)s::jsonb[], %(options)s::jsonb[],
            %(run_ats)s::timestamptz[], %(expires)s::timestamptz[], %(unique_keys)s::text[],
            %(root_ids)s::uuid[], %(parent_ids)s::uuid[], %(group_ids)s::uuid[],
            %(content_types)s::text[], %(compressions)s::text[], %(payloads)s::bytea[],
            %(payload_sizes)s::int[], %(signatures)s::text[])
     AS t(id, task, queue, priority, args, kwargs, options, run_at, expires_at, unique_key,
          root_id, parent_id, group_id, content_type, compression, payload, payload_size,
          signature)
ON CONFLICT DO NOTHING
RETURNING id

-- name: _insert_one
INSERT INTO {schema}.jobs (id, task, queue, priority, args, kwargs, options, run_at, eta,
                           expires_at, unique_key, root_id, parent_id, group_id,
                           content_type, compression, payload, payload_size, signature)
VALUES (%(id)s::uuid, %(task)s, %(queue)s, %(priority)s, %(args)s::jsonb, %(kwargs)s::jsonb,
        %(options)s::jsonb, coalesce(%(run_at)s::timestamptz, now()), %(run_at)s::timestamptz,
        %(expires_at)s::timestamptz, %(unique_key)s, coalesce(%(root_id)s::uuid, %(id)s::uuid),
        %(parent_id)s::uuid, %(group_id)s::uuid, %(content_type)s::text,
        %(compression)s::text, %(payload)s::bytea, %(payload_size)s::int, %(signature)s::text)

-- name: enqueue_new
-- One job whose id pgq just made and that has no unique key: nothing can conflict and the
-- caller knows the id, so no ON CONFLICT arbiter checks and no RETURNING.
{_insert_one}

-- name: enqueue_plain
-- The same for the commonest job (`delay()` at the top level: JSON arguments, due now, no
-- expiry, no workflow ids, unsigned), with only the values it has: each parameter more
-- costs ~1.5 us here and on the server (docs/performance.md, round 5).
INSERT INTO {schema}.jobs (id, task, queue, priority, args, kwargs, options, root_id)
VALUES (%(id)s::uuid, %(task)s, %(queue)s, %(priority)s, %(args)s::jsonb, %(kwargs)s::jsonb,
        %(options)s::jsonb, %(id)s::uuid)

-- name: enqueue_one
-- One job with a unique key or a caller-chosen id: the id returned is the row written, if any.
{_insert_one}
ON CONFLICT DO NOTHING
RETURNING id

-- name: enqueue_copy
-- Bulk path for new ids without unique keys (nothing can conflict): COPY is the fastest way in.
COPY {schema}.jobs (id, task, queue, priority, args, kwargs, options, run_at, eta, expires_at,
                    root_id, parent_id, group_id)
FROM STDIN

-- name: enqueue_copy_payload
-- The same, for rows that carry a payload or a signature (docs/serialization.md).
COPY {schema}.jobs (id, task, queue, priority, args, kwargs, options, run_at, eta, expires_at,
                    root_id, parent_id, group_id, content_type, compression, payload,
                    payload_size, signature)
FROM STDIN

-- name: insert_chords
INSERT INTO {schema}.chords (id, pending, header_ids, body, body_id, options)
SELECT id, pending, header_ids::uuid[], body, body_id, options
FROM unnest(%(ids)s::uuid[], %(pendings)s::int[], %(header_ids)s::text[], %(bodies)s::jsonb[],
            %(body_ids)s::uuid[], %(options)s::jsonb[])
     AS t(id, pending, header_ids, body, body_id, options)

-- name: chord_succeeded
-- `n` header jobs of this chord succeeded in this transaction. The row lock orders workers
-- that finish header jobs at the same instant: exactly one of them sees pending reach 0.
UPDATE {schema}.chords
SET pending = pending - %(n)s,
    state = CASE WHEN pending - %(n)s <= 0 THEN 'DONE' ELSE state END,
    finished_at = CASE WHEN pending - %(n)s <= 0 THEN now() END
WHERE id = %(id)s AND state = 'PENDING'
RETURNING state, header_ids::text[], body::text

-- name: chord_failed
UPDATE {schema}.chords SET state = 'FAILED', finished_at = now()
WHERE id = %(id)s AND state = 'PENDING'
RETURNING body::text, body_id::text, options::text

-- name: header_results
SELECT id::text, result::text FROM {schema}.jobs WHERE id = ANY(%(ids)s::uuid[])

-- name: insert_failed
-- A job that failed before it could run (a chord body, the rest of a broken chain).
INSERT INTO {schema}.jobs (id, task, queue, state, finished_at, started_at, result, exc_type,
                           exc_message, traceback, meta, root_id, parent_id, group_id)
VALUES (%(id)s::uuid, %(task)s, %(queue)s, 'FAILURE', now(), NULL, %(result)s::jsonb,
        %(exc_type)s, %(exc_message)s, %(traceback)s, %(meta)s::jsonb,
        coalesce(%(root_id)s::uuid, %(id)s::uuid), %(parent_id)s::uuid, %(group_id)s::uuid)
ON CONFLICT DO NOTHING

-- name: find_unique
SELECT unique_key, id FROM {schema}.jobs
WHERE unique_key = ANY(%(keys)s::text[]) AND state IN ('PENDING', 'RETRY', 'STARTED')

-- name: claim
-- Priority by priority (9 first), and per queue, each scan walks the jobs_ready index in claim
-- order from the first due job: scheduled jobs (run_at in the future) of a higher priority are
-- never stepped over, and the backlog is never sorted. PostgreSQL before 18 cannot skip from
-- one priority to the next inside one index scan, so one scan over all priorities would read
-- every future job of the priorities above the due ones, at every claim. The outer LIMIT stops
-- at the first priorities that fill the batch; rows locked but not taken are released at
-- commit.
WITH {_claim_ctes}
-- UPDATE ... RETURNING has no order of its own: hand jobs out in claim order.
SELECT id, task, state, args, kwargs, options, queue, priority, eta, retries, attempts,
       root_id, parent_id, group_id, content_type, compression, payload, signature,
       rate_reserved
FROM claimed ORDER BY priority DESC, run_at, id

-- name: complete
-- One statement for a whole batch of outcomes. The guard (still STARTED, still this worker,
-- still this attempt) makes a late ack from a worker whose jobs were rescued a no-op.
WITH {_outcomes}
{_complete_outcomes}

-- name: complete_and_claim
-- The worker's hot path in one statement (one round trip, one commit): write a batch of
-- outcomes (guarded as in `complete`), NOTIFY get() waiters of the finished ids (in chunks
-- that fit a payload) and the queues of retries due now, and claim up to `limit` jobs (as in
-- `claim`; the rows just completed are STARTED in this statement's snapshot, so the two
-- updates never touch the same row). The summary: `unwritten` (the ids of outcomes not
-- written: their jobs were revoked or rescued meanwhile), `woken`, `notified`, `next_due`.
-- Used for batches whose jobs start nothing after them (no link, chain or chord); `complete`
-- and `claim` otherwise. Every commit waits for its WAL flush, claims too: a claim lost in a
-- crash of the server would run its job a second time (docs/reliability.md).
WITH {_outcome_ctes}, {_claim_ctes}, summary AS (
    SELECT {_outcome_summary}, {_due_if_short}
)
-- (Every CTE that NOTIFYs must be read by the final SELECT, or the planner drops it.)
{_summary_and_claimed}

-- name: claim_and_due
-- `complete_and_claim` with no outcomes to write (an idle worker woken by a NOTIFY), in the
-- same shape. Each part a statement carries costs PostgreSQL time at every execution, even
-- when it has no rows to work on: ~0.1 ms less than the whole (docs/performance.md, round 6).
WITH {_claim_ctes}, summary AS (
    SELECT '{}'::text[] AS unwritten, 0::bigint AS woken, 0::bigint AS notified,
           {_due_if_short}
)
{_summary_and_claimed}

-- name: _due_if_short
-- Fragment: the summary's `next_due`, when the claim came back short (then the worker sleeps
-- until then).
CASE WHEN (SELECT count(*) FROM claimed) < %(limit)s THEN ({_next_due}) END AS next_due

-- name: _summary_and_claimed
-- Fragment: one row per claimed job, in claim order, each led by the summary; one row of
-- summary alone when nothing was claimed.
SELECT s.*, c.* FROM summary AS s LEFT JOIN claimed AS c ON true
ORDER BY c.priority DESC, c.run_at, c.id

-- name: complete_and_notify
-- `complete_and_claim` with nothing to claim (a worker whose children are all busy, or that
-- just ran the only job there was): the summary row alone.
WITH {_outcome_ctes}
SELECT {_outcome_summary}, NULL::interval AS next_due

-- name: _outcome_ctes
-- Fragment: write a batch of outcomes (`done`), NOTIFY get() waiters of the finished ids and
-- the queues of retries due now. Per chunk of finished jobs (each payload under 8,000
-- bytes): first, on the results channel, a JSON object of the results of 200 bytes or less
-- of the successes, by id; then, on the done channel, the ids, comma-separated. Sent in that
-- order, so a get() woken by its id has the result already, and need not read it back.
{_outcomes}, done AS (
{_complete_outcomes}
), done_notified AS (
    SELECT CASE WHEN results > '' THEN pg_notify(%(results_channel)s, results) END,
           pg_notify(%(done_channel)s, ids)
    FROM (SELECT string_agg(id::text, ',') AS ids, json_object_agg(id, small::json)
                 FILTER (WHERE small IS NOT NULL)::text AS results
          FROM (SELECT id, small, sum(coalesce(82 + octet_length(small), 37))
                                      OVER (ROWS UNBOUNDED PRECEDING) / 7000 AS chunk
                FROM done WHERE state <> 'RETRY') AS d
          GROUP BY chunk) AS c
), retries_notified AS (
    SELECT pg_notify(%(jobs_channel)s, r.queue)
    FROM (SELECT DISTINCT queue FROM done WHERE state = 'RETRY' AND due) AS r
)

-- name: _outcome_summary
-- Fragment: the summary's first columns, after `_outcome_ctes`.
(SELECT coalesce(array_agg(id::text), '{}') FROM outcomes
 WHERE id NOT IN (SELECT id FROM done)) AS unwritten,
(SELECT count(*) FROM retries_notified) AS woken,
(SELECT count(*) FROM done_notified) AS notified

-- name: _outcomes
-- Fragment (a name starting with "_" is spliced in where a query names it in braces): the CTE
-- `outcomes`, a batch of outcomes sent as one JSON array of rows [id, attempts, state, result,
-- exc_type, exc_message, traceback, countdown, runtime_ms] (pgq/worker/completer.py). One
-- orjson call builds it, where nine array parameters cost the worker ~6 µs per outcome to
-- send, and as jsonb PostgreSQL reads it as fast as it read the arrays; `json` would cost it
-- ~4 µs more, each ->> parsing the row again (docs/performance.md, round 8). Through an
-- array, as the planner takes unnest() of one for ~10 rows but jsonb_array_elements() for
-- 100, and for 100 it scans a small `jobs` whole instead of probing its primary key per
-- outcome.
outcomes AS (
    SELECT (e->>0)::uuid AS id, (e->>1)::int AS attempts, e->>2 AS state, e->>3 AS result,
           e->>4 AS exc_type, e->>5 AS exc_message, e->>6 AS traceback,
           (e->>7)::float8 AS countdown, (e->>8)::float8 AS runtime_ms
    FROM unnest(ARRAY(SELECT jsonb_array_elements(%(outcomes)s::jsonb))) AS e
)

-- name: _complete_outcomes
-- Fragment: write the batch `outcomes` (`_outcomes`), for `complete` and `_outcome_ctes`.
UPDATE {schema}.jobs AS j
SET state = o.state,
    result = o.result::jsonb,
    exc_type = o.exc_type,
    exc_message = o.exc_message,
    traceback = o.traceback,
    retries = CASE WHEN o.state = 'RETRY' THEN j.retries + 1 ELSE j.retries END,
    run_at = CASE WHEN o.state = 'RETRY' THEN now() + make_interval(secs => o.countdown)
                  ELSE j.run_at END,
    eta = CASE WHEN o.state = 'RETRY' AND o.countdown > 0
               THEN now() + make_interval(secs => o.countdown) ELSE j.eta END,
    worker_id = CASE WHEN o.state = 'RETRY' THEN NULL ELSE j.worker_id END,
    last_retry_at = CASE WHEN o.state = 'RETRY' THEN now() ELSE j.last_retry_at END,
    finished_at = CASE WHEN o.state = 'RETRY' THEN NULL ELSE now() END,
    runtime_ms = o.runtime_ms
FROM (SELECT *, 'STARTED' AS started, %(worker)s::uuid AS worker FROM outcomes OFFSET 0) AS o
-- One primary key probe per outcome. The guard's values come from `o`, behind OFFSET 0 (which
-- keeps the planner from folding them into filters on `jobs`): as filters they made `jobs`
-- look like one row, and plans scanned jobs first, then the outcomes once per job, or walked
-- jobs_running, whose entries include every job finished since the last vacuum.
WHERE j.id = o.id AND j.attempts = o.attempts AND j.state = o.started
  AND j.worker_id = o.worker
RETURNING j.id, j.state, j.queue, j.run_at <= now() AS due,
          -- a small result of a success, for the results NOTIFY (`_outcome_ctes`)
          CASE WHEN o.state = 'SUCCESS' AND octet_length(o.result) <= 200 THEN o.result END
              AS small

-- name: _claim_ctes
-- Fragment: the claim's CTEs (candidates, picked, claimed), for `claim`,
-- `complete_and_claim` and `claim_and_due`.
candidates AS (
    SELECT c.id, c.priority, c.run_at, c.rate_reserved
    FROM generate_series(9, 0, -1) AS p(priority),
    LATERAL (
        SELECT r.id, r.priority, r.run_at, r.rate_reserved
        FROM unnest(%(queues)s::text[]) AS q(name),
        LATERAL (
            SELECT id, priority, run_at, rate_reserved FROM {schema}.jobs
            WHERE queue = q.name AND priority = p.priority::int2
              AND state IN ('PENDING', 'RETRY') AND run_at <= now()
            ORDER BY run_at, id
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        ) AS r
        ORDER BY r.run_at, r.id
        LIMIT %(limit)s
    ) AS c
    LIMIT %(limit)s
), picked AS (
    SELECT id, rate_reserved FROM candidates ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
), claimed AS (
    UPDATE {schema}.jobs AS j
    SET state = CASE WHEN j.expires_at <= now() THEN 'REVOKED' ELSE 'STARTED' END,
        worker_id = %(worker)s,
        attempts = j.attempts + 1,
        started_at = now(),
        finished_at = CASE WHEN j.expires_at <= now() THEN now() END,
        rate_reserved = false
    FROM picked
    -- `= ANY` lets the planner fetch the picked rows by primary key: joined to `picked` alone
    -- it may read the whole table to hash it.
    WHERE j.id = picked.id AND j.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING j.id::text, j.task, j.state, j.args::text, j.kwargs::text,
              j.options::text, j.queue, j.priority, j.eta, j.retries, j.attempts,
              j.root_id::text, j.parent_id::text, j.group_id::text, j.content_type,
              j.compression, j.payload, j.signature, picked.rate_reserved, j.run_at
)

-- name: rate_slots
-- GCRA: `tat` is when the task's next slot is free. Reserve `n` consecutive slots, one every
-- `interval` seconds, and return the first; the row lock serialises workers per task.
INSERT INTO {schema}.rate_limits AS r (task, tat)
VALUES (%(task)s, now() + %(n)s * make_interval(secs => %(interval)s))
ON CONFLICT (task) DO UPDATE
SET tat = greatest(r.tat, now()) + %(n)s * make_interval(secs => %(interval)s)
RETURNING r.tat - %(n)s * make_interval(secs => %(interval)s) AS first_slot, now()

-- name: defer
-- Jobs over their rate limit go back with their reserved slot as run_at (no retry spent).
UPDATE {schema}.jobs AS j
SET state = 'PENDING', worker_id = NULL, started_at = NULL, attempts = j.attempts - 1,
    run_at = d.run_at, rate_reserved = true
FROM unnest(%(ids)s::uuid[], %(run_ats)s::timestamptz[]) AS d(id, run_at)
WHERE j.id = d.id AND j.state = 'STARTED' AND j.worker_id = %(worker)s

-- name: release_unknown
-- After a commit whose outcome was lost with the connection: jobs this worker claimed but
-- never received go back to their queue.
UPDATE {schema}.jobs
SET state = 'PENDING', worker_id = NULL, started_at = NULL, attempts = attempts - 1
WHERE state = 'STARTED' AND worker_id = %(worker)s AND NOT (id = ANY(%(known)s::uuid[]))
RETURNING id, queue

-- name: schedule_upsert
-- A schedule from code. A new one (or one whose timing changed) gets `next_run_at` from the
-- caller; an unchanged one keeps its place, so restarts never re-run or skip a due time.
INSERT INTO {schema}.schedules AS s (name, task, args, kwargs, options, every_s, cron,
                                     timezone, next_run_at)
VALUES (%(name)s, %(task)s, %(args)s::jsonb, %(kwargs)s::jsonb, %(options)s::jsonb,
        %(every_s)s, %(cron)s, %(timezone)s, %(next_run_at)s)
ON CONFLICT (name) DO UPDATE
SET task = excluded.task, args = excluded.args, kwargs = excluded.kwargs,
    options = excluded.options, enabled = true, updated_at = now(),
    every_s = excluded.every_s, cron = excluded.cron, timezone = excluded.timezone,
    next_run_at = CASE
        WHEN s.every_s IS NOT DISTINCT FROM excluded.every_s
             AND s.cron IS NOT DISTINCT FROM excluded.cron
             AND s.timezone = excluded.timezone AND s.enabled
        THEN s.next_run_at ELSE excluded.next_run_at END

-- name: schedule_disable_missing
UPDATE {schema}.schedules SET enabled = false, updated_at = now()
WHERE enabled AND NOT (name = ANY(%(names)s::text[]))
RETURNING name

-- name: schedule_due
SELECT name, task, args::text, kwargs::text, options::text, every_s, cron, timezone,
       next_run_at, now()
FROM {schema}.schedules
WHERE enabled AND next_run_at <= now()
ORDER BY next_run_at
FOR UPDATE SKIP LOCKED

-- name: schedule_advance
UPDATE {schema}.schedules SET last_run_at = %(due)s, next_run_at = %(next)s
WHERE name = %(name)s

-- name: schedule_next
SELECT min(next_run_at) - now() FROM {schema}.schedules WHERE enabled

-- name: schedules_list
SELECT name, task, coalesce(every_s::text || 's', cron) AS schedule, timezone, enabled,
       last_run_at, next_run_at
FROM {schema}.schedules ORDER BY enabled DESC, next_run_at

-- name: next_due
{_next_due}

-- name: _next_due
-- Fragment: when the earliest waiting job of these queues comes due (one index probe per
-- queue and priority), as an interval from now; NULL when nothing waits.
SELECT min(f.run_at) - now()
FROM unnest(%(queues)s::text[]) AS q(name), generate_series(0, 9) AS p(priority),
LATERAL (
    SELECT run_at FROM {schema}.jobs
    WHERE queue = q.name AND priority = p.priority AND state IN ('PENDING', 'RETRY')
      AND run_at > now()
    ORDER BY run_at LIMIT 1
) AS f

-- name: notify
SELECT pg_notify(%(channel)s, %(payload)s)

-- name: plan_once
-- For the worker's own connection. PostgreSQL re-planned the hot path (`complete_and_claim`)
-- at every run, and planning took longer (~0.8 ms) than running it: plan each statement once.
-- A plan made once may be made while `jobs` is nearly empty, when a sequential scan looks
-- cheapest; kept while the table grows, it collapsed a steady-state run (D) to half its
-- rate. Every statement here has an index to use: rule sequential scans out.
SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off

-- name: async_commit
-- For this transaction only: commit without waiting for the WAL flush (best-effort events).
SELECT set_config('synchronous_commit', 'off', true)

-- name: update_state
UPDATE {schema}.jobs SET progress_state = %(state)s, meta = %(meta)s::jsonb
WHERE id = %(id)s AND state = 'STARTED'

-- name: get_result
SELECT state, progress_state, result, meta, exc_type, exc_message, traceback, finished_at,
       retries, parent_id, task, options
FROM {schema}.jobs WHERE id = %(id)s

-- name: get_states
SELECT id, state FROM {schema}.jobs WHERE id = ANY(%(ids)s::uuid[])

-- name: revoke
UPDATE {schema}.jobs
SET state = 'REVOKED', finished_at = now(), worker_id = NULL,
    exc_type = 'pgq.errors.TaskRevokedError', exc_message = 'revoked'
WHERE id = %(id)s AND state IN ('PENDING', 'RETRY', 'STARTED')
RETURNING id, queue

-- name: forget
DELETE FROM {schema}.jobs
WHERE id = %(id)s AND state IN ('SUCCESS', 'FAILURE', 'REVOKED')

-- name: register_worker
INSERT INTO {schema}.workers (id, hostname, pid, queues, concurrency, pool, lost_timeout)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(queues)s, %(concurrency)s, %(pool)s,
        make_interval(secs => %(lost_timeout)s))
ON CONFLICT (id) DO UPDATE
SET stopped_at = NULL, last_heartbeat = now()

-- name: worker_concurrency
-- --autoscale resized the pool.
UPDATE {schema}.workers SET concurrency = %(concurrency)s WHERE id = %(id)s

-- name: heartbeat
UPDATE {schema}.workers SET last_heartbeat = now()
WHERE id = %(id)s AND stopped_at IS NULL
RETURNING id

-- name: stop_worker
UPDATE {schema}.workers SET stopped_at = now() WHERE id = %(id)s

-- name: mark_lost_workers
UPDATE {schema}.workers SET stopped_at = now()
WHERE stopped_at IS NULL AND last_heartbeat < now() - lost_timeout
RETURNING id, hostname, pid

-- name: rescue_orphans
-- Jobs still STARTED whose worker has stopped or vanished go back to their queue at once,
-- as a retry (a job that keeps killing its worker must run out of retries, not loop).
UPDATE {schema}.jobs AS j
SET state = 'RETRY', retries = j.retries + 1, worker_id = NULL, started_at = NULL,
    last_retry_at = now(),
    progress_state = NULL, meta = NULL, exc_type = 'pgq.errors.WorkerLostError',
    exc_message = 'the worker running this job was lost (no heartbeat)'
WHERE j.state = 'STARTED'
  AND NOT EXISTS (SELECT 1 FROM {schema}.workers w
                  WHERE w.id = j.worker_id AND w.stopped_at IS NULL)
RETURNING j.id, j.queue

-- name: requeue_mine
-- Cold shutdown: this worker's jobs go back to their queue at once, no retry spent.
UPDATE {schema}.jobs
SET state = 'PENDING', worker_id = NULL, started_at = NULL,
    progress_state = NULL, meta = NULL
WHERE state = 'STARTED' AND worker_id = %(worker)s AND id = ANY(%(ids)s::uuid[])
RETURNING id, queue

-- name: prune
DELETE FROM {schema}.jobs WHERE id IN (
    SELECT id FROM {schema}.jobs
    WHERE state IN ('SUCCESS', 'FAILURE', 'REVOKED')
      AND finished_at < now() - make_interval(secs => %(older_than)s)
    LIMIT %(batch)s
)

-- name: queue_stats
SELECT queue, state, jobs, oldest_age FROM {schema}.queue_stats ORDER BY queue, state

-- name: throughput
SELECT queue, count(*) AS per_minute FROM {schema}.jobs
WHERE finished_at > now() - interval '1 minute'
  AND state IN ('SUCCESS', 'FAILURE', 'REVOKED')
GROUP BY queue

-- name: worker_status
SELECT worker, hostname, pid, queues, concurrency, running, started_at, last_heartbeat, alive
FROM {schema}.worker_status ORDER BY alive DESC, started_at DESC

-- name: retry_jobs
-- `pgq retry`: the same job ids back to PENDING, result cleared, retry count reset.
UPDATE {schema}.jobs
SET state = 'PENDING', retries = 0, run_at = now(), eta = NULL, worker_id = NULL,
    started_at = NULL, finished_at = NULL, result = NULL, exc_type = NULL,
    exc_message = NULL, traceback = NULL, progress_state = NULL, meta = NULL,
    runtime_ms = NULL, expires_at = NULL
WHERE state IN ('FAILURE', 'REVOKED', 'SUCCESS')
  AND (%(ids)s::uuid[] IS NULL OR id = ANY(%(ids)s::uuid[]))
  AND (%(failed)s = false OR state = 'FAILURE')
  AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
RETURNING id::text, queue

-- name: purge
DELETE FROM {schema}.jobs
WHERE state IN ('PENDING', 'RETRY') AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))

-- name: active_jobs
SELECT id, task, queue, worker_id, started_at, args, kwargs
FROM {schema}.jobs WHERE state = 'STARTED' ORDER BY started_at

-- name: inspect_active
-- Each inspect listing ends with the job's payload columns (from the job_payloads view).
SELECT j.id::text, j.task, j.queue, w.hostname, w.pid, now() - j.started_at,
       p.content_type, p.compression, p.signature_scheme, p.stored_bytes, p.raw_bytes
FROM {schema}.jobs j LEFT JOIN {schema}.workers w ON w.id = j.worker_id
JOIN {schema}.job_payloads p ON p.id = j.id
WHERE j.state = 'STARTED' ORDER BY j.started_at

-- name: inspect_eta
SELECT j.id::text, j.task, j.queue, j.run_at,
       p.content_type, p.compression, p.signature_scheme, p.stored_bytes, p.raw_bytes
FROM {schema}.jobs j JOIN {schema}.job_payloads p ON p.id = j.id
WHERE j.state IN ('PENDING', 'RETRY') AND j.run_at > now() ORDER BY j.run_at LIMIT 100

-- name: inspect_failed
SELECT j.id::text, j.task, j.queue, j.finished_at, j.retries,
       left(coalesce(j.exc_type, '') || ': ' || coalesce(j.exc_message, ''), 80),
       p.content_type, p.compression, p.signature_scheme, p.stored_bytes, p.raw_bytes
FROM {schema}.jobs j JOIN {schema}.job_payloads p ON p.id = j.id
WHERE j.state = 'FAILURE' ORDER BY j.finished_at DESC LIMIT %(limit)s

-- name: queue_depth
SELECT q.name, (SELECT count(*) FROM {schema}.jobs
                WHERE queue = q.name AND state IN ('PENDING', 'RETRY'))
FROM unnest(%(queues)s::text[]) AS q(name)

-- name: lock_maintenance
SELECT pg_try_advisory_xact_lock(hashtext(%(key)s))
