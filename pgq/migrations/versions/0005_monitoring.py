"""Monitoring: task_stats and recent_failures views; when a job last had a retry scheduled.

Revision ID: 0005
Revises: 0004
"""

from pgq.migrations import ddl

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ddl("ALTER TABLE {schema}.jobs ADD COLUMN last_retry_at timestamptz")
    ddl("""
CREATE INDEX jobs_failed ON {schema}.jobs (finished_at) WHERE state = 'FAILURE'
""")
    ddl("""
CREATE INDEX jobs_retried ON {schema}.jobs (last_retry_at) WHERE last_retry_at IS NOT NULL
""")
    # Each arm of the OR matches one partial index, so the planner can combine bitmap scans
    # and never reads the millions of older finished rows.
    ddl("""
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
""")
    ddl("""
CREATE VIEW {schema}.recent_failures AS
SELECT id, task, queue, finished_at AS failed_at, retries, exc_type, exc_message
FROM {schema}.jobs
WHERE state = 'FAILURE'
ORDER BY finished_at DESC
""")


def downgrade() -> None:
    ddl("DROP VIEW {schema}.recent_failures")
    ddl("DROP VIEW {schema}.task_stats")
    ddl("DROP INDEX {schema}.jobs_retried")
    ddl("DROP INDEX {schema}.jobs_failed")
    ddl("ALTER TABLE {schema}.jobs DROP COLUMN last_retry_at")
