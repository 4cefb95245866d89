"""Inbound wire formats: raw Kafka values to validated core commands, or a dead-letter reason."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from .core.intervals import CODE_BY_EVENT_NAME
from .core.model import PeerEvent, PeerReport, SessionMessage
from .core.timeutil import TimestampError, parse_iso_ms
from .errors import InvalidMessage

Id = Annotated[str, StringConstraints(min_length=1)]
Number = int | float


class RtkSessionIn(BaseModel):
    """A RealtimeKit Session as published on `rtk.sessions` (seed 003)."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: Id
    associated_id: str
    created_at: str
    live_participants: Number
    max_concurrent_participants: Number
    meeting_display_name: str
    minutes_consumed: Number
    organization_id: str
    started_at: str
    status: Literal["LIVE", "ENDED"]
    type: Literal["meeting", "livestream", "participant"]
    updated_at: str
    ended_at: str | None = None
    breakout_rooms: list[Any] | None = None


class RtkPeerEventIn(BaseModel):
    """A RealtimeKit PeerEvent as published on `rtk.peer-events` (seed 003), details alongside."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: Id
    created_at: str
    event_name: Literal["PEER_CREATED", "PEER_JOINING", "PEER_LEAVING"]
    peer_id: Id
    session_id: str | None = None
    minutes_consumed: Number | None = None
    participant_id: str | None = None
    preset_view_type: str | None = None
    socket_session_id: str | None = None
    updated_at: str | None = None
    display_name: str | None = None
    custom_participant_id: str | None = None
    user_id: str | None = None
    preset_name: str | None = None
    organization_id: str | None = None
    associated_id: str | None = None


class RtkPeerReportIn(BaseModel):
    """An `rtk.peer-reports` message: a seed-003 PeerReport with the peer and session it is about."""

    model_config = ConfigDict(extra="allow", strict=True)

    session_id: Id
    peer_id: Id
    peer_report: dict[str, Any]


def load_object(raw: bytes | None) -> dict[str, Any]:
    """Decode a Kafka value to a JSON object, or say exactly why it is not one."""
    if raw is None:
        raise InvalidMessage("empty_value", "the message has no value")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise InvalidMessage("invalid_utf8", f"value is not UTF-8: {uexc}") from exc
        raise InvalidMessage("invalid_json", f"value is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidMessage("not_an_object", f"value is JSON {type(value).__name__}, not an object")
    return value


def _validate(model: type[BaseModel], obj: dict[str, Any]) -> Any:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise _invalid(exc) from exc


def _invalid(exc: ValidationError) -> InvalidMessage:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "value"
    if first["type"] == "missing":
        return InvalidMessage("missing_field", f"required field {where!r} is missing")
    if where == "event_name" and first["type"] == "literal_error":
        return InvalidMessage("unknown_event_name", f"unknown event_name {first.get('input')!r:.100}")
    return InvalidMessage("invalid_field", f"field {where!r}: {first['msg']}")


# Event times are kept as non-negative epoch ms and shown as four-digit years.
_MIN_MS, _MAX_MS = 0, 253_402_300_799_999  # 1970-01-01T00:00:00.000Z .. 9999-12-31T23:59:59.999Z


def iso_field_ms(value: str, field: str) -> int:
    """An ISO-8601 field as epoch ms within 1970..9999, or the dead-letter reason."""
    try:
        ms = parse_iso_ms(value)
    except TimestampError as exc:
        raise InvalidMessage("invalid_timestamp", f"field {field!r}: {exc}") from exc
    if not _MIN_MS <= ms <= _MAX_MS:
        raise InvalidMessage("invalid_timestamp", f"field {field!r}: outside 1970-01-01 .. 9999-12-31 UTC")
    return ms


def canonical_json(obj: Any, option: int = orjson.OPT_SORT_KEYS) -> str:
    """Compact JSON text; a value orjson cannot write (nested deeper than 254 levels) is refused."""
    try:
        return orjson.dumps(obj, option=option).decode()
    except orjson.JSONEncodeError as exc:
        raise InvalidMessage("invalid_field", f"a value cannot be stored: {exc}") from exc


# RtkSessionIn's required fields by type, for the hand check of the hot path.
_SESSION_STR = (
    "associated_id",
    "created_at",
    "meeting_display_name",
    "organization_id",
    "started_at",
    "updated_at",
)
_SESSION_NUM = ("live_participants", "max_concurrent_participants", "minutes_consumed")
_SESSION_STATUS = ("LIVE", "ENDED")
_SESSION_TYPE = ("meeting", "livestream", "participant")


def _plain_session(obj: dict[str, Any]) -> bool:
    """Whether RtkSessionIn accepts the object as it is, checked by hand: the hot path. False
    sends it through the model, which says what is wrong (or accepts it after all)."""
    sid = obj.get("id")
    if type(sid) is not str or not sid:
        return False
    for f in _SESSION_STR:
        if type(obj.get(f)) is not str:
            return False
    for f in _SESSION_NUM:
        t = type(obj.get(f))
        if t is not int and t is not float:
            return False
    status, kind = obj.get("status"), obj.get("type")
    if type(status) is not str or status not in _SESSION_STATUS:
        return False
    if type(kind) is not str or kind not in _SESSION_TYPE:
        return False
    ended, rooms = obj.get("ended_at"), obj.get("breakout_rooms")
    return (ended is None or type(ended) is str) and (rooms is None or type(rooms) is list)


def decode_session(raw: bytes) -> SessionMessage:
    obj = load_object(raw)
    if not _plain_session(obj):
        # Strict validation without coercion: what it accepts, it accepts as it is.
        _validate(RtkSessionIn, obj)
    updated = iso_field_ms(obj["updated_at"], "updated_at")
    started = iso_field_ms(obj["started_at"], "started_at")
    iso_field_ms(obj["created_at"], "created_at")
    ended: int | None = None
    if obj.get("ended_at") is not None:
        ended = iso_field_ms(obj["ended_at"], "ended_at")
    status = obj["status"]
    if status == "ENDED" and ended is None:
        raise InvalidMessage("missing_field", "a session with status ENDED needs 'ended_at'")
    meta = {
        "associated_id": obj["associated_id"],
        "meeting_display_name": obj["meeting_display_name"],
        "organization_id": obj["organization_id"],
        "type": obj["type"],
        "created_at": obj["created_at"],
    }
    if obj.get("breakout_rooms") is not None:
        meta["breakout_rooms"] = canonical_json(obj["breakout_rooms"])
    return SessionMessage(
        session_id=obj["id"],
        status=status,
        updated_ms=updated,
        started_ms=started,
        ended_ms=ended,
        meta_json=canonical_json(meta),
        digest=hashlib.sha1(raw, usedforsecurity=False).hexdigest(),
    )


# RtkPeerEventIn's optional fields, all strings but `minutes_consumed`.
_PEER_OPTIONAL_STR = frozenset(
    name
    for name, f in RtkPeerEventIn.model_fields.items()
    if not f.is_required() and name != "minutes_consumed"
)


def _plain_peer_event(obj: dict[str, Any]) -> tuple[str, str, str, str] | None:
    """(id, created_at, event_name, peer_id) when the object is one RtkPeerEventIn accepts as it
    is, checked by hand: the hot path. None sends it through the model, which says what is wrong."""
    eid, created, name, peer = obj.get("id"), obj.get("created_at"), obj.get("event_name"), obj.get("peer_id")
    if type(eid) is not str or type(created) is not str or type(peer) is not str or not eid or not peer:
        return None
    if type(name) is not str or name not in CODE_BY_EVENT_NAME:
        return None
    minutes = obj.get("minutes_consumed")
    if minutes is not None and type(minutes) is not int and type(minutes) is not float:
        return None
    # One pass over the members (almost all strings), not one look-up per optional field.
    for k, v in obj.items():
        if type(v) is not str and v is not None and k in _PEER_OPTIONAL_STR:
            return None
    return eid, created, name, peer


def decode_peer_event(raw: bytes, key: bytes | None) -> PeerEvent:
    obj = load_object(raw)
    plain = _plain_peer_event(obj)
    if plain is None:
        ev: RtkPeerEventIn = _validate(RtkPeerEventIn, obj)
        plain = (ev.id, ev.created_at, ev.event_name, ev.peer_id)
    eid, created, name, peer = plain
    session_id = obj.get("session_id") or (key.decode("utf-8", "replace") if key else "")
    if not session_id:
        raise InvalidMessage("missing_field", "peer event has no 'session_id' and no message key")
    t_ms = iso_field_ms(created, "created_at")
    updated = obj.get("updated_at")
    if updated is not None and updated != created:
        iso_field_ms(updated, "updated_at")
    # Positional: session_id, event_id, peer_id, code, t_ms, raw_json.
    return PeerEvent(session_id, eid, peer, CODE_BY_EVENT_NAME[name], t_ms, raw.decode())


def decode_peer_report(raw: bytes, timestamp_ms: int) -> PeerReport:
    """A peer report; ``timestamp_ms`` is the record's Kafka timestamp.

    A PeerReport carries no time of its own, so the newest is the one produced last
    (the record timestamp, kept in the log, so a replay picks the same one), ties going
    to the greater content.
    """
    msg: RtkPeerReportIn = _validate(RtkPeerReportIn, load_object(raw))
    rank = f"{max(timestamp_ms, 0):015d}|{hashlib.sha1(raw, usedforsecurity=False).hexdigest()}"
    return PeerReport(msg.session_id, msg.peer_id, rank, canonical_json(msg.peer_report, option=0))
