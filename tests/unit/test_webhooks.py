"""RealtimeKit webhooks to core commands, and one meeting told by webhooks, topics, or both."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core import shapes
from service.core.model import Artifact, PeerEvent, ReferenceSession, SessionMessage
from service.core.timeutil import iso_ms
from service.errors import InvalidMessage
from service.webhooks import decode_rtk_webhook
from service.wire import decode_peer_event, decode_session
from tests.meetings import T0, Meeting, random_meeting, topic_messages, webhook_bodies

SID = "05e57591-d89e-45c9-ae44-08dc1eaad0e0"


def meeting(**extra: Any) -> dict[str, Any]:
    return {
        "id": "50c8940e-1b97-402a-97d6-2708b7feca41",
        "sessionId": SID,
        "title": "Meeting title",
        "roomName": "lcfvaa-absxch",
        "status": "LIVE",
        "createdAt": "2022-12-13T06:57:09.736Z",
        "startedAt": "2022-12-13T06:57:09.736Z",
        "organizedBy": {"id": "70c5d391-5bca-4cf3-9907-bec205798adb", "name": "Dyte"},
        **extra,
    }


PARTICIPANT = {
    "peerId": "a5b5b8e4-3c07-4b7c-a1d4-3f1b2a2d9f10",
    "userDisplayName": "Jane",
    "customParticipantId": "jane-1",
    "clientSpecificId": "jane-1",
    "joinedAt": "2022-12-13T06:58:00.000Z",
}


def decode(body: dict[str, Any], key: bytes | None = None) -> list[Any]:
    return decode_rtk_webhook(orjson.dumps(body), key)


def test_meeting_started_is_a_live_session_message_with_the_meeting_fields() -> None:
    [msg] = decode({"event": "meeting.started", "meeting": meeting()})
    assert isinstance(msg, SessionMessage)
    assert (msg.session_id, msg.status, msg.ended_ms) == (SID, "LIVE", None)
    assert msg.started_ms == msg.updated_ms == 1_670_914_629_736
    assert orjson.loads(msg.meta_json) == {
        "associated_id": "50c8940e-1b97-402a-97d6-2708b7feca41",
        "meeting_display_name": "Meeting title",
        "organization_id": "70c5d391-5bca-4cf3-9907-bec205798adb",
        "created_at": "2022-12-13T06:57:09.736Z",
    }


def test_meeting_ended_ends_at_ended_at_although_status_says_live() -> None:
    body = {
        "event": "meeting.ended",
        "meeting": meeting(endedAt="2022-12-13T07:04:37.052Z"),
        "reason": "HOST_ENDED_MEETING",
    }
    [msg] = decode(body)
    assert isinstance(msg, SessionMessage)
    assert msg.status == "ENDED" and msg.ended_ms == msg.updated_ms == 1_670_915_077_052


def test_participant_joined_is_a_join_at_joined_at() -> None:
    meta, join = decode(
        {"event": "meeting.participantJoined", "meeting": meeting(), "participant": PARTICIPANT}
    )
    assert isinstance(meta, SessionMessage) and isinstance(join, PeerEvent)
    assert (join.peer_id, join.code, iso_ms(join.t_ms)) == (PARTICIPANT["peerId"], 2, PARTICIPANT["joinedAt"])
    raw = orjson.loads(join.raw_json)
    assert raw["display_name"] == "Jane" and raw["custom_participant_id"] == "jane-1"
    assert raw["event_name"] == "PEER_JOINING" and raw["session_id"] == SID
    assert meta.updated_ms == join.t_ms


def test_participant_left_is_a_join_and_a_leave() -> None:
    left = {**PARTICIPANT, "leftAt": "2022-12-13T07:00:00.000Z"}
    _, join, leave = decode({"event": "meeting.participantLeft", "meeting": meeting(), "participant": left})
    assert (join.code, leave.code) == (2, 1)
    assert iso_ms(leave.t_ms) == "2022-12-13T07:00:00.000Z"
    without_join = {k: v for k, v in left.items() if k != "joinedAt"}
    _, only = decode({"event": "meeting.participantLeft", "meeting": meeting(), "participant": without_join})
    assert only.code == 1


def test_the_same_delivery_gives_the_same_ids_and_another_delivery_other_ids() -> None:
    body = {"event": "meeting.participantJoined", "meeting": meeting(), "participant": PARTICIPANT}
    first, again = decode(body), decode(body)
    assert first == again
    other = decode({**body, "extra": 1})
    assert other[1].event_id != first[1].event_id and other[1].encoded == first[1].encoded


@pytest.mark.parametrize(
    ("event", "fields", "slot", "value"),
    [
        (
            "meeting.transcript",
            {
                "transcriptDownloadUrl": "https://x/t.csv",
                "transcriptDownloadUrlExpiry": "2022-12-14T07:00:00.000Z",
            },
            "transcript",
            {"url": "https://x/t.csv", "expiry": "2022-12-14T07:00:00.000Z"},
        ),
        (
            "meeting.summary",
            {"summaryDownloadUrl": "https://x/s.txt", "summaryDownloadUrlExpiry": "2022-12-14T07:00:00.000Z"},
            "summary",
            {"url": "https://x/s.txt", "expiry": "2022-12-14T07:00:00.000Z"},
        ),
        (
            "recording.statusUpdate",
            {
                "recording": {
                    "id": "rec-1",
                    "status": "UPLOADED",
                    "outputFileName": "rec.mp4",
                    "downloadUrl": "https://x/rec.mp4",
                    "downloadUrlExpiry": "2022-12-14T07:00:00.000Z",
                    "startedTime": "2022-12-13T06:58:00.000Z",
                    "stoppedTime": "2022-12-13T07:04:00.000Z",
                }
            },
            "recording:rec-1",
            {
                "id": "rec-1",
                "status": "UPLOADED",
                "url": "https://x/rec.mp4",
                "expiry": "2022-12-14T07:00:00.000Z",
                "started_at": "2022-12-13T06:58:00.000Z",
            },
        ),
        (
            "livestreaming.statusUpdate",
            {"streamId": "ls-1", "status": "LIVE"},
            "livestream:ls-1",
            {"id": "ls-1", "status": "LIVE"},
        ),
    ],
)
def test_links_and_statuses_become_artifacts(event: str, fields: dict, slot: str, value: dict) -> None:
    meta, art = decode({"event": event, "meeting": meeting(), **fields})
    assert isinstance(meta, SessionMessage) and isinstance(art, Artifact)
    assert (art.session_id, art.slot, orjson.loads(art.value_json)) == (SID, slot, value)


def test_chat_synced_is_flat_and_has_no_meeting() -> None:
    body = {
        "event": "meeting.chatSynced",
        "meetingId": "m-1",
        "sessionId": SID,
        "chatDownloadUrl": "https://x/chat.csv",
        "chatDownloadUrlExpiry": "2022-12-14T07:00:00.000Z",
    }
    [art] = decode(body)
    assert isinstance(art, Artifact) and art.slot == "chat" and art.session_id == SID


def test_unknown_events_and_fields_are_kept() -> None:
    body = {"event": "meeting.reactionStorm", "meeting": meeting(colour="blue"), "count": 7}
    meta, art = decode(body)
    assert isinstance(meta, SessionMessage)
    assert art.slot == "event:meeting.reactionStorm" and orjson.loads(art.value_json) == body


def test_a_later_recording_status_outranks_an_earlier_one() -> None:
    def rank(status: str) -> str:
        body = {
            "event": "recording.statusUpdate",
            "meeting": meeting(),
            "recording": {"id": "r", "status": status},
        }
        return decode(body)[1].rank

    assert rank("INVOKED") < rank("RECORDING") < rank("UPLOADING") < rank("UPLOADED")


def test_a_transcript_with_a_later_expiry_outranks_the_earlier_link() -> None:
    def rank(expiry: str) -> str:
        body = {
            "event": "meeting.transcript",
            "meeting": meeting(),
            "transcriptDownloadUrl": f"https://x/{expiry}",
            "transcriptDownloadUrlExpiry": expiry,
        }
        return decode(body)[1].rank

    assert rank("2022-12-14T07:00:00.000Z") < rank("2022-12-15T07:00:00.000Z")


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        ({"meeting": meeting()}, "missing_field"),
        ({"event": 5, "meeting": meeting()}, "invalid_field"),
        ({"event": "meeting.started"}, "missing_field"),
        ({"event": "meeting.started", "meeting": {**meeting(), "sessionId": None}}, "invalid_field"),
        (
            {"event": "meeting.started", "meeting": {k: v for k, v in meeting().items() if k != "sessionId"}},
            "missing_field",
        ),
        ({"event": "meeting.started", "meeting": meeting(startedAt="soon")}, "invalid_timestamp"),
        ({"event": "meeting.ended", "meeting": meeting()}, "missing_field"),
        ({"event": "meeting.participantJoined", "meeting": meeting()}, "missing_field"),
        (
            {
                "event": "meeting.participantJoined",
                "meeting": meeting(),
                "participant": {**PARTICIPANT, "joinedAt": "x"},
            },
            "invalid_timestamp",
        ),
        (
            {"event": "meeting.participantLeft", "meeting": meeting(), "participant": PARTICIPANT},
            "missing_field",
        ),
        ({"event": "meeting.transcript", "meeting": meeting()}, "missing_field"),
        (
            {
                "event": "meeting.participantJoined",
                "meeting": meeting(),
                "participant": {**PARTICIPANT, "joinedAt": "1969-12-31T23:59:59Z"},
            },
            "invalid_timestamp",
        ),
        ({"event": "meeting.chatSynced", "chatDownloadUrl": "https://x"}, "missing_field"),
        ({"event": "recording.statusUpdate", "meeting": meeting(), "recording": "done"}, "missing_field"),
    ],
)
def test_bad_webhooks_say_why(body: dict, error_type: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode(body)
    assert info.value.error_type == error_type


def test_a_flat_event_falls_back_to_the_message_key() -> None:
    [art] = decode({"event": "meeting.chatSynced", "chatDownloadUrl": "https://x"}, key=b"s-key")
    assert art.session_id == "s-key"


# -- one meeting, two tellings --------------------------------------------------------------


def by_webhooks(m: Meeting, order: random.Random | None = None, **kw: Any) -> list[Any]:
    bodies = webhook_bodies(m, **kw)
    cmds = [c for b in bodies for c in decode(b, m.session_id.encode())]
    if order:
        order.shuffle(cmds)
    return cmds


def by_topics(m: Meeting, order: random.Random | None = None) -> list[Any]:
    cmds: list[Any] = []
    for topic, value in topic_messages(m):
        cmds.append(decode_session(value) if topic == "rtk.sessions" else decode_peer_event(value, None))
    if order:
        order.shuffle(cmds)
    return cmds


def told(m: Meeting, cmds: list[Any]) -> ReferenceSession:
    s = ReferenceSession(m.session_id)
    for c in cmds:
        s.apply(c)
    return s


def comparable(s: ReferenceSession, now_ms: int) -> dict[str, Any]:
    """What the issue asks to be equal: participants, peak, minutes and summary."""
    view = s.view()
    summary = shapes.session_summary(view, now_ms)
    for f in ("transcript_download_url", "summary_download_url", "recording_download_url"):
        summary.pop(f, None)
    return {
        "session": shapes.session_object(view, now_ms),
        "participants": [shapes.participant_object(p, now_ms) for p in shapes.participants_in_order(view)],
        "summary": summary,
    }


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), ended=st.booleans(), both=st.booleans())
def test_webhooks_topics_or_both_tell_the_same_meeting(seed: int, ended: bool, both: bool) -> None:
    rng = random.Random(seed)
    m = random_meeting(rng, ended=ended)
    now = T0 + 10**9
    want = comparable(told(m, by_topics(m, rng)), now)
    cmds = by_webhooks(m, rng) + (by_topics(m) if both else [])
    rng.shuffle(cmds)
    assert comparable(told(m, cmds), now) == want


def test_a_live_meeting_told_by_webhooks_shows_who_is_connected() -> None:
    m = random_meeting(random.Random(7), ended=False)
    s = told(m, by_webhooks(m))
    connected = sum(1 for p in m.peers if p.intervals[-1][1] is None)
    assert s.view().status == "LIVE" and s.view().live_participants() == connected
