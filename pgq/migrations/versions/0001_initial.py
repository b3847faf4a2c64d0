"""Jobs, workers, the wake-up trigger and the monitoring views.

Revision ID: 0001
Revises:
"""

from pgq.migrations import ddl

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    ddl("""
CREATE TABLE {schema}.jobs (
    id             uuid PRIMARY KEY,
    task           text        NOT NULL,
    queue          text        NOT NULL,
    priority       smallint    NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 9),
    state          text        NOT NULL DEFAULT 'PENDING',
    args           jsonb       NOT NULL DEFAULT '[]',
    kwargs         jsonb       NOT NULL DEFAULT '{}',
    options        jsonb       NOT NULL DEFAULT '{}',
    run_at         timestamptz NOT NULL DEFAULT now(),
    eta            timestamptz,
    expires_at     timestamptz,
    retries        integer     NOT NULL DEFAULT 0,
    attempts       integer     NOT NULL DEFAULT 0,
    unique_key     text,
    root_id        uuid,
    parent_id      uuid,
    group_id       uuid,
    worker_id      uuid,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz,
    runtime_ms     float8,
    progress_state text,
    meta           jsonb,
    result         jsonb,
    exc_type       text,
    exc_message    text,
    traceback      text
) WITH (fillfactor = 70,
        autovacuum_vacuum_scale_factor = 0.01,
        autovacuum_analyze_scale_factor = 0.02)
""")
    # The claim scans only waiting rows, in the order it claims them.
    ddl("""
CREATE INDEX jobs_ready ON {schema}.jobs (queue, priority DESC, run_at, id)
WHERE state IN ('PENDING', 'RETRY')
""")
    ddl("""
CREATE UNIQUE INDEX jobs_unique_key ON {schema}.jobs (unique_key)
WHERE unique_key IS NOT NULL AND state IN ('PENDING', 'RETRY', 'STARTED')
""")
    ddl("CREATE INDEX jobs_running ON {schema}.jobs (worker_id) WHERE state = 'STARTED'")
    ddl("CREATE INDEX jobs_finished ON {schema}.jobs (finished_at) WHERE finished_at IS NOT NULL")
    ddl("""
CREATE TABLE {schema}.workers (
    id             uuid PRIMARY KEY,
    hostname       text        NOT NULL,
    pid            integer     NOT NULL,
    queues         text[]      NOT NULL,
    concurrency    integer     NOT NULL,
    pool           text        NOT NULL,
    lost_timeout   interval    NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz NOT NULL DEFAULT now(),
    stopped_at     timestamptz
)
""")
    # One NOTIFY per queue per statement, from the database itself, so a raw SQL insert wakes
    # workers too. A bulk loader can `SET LOCAL pgq.skip_notify = on` and rely on polling.
    ddl("""
CREATE FUNCTION {schema}.notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('pgq.skip_notify', true), '') <> 'on' THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '_jobs', queue)
        FROM (SELECT DISTINCT queue FROM new_jobs) AS queues;
    END IF;
    RETURN NULL;
END
$$
""")
    ddl("""
CREATE TRIGGER jobs_notify AFTER INSERT ON {schema}.jobs
REFERENCING NEW TABLE AS new_jobs
FOR EACH STATEMENT EXECUTE FUNCTION {schema}.notify_jobs()
""")
    ddl("""
CREATE VIEW {schema}.queue_stats AS
SELECT queue, state, count(*) AS jobs, now() - min(created_at) AS oldest_age
FROM {schema}.jobs
GROUP BY queue, state
""")
    ddl("""
CREATE VIEW {schema}.worker_status AS
SELECT w.id AS worker, w.hostname, w.pid, w.queues, w.concurrency,
       (SELECT count(*) FROM {schema}.jobs j
        WHERE j.state = 'STARTED' AND j.worker_id = w.id) AS running,
       w.started_at, w.last_heartbeat,
       (w.stopped_at IS NULL AND w.last_heartbeat > now() - w.lost_timeout) AS alive
FROM {schema}.workers w
""")
    ddl("ANALYZE {schema}.jobs")
    ddl("ANALYZE {schema}.workers")


def downgrade() -> None:
    ddl("DROP VIEW {schema}.worker_status")
    ddl("DROP VIEW {schema}.queue_stats")
    ddl("DROP TABLE {schema}.workers")
    ddl("DROP TABLE {schema}.jobs")
    ddl("DROP FUNCTION {schema}.notify_jobs()")
