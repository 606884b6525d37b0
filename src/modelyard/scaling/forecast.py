"""Predictive pre-warm: the hour-of-week history of each model, from the spend rows.

For each model and hour of the week, the mean number of requests ongoing (Little's law: the
seconds spent serving in that hour / 3600, averaged over the weeks of the window, hours without a
single request counting as 0). ``forecast(model, wall)`` is the larger of this hour's and the next
hour's value: a model is warm before its usual peak, not after it. Built by ``analyze``'s own
streaming fold (``planning/history.py``), refreshed by its owner (the app, hourly).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from modelyard.epoch import from_us

HOUR_US = 3_600_000_000
WEEK_H = 168


def hour_of_week(t: dt.datetime) -> int:
    t = t.astimezone(dt.timezone.utc)
    return t.weekday() * 24 + t.hour


class HourOfWeekForecast:
    def __init__(self, table: Mapping[str, tuple[float, ...]]) -> None:
        self._table = dict(table)

    @classmethod
    def from_fold(cls, fold: object) -> HourOfWeekForecast:
        """From an ``analyze.Fold`` that has seen the window's spend rows."""
        since_h, until_h = -(-fold.since_us // HOUR_US), fold.until_us // HOUR_US  # type: ignore[attr-defined]
        seen = [0] * WEEK_H  # whole hours of each hour-of-week inside the window
        for h in range(since_h, until_h):
            seen[hour_of_week(from_us(h * HOUR_US))] += 1
        table: dict[str, tuple[float, ...]] = {}
        for name, acc in fold.models.items():  # type: ignore[attr-defined]
            busy_s = [0.0] * WEEK_H
            for h, (_n, _tok, busy_ms, _lat) in acc.hours.items():
                if since_h <= h < until_h:
                    busy_s[hour_of_week(from_us(h * HOUR_US))] += busy_ms / 1000
            table[name] = tuple(b / 3600 / seen[i] if seen[i] else 0.0 for i, b in enumerate(busy_s))
        return cls(table)

    def __call__(self, model: str, wall: dt.datetime) -> float | None:
        row = self._table.get(model)
        if row is None:
            return None
        h = hour_of_week(wall)
        return max(row[h], row[(h + 1) % WEEK_H])

    def models(self) -> list[str]:
        return sorted(self._table)


async def load_forecast(db: object, now: dt.datetime, *, days: float = 14.0) -> HourOfWeekForecast:
    """Read the last ``days`` of spend rows (SQLite or PostgreSQL) into a forecast."""
    from modelyard.planning.analyze import Fold
    from modelyard.planning.history import fold_spend

    fold = Fold(now - dt.timedelta(days=days), now)
    await fold_spend(db, fold)  # type: ignore[arg-type]
    return HourOfWeekForecast.from_fold(fold)
