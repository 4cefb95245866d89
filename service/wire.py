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


def _ms(obj: BaseModel, field: str) -> int:
    return iso_field_ms(getattr(obj, field), field)


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


def decode_session(raw: bytes) -> SessionMessage:
    msg: RtkSessionIn = _validate(RtkSessionIn, load_object(raw))
    updated, started = _ms(msg, "updated_at"), _ms(msg, "started_at")
    _ms(msg, "created_at")
    ended: int | None = None
    if msg.ended_at is not None:
        ended = _ms(msg, "ended_at")
    if msg.status == "ENDED" and ended is None:
        raise InvalidMessage("missing_field", "a session with status ENDED needs 'ended_at'")
    meta = {
        "associated_id": msg.associated_id,
        "meeting_display_name": msg.meeting_display_name,
        "organization_id": msg.organization_id,
        "type": msg.type,
        "created_at": msg.created_at,
    }
    if msg.breakout_rooms is not None:
        meta["breakout_rooms"] = canonical_json(msg.breakout_rooms)
    return SessionMessage(
        session_id=msg.id,
        status=msg.status,
        updated_ms=updated,
        started_ms=started,
        ended_ms=ended,
        meta_json=canonical_json(meta),
        digest=hashlib.sha1(raw, usedforsecurity=False).hexdigest(),
    )


# RtkPeerEventIn's optional fields, all strings but `minutes_consumed`.
_PEER_OPTIONAL_STR = tuple(
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
    for f in _PEER_OPTIONAL_STR:
        v = obj.get(f)
        if v is not None and type(v) is not str:
            return None
    minutes = obj.get("minutes_consumed")
    if minutes is not None and type(minutes) is not int and type(minutes) is not float:
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
    if (updated := obj.get("updated_at")) is not None and updated != created:
        iso_field_ms(updated, "updated_at")
    return PeerEvent(
        session_id=session_id,
        event_id=eid,
        peer_id=peer,
        code=CODE_BY_EVENT_NAME[name],
        t_ms=t_ms,
        raw_json=raw.decode("utf-8"),
    )


def decode_peer_report(raw: bytes, timestamp_ms: int) -> PeerReport:
    """A peer report; ``timestamp_ms`` is the record's Kafka timestamp.

    A PeerReport carries no time of its own, so the newest is the one produced last
    (the record timestamp, kept in the log, so a replay picks the same one), ties going
    to the greater content.
    """
    msg: RtkPeerReportIn = _validate(RtkPeerReportIn, load_object(raw))
    rank = f"{max(timestamp_ms, 0):015d}|{hashlib.sha1(raw, usedforsecurity=False).hexdigest()}"
    return PeerReport(msg.session_id, msg.peer_id, rank, canonical_json(msg.peer_report, option=0))
