"""Schedules as pure data: crontab and intervals → next due time. No clock reads inside."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import croniter  # type: ignore[import-untyped]

from pgq.errors import ConfigurationError


@dataclass(frozen=True)
class crontab:
    """`crontab(minute="*/5")` or `crontab("*/5 * * * *")` (croniter syntax)."""

    minute: str = "*"
    hour: str = "*"
    day_of_week: str = "*"
    day_of_month: str = "*"
    month_of_year: str = "*"

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
        if not croniter.is_valid(self.expression):
            raise ConfigurationError(f"invalid crontab expression {self.expression!r}")

    @property
    def expression(self) -> str:
        return (f"{self.minute} {self.hour} {self.day_of_month} {self.month_of_year} "
                f"{self.day_of_week}")

    def next_after(self, moment: datetime) -> datetime:
        """The first due time strictly after `moment` (an aware datetime, any zone)."""
        due: datetime = croniter(self.expression, moment).get_next(datetime)
        return due


def interval_seconds(schedule: float | timedelta) -> float:
    seconds = schedule.total_seconds() if isinstance(schedule, timedelta) else float(schedule)
    if seconds <= 0:
        raise ConfigurationError(f"a schedule interval must be positive, got {schedule!r}")
    return seconds
