"""Connection intervals of peers, and the numbers derived from them (CONTRACT 4.1, 4.2).

Peer events are encoded as one integer, ``t_ms * 4 + code``, so that sorting the
integers sorts by time and, at equal times, puts a leave before a join (the
contract's tie rule). The Lua scripts use the same encoding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

CREATED, LEAVE, JOIN = 0, 1, 2
CODE_BY_EVENT_NAME = {"PEER_CREATED": CREATED, "PEER_JOINING": JOIN, "PEER_LEAVING": LEAVE}
EVENT_NAME_BY_CODE = {code: name for name, code in CODE_BY_EVENT_NAME.items()}
MS_PER_MINUTE = 60_000

Interval = tuple[int, int | None]
"""Start and end in epoch ms; end None while the peer is still connected."""


def encode(t_ms: int, code: int) -> int:
    return t_ms * 4 + code


def decode(enc: int) -> tuple[int, int]:
    return enc >> 2, enc & 3


def peer_intervals(encoded: Iterable[int], end_ms: int | None) -> list[Interval]:
    """Intervals of one peer from its events; events after ``end_ms`` are not applied.

    A join while connected and a leave while not connected change nothing. An
    interval still open at the session's end is closed at ``end_ms``.
    """
    out: list[Interval] = []
    open_since: int | None = None
    for enc in sorted(set(encoded)):
        t, code = decode(enc)
        if end_ms is not None and t > end_ms:
            break
        if code == JOIN and open_since is None:
            open_since = t
        elif code == LEAVE and open_since is not None:
            out.append((open_since, t))
            open_since = None
    if open_since is not None:
        out.append((open_since, end_ms))
    return out


def connected_ms(intervals: Sequence[Interval], now_ms: int) -> int:
    """Total connected time; open intervals count up to ``now_ms``."""
    return sum((now_ms if e is None else e) - s for s, e in intervals if (now_ms if e is None else e) > s)


@dataclass(frozen=True)
class Totals:
    """Session numbers over all peers' intervals."""

    peak: int
    open_count: int
    closed_ms: int
    open_start_sum: int

    def minutes_at(self, now_ms: int) -> float:
        """minutes_consumed, open intervals counted up to ``now_ms``."""
        return (self.closed_ms + self.open_count * now_ms - self.open_start_sum) / MS_PER_MINUTE


def totals(intervals_by_peer: Mapping[str, Sequence[Interval]]) -> Totals:
    """Peak concurrency by event time (leaves before joins at equal times) and time sums.

    Intervals are half-open, ``[start, end)``, so an empty one is never counted.
    """
    points: list[int] = []
    open_count = closed_ms = open_start_sum = 0
    for intervals in intervals_by_peer.values():
        for s, e in intervals:
            if e is None:
                open_count += 1
                open_start_sum += s
                points.append(s * 2 + 1)
            elif e > s:
                closed_ms += e - s
                points.append(s * 2 + 1)
                points.append(e * 2)
    points.sort()
    peak = current = 0
    for p in points:
        current += 1 if p & 1 else -1
        peak = max(peak, current)
    return Totals(peak, open_count, closed_ms, open_start_sum)


def format_intervals(intervals: Sequence[Interval]) -> str:
    """The compact text form kept in Redis (`sp:{id}:piv`): ``s-e,s-e,s-``."""
    return ",".join(f"{s}-{'' if e is None else e}" for s, e in intervals)


def parse_intervals(text: str) -> list[Interval]:
    out: list[Interval] = []
    for part in filter(None, text.split(",")):
        s, _, e = part.partition("-")
        out.append((int(s), int(e) if e else None))
    return out
