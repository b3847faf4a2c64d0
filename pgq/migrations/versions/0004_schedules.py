"""Periodic schedules, stored in Postgres so any number of schedulers can share them.

Revision ID: 0004
Revises: 0003
"""

from pgq.migrations import ddl

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ddl("""
CREATE TABLE {schema}.schedules (
    name        text PRIMARY KEY,
    task        text        NOT NULL,
    args        jsonb       NOT NULL DEFAULT '[]',
    kwargs      jsonb       NOT NULL DEFAULT '{}',
    options     jsonb       NOT NULL DEFAULT '{}',
    every_s     float8,                 -- an interval schedule
    cron        text,                   -- a crontab schedule (5 fields)
    timezone    text        NOT NULL DEFAULT 'UTC',
    enabled     boolean     NOT NULL DEFAULT true,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_run_at timestamptz,            -- due time of the last run enqueued
    next_run_at timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((every_s IS NULL) <> (cron IS NULL))
)
""")
    ddl("CREATE INDEX schedules_due ON {schema}.schedules (next_run_at) WHERE enabled")


def downgrade() -> None:
    ddl("DROP TABLE {schema}.schedules")
