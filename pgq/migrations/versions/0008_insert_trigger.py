"""One INSERT trigger on jobs instead of two: the NOTIFY and the finished-job count together.

Every enqueue ran two statement-level triggers, each with its own transition table and
query: `jobs_notify` and `jobs_count_finished_insert`, the latter SECURITY DEFINER, whose
`SET search_path` alone costs ~11 us per call. Together they were ~57 us of PostgreSQL's
time per single-row INSERT, for counting rows that are almost never finished when inserted.
`jobs_inserted` reads its transition table once, per queue: NOTIFY (unless
`pgq.skip_notify`), and only if finished rows arrived, it calls the owner-rights counter.
~28 us per INSERT (docs/performance.md, round 5).

`count_finished_added` can only add what its caller inserted (one per state given), and only
from inside a trigger: a role that may insert jobs could already raise the counts by
inserting finished rows; nobody can lower them.

Revision ID: 0008
Revises: 0007
"""

from pgq.migrations import ddl

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

FINISHED = "('SUCCESS', 'FAILURE', 'REVOKED')"


def upgrade() -> None:
    ddl(f"""
CREATE FUNCTION {{schema}}.count_finished_added(job_queue text, job_states text[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_trigger_depth() = 0 THEN
        RAISE EXCEPTION 'count_finished_added is called by the jobs_inserted trigger only';
    END IF;
    INSERT INTO {{schema}}.queue_counts AS c (queue, state, shard, jobs)
    SELECT job_queue, s.state, pg_backend_pid() % 16, count(*)
    FROM unnest(job_states) AS s(state)
    WHERE s.state IN {FINISHED}
    GROUP BY s.state
    ON CONFLICT (queue, state, shard) DO UPDATE SET jobs = c.jobs + excluded.jobs;
END
$$
""")
    ddl(f"""
CREATE FUNCTION {{schema}}.jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    notify boolean := coalesce(current_setting('pgq.skip_notify', true), '') <> 'on';
    added_queue record;
BEGIN
    FOR added_queue IN
        SELECT queue, array_agg(state) FILTER (WHERE state IN {FINISHED}) AS finished
        FROM added GROUP BY queue
    LOOP
        IF notify THEN
            PERFORM pg_notify(TG_TABLE_SCHEMA || '_jobs', added_queue.queue);
        END IF;
        IF added_queue.finished IS NOT NULL THEN
            PERFORM {{schema}}.count_finished_added(added_queue.queue, added_queue.finished);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$
""")
    ddl("""
CREATE TRIGGER jobs_inserted AFTER INSERT ON {schema}.jobs
REFERENCING NEW TABLE AS added
FOR EACH STATEMENT EXECUTE FUNCTION {schema}.jobs_inserted()
""")
    ddl("DROP TRIGGER jobs_notify ON {schema}.jobs")
    ddl("DROP TRIGGER jobs_count_finished_insert ON {schema}.jobs")
    ddl("DROP FUNCTION {schema}.notify_jobs()")
    ddl("DROP FUNCTION {schema}.count_finished_insert()")


def downgrade() -> None:
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
    ddl(f"""
CREATE FUNCTION {{schema}}.count_finished_insert() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO {{schema}}.queue_counts AS c (queue, state, shard, jobs)
    SELECT queue, state, pg_backend_pid() % 16, sum(delta)
    FROM (SELECT queue, state, 1 AS delta FROM added) AS d
    WHERE state IN {FINISHED}
    GROUP BY queue, state
    HAVING sum(delta) <> 0
    ON CONFLICT (queue, state, shard) DO UPDATE SET jobs = c.jobs + excluded.jobs;
    RETURN NULL;
END
$$
""")
    ddl("""
CREATE TRIGGER jobs_count_finished_insert AFTER INSERT ON {schema}.jobs
REFERENCING NEW TABLE AS added
FOR EACH STATEMENT EXECUTE FUNCTION {schema}.count_finished_insert()
""")
    ddl("""
CREATE TRIGGER jobs_notify AFTER INSERT ON {schema}.jobs
REFERENCING NEW TABLE AS new_jobs
FOR EACH STATEMENT EXECUTE FUNCTION {schema}.notify_jobs()
""")
    ddl("DROP TRIGGER jobs_inserted ON {schema}.jobs")
    ddl("DROP FUNCTION {schema}.jobs_inserted()")
    ddl("DROP FUNCTION {schema}.count_finished_added(text, text[])")
