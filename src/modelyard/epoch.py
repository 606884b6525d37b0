"""Integer microseconds since the Unix epoch (UTC): how the database stores every time, so that
comparisons, keyset cursors and day buckets are exact and portable across SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_US = dt.timedelta(microseconds=1)


def to_us(t: dt.datetime) -> int:
    if t.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")
    return (t - EPOCH) // _US


def from_us(us: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=int(us))
