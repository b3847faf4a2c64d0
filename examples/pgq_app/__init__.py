"""A small shop's background jobs, as a pgq app (converted from ../celery_app)."""
