"""Least-privilege roles: what a producer, a worker and a monitor may do in the pgq schema.

- producer: enqueue (INSERT jobs and chords) and read results (SELECT jobs); it cannot claim,
  complete or delete jobs.
- worker: everything in the schema's tables (claim, complete, heartbeat, schedules).
- monitor: read the monitoring views, and nothing else (views run with their owner's rights).
"""

from __future__ import annotations

from psycopg import sql

VIEWS = ("queue_stats", "worker_status", "task_stats", "recent_failures", "job_payloads")


def grant_statements(schema: str, *, producer: str | None = None, worker: str | None = None,
                     monitor: str | None = None, create: bool = False) -> list[sql.Composed]:
    s = sql.Identifier(schema)
    statements: list[sql.Composed] = []
    for role in (producer, worker, monitor):
        if role and create:
            statements.append(sql.SQL(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {name}) "
                "THEN CREATE ROLE {role} LOGIN; END IF; END $$").format(
                    name=sql.Literal(role), role=sql.Identifier(role)))
        if role:
            statements.append(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                s, sql.Identifier(role)))
    if producer:
        statements.append(sql.SQL("GRANT SELECT, INSERT ON {}.jobs, {}.chords TO {}").format(
            s, s, sql.Identifier(producer)))
    if worker:
        statements.append(sql.SQL(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}").format(
                s, sql.Identifier(worker)))
    if monitor:
        views = sql.SQL(", ").join(sql.SQL("{}.{}").format(s, sql.Identifier(v))
                                   for v in VIEWS)
        statements.append(sql.SQL("GRANT SELECT ON {} TO {}").format(
            views, sql.Identifier(monitor)))
    return statements
