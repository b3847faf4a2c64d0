"""Settings: Celery's lowercase names where they mean the same thing, plus pgq's own.

Lookup order for a setting: set in code (`App(**settings)`, `conf.update`, `config_from_object`)
→ environment variable `PGQ_<NAME>` → default. Names that Celery knows but pgq has no use for
are accepted with one warning; any other name raises `ConfigurationError`, so typos surface.
"""

from __future__ import annotations

import copy
import importlib
import os
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any, TypeVar

import orjson

from pgq.errors import ConfigurationError

T = TypeVar("T")
A = TypeVar("A")


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(v) for v in value]


def _json_env(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str) else value


def parse_autoscale(value: Any) -> tuple[int, int]:
    """`"10,3"` (or `[10, 3]`) → (10, 3); `"10"` → (10, 0). As in Celery, the larger number is
    the maximum, whichever comes first."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        numbers = [int(part) for part in parts]
    except (TypeError, ValueError):
        numbers = []
    if not 1 <= len(numbers) <= 2:
        raise ConfigurationError(f"--autoscale/worker_autoscale {value!r} is not valid: "
                                 "expected MAX,MIN (two integers, e.g. 10,3) or MAX alone")
    if len(numbers) == 1:
        numbers.append(0)
    high, low = max(numbers), min(numbers)
    if low < 0 or high < 1:
        raise ConfigurationError(f"--autoscale/worker_autoscale {value!r} is not valid: "
                                 "MAX must be at least 1 and MIN at least 0")
    return high, low


def _queue_databases(value: Any) -> dict[str, str]:
    """`{"queue": "dsn", ...}` (JSON in the environment): queues whose jobs live in another
    PostgreSQL database (see pgq/routing.py)."""
    from pgq.db.connection import check_dsn

    value = _json_env(value) or {}
    if not isinstance(value, Mapping) or not all(
            isinstance(q, str) and q and isinstance(d, str) and d for q, d in value.items()):
        raise ConfigurationError(
            f"queue_databases must map queue names to DSNs, like "
            f'{{"heavy": "postgresql://db2/jobs"}}; got {value!r}')
    return {queue: check_dsn(dsn) for queue, dsn in value.items()}


def _as_is(value: Any) -> Any:
    return value


def _content_list(value: Any) -> list[str]:
    """accept_content: a list, or from the environment `json,pickle` or `["json", "pickle"]`."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        value = orjson.loads(value)
    return _str_list(value)


def _serializer_name(value: Any) -> str:
    from pgq.payload import SERIALIZERS, serializer_names

    if str(value) not in serializer_names():
        raise ConfigurationError(f"unknown serializer {value!r}: use one of "
                                 f"{', '.join(SERIALIZERS)}")
    return str(value)


def _compression_name(value: Any) -> str | None:
    from pgq.payload import compression

    try:
        return compression(str(value)) if value else None
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


# name -> (default, converter). The converter also parses the PGQ_* environment string.
SETTINGS: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "task_default_queue": ("default", str),
    "task_default_priority": (0, int),
    "task_acks_late": (True, _bool),
    "task_track_started": (True, _bool),
    "task_time_limit": (None, _seconds),
    "task_soft_time_limit": (None, _seconds),
    "task_serializer": ("json", _serializer_name),
    "result_serializer": ("json", _serializer_name),
    "accept_content": (["json"], _content_list),
    "result_accept_content": (None, _content_list),
    "task_compression": (None, _compression_name),
    "result_compression": (None, _compression_name),
    # Signed jobs (docs/serialization.md): an Ed25519 private key (PEM text or a file) signs
    # what this process sends; workers verify with the public keys in security_cert_store.
    "security_key": (None, _as_is),
    "security_key_password": (None, _as_is),
    "security_cert_store": (None, _as_is),
    # pgq's own: a shared secret (or a list, the first signs) for HMAC-SHA256 signatures,
    # and whether a worker refuses jobs that are not signed.
    "security_hmac_key": (None, _as_is),
    "security_require_signature": (False, _bool),
    "task_routes": (None, _json_env),
    "task_always_eager": (False, _bool),
    "task_eager_propagates": (False, _bool),
    "task_ignore_result": (False, _bool),
    "result_expires": (86400.0, _seconds),
    "worker_concurrency": (None, _int_or_none),
    "worker_max_tasks_per_child": (None, _int_or_none),
    "worker_max_memory_per_child": (None, _int_or_none),
    "worker_prefetch_multiplier": (None, _int_or_none),  # None: sized from run times
    "worker_pool": ("prefork", str),
    "worker_autoscale": (None, parse_autoscale),  # pgq's: the default of --autoscale MAX,MIN
    "worker_send_task_events": (True, _bool),  # task-* events (worker-* events always)
    "beat_schedule": ({}, _json_env),
    "timezone": ("UTC", str),
    "enable_utc": (True, _bool),
    "include": ([], _str_list),
    "imports": ([], _str_list),
    # pgq's own
    "worker_lost_timeout": (30.0, float),
    "worker_heartbeat_interval": (5.0, float),
    "worker_poll_interval": (2.0, float),
    "worker_autoscale_keepalive": (30.0, float),  # Celery's AUTOSCALE_KEEPALIVE
    "result_poll_interval": (2.0, float),
    "pool_max_size": (10, int),
    # Through PgBouncer in transaction mode: no server-side prepared statements, and LISTEN
    # only over `listen_dsn` (a direct connection) — without one, workers and get() poll.
    "pgbouncer": (False, _bool),
    "listen_dsn": (None, str),
    # Queues whose jobs live in another PostgreSQL database: {"heavy": "postgresql://..."}.
    "queue_databases": ({}, _queue_databases),
}

# Celery settings that have no meaning here: accepted, warned about once, otherwise ignored.
CELERY_IGNORED = frozenset("""
accept_content broker_api broker_channel_error_retry broker_connection_max_retries
broker_connection_retry broker_connection_retry_on_startup broker_connection_timeout
broker_failover_strategy broker_heartbeat broker_heartbeat_checkrate broker_login_method
broker_native_delayed_delivery_queue_type broker_pool_limit broker_read_url
broker_transport broker_transport_options broker_url broker_use_ssl broker_write_url
cache_backend cache_backend_options cassandra_servers control_exchange
control_queue_expires control_queue_ttl database_engine_options
database_short_lived_sessions database_table_names database_table_schemas
deprecated_settings event_exchange event_queue_expires event_queue_prefix event_queue_ttl
event_serializer result_backend result_backend_always_retry
result_backend_base_sleep_between_retries result_backend_max_retries
result_backend_max_sleep_between_retries result_backend_thread_safe
result_backend_transport_options result_cache_max result_chord_join_timeout
result_chord_retry_interval result_compression result_exchange result_exchange_type
result_extended result_persistent redis_backend_health_check_interval
redis_max_connections redis_retry_on_timeout redis_socket_connect_timeout
redis_socket_keepalive redis_socket_timeout security_cert_store security_certificate
security_digest security_key security_key_password task_annotations task_compression
task_create_missing_queues task_default_delivery_mode task_default_exchange
task_default_exchange_type task_default_rate_limit task_default_routing_key
task_inherit_parent_priority task_protocol task_publish_retry task_publish_retry_policy
task_queue_max_priority task_queues task_reject_on_worker_lost task_remote_tracebacks
task_send_sent_event task_store_errors_even_if_ignored worker_agent worker_autoscaler
worker_cancel_long_running_tasks_on_connection_loss worker_consumer worker_direct
worker_disable_rate_limits worker_enable_remote_control worker_hijack_root_logger
worker_log_color worker_log_format worker_lost_wait worker_proc_alive_timeout
worker_redirect_stdouts worker_redirect_stdouts_level worker_send_task_events
worker_state_db worker_task_log_format worker_timer worker_timer_precision
worker_deduplicate_successful_tasks worker_enable_prefetch_count_reduction
beat_max_loop_interval beat_schedule_filename beat_scheduler beat_sync_every
beat_cron_starting_deadline result_backend_table_names
task_allow_error_cb_on_chord_header worker_soft_shutdown_timeout
worker_enable_soft_shutdown_on_idle
""".split()) - frozenset(SETTINGS)


class Settings(Mapping[str, Any]):
    """`app.conf`: attribute and mapping access to every setting."""

    def __init__(self, **explicit: Any) -> None:
        object.__setattr__(self, "_explicit", {})
        object.__setattr__(self, "_resolved", {})  # env/default lookups, read once
        object.__setattr__(self, "_warned", set())
        object.__setattr__(self, "_memo", {})  # values derived from settings, see memo()
        self.update(**explicit)

    def update(self, __mapping: Mapping[str, Any] | None = None, **settings: Any) -> None:
        items = {**(__mapping or {}), **settings}
        for name in items:
            self._check_name(name)
        for name, value in items.items():
            if name in SETTINGS:
                self._explicit[name] = value if value is None else SETTINGS[name][1](value)
                self._resolved.pop(name, None)
        self._memo.clear()

    def memo(self, key: str, build: Callable[[A], T], arg: A) -> T:
        """A value derived from settings: `build(arg)`, built once and rebuilt after any
        update (hot paths read it instead of several settings: `conf.name` costs ~1.5 µs)."""
        try:
            return self._memo[key]  # type: ignore[no-any-return]
        except KeyError:
            value = self._memo[key] = build(arg)
            return value

    def _check_name(self, name: str) -> None:
        if name in SETTINGS:
            return
        if name in CELERY_IGNORED:
            if name not in self._warned:
                self._warned.add(name)
                warnings.warn(
                    f"pgq ignores Celery setting {name!r}: it has no meaning when Postgres is "
                    "the broker and the result store",
                    stacklevel=4,
                )
            return
        raise ConfigurationError(
            f"unknown setting {name!r}: not a Celery or pgq setting name "
            "(see docs/configuration.md for the list)"
        )

    def __getitem__(self, name: str) -> Any:
        if name in self._explicit:
            return self._explicit[name]
        if name not in self._resolved:
            self._resolved[name] = self._from_env_or_default(name)
        return self._resolved[name]

    def _from_env_or_default(self, name: str) -> Any:
        if name not in SETTINGS:
            raise KeyError(name)
        default, convert = SETTINGS[name]
        env = os.environ.get("PGQ_" + name.upper())
        if env is not None:
            try:
                return convert(env)
            except (ValueError, orjson.JSONDecodeError) as exc:
                raise ConfigurationError(
                    f"environment variable PGQ_{name.upper()}={env!r} is not valid: {exc}"
                ) from None
        return copy.deepcopy(default)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self.update(**{name: value})

    def __iter__(self) -> Iterator[str]:
        return iter(SETTINGS)

    def __len__(self) -> int:
        return len(SETTINGS)

    def from_object(self, obj: Any) -> None:
        if isinstance(obj, str):
            try:
                obj = importlib.import_module(obj)
            except ImportError as exc:
                raise ConfigurationError(f"cannot import config module {obj!r}: {exc}") from None
        if isinstance(obj, Mapping):
            self.update(obj)
            return
        # A config module also holds its imports and helpers: take only plain values.
        self.update({
            name: value for name, value in vars(obj).items()
            if name.islower() and not name.startswith("_")
            and not callable(value) and not isinstance(value, types.ModuleType)
        })
