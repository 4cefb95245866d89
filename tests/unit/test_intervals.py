"""Connection intervals of one peer and the totals over all peers (CONTRACT 4.1, 4.2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.core.intervals import (
    CREATED,
    JOIN,
    LEAVE,
    Totals,
    connected_ms,
    decode,
    encode,
    format_intervals,
    parse_intervals,
    peer_intervals,
    totals,
)


def J(t: int) -> int:
    return encode(t, JOIN)


def L(t: int) -> int:
    return encode(t, LEAVE)


def C(t: int) -> int:
    return encode(t, CREATED)


# -- encoding -----------------------------------------------------------------------------


def test_encoding_sorts_by_time_then_leave_before_join() -> None:
    assert sorted([J(5), L(5), C(5), J(4), L(6)]) == [J(4), C(5), L(5), J(5), L(6)]


@given(st.integers(min_value=0, max_value=2**50), st.sampled_from([CREATED, LEAVE, JOIN]))
def test_decode_inverts_encode(t_ms: int, code: int) -> None:
    assert decode(encode(t_ms, code)) == (t_ms, code)


# -- peer_intervals -----------------------------------------------------------------------


def test_join_then_leave_is_one_interval() -> None:
    assert peer_intervals([J(10), L(40)], None) == [(10, 40)]


def test_input_order_does_not_matter() -> None:
    assert peer_intervals([L(40), J(10), L(90), J(60)], None) == [(10, 40), (60, 90)]


def test_join_while_connected_is_ignored() -> None:
    assert peer_intervals([J(10), J(20), L(40)], None) == [(10, 40)]


def test_leave_while_not_connected_is_ignored() -> None:
    assert peer_intervals([L(5), J(10), L(40), L(50)], None) == [(10, 40)]


def test_only_leaves_give_no_interval() -> None:
    assert peer_intervals([L(5), L(6)], None) == []


def test_repeated_encoded_events_are_one_event() -> None:
    assert peer_intervals([J(10), J(10), L(40), L(40)], None) == [(10, 40)]


def test_peer_created_has_no_effect() -> None:
    assert peer_intervals([C(1)], None) == []
    assert peer_intervals([C(1), J(10), C(20), L(40), C(50)], None) == [(10, 40)]


def test_open_interval_while_live_has_no_end() -> None:
    assert peer_intervals([J(10), L(20), J(30)], None) == [(10, 20), (30, None)]


def test_open_interval_is_closed_at_end() -> None:
    assert peer_intervals([J(10)], 100) == [(10, 100)]
    assert peer_intervals([J(10), L(20), J(30)], 100) == [(10, 20), (30, 100)]


def test_events_after_end_are_not_applied() -> None:
    # The leave at 150 is after the end: the interval is closed at the end, not at 150.
    assert peer_intervals([J(10), L(150)], 100) == [(10, 100)]
    # A join after the end does not open anything.
    assert peer_intervals([J(10), L(20), J(120), L(130)], 100) == [(10, 20)]
    assert peer_intervals([J(120)], 100) == []


def test_events_at_the_end_are_applied() -> None:
    assert peer_intervals([J(10), L(100)], 100) == [(10, 100)]


def test_leave_and_join_at_one_time_reconnect() -> None:
    # Leaves sort before joins at equal times, so a reconnect in the same ms keeps the peer connected.
    assert peer_intervals([J(10), L(20), J(20), L(30)], None) == [(10, 20), (20, 30)]


# -- connected_ms -------------------------------------------------------------------------


def test_connected_ms_counts_open_intervals_up_to_now() -> None:
    assert connected_ms([(10, 40), (60, None)], now_ms=100) == 30 + 40
    assert connected_ms([], now_ms=100) == 0


def test_connected_ms_never_negative_for_an_open_interval_after_now() -> None:
    assert connected_ms([(200, None)], now_ms=100) == 0


# -- totals -------------------------------------------------------------------------------


def test_totals_of_nothing() -> None:
    assert totals({}) == Totals(peak=0, open_count=0, closed_ms=0, open_start_sum=0)
    assert totals({"a": []}) == Totals(0, 0, 0, 0)


def test_touching_intervals_peak_is_one() -> None:
    # A leaves at 5 and B joins at 5: leaves count before joins, so never two at once.
    got = totals({"A": [(0, 5)], "B": [(5, 10)]})
    assert got.peak == 1
    assert got.closed_ms == 10


def test_overlapping_intervals_peak_is_two() -> None:
    assert totals({"A": [(0, 6)], "B": [(5, 10)]}).peak == 2


def test_nested_intervals() -> None:
    got = totals({"A": [(0, 100)], "B": [(10, 90)], "C": [(20, 30), (40, 50)]})
    assert got.peak == 3
    assert got.closed_ms == 100 + 80 + 10 + 10
    assert got.open_count == 0
    assert got.open_start_sum == 0


def test_open_interval() -> None:
    got = totals({"A": [(0, 10), (20, None)], "B": [(5, None)]})
    assert got.peak == 2
    assert got.open_count == 2
    assert got.open_start_sum == 25
    assert got.closed_ms == 10
    # minutes at 60 000: closed 10 + (60 000 - 20) + (60 000 - 5)
    assert got.minutes_at(60_000) == pytest.approx((10 + 59_980 + 59_995) / 60_000)


def test_empty_interval_is_never_counted() -> None:
    got = totals({"A": [(7, 7)], "B": [(0, 5)]})
    assert got.peak == 1
    assert got.closed_ms == 5


def test_same_start_counts_both() -> None:
    assert totals({"A": [(0, 5)], "B": [(0, 5)], "C": [(0, None)]}).peak == 3


def test_peak_is_by_time_not_by_peer_order() -> None:
    a = {"A": [(0, 10)], "B": [(20, 30)], "C": [(25, 40)], "D": [(26, 27)]}
    assert totals(a).peak == 3
    assert totals(dict(reversed(list(a.items())))).peak == 3


# -- the text form kept in Redis ----------------------------------------------------------


def test_format_intervals() -> None:
    assert format_intervals([]) == ""
    assert format_intervals([(1, 2), (3, None)]) == "1-2,3-"


def test_parse_intervals() -> None:
    assert parse_intervals("") == []
    assert parse_intervals("1-2,3-") == [(1, 2), (3, None)]


_ms = st.integers(min_value=0, max_value=2**48)
_interval = st.tuples(_ms, st.one_of(st.none(), _ms))


@given(st.lists(_interval, max_size=8))
def test_format_parse_round_trip(intervals: list[tuple[int, int | None]]) -> None:
    assert parse_intervals(format_intervals(intervals)) == intervals


def test_interval_text_holds_epoch_times() -> None:
    # Times before 1970 never get here: the decoder dead-letters them (tests/unit/test_wire.py).
    intervals = [(0, 1_000), (253_402_300_799_999, None)]
    assert parse_intervals(format_intervals(intervals)) == intervals
