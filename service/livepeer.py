"""Livepeer wire formats: `livepeer.sessions` snapshots and `livepeer.webhooks` bodies to commands."""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict

from .core.streams import RECORDING_FIELDS, RecordingUpdate, Snapshot, StreamIdle
from .errors import InvalidMessage
from .wire import Id, Number, _validate, canonical_json, load_object

# Epoch-ms times are kept between 1970 and 9999, as the RealtimeKit ones.
_MAX_MS = 253_402_300_799_999


class LivepeerSessionIn(BaseModel):
    """A Livepeer Session (seed 000): camelCase, epoch-ms times. Unknown fields are kept."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: Id
    lastSeen: Number
    name: str | None = None
    createdAt: Number | None = None
    parentId: str | None = None
    projectId: str | None = None
    sourceSegments: Number | None = None
    transcodedSegments: Number | None = None
    sourceSegmentsDuration: Number | None = None
    transcodedSegmentsDuration: Number | None = None
    sourceBytes: Number | None = None
    transcodedBytes: Number | None = None
    ingestRate: Number | None = None
    outgoingRate: Number | None = None
    isHealthy: bool | None = None
    issues: list[str] | None = None
    recordingStatus: str | None = None
    recordingUrl: str | None = None
    mp4Url: str | None = None


class LivepeerWebhookIn(BaseModel):
    """A Livepeer webhook body (CONTRACT 5.2). Unknown fields are kept."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: Id
    event: Id
    timestamp: Number | None = None
    createdAt: Number | None = None
    stream: dict[str, Any] | None = None
    payload: dict[str, Any] | None = None


# What each recording event says about the session's recording (seed 000 RecordingStatus).
_RECORDING_STATUS = {
    "recording.started": "waiting",
    "recording.waiting": "waiting",
    "recording.ready": "ready",
}


def _ms(value: float, where: str) -> int:
    if not 0 <= value <= _MAX_MS:
        raise InvalidMessage("invalid_timestamp", f"field {where!r}: not epoch ms between 1970 and 9999")
    return int(value)


def _digest(raw: bytes) -> str:
    return hashlib.sha1(raw, usedforsecurity=False).hexdigest()


def decode_snapshot(raw: bytes) -> Snapshot:
    obj = load_object(raw)
    s: LivepeerSessionIn = _validate(LivepeerSessionIn, obj)
    last_seen = _ms(s.lastSeen, "lastSeen")
    if s.createdAt is not None:
        _ms(s.createdAt, "createdAt")
    recording = {f: obj[f] for f in RECORDING_FIELDS if isinstance(obj.get(f), str)}
    return Snapshot(
        session_id=s.id,
        last_seen=last_seen,
        source_bytes=s.sourceBytes or 0,
        transcoded_bytes=s.transcodedBytes or 0,
        raw_json=raw.decode("utf-8"),
        recording_json=canonical_json(recording),
        digest=_digest(raw),
    )


def decode_livepeer_webhook(raw: bytes) -> RecordingUpdate | StreamIdle | None:
    """A recording update of one session, a stream's idle, or None for events without session state
    (`stream.started`, `multistream.*`, `asset.*`, `task.*`, ...: acknowledged and counted)."""
    hook: LivepeerWebhookIn = _validate(LivepeerWebhookIn, load_object(raw))
    event = hook.event
    if event not in _RECORDING_STATUS and event != "stream.idle":
        return None
    when = hook.timestamp if hook.timestamp is not None else hook.createdAt
    if when is None:
        raise InvalidMessage("missing_field", f"{event} needs 'timestamp' or 'createdAt'")
    t_ms = _ms(when, "timestamp")
    # No fallback to the message key: the intake keys by the session when there is one, so a
    # key could name the wrong kind of thing.
    if event == "stream.idle":
        parent = (hook.stream or {}).get("id")
        if not isinstance(parent, str) or not parent:
            raise InvalidMessage("missing_field", "stream.idle needs 'stream.id'")
        return StreamIdle(parent, t_ms, _digest(raw))
    payload = hook.payload or {}
    session = payload.get("session") if isinstance(payload.get("session"), dict) else {}
    assert isinstance(session, dict)
    sid = session.get("id")
    if not isinstance(sid, str) or not sid:
        raise InvalidMessage("missing_field", f"{event} needs 'payload.session.id'")
    recording: dict[str, str] = {"recordingStatus": _RECORDING_STATUS[event]}
    for f in ("recordingUrl", "mp4Url"):
        value = payload.get(f, session.get(f))
        if isinstance(value, str):
            recording[f] = value
    return RecordingUpdate(sid, t_ms, canonical_json(recording), _digest(raw))
