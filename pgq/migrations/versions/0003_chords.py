"""Chords: one counter row per chord, decremented in the transaction that stores each header
result; the transaction that takes it to zero enqueues the body.

Revision ID: 0003
Revises: 0002
"""

from pgq.migrations import ddl

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ddl("""
CREATE TABLE {schema}.chords (
    id         uuid PRIMARY KEY,
    state      text        NOT NULL DEFAULT 'PENDING',  -- PENDING, DONE, FAILED
    pending    integer     NOT NULL,                    -- header jobs not yet succeeded
    header_ids uuid[]      NOT NULL,                    -- in the header's order
    body       jsonb       NOT NULL,                    -- the body signature
    body_id    uuid        NOT NULL,
    options    jsonb       NOT NULL DEFAULT '{}',       -- link_error callbacks
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
)
""")
    ddl("CREATE INDEX jobs_root ON {schema}.jobs (root_id)")
    ddl("CREATE INDEX jobs_group ON {schema}.jobs (group_id) WHERE group_id IS NOT NULL")


def downgrade() -> None:
    ddl("DROP INDEX {schema}.jobs_group")
    ddl("DROP INDEX {schema}.jobs_root")
    ddl("DROP TABLE {schema}.chords")
