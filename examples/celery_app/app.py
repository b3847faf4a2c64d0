"""The shop's Celery app: broker, result backend, settings and the beat schedule."""

import os

from celery import Celery
from celery.schedules import crontab

app = Celery(
    "shop",
    broker=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"),
    backend=os.environ.get("CELERY_RESULT_BACKEND", "redis://localhost:6379/1"),
    include=["celery_app.tasks"],
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
    broker_connection_retry_on_startup=True,
    # Redis: 10 priority levels, 0 first.
    broker_transport_options={"priority_steps": list(range(10)),
                              "queue_order_strategy": "priority"},
    task_default_priority=5,
    beat_schedule={
        "daily-sales-report": {
            "task": "shop.daily_report",
            "schedule": crontab(hour=6, minute=30),
        },
    },
)
