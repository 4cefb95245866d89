"""Properties of the reference model: arrival order and duplicates never change a session."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core import shapes
from service.core.intervals import Interval, totals
from service.core.model import PeerEvent, ReferenceSession, SessionView

from .rtk_factory import Item, apply, peer_event, session_message, session_of, t

PEERS = ("p0", "p1", "p2", "p3")
NAMES = ("PEER_CREATED", "PEER_JOINING", "PEER_LEAVING")
SECONDS = st.integers(min_value=0, max_value=12)  # a small range, so ties are common

_event = st.tuples(
    st.sampled_from(PEERS),
    st.sampled_from(NAMES),
    SECONDS,
    st.sampled_from([None, "Ann", "Bob"]),  # display_name carried by the event, if any
)
_session = st.one_of(
    st.tuples(st.just("LIVE"), SECONDS, SECONDS, st.none(), st.sampled_from(["T1", "T2"])),
    st.tuples(st.just("ENDED"), SECONDS, SECONDS, SECONDS, st.sampled_from(["T1", "T2"])),
)


@st.composite
def event_logs(draw: st.DrawFn) -> list[Item]:
    """A session's log: peer events unique by (peer, name, time), and 0-3 session messages."""
    events = draw(st.lists(_event, min_size=1, max_size=24, unique_by=lambda e: e[:3]))
    sessions = draw(st.lists(_session, max_size=3, unique=True))
    log: list[Item] = []
    for peer, name, at, display_name in events:
        details = {} if display_name is None else {"display_name": display_name}
        log.append(peer_event(peer, name, at, **details))
    for status, updated, started, ended, title in sessions:
        log.append(session_message(status, updated=updated, started=started, ended=ended, title=title))
    return log


def _time(item: Item) -> int:
    return item.t_ms if isinstance(item, PeerEvent) else item.updated_ms


def _sorted(log: Sequence[Item]) -> list[Item]:
    return sorted(log, key=lambda i: (_time(i), isinstance(i, PeerEvent), repr(i)))


@st.composite
def redeliveries(draw: st.DrawFn, log: list[Item]) -> list[Item]:
    """The log with some items delivered again, as the same object or (peer events) under a new id."""
    extra: list[Item] = []
    for n, (index, new_id) in enumerate(
        draw(st.lists(st.tuples(st.integers(0, len(log) - 1), st.booleans()), max_size=12))
    ):
        item = log[index]
        if new_id and isinstance(item, PeerEvent):
            item = item._replace(event_id=f"{item.event_id}#redelivered-{n}")
        extra.append(item)
    return draw(st.permutations(log + extra))


def snapshot(view: SessionView, now_ms: int) -> dict[str, Any]:
    return {
        "session": shapes.session_object(view, now_ms),
        "participants": [shapes.participant_object(p, now_ms) for p in shapes.participants_in_order(view)],
        "summary": shapes.session_summary(view, now_ms),
    }


@settings(max_examples=200, deadline=None)
@given(st.data(), event_logs(), SECONDS)
def test_any_order_with_duplicates_gives_the_same_view(
    data: st.DataObject, log: list[Item], now_s: int
) -> None:
    reference = session_of(_sorted(log))
    delivered = data.draw(redeliveries(log))
    s = ReferenceSession(reference.session_id)
    outcomes = [apply(s, item) for item in delivered]
    now = t(now_s + 5)
    assert snapshot(s.view(), now) == snapshot(reference.view(), now)
    # Every peer event applies exactly once, whatever else arrives.
    peer_outcomes = [o for o, i in zip(outcomes, delivered, strict=True) if isinstance(i, PeerEvent)]
    assert peer_outcomes.count("applied") == sum(isinstance(i, PeerEvent) for i in log)


# -- invariants and independent oracles ---------------------------------------------------


def brute_force_peak(intervals_by_peer: Mapping[str, Sequence[Interval]]) -> int:
    """Connected peers at each distinct event time t, counting [start, end) intervals with start <= t < end."""
    times = {x for ivs in intervals_by_peer.values() for iv in ivs for x in iv if x is not None}
    best = 0
    for at in times:
        connected = sum(
            any(s <= at and (e is None or at < e) for s, e in ivs) for ivs in intervals_by_peer.values()
        )
        best = max(best, connected)
    return best


def oracle_intervals(events: Sequence[PeerEvent], end_ms: int | None) -> list[Interval]:
    """One peer's intervals, walked as a state machine over distinct (time, name) events."""
    facts = {(e.t_ms, e.code) for e in events if end_ms is None or e.t_ms <= end_ms}
    out: list[Interval] = []
    since: int | None = None
    for at in sorted({at for at, _ in facts}):
        names = {code for when, code in facts if when == at}
        if 1 in names and since is not None:  # PEER_LEAVING first at equal times
            out.append((since, at))
            since = None
        if 2 in names and since is None:  # PEER_JOINING
            since = at
    if since is not None:
        out.append((since, end_ms))
    return out


def _check_disjoint_and_ordered(intervals: Sequence[Interval]) -> None:
    for i, (s, e) in enumerate(intervals):
        last = i == len(intervals) - 1
        assert e is not None or last, intervals
        if e is not None:
            assert s <= e, intervals
            if not last:
                assert e <= intervals[i + 1][0], intervals


@settings(max_examples=200, deadline=None)
@given(event_logs(), SECONDS)
def test_invariants(log: list[Item], now_s: int) -> None:
    view = session_of(_sorted(log)).view()
    now = t(now_s + 5)
    obj = shapes.session_object(view, now)
    participants = [shapes.participant_object(p, now) for p in view.peers.values()]
    summary = shapes.session_summary(view, now)

    assert obj["live_participants"] <= obj["max_concurrent_participants"]
    assert obj["max_concurrent_participants"] <= len(view.peers)
    assert obj["minutes_consumed"] == pytest.approx(sum(p["duration"] for p in participants))
    assert summary["minutes_consumed"] == pytest.approx(sum(p["duration"] for p in summary["participants"]))
    assert summary["participants_total"] == len(summary["participants"]) == len(view.peers)

    intervals = {pid: p.intervals for pid, p in view.peers.items()}
    assert view.totals.peak == brute_force_peak(intervals)
    for pid, peer in view.peers.items():
        _check_disjoint_and_ordered(peer.intervals)
        own = [e for e in log if isinstance(e, PeerEvent) and e.peer_id == pid]
        assert peer.intervals == oracle_intervals(own, view.ended_ms)

    # participants_total: peers with at least one event at or before the end.
    ended = view.ended_ms
    expected_peers = {
        e.peer_id for e in log if isinstance(e, PeerEvent) and (ended is None or e.t_ms <= ended)
    }
    assert set(view.peers) == expected_peers
    if ended is not None:
        assert obj["live_participants"] == 0
        assert all(iv[1] is not None and iv[1] <= ended for p in view.peers.values() for iv in p.intervals)


def test_explicit_end_is_the_newest_ended_message() -> None:
    # A sanity anchor for the generator above: two ENDED messages, the newer one's ended_at wins.
    log: list[Item] = [
        session_message("ENDED", updated=5, ended=4),
        session_message("ENDED", updated=9, ended=3),
        peer_event("p0", "PEER_JOINING", 1),
    ]
    assert session_of(log).view().ended_ms == t(3)
    assert session_of(reversed(log)).view().ended_ms == t(3)


# -- totals() against the brute force, on arbitrary interval sets -------------------------

_start_len = st.tuples(st.integers(0, 30), st.one_of(st.none(), st.integers(0, 10)))


@st.composite
def peer_interval_lists(draw: st.DrawFn) -> list[Interval]:
    """Disjoint, ordered intervals of one peer (touching allowed), the last possibly open."""
    out: list[Interval] = []
    at = draw(st.integers(0, 5))
    for _ in range(draw(st.integers(0, 4))):
        start = at + draw(st.integers(0, 5))
        length = draw(st.integers(0, 8))
        out.append((start, start + length))
        at = start + length
    if draw(st.booleans()):
        out.append((at + draw(st.integers(0, 5)), None))
    return out


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(("a", "b", "c", "d", "e")), peer_interval_lists()))
def test_totals_against_brute_force(intervals: dict[str, list[Interval]]) -> None:
    got = totals(intervals)
    assert got.peak == brute_force_peak(intervals)
    flat = [iv for ivs in intervals.values() for iv in ivs]
    assert got.open_count == sum(e is None for _, e in flat)
    assert got.open_start_sum == sum(s for s, e in flat if e is None)
    assert got.closed_ms == sum(e - s for s, e in flat if e is not None)
