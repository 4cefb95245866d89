"""Seed-003-shaped RealtimeKit messages for unit tests, decoded through the real wire layer.

Times are given in whole seconds after ``BASE_MS`` so hand-worked examples stay readable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import orjson

from service.core.model import Outcome, PeerEvent, ReferenceSession, SessionMessage
from service.core.timeutil import iso_ms, parse_iso_ms
from service.wire import decode_peer_event, decode_session

SESSION_ID = "1c5a9a64-7f4e-4b8f-9d3e-5b1f0a2c3d4e"
MEETING_ID = "bbb1c2d3-0000-4000-8000-000000000001"
ORG_ID = "org-0001"
BASE_MS = parse_iso_ms("2024-05-01T10:00:00.000Z")
IDLE_TIMEOUT_MS = 600_000

ISO_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def t(seconds: float) -> int:
    """Epoch ms ``seconds`` after BASE."""
    return BASE_MS + round(seconds * 1000)


def session_dict(
    status: str = "LIVE",
    *,
    updated: float = 0,
    started: float = 0,
    ended: float | None = None,
    title: str = "Daily standup",
    session_id: str = SESSION_ID,
    **extra: Any,
) -> dict[str, Any]:
    """An `rtk.sessions` value with every seed-003 field."""
    body: dict[str, Any] = {
        "id": session_id,
        "associated_id": MEETING_ID,
        "created_at": iso_ms(t(started)),
        "live_participants": 0,
        "max_concurrent_participants": 0,
        "meeting_display_name": title,
        "minutes_consumed": 0,
        "organization_id": ORG_ID,
        "started_at": iso_ms(t(started)),
        "status": status,
        "type": "meeting",
        "updated_at": iso_ms(t(updated)),
    }
    if ended is not None:
        body["ended_at"] = iso_ms(t(ended))
    body.update(extra)
    return body


def peer_event_dict(
    peer: str,
    name: str,
    at: float,
    *,
    event_id: str | None = None,
    session_id: str | None = SESSION_ID,
    **details: Any,
) -> dict[str, Any]:
    """An `rtk.peer-events` value with every seed-003 field, details alongside."""
    body: dict[str, Any] = {
        "id": event_id or f"ev-{peer}-{name}-{t(at)}",
        "created_at": iso_ms(t(at)),
        "event_name": name,
        "minutes_consumed": 0,
        "participant_id": f"part-{peer}",
        "peer_id": peer,
        "preset_view_type": "GROUP_CALL",
        "session_id": session_id,
        "socket_session_id": f"sock-{peer}",
        "updated_at": iso_ms(t(at)),
    }
    body.update(details)
    return body


def raw(obj: Any) -> bytes:
    return orjson.dumps(obj)


def session_message(status: str = "LIVE", **kw: Any) -> SessionMessage:
    return decode_session(raw(session_dict(status, **kw)))


def peer_event(peer: str, name: str, at: float, **kw: Any) -> PeerEvent:
    return decode_peer_event(raw(peer_event_dict(peer, name, at, **kw)), SESSION_ID.encode())


def join(peer: str, at: float, **kw: Any) -> PeerEvent:
    return peer_event(peer, "PEER_JOINING", at, **kw)


def leave(peer: str, at: float, **kw: Any) -> PeerEvent:
    return peer_event(peer, "PEER_LEAVING", at, **kw)


def created(peer: str, at: float, **kw: Any) -> PeerEvent:
    return peer_event(peer, "PEER_CREATED", at, **kw)


Item = PeerEvent | SessionMessage


def apply(session: ReferenceSession, item: Item) -> Outcome:
    if isinstance(item, PeerEvent):
        return session.apply_peer_event(item)
    return session.apply_session_message(item)


def session_of(items: Iterable[Item], session_id: str = SESSION_ID) -> ReferenceSession:
    s = ReferenceSession(session_id)
    for item in items:
        apply(s, item)
    return s
