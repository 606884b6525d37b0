"""Five-field cron expressions (minute hour day-of-month month day-of-week), pure.

Fields take ``*``, numbers, ranges ``a-b``, steps ``*/n`` and ``a-b/n``, lists ``a,b``; day-of-week
0-7 (0 and 7 are Sunday) and the names ``sun..sat`` / ``jan..dec``. As in Vixie cron, when both
day-of-month and day-of-week are restricted, a day matching either counts. Used by the autoscaler's
pre-warm windows and rendered unchanged into KEDA cron triggers.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from modelyard.errors import ModelyardError


class CronError(ModelyardError):
    status = 400
    code = "invalid_cron"


_NAMES = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6,
          "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6, "jul": 7, "aug": 8, "sep": 9,
          "oct": 10, "nov": 11, "dec": 12}
_RANGES = ((0, 59, "minute"), (0, 23, "hour"), (1, 31, "day of month"), (1, 12, "month"), (0, 7, "day of week"))


def _value(tok: str, what: str) -> int:
    t = tok.lower()
    if t in _NAMES:
        return _NAMES[t]
    if not t.isdigit():
        raise CronError(f"{what}: {tok!r} is not a number")
    return int(t)


def _field(text: str, lo: int, hi: int, what: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        rng, _, step_s = part.partition("/")
        step = _value(step_s, what) if step_s else 1
        if step < 1:
            raise CronError(f"{what}: step must be at least 1")
        if rng == "*":
            a, b = lo, hi
        elif "-" in rng:
            x, _, y = rng.partition("-")
            a, b = _value(x, what), _value(y, what)
        else:
            a = _value(rng, what)
            b = hi if step_s else a
        if not (lo <= a <= hi and lo <= b <= hi) or a > b:
            raise CronError(f"{what}: {part!r} is outside {lo}-{hi}")
        out.update(range(a, b + 1, step))
    return frozenset(out)


@dataclass(frozen=True)
class Cron:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, text: str) -> Cron:
        parts = text.split()
        if len(parts) != 5:
            raise CronError(f"cron {text!r}: five fields expected (minute hour day-of-month month day-of-week)")
        f = [_field(p, lo, hi, what) for p, (lo, hi, what) in zip(parts, _RANGES, strict=True)]
        weekdays = frozenset(d % 7 for d in f[4])
        return cls(text, f[0], f[1], f[2], f[3], weekdays, parts[2] == "*", parts[4] == "*")

    def matches(self, t: dt.datetime) -> bool:
        if t.minute not in self.minutes or t.hour not in self.hours or t.month not in self.months:
            return False
        dom = t.day in self.days
        dow = (t.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow

    def last_fire(self, t: dt.datetime, within_s: float) -> dt.datetime | None:
        """The latest minute ≤ ``t`` at which this fires, looking back at most ``within_s`` (else None)."""
        m = t.replace(second=0, microsecond=0)
        steps = int(within_s // 60) + 1
        for _ in range(min(steps, 366 * 24 * 60)):
            if self.matches(m):
                return m
            m -= dt.timedelta(minutes=1)
        return None

    def next_fire(self, t: dt.datetime, within_s: float = 8 * 86400) -> dt.datetime | None:
        """The first minute > ``t`` at which this fires, within ``within_s``."""
        m = t.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        for _ in range(int(within_s // 60) + 1):
            if self.matches(m):
                return m
            m += dt.timedelta(minutes=1)
        return None
