"""Event times: ISO-8601 text in, epoch milliseconds inside, ISO-8601 UTC with milliseconds out."""

from __future__ import annotations

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
    # Naive UTC arithmetic and isoformat(): about half the cost of strftime, and summaries
    # format two times per participant.
    return (_EPOCH_NAIVE + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds") + "Z"


def iso_or_none(ms: int | None) -> str | None:
    return None if ms is None else iso_ms(ms)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
