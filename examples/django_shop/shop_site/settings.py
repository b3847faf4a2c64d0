"""Settings for the example shop. The database is the one pgq uses: $PGQ_DSN (a libpq
connection string or URL), so the orders table and pgq's tables share one PostgreSQL
database — which is what lets a job be enqueued in the same transaction as the order."""

import os

from psycopg.conninfo import conninfo_to_dict

SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["orders"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "shop_site.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_db = conninfo_to_dict(os.environ["PGQ_DSN"])
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",  # psycopg 3 when it is installed
        "NAME": _db.get("dbname", ""),
        "USER": _db.get("user", ""),
        "PASSWORD": _db.get("password", ""),
        "HOST": _db.get("host", ""),
        "PORT": _db.get("port", ""),
    }
}
