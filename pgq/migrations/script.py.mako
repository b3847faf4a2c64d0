"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
"""

from pgq.migrations import ddl

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = None
depends_on = None


def upgrade() -> None:
    ddl("")


def downgrade() -> None:
    ddl("")
