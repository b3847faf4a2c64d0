"""The shop's pgq app: settings and the beat schedule. PostgreSQL is the broker and the
result store."""

import os

from pgq import App, crontab

app = App(
    "shop",
    dsn=os.environ.get("DATABASE_URL"),  # the shop's own database; None: $PGQ_DSN
    include=["pgq_app.tasks"],
)
app.conf.update(
    task_default_queue="shop",
    task_routes={"shop.send_email": {"queue": "emails"}},
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_time_limit=300,
    task_soft_time_limit=240,
    result_expires=24 * 3600,
    timezone="Europe/Berlin",
    # pgq: 10 priority levels, 9 first: Redis' 5 becomes 9 - 5.
    task_default_priority=4,
    beat_schedule={
        "daily-sales-report": {
            "task": "shop.daily_report",
            "schedule": crontab(hour=6, minute=30),
        },
    },
)
