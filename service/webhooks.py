"""RealtimeKit webhook bodies (CONTRACT 5.1) to the same core commands the topics give.

A participant webhook becomes peer events whose (peer, kind, time) equals the topic
event's for the same fact, so a fact told by both paths counts once. The `meeting`
object becomes a session message carrying only the fields it knows. Links and statuses
(transcript, summary, chat, recordings, livestreams) and unknown events become artifacts:
one value per slot, the one with the greatest rank winning, whatever the arrival order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict

from .core.intervals import CODE_BY_EVENT_NAME
from .core.model import VIA_WEBHOOK, Artifact, PeerEvent, SessionMessage
from .core.timeutil import TimestampError, iso_ms, parse_iso_ms
from .errors import InvalidMessage
from .wire import Id, _validate, canonical_json, iso_field_ms, load_object

Command = PeerEvent | SessionMessage | Artifact

assert VIA_WEBHOOK == '"via":"webhook"'  # the exact bytes orjson writes for the member below

_LENIENT = ConfigDict(extra="allow", strict=True)


class OrganizerIn(BaseModel):
    model_config = _LENIENT
    id: str | None = None
    name: str | None = None


class MeetingIn(BaseModel):
    """The `meeting` object of a RealtimeKit webhook; unknown fields are kept, not refused."""

    model_config = _LENIENT
    sessionId: Id
    id: str | None = None
    title: str | None = None
    roomName: str | None = None
    status: str | None = None
    createdAt: str | None = None
    startedAt: str | None = None
    endedAt: str | None = None
    organizedBy: OrganizerIn | None = None


class ParticipantIn(BaseModel):
    model_config = _LENIENT
    peerId: Id
    userDisplayName: str | None = None
    customParticipantId: str | None = None
    clientSpecificId: str | None = None
    joinedAt: str | None = None
    leftAt: str | None = None


class WebhookIn(BaseModel):
    """Any RealtimeKit webhook: `event`, and `meeting` for every event but meeting.chatSynced."""

    model_config = _LENIENT
    event: Id
    meeting: MeetingIn | None = None
    participant: ParticipantIn | None = None


# Statuses in lifecycle order: a later status of one recording or livestream wins.
_RECORDING_ORDER = {"INVOKED": 1, "RECORDING": 2, "UPLOADING": 3, "UPLOADED": 4, "ERRORED": 5}
_LIVESTREAM_ORDER = {"INVOKED": 1, "LIVE": 2, "IDLE": 3, "OFFLINE": 4, "STOPPED": 4, "ERRORED": 5}

# Events whose facts feed the session rules; every other event is kept as an artifact.
_MEETING_EVENTS = {"meeting.started", "meeting.ended", "meeting.participantJoined", "meeting.participantLeft"}


def _sha(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def _time(value: str | None, where: str, *, required: bool = False) -> int | None:
    if value is None:
        if required:
            raise InvalidMessage("missing_field", f"required field {where!r} is missing")
        return None
    return iso_field_ms(value, where)


def _loose_time(value: Any) -> int:
    """An expiry or similar time used only to order versions: 0 when absent or unreadable."""
    if not isinstance(value, str):
        return 0
    try:
        return max(0, parse_iso_ms(value))
    except TimestampError:
        return 0


def _artifact(sid: str, slot: str, order: int, value: Mapping[str, Any]) -> Artifact:
    value_json = canonical_json(value)
    # Order first, then the content: equal orders still pick one value, the same everywhere.
    return Artifact(sid, slot, f"{order:015d}|{_sha(value_json)}", value_json)


def _link(obj: Mapping[str, Any], url_field: str, expiry_field: str, event: str) -> dict[str, Any]:
    url = obj.get(url_field)
    if not isinstance(url, str) or not url:
        raise InvalidMessage("missing_field", f"{event} needs a string {url_field!r}")
    expiry = obj.get(expiry_field)
    return {"url": url, "expiry": expiry if isinstance(expiry, str) else None}


def _peer_event(sid: str, digest: str, event: str, name: str, t_ms: int, p: ParticipantIn) -> PeerEvent:
    code = CODE_BY_EVENT_NAME[name]
    event_id = f"wh:{digest}:{code}"
    raw: dict[str, Any] = {
        "id": event_id,
        "created_at": iso_ms(t_ms),
        "event_name": name,
        "peer_id": p.peerId,
        "session_id": sid,
        "updated_at": iso_ms(t_ms),
        "display_name": p.userDisplayName,
        "custom_participant_id": p.customParticipantId or p.clientSpecificId,
        "via": "webhook",
        "webhook_event": event,
    }
    return PeerEvent(sid, event_id, p.peerId, code, t_ms, orjson.dumps(raw).decode())


def _meeting_message(sid: str, digest: str, m: MeetingIn, stamp: int, ended_ms: int | None) -> SessionMessage:
    meta = {
        "associated_id": m.id,
        "meeting_display_name": m.title,
        "organization_id": m.organizedBy.id if m.organizedBy else None,
        "created_at": m.createdAt,
    }
    return SessionMessage(
        session_id=sid,
        status="ENDED" if ended_ms is not None else "LIVE",
        updated_ms=stamp,
        started_ms=_time(m.startedAt, "meeting.startedAt"),
        ended_ms=ended_ms,
        meta_json=canonical_json({k: v for k, v in meta.items() if v is not None}),
        digest=f"wh:{digest}",
    )


def decode_rtk_webhook(raw: bytes, key: bytes | None) -> list[Command]:
    """The commands one `rtk.webhooks` record gives, all for one session."""
    obj = load_object(raw)
    hook: WebhookIn = _validate(WebhookIn, obj)
    event, m, p = hook.event, hook.meeting, hook.participant
    digest = _sha(raw)
    sid = m.sessionId if m else obj.get("sessionId")
    if not isinstance(sid, str) or not sid:
        sid = key.decode("utf-8", "replace") if key else ""
    if not sid:
        raise InvalidMessage(
            "missing_field", f"{event} names no session: no 'meeting.sessionId' or 'sessionId'"
        )
    if m is None and event in _MEETING_EVENTS:
        raise InvalidMessage("missing_field", f"{event} needs a 'meeting' object")
    if m is not None:
        _time(m.createdAt, "meeting.createdAt")

    out: list[Command] = []
    ended_ms: int | None = None
    stamp: int | None = None
    if event in ("meeting.participantJoined", "meeting.participantLeft"):
        if p is None:
            raise InvalidMessage("missing_field", f"{event} needs a 'participant' object")
        joined = _time(p.joinedAt, "participant.joinedAt", required=event.endswith("Joined"))
        if joined is not None:
            out.append(_peer_event(sid, digest, event, "PEER_JOINING", joined, p))
            stamp = joined
        if event.endswith("Left"):
            left = _time(p.leftAt, "participant.leftAt", required=True)
            assert left is not None
            out.append(_peer_event(sid, digest, event, "PEER_LEAVING", left, p))
            stamp = left
    elif event == "meeting.ended":
        assert m is not None
        ended_ms = stamp = _time(m.endedAt, "meeting.endedAt", required=True)
    elif event == "meeting.transcript":
        link = _link(obj, "transcriptDownloadUrl", "transcriptDownloadUrlExpiry", event)
        out.append(_artifact(sid, "transcript", _loose_time(link["expiry"]), link))
    elif event == "meeting.summary":
        link = _link(obj, "summaryDownloadUrl", "summaryDownloadUrlExpiry", event)
        out.append(_artifact(sid, "summary", _loose_time(link["expiry"]), link))
    elif event == "meeting.chatSynced":
        link = _link(obj, "chatDownloadUrl", "chatDownloadUrlExpiry", event)
        out.append(_artifact(sid, "chat", _loose_time(link["expiry"]), link))
    elif event == "recording.statusUpdate":
        out.append(_recording(sid, obj))
    elif event == "livestreaming.statusUpdate":
        out.append(_livestream(sid, obj))
    elif event != "meeting.started":
        # Unknown events are kept as they came, one per event name, not dead-lettered.
        out.append(Artifact(sid, f"event:{event}", _sha(raw), raw.decode("utf-8")))

    if m is not None:
        if stamp is None:
            stamp = _time(m.startedAt, "meeting.startedAt") or _time(m.createdAt, "meeting.createdAt")
        if stamp is not None:
            out.insert(0, _meeting_message(sid, digest, m, stamp, ended_ms))
        elif event in _MEETING_EVENTS:
            raise InvalidMessage("missing_field", f"{event} needs 'meeting.startedAt' or 'meeting.createdAt'")
    return out


def _recording(sid: str, obj: Mapping[str, Any]) -> Artifact:
    rec = obj.get("recording")
    if not isinstance(rec, dict):
        raise InvalidMessage("missing_field", "recording.statusUpdate needs a 'recording' object")
    rid = rec.get("id") or rec.get("recordingId") or "recording"
    status = rec.get("status")
    value = {
        "id": str(rid),
        "status": status if isinstance(status, str) else None,
        "url": rec.get("downloadUrl") if isinstance(rec.get("downloadUrl"), str) else None,
        "expiry": rec.get("downloadUrlExpiry") if isinstance(rec.get("downloadUrlExpiry"), str) else None,
        "started_at": rec.get("startedTime") if isinstance(rec.get("startedTime"), str) else None,
    }
    return _artifact(sid, f"recording:{rid}", _RECORDING_ORDER.get(str(status), 0), value)


def _livestream(sid: str, obj: Mapping[str, Any]) -> Artifact:
    inner = obj.get("livestream") if isinstance(obj.get("livestream"), dict) else {}
    assert isinstance(inner, dict)
    lid = obj.get("livestreamId") or obj.get("streamId") or inner.get("id") or "livestream"
    status = obj.get("status") or inner.get("status")
    if not isinstance(status, str):
        raise InvalidMessage("missing_field", "livestreaming.statusUpdate needs a string 'status'")
    value = {"id": str(lid), "status": status}
    return _artifact(sid, f"livestream:{lid}", _LIVESTREAM_ORDER.get(status, 0), value)
