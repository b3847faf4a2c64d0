"""Job payloads: serializers other than JSON, compression and signatures.

A job that is plain JSON keeps its arguments in `args`/`kwargs` and leaves these columns
NULL. Otherwise `payload` holds `[args, kwargs]` encoded as `content_type` (a MIME type) and
compressed with `compression`; `payload_size` is its size before compression. `signature` is
set on signed jobs (docs/serialization.md). All nullable without defaults: adding them
rewrites nothing.

Revision ID: 0007
Revises: 0006
"""

from pgq.migrations import ddl

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ddl("""
ALTER TABLE {schema}.jobs
    ADD COLUMN content_type text,
    ADD COLUMN compression  text,
    ADD COLUMN payload      bytea,
    ADD COLUMN payload_size integer,
    ADD COLUMN signature    text
""")
    # stored_bytes: what the row's argument columns take on disk (after TOAST compression);
    # raw_bytes: the encoded arguments before any compression.
    ddl("""
CREATE VIEW {schema}.job_payloads AS
SELECT id, task, queue, state,
       coalesce(content_type, 'application/json') AS content_type,
       compression,
       signature IS NOT NULL AS signed,
       split_part(signature, ':', 1) AS signature_scheme,
       CASE WHEN signature LIKE 'ed25519:%' THEN split_part(signature, ':', 2) END
           AS signing_key,
       pg_column_size(args) + pg_column_size(kwargs) + coalesce(pg_column_size(payload), 0)
           AS stored_bytes,
       coalesce(payload_size, octet_length(args::text) + octet_length(kwargs::text))
           AS raw_bytes
FROM {schema}.jobs
""")


def downgrade() -> None:
    ddl("DROP VIEW {schema}.job_payloads")
    ddl("""
ALTER TABLE {schema}.jobs
    DROP COLUMN content_type, DROP COLUMN compression, DROP COLUMN payload,
    DROP COLUMN payload_size, DROP COLUMN signature
""")
