"""Global rate limits: one GCRA row per rate-limited task; jobs that own a reserved slot.

Revision ID: 0002
Revises: 0001
"""

from pgq.migrations import ddl

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ddl("""
CREATE TABLE {schema}.rate_limits (
    task text PRIMARY KEY,
    tat  timestamptz NOT NULL
)
""")
    # A constant default: no table rewrite, no long lock on a big jobs table.
    ddl("ALTER TABLE {schema}.jobs ADD COLUMN rate_reserved boolean NOT NULL DEFAULT false")


def downgrade() -> None:
    ddl("ALTER TABLE {schema}.jobs DROP COLUMN rate_reserved")
    ddl("DROP TABLE {schema}.rate_limits")
