"""The reference model of one RealtimeKit session (CONTRACT 4.1, 4.2, 4.4) and its outward shapes (6)."""

from __future__ import annotations

import itertools

import orjson
import pytest

from service.core import shapes
from service.core.model import DETAIL_FIELDS, ReferenceSession, _may_have_details
from service.core.timeutil import iso_ms

from .rtk_factory import (
    IDLE_TIMEOUT_MS,
    ISO_MS_Z,
    MEETING_ID,
    ORG_ID,
    SESSION_ID,
    Item,
    created,
    join,
    leave,
    peer_event,
    session_message,
    session_of,
    t,
)

# -- duplicates ---------------------------------------------------------------------------


def test_same_event_id_is_a_duplicate() -> None:
    s = ReferenceSession(SESSION_ID)
    ev = join("p1", 10)
    assert s.apply_peer_event(ev) == "applied"
    before = s.view()
    assert s.apply_peer_event(ev) == "duplicate"
    assert s.view() == before


def test_same_event_id_with_other_content_is_a_duplicate() -> None:
    s = ReferenceSession(SESSION_ID)
    assert s.apply_peer_event(join("p1", 10, event_id="e1")) == "applied"
    assert s.apply_peer_event(leave("p1", 20, event_id="e1")) == "duplicate"
    assert s.view().peers["p1"].intervals == [(t(10), None)]


def test_same_peer_name_and_time_under_another_id_is_a_duplicate() -> None:
    s = ReferenceSession(SESSION_ID)
    assert s.apply_peer_event(join("p1", 10, event_id="e1")) == "applied"
    before = s.view()
    assert s.apply_peer_event(join("p1", 10, event_id="e2")) == "duplicate"
    assert s.view() == before
    # The second id is now known as well.
    assert s.apply_peer_event(join("p1", 10, event_id="e2")) == "duplicate"


def test_same_time_but_other_name_or_peer_is_not_a_duplicate() -> None:
    s = ReferenceSession(SESSION_ID)
    assert s.apply_peer_event(join("p1", 10)) == "applied"
    assert s.apply_peer_event(leave("p1", 10)) == "applied"
    assert s.apply_peer_event(join("p2", 10)) == "applied"
    assert s.apply_peer_event(join("p1", 11)) == "applied"


def test_same_session_message_again_is_a_duplicate() -> None:
    s = ReferenceSession(SESSION_ID)
    msg = session_message("LIVE", updated=1)
    assert s.apply_session_message(msg) == "applied"
    assert s.apply_session_message(msg) == "duplicate"


# -- an end that overtakes the events before it -------------------------------------------


def _ended_session_items() -> list[Item]:
    return [
        session_message("ENDED", updated=101, started=0, ended=100),
        join("p1", 10),
        join("p2", 20),
        leave("p2", 50),
    ]


def test_ended_message_before_the_peer_events() -> None:
    s = session_of(_ended_session_items())
    view = s.view()
    assert view.status == "ENDED"
    assert view.ended_ms == t(100)
    assert view.end_reason == "ended"
    assert set(view.peers) == {"p1", "p2"}
    assert view.peers["p1"].intervals == [(t(10), t(100))]
    assert view.peers["p1"].left_ms == t(100)
    assert view.peers["p2"].intervals == [(t(20), t(50))]
    assert view.live_participants() == 0
    assert view.totals.peak == 2
    assert view.minutes_at(t(10_000)) == pytest.approx((90 + 30) / 60)


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_ended_session_is_the_same_in_every_arrival_order(order: tuple[int, ...]) -> None:
    items = _ended_session_items()
    now = t(500)
    expected = shapes.session_summary(session_of(items).view(), now)
    got = shapes.session_summary(session_of([items[i] for i in order]).view(), now)
    assert got == expected


def test_late_events_do_not_reopen_and_do_not_count() -> None:
    s = session_of(
        [
            session_message("ENDED", updated=101, started=0, ended=100),
            join("p1", 10),
            leave("p1", 150),  # after the end: the interval is closed at the end instead
            join("p1", 160),
            join("late", 120),  # a peer seen only after the end is no participant
            leave("late", 130),
        ]
    )
    view = s.view()
    assert view.status == "ENDED"
    assert view.live_participants() == 0
    assert set(view.peers) == {"p1"}
    assert view.peers["p1"].intervals == [(t(10), t(100))]
    assert view.peers["p1"].updated_ms == t(10)
    assert view.totals.peak == 1
    summary = shapes.session_summary(view, t(1_000))
    assert summary["participants_total"] == 1
    assert summary["minutes_consumed"] == pytest.approx(1.5)
    assert summary["ended_at"] == iso_ms(t(100))


# -- the idle rule ------------------------------------------------------------------------


def _idle_candidate() -> ReferenceSession:
    return session_of([join("p1", 0), leave("p1", 60)])


def test_idle_rule_not_before_the_timeout_has_fully_passed() -> None:
    s = _idle_candidate()
    assert s.end_idle(t(60) + IDLE_TIMEOUT_MS, IDLE_TIMEOUT_MS) is False
    assert s.view().status == "LIVE"


def test_idle_rule_ends_strictly_after_the_timeout() -> None:
    s = _idle_candidate()
    assert s.end_idle(t(60) + IDLE_TIMEOUT_MS + 1, IDLE_TIMEOUT_MS) is True
    view = s.view()
    assert view.status == "ENDED"
    assert view.ended_ms == t(60)  # the newest event time, not the clock
    assert view.end_reason == "idle_timeout"
    assert view.live_participants() == 0


def test_idle_rule_uses_the_newest_event_time_whatever_the_clock() -> None:
    s = _idle_candidate()
    assert s.end_idle(t(1_000_000), IDLE_TIMEOUT_MS) is True
    assert s.view().ended_ms == t(60)


def test_idle_rule_never_ends_a_session_with_a_connected_peer() -> None:
    s = session_of([join("p1", 0), join("p2", 5), leave("p2", 60)])
    assert s.end_idle(t(1_000_000), IDLE_TIMEOUT_MS) is False
    assert s.view().status == "LIVE"


def test_idle_rule_does_not_end_an_ended_session_again() -> None:
    s = session_of([join("p1", 0), leave("p1", 60), session_message("ENDED", updated=71, ended=70)])
    assert s.end_idle(t(1_000_000), IDLE_TIMEOUT_MS) is False
    assert s.view().end_reason == "ended"
    assert s.view().ended_ms == t(70)

    s = _idle_candidate()
    assert s.end_idle(t(1_000_000), IDLE_TIMEOUT_MS) is True
    assert s.end_idle(t(2_000_000), IDLE_TIMEOUT_MS) is False
    assert s.view().ended_ms == t(60)


def test_explicit_end_arriving_after_an_idle_end_wins() -> None:
    s = _idle_candidate()
    assert s.end_idle(t(60) + IDLE_TIMEOUT_MS + 1, IDLE_TIMEOUT_MS)
    # Arrives after the idle end; its time is after the idle end, so not applied yet.
    s.apply_peer_event(join("p2", 80))
    assert "p2" not in s.view().peers
    s.apply_session_message(session_message("ENDED", updated=121, ended=120))
    view = s.view()
    assert view.ended_ms == t(120)
    assert view.end_reason == "ended"
    # Now before the end: applied, and its open interval closed at the explicit end.
    assert view.peers["p2"].intervals == [(t(80), t(120))]


def test_explicit_end_earlier_than_the_idle_end_replaces_it() -> None:
    s = _idle_candidate()
    assert s.end_idle(t(60) + IDLE_TIMEOUT_MS + 1, IDLE_TIMEOUT_MS)
    s.apply_session_message(session_message("ENDED", updated=31, ended=30))
    view = s.view()
    assert view.ended_ms == t(30)
    assert view.end_reason == "ended"
    assert view.peers["p1"].intervals == [(t(0), t(30))]


def test_newest_ended_message_gives_the_end() -> None:
    first = session_message("ENDED", updated=101, ended=100)
    second = session_message("ENDED", updated=201, ended=200)
    for items in ([first, second], [second, first]):
        assert session_of(items).view().ended_ms == t(200)


# -- started_at, descriptive fields, participant details ----------------------------------


def test_started_at_from_the_session_message() -> None:
    s = session_of([join("p1", 10), session_message("LIVE", updated=20, started=-5)])
    assert s.view().started_ms == t(-5)
    s = session_of([join("p1", 10), session_message("LIVE", updated=20, started=15)])
    assert s.view().started_ms == t(15)


def test_started_at_without_a_session_message_is_the_earliest_event() -> None:
    s = session_of([join("p1", 10), created("p2", 3), join("p2", 5)])
    assert s.view().started_ms == t(3)


def test_descriptive_fields_from_the_newest_session_message() -> None:
    old = session_message("LIVE", updated=10, title="Old title")
    new = session_message("LIVE", updated=20, title="New title")
    for items in ([old, new], [new, old]):
        obj = shapes.session_object(session_of(items).view(), t(30))
        assert obj["meeting_display_name"] == "New title"
        assert obj["updated_at"] == iso_ms(t(20))


def test_participant_details_from_the_newest_event_carrying_details() -> None:
    events = [
        created("p1", 0, display_name="Old name", user_id="u-old"),
        join(
            "p1",
            5,
            display_name="Ann",
            user_id="u-1",
            custom_participant_id="cp-1",
            preset_name="host",
        ),
        leave("p1", 10),  # newest, but carries no details
    ]
    for order in itertools.permutations(events):
        obj = shapes.participant_object(session_of(order).view().peers["p1"], t(20))
        assert obj["display_name"] == "Ann"
        assert obj["user_id"] == "u-1"
        assert obj["custom_participant_id"] == "cp-1"
        assert obj["preset_name"] == "host"


def test_details_come_from_events_up_to_the_end_and_not_after_it() -> None:
    """An event at the session's end time is applied (a leave and a join at that time alike);
    one a millisecond after it is kept but not applied, whatever its kind (PEER_CREATED has
    the lowest code), so its details do not count. Two details of one time: the greater."""
    events = [
        session_message("ENDED", updated=101, ended=100),
        join("p1", 10, display_name="Early", user_id="u-early"),
        leave("p1", 100, display_name="At the end"),
        join("p2", 100, display_name="Joined at the end"),
        created("p1", 100.001, display_name="Created after", user_id="u-created-after"),
        join("p1", 100.001, display_name="After", user_id="u-after"),
        join("p3", 50, display_name="Bea"),
        leave("p3", 50, display_name="Ann"),
    ]
    for order in (events, events[::-1]):
        view = session_of(order).view()
        assert view.peers["p1"].details == {"display_name": "At the end", "user_id": "u-early"}
        assert view.peers["p2"].details == {"display_name": "Joined at the end"}
        assert view.peers["p3"].details == {"display_name": "Bea"}
        summary = shapes.session_summary(view, t(1_000))
        assert [p["id"] for p in summary["participants"]] == ["p1", "p3", "p2"]


def test_participant_without_details_has_null_details() -> None:
    obj = shapes.participant_object(session_of([join("p1", 0)]).view().peers["p1"], t(20))
    assert obj["display_name"] is None
    assert obj["user_id"] is None
    assert obj["custom_participant_id"] is None
    assert obj["preset_name"] is None


def test_a_session_with_no_facts_has_no_view() -> None:
    with pytest.raises(ValueError):
        ReferenceSession(SESSION_ID).view()


# -- shapes -------------------------------------------------------------------------------

SESSION_FIELDS = {
    "id",
    "associated_id",
    "created_at",
    "live_participants",
    "max_concurrent_participants",
    "meeting_display_name",
    "minutes_consumed",
    "organization_id",
    "started_at",
    "status",
    "type",
    "updated_at",
}
PARTICIPANT_FIELDS = {
    "id",
    "created_at",
    "custom_participant_id",
    "display_name",
    "duration",
    "joined_at",
    "left_at",
    "preset_name",
    "updated_at",
    "user_id",
}
SUMMARY_FIELDS = {
    "session_id",
    "source",
    "type",
    "associated_id",
    "title",
    "organization_id",
    "started_at",
    "ended_at",
    "duration_seconds",
    "end_reason",
    "participants_total",
    "max_concurrent_participants",
    "minutes_consumed",
    "participants",
}
SUMMARY_PARTICIPANT_FIELDS = {
    "id",
    "user_id",
    "custom_participant_id",
    "display_name",
    "joined_at",
    "left_at",
    "duration",
}


def _live_session() -> ReferenceSession:
    return session_of(
        [
            session_message("LIVE", updated=0, started=0),
            join("p1", 0, display_name="Ann"),  # still connected
            join("p2", 0),
            leave("p2", 30),
            created("p3", 40),  # never joins
        ]
    )


def _ended_session() -> ReferenceSession:
    return session_of(
        [
            session_message("ENDED", updated=121, started=0, ended=120),
            join("p1", 0, display_name="Ann", user_id="u-1"),
            join("p2", 30),
            leave("p2", 90),
        ]
    )


def test_session_object_fields_live() -> None:
    obj = shapes.session_object(_live_session().view(), t(60))
    assert set(obj) == SESSION_FIELDS
    assert obj["id"] == SESSION_ID
    assert obj["associated_id"] == MEETING_ID
    assert obj["organization_id"] == ORG_ID
    assert obj["type"] == "meeting"
    assert obj["status"] == "LIVE"
    assert obj["live_participants"] == 1
    assert obj["max_concurrent_participants"] == 2


def test_session_object_fields_ended() -> None:
    obj = shapes.session_object(_ended_session().view(), t(500))
    assert set(obj) == SESSION_FIELDS | {"ended_at"}
    assert obj["status"] == "ENDED"
    assert obj["ended_at"] == iso_ms(t(120))
    assert obj["live_participants"] == 0
    assert obj["max_concurrent_participants"] == 2
    assert obj["minutes_consumed"] == pytest.approx((120 + 60) / 60)


def test_session_object_timestamps_are_iso_with_ms_and_z() -> None:
    for s, now in ((_live_session(), t(60)), (_ended_session(), t(500))):
        obj = shapes.session_object(s.view(), now)
        for name in ("created_at", "started_at", "updated_at", "ended_at"):
            if name in obj:
                assert ISO_MS_Z.match(obj[name]), (name, obj[name])


def test_session_object_created_at_is_normalised() -> None:
    # BUG: created_at is echoed byte for byte from the inbound message instead of being
    # rendered like every other timestamp (ISO-8601 UTC with milliseconds and Z).
    s = session_of([session_message("LIVE", updated=0, created_at="2024-05-01T12:00:00+02:00")])
    obj = shapes.session_object(s.view(), t(10))
    assert obj["created_at"] == "2024-05-01T10:00:00.000Z"


def test_session_object_without_a_session_message() -> None:
    obj = shapes.session_object(session_of([join("p1", 7)]).view(), t(60))
    assert set(obj) == SESSION_FIELDS
    assert obj["started_at"] == iso_ms(t(7))
    assert obj["created_at"] == iso_ms(t(7))
    assert obj["meeting_display_name"] is None


def test_breakout_rooms_are_a_list() -> None:
    # BUG: the decoder keeps breakout_rooms as canonical JSON text inside meta_json; the Redis
    # reader (store.py) decodes it back to a list, ReferenceSession.view() does not, so the
    # reference Session object carries the string '[{"id":"r1",...}]' instead of the array.
    rooms = [{"id": "r1", "title": "Room 1"}]
    s = session_of([session_message("LIVE", updated=0, breakout_rooms=rooms)])
    obj = shapes.session_object(s.view(), t(10))
    assert obj["breakout_rooms"] == rooms


def test_live_minutes_count_up_to_now() -> None:
    view = _live_session().view()
    assert shapes.session_object(view, t(60))["minutes_consumed"] == pytest.approx((60 + 30) / 60)
    assert shapes.session_object(view, t(120))["minutes_consumed"] == pytest.approx((120 + 30) / 60)


def test_participant_object_fields() -> None:
    view = _live_session().view()
    p1 = shapes.participant_object(view.peers["p1"], t(90))
    assert set(p1) == PARTICIPANT_FIELDS
    assert p1["id"] == "p1"
    assert p1["display_name"] == "Ann"
    assert p1["joined_at"] == iso_ms(t(0))
    assert p1["left_at"] is None  # still connected
    assert p1["duration"] == pytest.approx(1.5)
    assert isinstance(p1["duration"], float)
    p2 = shapes.participant_object(view.peers["p2"], t(90))
    assert p2["left_at"] == iso_ms(t(30))
    assert p2["duration"] == pytest.approx(0.5)
    p3 = shapes.participant_object(view.peers["p3"], t(90))
    assert p3["joined_at"] is None
    assert p3["left_at"] is None
    assert p3["duration"] == 0
    assert p3["created_at"] == iso_ms(t(40))
    for obj in (p1, p2, p3):
        for name in ("created_at", "updated_at", "joined_at", "left_at"):
            assert obj[name] is None or ISO_MS_Z.match(obj[name])


def test_left_at_is_the_last_leave() -> None:
    s = session_of([join("p1", 0), leave("p1", 10), join("p1", 20), leave("p1", 30)])
    obj = shapes.participant_object(s.view().peers["p1"], t(100))
    assert obj["joined_at"] == iso_ms(t(0))
    assert obj["left_at"] == iso_ms(t(30))
    assert obj["duration"] == pytest.approx(20 / 60)
    assert obj["created_at"] == iso_ms(t(0))
    assert obj["updated_at"] == iso_ms(t(30))


def test_duration_is_float_minutes() -> None:
    s = session_of([join("p1", 0), leave("p1", 0.001)])
    duration = shapes.participant_object(s.view().peers["p1"], t(100))["duration"]
    assert isinstance(duration, float)
    assert duration == pytest.approx(1 / 60_000)


def test_participants_total_counts_peers_with_an_applied_event() -> None:
    s = session_of(
        [
            session_message("ENDED", updated=101, ended=100),
            join("p1", 10),
            created("p2", 20),  # PEER_CREATED is an applied event
            join("late", 150),  # after the end: not applied
        ]
    )
    summary = shapes.session_summary(s.view(), t(1_000))
    assert summary["participants_total"] == 2
    assert [p["id"] for p in summary["participants"]] == ["p1", "p2"]


def test_session_summary_fields_ended() -> None:
    summary = shapes.session_summary(_ended_session().view(), t(5_000))
    assert set(summary) == SUMMARY_FIELDS
    assert summary["session_id"] == SESSION_ID
    assert summary["source"] == "realtimekit"
    assert summary["type"] == "meeting"
    assert summary["associated_id"] == MEETING_ID
    assert summary["title"] == "Daily standup"
    assert summary["organization_id"] == ORG_ID
    assert summary["started_at"] == iso_ms(t(0))
    assert summary["ended_at"] == iso_ms(t(120))
    assert summary["duration_seconds"] == 120.0
    assert summary["end_reason"] == "ended"
    assert summary["participants_total"] == 2
    assert summary["max_concurrent_participants"] == 2
    assert summary["minutes_consumed"] == pytest.approx(3.0)
    by_id = {p["id"]: p for p in summary["participants"]}
    for p in summary["participants"]:
        assert set(p) == SUMMARY_PARTICIPANT_FIELDS
    assert by_id["p1"] == {
        "id": "p1",
        "user_id": "u-1",
        "custom_participant_id": None,
        "display_name": "Ann",
        "joined_at": iso_ms(t(0)),
        "left_at": iso_ms(t(120)),
        "duration": pytest.approx(2.0),
    }
    assert by_id["p2"]["left_at"] == iso_ms(t(90))
    assert by_id["p2"]["duration"] == pytest.approx(1.0)


def test_session_summary_of_an_ended_session_does_not_depend_on_now() -> None:
    view = _ended_session().view()
    assert shapes.session_summary(view, t(200)) == shapes.session_summary(view, t(99_999))


def test_session_summary_of_a_live_session_is_as_if_it_ended_now() -> None:
    summary = shapes.session_summary(_live_session().view(), t(60))
    assert set(summary) == SUMMARY_FIELDS
    assert summary["ended_at"] == iso_ms(t(60))
    assert summary["duration_seconds"] == 60.0
    assert summary["end_reason"] is None
    assert summary["minutes_consumed"] == pytest.approx(1.5)
    by_id = {p["id"]: p for p in summary["participants"]}
    assert by_id["p1"]["left_at"] == iso_ms(t(60))
    assert by_id["p1"]["duration"] == pytest.approx(1.0)
    assert by_id["p3"]["joined_at"] is None
    assert by_id["p3"]["left_at"] is None
    # Ordered by join time, never-joined last.
    assert [p["id"] for p in summary["participants"]] == ["p1", "p2", "p3"]


def test_idle_ended_summary() -> None:
    s = session_of([join("p1", 0, display_name="Ann"), leave("p1", 60)])
    assert s.end_idle(t(60) + IDLE_TIMEOUT_MS + 1, IDLE_TIMEOUT_MS)
    summary = shapes.session_summary(s.view(), t(60) + IDLE_TIMEOUT_MS + 1)
    assert summary["end_reason"] == "idle_timeout"
    assert summary["started_at"] == iso_ms(t(0))
    assert summary["ended_at"] == iso_ms(t(60))
    assert summary["duration_seconds"] == 60.0
    assert summary["minutes_consumed"] == pytest.approx(1.0)
    assert summary["title"] is None


def test_summary_timestamps_are_iso_with_ms_and_z() -> None:
    for s, now in ((_live_session(), t(60)), (_ended_session(), t(500))):
        summary = shapes.session_summary(s.view(), now)
        assert ISO_MS_Z.match(summary["started_at"])
        assert ISO_MS_Z.match(summary["ended_at"])
        for p in summary["participants"]:
            for name in ("joined_at", "left_at"):
                assert p[name] is None or ISO_MS_Z.match(p[name])


def test_summary_message_id() -> None:
    assert shapes.summary_message_id("abc") == "abc:summary"


def test_peer_event_helper_keeps_session_id() -> None:
    assert peer_event("p1", "PEER_JOINING", 0).session_id == SESSION_ID


def test_the_detail_prefilter_lets_every_detail_field_through() -> None:
    """_newest_details skips stored events without a detail key by substring tests: a detail
    field added to DETAIL_FIELDS but not to those tests would be silently dropped."""
    for name in DETAIL_FIELDS:
        assert _may_have_details(orjson.dumps({"id": "e", name: "x"}).decode())
    # A key spelled with an escape is one too.
    assert _may_have_details('{"user\\u005fid": "x"}')
    assert not _may_have_details(
        orjson.dumps({"id": "e", "peer_id": "p", "event_name": "PEER_JOINING"}).decode()
    )
