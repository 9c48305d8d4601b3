"""Time on the hourly grid (UTC unix seconds): the bar length, defined once for every module, and
the one parser of user-given times (``--start``/``--end``, ``[research] start``/``end``)."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["HOUR", "parse_utc"]

#: one bar of the hourly grid, in seconds
HOUR = 3600


def parse_utc(value: str | int | None, *, end: bool = False) -> int | None:
    """Unix seconds from unix seconds or an ISO date/datetime in UTC (naive = UTC); None stays None.

    A bare date as ``end`` means the whole day (through 23:59:59), so an end of ``2025-11-15``
    includes that day's 23:00 bar.
    """
    from engine.errors import InputError

    if value is None:
        return None
    v = str(value).strip()
    if not v.isascii():  # '١٧٠٠٠٠٠٠٠٠' and '²' pass str.isdigit(); they are not times
        raise InputError(f"invalid time {value!r} (use unix seconds, 2024-01-31 or 2024-01-31T13:00)")
    if v.lstrip("-").isdigit():
        ts = int(v)
        if abs(ts) >= 2**53:
            raise InputError(f"invalid time {value!r} (unix seconds out of range)")
        return ts
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"invalid time {value!r} (use unix seconds, 2024-01-31 or 2024-01-31T13:00)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    ts = int(dt.timestamp())
    if end and len(v) == 10:
        ts += 86400 - 1
    return ts
