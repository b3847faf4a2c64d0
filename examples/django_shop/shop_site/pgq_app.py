"""The pgq app of the shop (the counterpart of Celery's `proj/celery.py`).

`pgq worker -A shop_site.pgq_app` imports this module first: it sets Django up, then the
worker imports `orders.tasks` (the `include` list). Imported from a view instead, Django is
already set up and this does nothing more."""

import os

import django
from django.apps import apps
from django.db import close_old_connections

from pgq import App, Task

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop_site.settings")
if not apps.ready and not apps.loading:
    django.setup()


class DjangoTask(Task):
    """Drop a broken or expired database connection around each job, as Django does around
    each request (and Celery's Django fix-up around each task)."""

    def __call__(self, *args, **kwargs):
        close_old_connections()
        try:
            return super().__call__(*args, **kwargs)
        finally:
            close_old_connections()


app = App("shop", task_cls=DjangoTask, include=["orders.tasks"])
