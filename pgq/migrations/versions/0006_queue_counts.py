"""queue_stats without counting the kept history: finished jobs are counted by triggers.

Waiting and running jobs are few and sit in partial indexes, so queue_stats still counts them
live. Finished jobs (SUCCESS, FAILURE, REVOKED) can be millions; their counts live in
queue_counts, kept exact by statement-level triggers in the same transaction as every
change (workers, `pgq retry`, pruning, or an operator's own SQL). Each backend adds to its own
shard row, so concurrent workers never wait on one counter row. The trigger functions run
with the owner's rights: a producer role can enqueue without any grant on the counters.

Revision ID: 0006
Revises: 0005
"""

from pgq.migrations import ddl

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

FINISHED = "('SUCCESS', 'FAILURE', 'REVOKED')"

TASK_STATS_0005 = """
CREATE VIEW {schema}.task_stats AS
SELECT task,
       count(*) FILTER (WHERE state IN ('PENDING', 'RETRY')) AS pending,
       count(*) FILTER (WHERE state = 'STARTED') AS started,
       count(*) FILTER (WHERE state = 'SUCCESS'
                        AND finished_at > now() - interval '1 hour') AS succeeded,
       count(*) FILTER (WHERE state = 'FAILURE'
                        AND finished_at > now() - interval '1 hour') AS failed,
       count(*) FILTER (WHERE last_retry_at > now() - interval '1 hour') AS retried,
       percentile_cont(0.50) WITHIN GROUP (ORDER BY runtime_ms)
           FILTER (WHERE finished_at > now() - interval '1 hour') AS p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY runtime_ms)
           FILTER (WHERE finished_at > now() - interval '1 hour') AS p95_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY runtime_ms)
           FILTER (WHERE finished_at > now() - interval '1 hour') AS p99_ms
FROM {schema}.jobs
WHERE state IN ('PENDING', 'RETRY')
   OR state = 'STARTED'
   OR (finished_at IS NOT NULL AND finished_at > now() - interval '1 hour')
   OR (last_retry_at IS NOT NULL AND last_retry_at > now() - interval '1 hour')
GROUP BY task
"""


def upgrade() -> None:
    ddl("""
CREATE TABLE {schema}.queue_counts (
    queue text    NOT NULL,
    state text    NOT NULL,
    shard integer NOT NULL,
    jobs  bigint  NOT NULL,
    PRIMARY KEY (queue, state, shard)
) WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000)
""")
    # The oldest kept job of each (queue, finished state): one index probe per row of the view.
    ddl(f"""
CREATE INDEX jobs_finished_age ON {{schema}}.jobs (queue, state, created_at)
WHERE state IN {FINISHED}
""")
    for event, delta_sql in (
        ("INSERT", "SELECT queue, state, 1 AS delta FROM added"),
        ("DELETE", "SELECT queue, state, -1 AS delta FROM removed"),
        ("UPDATE", "SELECT queue, state, 1 AS delta FROM added "
                   "UNION ALL SELECT queue, state, -1 FROM removed"),
    ):
        name = f"count_finished_{event.lower()}"
        ddl(f"""
CREATE FUNCTION {{schema}}.{name}() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO {{schema}}.queue_counts AS c (queue, state, shard, jobs)
    SELECT queue, state, pg_backend_pid() % 16, sum(delta)
    FROM ({delta_sql}) AS d
    WHERE state IN {FINISHED}
    GROUP BY queue, state
    HAVING sum(delta) <> 0
    ON CONFLICT (queue, state, shard) DO UPDATE SET jobs = c.jobs + excluded.jobs;
    RETURN NULL;
END
$$
""")
        tables = {"INSERT": "NEW TABLE AS added", "DELETE": "OLD TABLE AS removed",
                  "UPDATE": "OLD TABLE AS removed NEW TABLE AS added"}[event]
        ddl(f"""
CREATE TRIGGER jobs_{name} AFTER {event} ON {{schema}}.jobs
REFERENCING {tables}
FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}.{name}()
""")
    ddl("""
CREATE FUNCTION {schema}.count_finished_truncate() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM {schema}.queue_counts;
    RETURN NULL;
END
$$
""")
    ddl("""
CREATE TRIGGER jobs_count_finished_truncate AFTER TRUNCATE ON {schema}.jobs
FOR EACH STATEMENT EXECUTE FUNCTION {schema}.count_finished_truncate()
""")
    # The triggers above already hold off writers until this migration commits, so the
    # starting counts cannot miss a concurrent change.
    ddl(f"""
INSERT INTO {{schema}}.queue_counts (queue, state, shard, jobs)
SELECT queue, state, 0, count(*) FROM {{schema}}.jobs
WHERE state IN {FINISHED}
GROUP BY queue, state
""")
    ddl("DROP VIEW {schema}.queue_stats")
    ddl(f"""
CREATE VIEW {{schema}}.queue_stats AS
SELECT queue, state, count(*) AS jobs, now() - min(created_at) AS oldest_age
FROM {{schema}}.jobs WHERE state IN ('PENDING', 'RETRY')
GROUP BY queue, state
UNION ALL
SELECT queue, state, count(*), now() - min(created_at)
FROM {{schema}}.jobs WHERE state = 'STARTED'
GROUP BY queue, state
UNION ALL
SELECT c.queue, c.state, c.jobs,
       now() - (SELECT j.created_at FROM {{schema}}.jobs j
                WHERE j.queue = c.queue AND j.state = c.state AND j.state IN {FINISHED}
                ORDER BY j.created_at LIMIT 1)
FROM (SELECT queue, state, sum(jobs)::bigint AS jobs FROM {{schema}}.queue_counts
      GROUP BY queue, state HAVING sum(jobs) > 0) AS c
""")
    # Vacuum's final step, cutting empty pages off the end of the table, takes an ACCESS
    # EXCLUSIVE lock that stops every claim and completion while it works; after a big prune
    # it was seen to drop a drain to 90 jobs/s. The pages are reused by new jobs anyway.
    ddl("ALTER TABLE {schema}.jobs SET (vacuum_truncate = false)")
    # task_stats as one arm per partial index, so each arm is an index range scan whatever
    # the planner thinks of an OR over four indexes on a big table.
    ddl("DROP VIEW {schema}.task_stats")
    ddl(f"""
CREATE VIEW {{schema}}.task_stats AS
SELECT task,
       count(*) FILTER (WHERE kind = 'waiting') AS pending,
       count(*) FILTER (WHERE kind = 'STARTED') AS started,
       count(*) FILTER (WHERE kind = 'SUCCESS') AS succeeded,
       count(*) FILTER (WHERE kind = 'FAILURE') AS failed,
       count(*) FILTER (WHERE kind = 'retried') AS retried,
       percentile_cont(0.50) WITHIN GROUP (ORDER BY runtime_ms) AS p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY runtime_ms) AS p95_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY runtime_ms) AS p99_ms
FROM (
    SELECT task, 'waiting' AS kind, NULL::float8 AS runtime_ms
    FROM {{schema}}.jobs WHERE state IN ('PENDING', 'RETRY')
    UNION ALL
    SELECT task, 'STARTED', NULL FROM {{schema}}.jobs WHERE state = 'STARTED'
    UNION ALL
    SELECT task, state, runtime_ms FROM {{schema}}.jobs
    WHERE finished_at > now() - interval '1 hour' AND state IN {FINISHED}
    UNION ALL
    SELECT task, 'retried', NULL FROM {{schema}}.jobs
    WHERE last_retry_at > now() - interval '1 hour'
) AS recent
GROUP BY task
""")


def downgrade() -> None:
    ddl("ALTER TABLE {schema}.jobs RESET (vacuum_truncate)")
    ddl("DROP VIEW {schema}.task_stats")
    ddl(TASK_STATS_0005)
    ddl("DROP VIEW {schema}.queue_stats")
    ddl("""
CREATE VIEW {schema}.queue_stats AS
SELECT queue, state, count(*) AS jobs, now() - min(created_at) AS oldest_age
FROM {schema}.jobs
GROUP BY queue, state
""")
    for event in ("insert", "delete", "update", "truncate"):
        ddl(f"DROP TRIGGER jobs_count_finished_{event} ON {{schema}}.jobs")
        ddl(f"DROP FUNCTION {{schema}}.count_finished_{event}()")
    ddl("DROP INDEX {schema}.jobs_finished_age")
    ddl("DROP TABLE {schema}.queue_counts")
