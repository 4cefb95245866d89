"""Inbound decoding: seed-003 messages to core commands, everything else to a dead-letter reason."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.intervals import CREATED, JOIN, LEAVE
from service.core.model import event_details
from service.core.timeutil import iso_ms
from service.errors import InvalidMessage, SessionPulseError
from service.wire import RtkPeerEventIn, _plain_peer_event, decode_peer_event, decode_session, load_object

from .rtk_factory import MEETING_ID, ORG_ID, SESSION_ID, peer_event_dict, raw, session_dict, t

KEY = SESSION_ID.encode()


def _error(fn: Any, *args: Any) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as info:
        fn(*args)
    return info.value


def session_error(body: Any) -> InvalidMessage:
    return _error(decode_session, body if isinstance(body, bytes) else raw(body))


def peer_error(body: Any, key: bytes | None = KEY) -> InvalidMessage:
    return _error(decode_peer_event, body if isinstance(body, bytes) else raw(body), key)


def _without(body: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != name}


# -- happy paths --------------------------------------------------------------------------


def test_decode_live_session_with_every_field() -> None:
    body = session_dict("LIVE", updated=30, started=10, breakout_rooms=[])
    body["live_participants"] = 3
    body["minutes_consumed"] = 12.5
    data = raw(body)
    msg = decode_session(data)
    assert msg.session_id == SESSION_ID
    assert msg.status == "LIVE"
    assert msg.updated_ms == t(30)
    assert msg.started_ms == t(10)
    assert msg.ended_ms is None
    assert msg.digest == hashlib.sha1(data).hexdigest()
    meta = orjson.loads(msg.meta_json)
    assert meta["associated_id"] == MEETING_ID
    assert meta["organization_id"] == ORG_ID
    assert meta["meeting_display_name"] == "Daily standup"
    assert meta["type"] == "meeting"
    assert meta["created_at"] == iso_ms(t(10))
    # Canonical: sorted keys, so equal content always gives equal text.
    assert msg.meta_json == json.dumps(meta, sort_keys=True, separators=(",", ":"))


def test_decode_ended_session() -> None:
    msg = decode_session(raw(session_dict("ENDED", updated=101, started=0, ended=100)))
    assert msg.status == "ENDED"
    assert msg.ended_ms == t(100)


def test_live_session_may_carry_ended_at() -> None:
    assert decode_session(raw(session_dict("LIVE", updated=1, ended=2))).ended_ms == t(2)


@pytest.mark.parametrize("kind", ["meeting", "livestream", "participant"])
def test_session_types(kind: str) -> None:
    assert orjson.loads(decode_session(raw(session_dict(type=kind))).meta_json)["type"] == kind


def test_session_numbers_may_be_floats_and_unknown_fields_are_kept() -> None:
    body = session_dict(live_participants=2.0, minutes_consumed=0.25, some_new_field={"x": 1})
    assert decode_session(raw(body)).session_id == SESSION_ID


def test_session_digest_depends_on_the_bytes() -> None:
    a = decode_session(raw(session_dict(updated=1)))
    b = decode_session(raw(session_dict(updated=2)))
    assert a.digest != b.digest
    assert decode_session(raw(session_dict(updated=1))).digest == a.digest


@pytest.mark.parametrize(
    ("name", "code"),
    [("PEER_CREATED", CREATED), ("PEER_JOINING", JOIN), ("PEER_LEAVING", LEAVE)],
)
def test_decode_peer_event_with_every_field(name: str, code: int) -> None:
    body = peer_event_dict(
        "peer-1",
        name,
        42.5,
        event_id="ev-1",
        display_name="Ann",
        custom_participant_id="cp-1",
        user_id="u-1",
        preset_name="host",
        organization_id=ORG_ID,
        associated_id=MEETING_ID,
    )
    data = raw(body)
    ev = decode_peer_event(data, KEY)
    assert ev.session_id == SESSION_ID
    assert ev.event_id == "ev-1"
    assert ev.peer_id == "peer-1"
    assert ev.code == code
    assert ev.t_ms == t(42.5)
    assert ev.raw_json == data.decode()
    # Only participant details; organization and meeting ids are not details.
    assert event_details(orjson.loads(ev.raw_json)) == {
        "custom_participant_id": "cp-1",
        "display_name": "Ann",
        "preset_name": "host",
        "user_id": "u-1",
    }


def test_peer_event_without_details() -> None:
    ev = decode_peer_event(raw(peer_event_dict("p", "PEER_JOINING", 0)), KEY)
    assert event_details(orjson.loads(ev.raw_json)) == {}


def test_peer_event_nullable_fields_may_be_null() -> None:
    body = peer_event_dict(
        "p", "PEER_JOINING", 0, participant_id=None, preset_view_type=None, socket_session_id=None
    )
    body["updated_at"] = None
    body["minutes_consumed"] = None
    assert decode_peer_event(raw(body), KEY).peer_id == "p"


def test_peer_event_time_is_created_at_not_updated_at() -> None:
    body = peer_event_dict("p", "PEER_JOINING", 10)
    body["updated_at"] = iso_ms(t(99))
    assert decode_peer_event(raw(body), KEY).t_ms == t(10)


def test_peer_event_session_id_wins_over_the_key() -> None:
    ev = decode_peer_event(raw(peer_event_dict("p", "PEER_JOINING", 0)), b"other-key")
    assert ev.session_id == SESSION_ID


@pytest.mark.parametrize("how", ["absent", "null", "empty"])
def test_peer_event_without_session_id_uses_the_key(how: str) -> None:
    body = peer_event_dict("p", "PEER_JOINING", 0)
    if how == "absent":
        del body["session_id"]
    else:
        body["session_id"] = None if how == "null" else ""
    assert decode_peer_event(raw(body), b"key-session").session_id == "key-session"


@pytest.mark.parametrize("key", [None, b""])
def test_peer_event_without_session_id_and_key_is_missing_field(key: bytes | None) -> None:
    body = _without(peer_event_dict("p", "PEER_JOINING", 0), "session_id")
    assert peer_error(body, key).error_type == "missing_field"


# -- dead-letter classes ------------------------------------------------------------------


def test_invalid_message_is_not_retriable() -> None:
    err = session_error(b"nope")
    assert isinstance(err, SessionPulseError)
    assert err.retriable is False
    assert err.message


@pytest.mark.parametrize("data", [b"\xff\xfe{}", b'{"id": "\xff"}', b'{"id":"\xed\xa0\x80"}', b"\xc3"])
def test_invalid_utf8(data: bytes) -> None:
    assert session_error(data).error_type == "invalid_utf8"
    assert peer_error(data).error_type == "invalid_utf8"


@pytest.mark.parametrize("data", [b"", b"{", b"{'id': 1}", b"nope", b'{"a":1,}', b"NaN", b'"\\ud800"'])
def test_invalid_json(data: bytes) -> None:
    assert session_error(data).error_type == "invalid_json"
    assert peer_error(data).error_type == "invalid_json"


@pytest.mark.parametrize("data", [b"[]", b'[{"id": "x"}]', b'"a string"', b"42", b"4.5", b"null", b"true"])
def test_not_an_object(data: bytes) -> None:
    assert session_error(data).error_type == "not_an_object"
    assert peer_error(data).error_type == "not_an_object"


def test_no_value_at_all() -> None:
    assert _error(load_object, None).error_type == "empty_value"


SESSION_REQUIRED = [
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
]
PEER_REQUIRED = ["id", "created_at", "event_name", "peer_id"]


@pytest.mark.parametrize("name", SESSION_REQUIRED)
def test_session_missing_field(name: str) -> None:
    err = session_error(_without(session_dict(), name))
    assert err.error_type == "missing_field"
    assert name in err.message


@pytest.mark.parametrize("name", PEER_REQUIRED)
def test_peer_event_missing_field(name: str) -> None:
    err = peer_error(_without(peer_event_dict("p", "PEER_JOINING", 0), name))
    assert err.error_type == "missing_field"
    assert name in err.message


@pytest.mark.parametrize("ended_at", ["absent", None])
def test_ended_session_without_ended_at_is_missing_field(ended_at: Any) -> None:
    body = session_dict("ENDED", updated=1)
    if ended_at != "absent":
        body["ended_at"] = ended_at
    err = session_error(body)
    assert err.error_type == "missing_field"
    assert "ended_at" in err.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("id", 123),
        ("id", ""),
        ("id", None),
        ("associated_id", 5),
        ("created_at", 1_714_557_600_000),
        ("live_participants", "3"),
        ("live_participants", True),
        ("max_concurrent_participants", None),
        ("meeting_display_name", ["x"]),
        ("minutes_consumed", "1.5"),
        ("organization_id", {"id": "o"}),
        ("started_at", 0),
        ("status", "PAUSED"),
        ("status", "live"),
        ("type", "webinar"),
        ("updated_at", None),
        ("ended_at", 17),
        ("breakout_rooms", "none"),
    ],
)
def test_session_invalid_field(name: str, value: Any) -> None:
    err = session_error(session_dict(**{name: value}))
    assert err.error_type == "invalid_field"
    assert name in err.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("id", 7),
        ("id", ""),
        ("peer_id", 7),
        ("peer_id", ""),
        ("peer_id", None),
        ("created_at", 1_714_557_600_000),
        ("session_id", 5),
        ("participant_id", 5),
        ("minutes_consumed", "0"),
        ("updated_at", 3),
        ("display_name", 5),
        ("user_id", ["u"]),
        ("custom_participant_id", True),
        ("preset_name", {}),
    ],
)
def test_peer_event_invalid_field(name: str, value: Any) -> None:
    err = peer_error(peer_event_dict("p", "PEER_JOINING", 0, **{name: value}))
    assert err.error_type == "invalid_field"
    assert name in err.message


@pytest.mark.parametrize("name", ["PEER_EXPLODED", "peer_joining", "", "PEER_JOINED"])
def test_unknown_event_name(name: str) -> None:
    assert peer_error(peer_event_dict("p", name, 0)).error_type == "unknown_event_name"


@pytest.mark.parametrize("name", ["created_at", "updated_at", "started_at", "ended_at"])
@pytest.mark.parametrize("value", ["yesterday", "", "2024-13-01T00:00:00Z", "2024-05-01T25:61:00Z"])
def test_session_invalid_timestamp(name: str, value: str) -> None:
    body = session_dict("ENDED", updated=2, ended=1)
    body[name] = value
    err = session_error(body)
    assert err.error_type == "invalid_timestamp"
    assert name in err.message


def test_live_session_with_unparsable_ended_at_is_invalid_timestamp() -> None:
    assert session_error(session_dict("LIVE", ended_at="soon")).error_type == "invalid_timestamp"


@pytest.mark.parametrize("name", ["created_at", "updated_at"])
@pytest.mark.parametrize("value", ["yesterday", "", "2024-02-30T10:00:00Z"])
def test_peer_event_invalid_timestamp(name: str, value: str) -> None:
    err = peer_error(peer_event_dict("p", "PEER_JOINING", 0, **{name: value}))
    assert err.error_type == "invalid_timestamp"
    assert name in err.message


@pytest.mark.parametrize(
    "value",
    [
        "1969-12-31T23:59:59.000Z",  # negative epoch ms: breaks the "s-e" interval text and the Lua '%d+' parsing
        "0001-01-01T00:00:00+01:00",  # year 0 in UTC: iso_ms() raises ValueError
        "9999-12-31T23:59:59-01:00",  # year 10000 in UTC: iso_ms() raises ValueError
    ],
)
def test_timestamps_the_service_cannot_represent_are_dead_lettered(value: str) -> None:
    # BUG: these parse, so the event is applied, but the rest of the service cannot carry
    # the time: iso_ms() raises for years outside 1..9999 (every shape, the outbox), and a
    # negative time breaks format_intervals/parse_intervals and the Lua scripts' '%d+' parsing.
    err = peer_error(peer_event_dict("p", "PEER_JOINING", 0, created_at=value))
    assert err.error_type == "invalid_timestamp"


# -- nothing but InvalidMessage escapes ---------------------------------------------------


def _decodes_or_dead_letters(data: bytes, key: bytes | None = KEY) -> None:
    for decode in (lambda: decode_session(data), lambda: decode_peer_event(data, key)):
        try:
            decode()
        except InvalidMessage as exc:
            assert exc.error_type
            assert isinstance(exc.message, str)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.one_of(st.none(), st.binary(max_size=20)))
def test_arbitrary_bytes(data: bytes, key: bytes | None) -> None:
    _decodes_or_dead_letters(data, key)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # also beyond 64 bits
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_arbitrary_json(value: Any) -> None:
    _decodes_or_dead_letters(json.dumps(value).encode())


_field_value = _json | st.text(max_size=40) | st.sampled_from(["", "2024-05-01T10:00:00Z", "LIVE", "ENDED"])


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """A valid message with some fields removed or replaced by arbitrary JSON."""
    body = dict(base)
    for name in draw(st.lists(st.sampled_from(sorted(base)), max_size=4, unique=True)):
        if draw(st.booleans()):
            del body[name]
        else:
            body[name] = draw(_field_value)
    return body


@settings(max_examples=300, deadline=None)
@given(mutated(session_dict("ENDED", updated=2, ended=1, breakout_rooms=[])))
def test_mutated_sessions(body: dict[str, Any]) -> None:
    _decodes_or_dead_letters(json.dumps(body).encode())


@settings(max_examples=300, deadline=None)
@given(mutated(peer_event_dict("p", "PEER_JOINING", 0, display_name="Ann", user_id="u")))
def test_mutated_peer_events(body: dict[str, Any]) -> None:
    _decodes_or_dead_letters(json.dumps(body).encode())


@settings(max_examples=400, deadline=None)
@given(mutated(peer_event_dict("p", "PEER_JOINING", 0, display_name="Ann", user_id="u")))
def test_the_hand_checked_path_accepts_only_what_the_model_accepts(body: dict[str, Any]) -> None:
    # The hot path skips the pydantic model for plain events; it must never let through what the
    # model refuses, and must read the same fields.
    plain = _plain_peer_event(body)
    if plain is None:
        return
    ev = RtkPeerEventIn.model_validate(body)
    assert plain == (ev.id, ev.created_at, ev.event_name, ev.peer_id)
