"""Event times: ISO-8601 text in, epoch milliseconds inside, ISO-8601 UTC with milliseconds out."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta


class TimestampError(ValueError):
    """A timestamp that is not ISO-8601."""


def parse_iso_ms(text: str) -> int:
    """ISO-8601 text to epoch milliseconds; text without an offset is taken as UTC."""
    try:
        dt = datetime.fromisoformat(text)
    except (TypeError, ValueError) as exc:
        raise TimestampError(f"not an ISO-8601 timestamp: {text!r:.80}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    # Integer arithmetic, not timestamp(): float seconds would round some milliseconds.
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def iso_ms(ms: int) -> str:
    """Epoch milliseconds to ISO-8601 UTC with milliseconds and a `Z`."""
    # Summaries format two times per participant: the date and hour come from a small cache
    # (times cluster in a few hours), "MM:SS." and "mmmZ" from tables. A third of the cost of
    # formatting them with f-string specs, a sixth of datetime.isoformat's.
    hour, rest = divmod(ms, _HOUR_MS)
    prefix = _hour_prefixes.get(hour)
    if prefix is None:
        if len(_hour_prefixes) >= _HOUR_PREFIXES_MAX:
            _hour_prefixes.clear()
        prefix = _hour_prefixes[hour] = (_EPOCH_NAIVE + timedelta(hours=hour)).isoformat()[:14]
    second, milli = divmod(rest, 1000)
    return prefix + _MINUTE_SECOND[second] + _MILLI_Z[milli]


def now_ms() -> int:
    """The service's clock, in epoch milliseconds."""
    return int(time.time() * 1000)


def iso_or_none(ms: int | None) -> str | None:
    return None if ms is None else iso_ms(ms)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_HOUR_MS = 3_600_000
_HOUR_PREFIXES_MAX = 10_000
_hour_prefixes: dict[int, str] = {}  # hours since the epoch -> "YYYY-MM-DDTHH:"
_MINUTE_SECOND = [f"{m:02d}:{s:02d}." for m in range(60) for s in range(60)]  # second of the hour
_MILLI_Z = [f"{m:03d}Z" for m in range(1000)]
