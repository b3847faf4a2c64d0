"""Schedules as pure data: crontab and intervals → due times. No clock reads inside: every
function takes the moment it reasons about."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pgq.errors import ConfigurationError


@dataclass(frozen=True)
class crontab:
    """A cron schedule for `app.add_periodic_task` and `beat_schedule`, with Celery's field
    names: `crontab(minute=0, hour="9-17", day_of_week="mon-fri")`, or one cron string:
    `crontab("*/5 * * * *")` (croniter syntax). Fields are read in the `timezone` setting.

    Raises:
        ConfigurationError: The expression is not valid.
    """

    # Celery's crontab takes numbers too (`crontab(hour=6, minute=30)`): stored as strings.
    minute: str | int = "*"
    hour: str | int = "*"
    day_of_week: str | int = "*"
    day_of_month: str | int = "*"
    month_of_year: str | int = "*"

    def __post_init__(self) -> None:
        if " " in str(self.minute).strip():
            fields = str(self.minute).split()
            if len(fields) != 5:
                raise ConfigurationError(f"crontab {self.minute!r} needs 5 fields")
            for name, value in zip(("minute", "hour", "day_of_month", "month_of_year",
                                    "day_of_week"), fields, strict=True):
                object.__setattr__(self, name, value)
        for name in ("minute", "hour", "day_of_week", "day_of_month", "month_of_year"):
            object.__setattr__(self, name, str(getattr(self, name)))
        if not _croniter().is_valid(self.expression):
            raise ConfigurationError(f"invalid crontab expression {self.expression!r}")

    @property
    def expression(self) -> str:
        """The five-field cron expression: minute hour day-of-month month day-of-week."""
        return (f"{self.minute} {self.hour} {self.day_of_month} {self.month_of_year} "
                f"{self.day_of_week}")

    def next_after(self, moment: datetime, tz: str = "UTC") -> datetime:
        """The first due time strictly after `moment`, reading the fields in `tz`."""
        local = moment.astimezone(zone(tz))
        due: datetime = _croniter()(self.expression, local).get_next(datetime)
        return due.astimezone(UTC)

    def latest_at_or_before(self, moment: datetime, tz: str = "UTC") -> datetime:
        local = (moment + timedelta(microseconds=1)).astimezone(zone(tz))
        due: datetime = _croniter()(self.expression, local).get_prev(datetime)
        return due.astimezone(UTC)


def _croniter() -> Any:
    """croniter, imported on first use: importing it runs `file -b` on the Python binary
    (a subprocess, via `platform.architecture()`), which every process that imports pgq,
    producers and workers alike, would otherwise pay at start-up."""
    from croniter import croniter  # type: ignore[import-untyped]

    return croniter


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"unknown timezone {name!r} (use an IANA name such as "
                                 "'Europe/Berlin')") from None


def interval_seconds(schedule: float | timedelta) -> float:
    seconds = schedule.total_seconds() if isinstance(schedule, timedelta) else float(schedule)
    if seconds <= 0:
        raise ConfigurationError(f"a schedule interval must be positive, got {schedule!r}")
    return seconds


Schedule = crontab | float


def parse(schedule: Any) -> Schedule:
    """seconds, a timedelta or a crontab (Celery's `schedule(run_every=...)` too)."""
    if isinstance(schedule, crontab):
        return schedule
    run_every = getattr(schedule, "run_every", None)
    if run_every is not None:
        schedule = run_every
    if isinstance(schedule, timedelta | int | float) and not isinstance(schedule, bool):
        return interval_seconds(schedule)
    raise ConfigurationError(f"a schedule is seconds, a timedelta or pgq.crontab(...), "
                             f"not {schedule!r}")


def first_due(schedule: Schedule, now: datetime, tz: str) -> datetime:
    """A new interval schedule first runs one interval after it is first seen (as Celery
    beat does); a new crontab at its next due time."""
    if isinstance(schedule, crontab):
        return schedule.next_after(now, tz)
    return now + timedelta(seconds=schedule)


def latest_due(schedule: Schedule, next_run_at: datetime, now: datetime, tz: str) -> datetime:
    """The most recent due time at or before `now`, given that `next_run_at` (<= now) was
    not run yet: after downtime, only that one run is made up."""
    if isinstance(schedule, crontab):
        return max(next_run_at, schedule.latest_at_or_before(now, tz))
    missed = math.floor((now - next_run_at).total_seconds() / schedule)
    return next_run_at + timedelta(seconds=missed * schedule)


def following(schedule: Schedule, due: datetime, tz: str) -> datetime:
    if isinstance(schedule, crontab):
        return schedule.next_after(due, tz)
    return due + timedelta(seconds=schedule)
