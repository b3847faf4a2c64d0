"""A small shop's background jobs, as a Celery 5 app (the original of ../pgq_app)."""
