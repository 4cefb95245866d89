"""One meeting, told two ways: as RealtimeKit webhooks (CONTRACT 5.1) and as topic messages.

Both tellings carry the same facts. A webhook participant carries a display name and a
custom participant id only, so the topic telling's peer events carry those only too.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from service.constants import RTK_PEER_EVENTS, RTK_SESSIONS
from service.core.timeutil import iso_ms

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass
class Peer:
    peer_id: str
    display_name: str
    custom_id: str
    intervals: list[tuple[int, int | None]]  # (joined, left or None)


@dataclass
class Meeting:
    session_id: str
    meeting_id: str
    title: str
    organization_id: str
    created_ms: int
    started_ms: int
    ended_ms: int | None
    peers: list[Peer] = field(default_factory=list)

    def renamed(self, session_id: str) -> Meeting:
        """The same meeting under another session id (a twin to compare with)."""
        return Meeting(
            session_id,
            self.meeting_id,
            self.title,
            self.organization_id,
            self.created_ms,
            self.started_ms,
            self.ended_ms,
            self.peers,
        )


def random_meeting(rng: random.Random, *, ended: bool = True, t0: int = T0) -> Meeting:
    start = t0 + rng.randint(0, 10**6)
    sid = str(uuid.UUID(int=rng.getrandbits(128)))
    peers: list[Peer] = []
    last = start
    for _ in range(rng.randint(1, 6)):
        pid = str(uuid.UUID(int=rng.getrandbits(128)))
        t = start + rng.randint(0, 30) * 1000
        intervals: list[tuple[int, int | None]] = []
        for _ in range(rng.randint(1, 3)):
            join = t + rng.randint(0, 5) * 1000
            leave = join + rng.randint(1, 60) * 1000
            intervals.append((join, leave))
            t = leave
        if not ended and rng.random() < 0.5:
            intervals[-1] = (intervals[-1][0], None)
        peers.append(Peer(pid, f"User {pid[:4]}", f"c-{pid[:8]}", intervals))
        last = max(last, t)
    if ended and rng.random() < 0.5:
        # A peer still connected when the meeting ends is closed at the end.
        peers[0].intervals[-1] = (peers[0].intervals[-1][0], None)
    return Meeting(
        session_id=sid,
        meeting_id=f"m-{sid[:8]}",
        title=f"Standup {sid[:4]}",
        organization_id=rng.choice(["org-a", "org-b"]),
        created_ms=start - 60_000,
        started_ms=start,
        ended_ms=last + rng.randint(1, 10) * 1000 if ended else None,
        peers=peers,
    )


def _meeting_object(m: Meeting, *, ended: bool = False) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": m.meeting_id,
        "sessionId": m.session_id,
        "title": m.title,
        "roomName": "lcfvaa-absxch",
        "status": "LIVE",  # stays LIVE even in end events (CONTRACT 5.1)
        "createdAt": iso_ms(m.created_ms),
        "startedAt": iso_ms(m.started_ms),
        "organizedBy": {"id": m.organization_id, "name": "Acme"},
    }
    if ended and m.ended_ms is not None:
        obj["endedAt"] = iso_ms(m.ended_ms)
    return obj


def _participant(p: Peer, joined: int, left: int | None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "peerId": p.peer_id,
        "userDisplayName": p.display_name,
        "customParticipantId": p.custom_id,
        "clientSpecificId": p.custom_id,
        "joinedAt": iso_ms(joined),
    }
    if left is not None:
        obj["leftAt"] = iso_ms(left)
    return obj


def webhook_bodies(m: Meeting, *, transcript_url: str | None = None) -> list[dict[str, Any]]:
    """The webhooks RealtimeKit sends for the meeting, in the order it sends them."""
    out: list[dict[str, Any]] = [{"event": "meeting.started", "meeting": _meeting_object(m)}]
    for p in m.peers:
        for joined, left in p.intervals:
            out.append(
                {
                    "event": "meeting.participantJoined",
                    "meeting": _meeting_object(m),
                    "participant": _participant(p, joined, None),
                }
            )
            if left is not None:
                out.append(
                    {
                        "event": "meeting.participantLeft",
                        "meeting": _meeting_object(m),
                        "participant": _participant(p, joined, left),
                    }
                )
    if m.ended_ms is not None:
        out.append(
            {
                "event": "meeting.ended",
                "meeting": _meeting_object(m, ended=True),
                "reason": "HOST_ENDED_MEETING",
            }
        )
    if transcript_url is not None:
        out.append(
            {
                "event": "meeting.transcript",
                "meeting": _meeting_object(m, ended=True),
                "transcriptDownloadUrl": transcript_url,
                "transcriptDownloadUrlExpiry": iso_ms((m.ended_ms or m.started_ms) + 86_400_000),
            }
        )
    return out


def _session_message(m: Meeting, status: str, updated: int) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "id": m.session_id,
        "associated_id": m.meeting_id,
        "created_at": iso_ms(m.created_ms),
        "live_participants": 0,
        "max_concurrent_participants": 0,
        "meeting_display_name": m.title,
        "minutes_consumed": 0,
        "organization_id": m.organization_id,
        "started_at": iso_ms(m.started_ms),
        "status": status,
        "type": "meeting",
        "updated_at": iso_ms(updated),
    }
    if status == "ENDED" and m.ended_ms is not None:
        msg["ended_at"] = iso_ms(m.ended_ms)
    return msg


def _peer_event(m: Meeting, p: Peer, name: str, t: int) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "created_at": iso_ms(t),
        "event_name": name,
        "minutes_consumed": 0,
        "participant_id": f"part-{p.peer_id[:8]}",
        "peer_id": p.peer_id,
        "preset_view_type": "GROUP_CALL",
        "session_id": m.session_id,
        "socket_session_id": f"sock-{p.peer_id[:8]}",
        "updated_at": iso_ms(t),
        "display_name": p.display_name,
        "custom_participant_id": p.custom_id,
    }


def topic_messages(m: Meeting) -> list[tuple[str, bytes]]:
    """(topic, value) of the same meeting on `rtk.sessions` and `rtk.peer-events`."""
    out: list[tuple[str, bytes]] = [(RTK_SESSIONS, orjson.dumps(_session_message(m, "LIVE", m.started_ms)))]
    for p in m.peers:
        for joined, left in p.intervals:
            out.append((RTK_PEER_EVENTS, orjson.dumps(_peer_event(m, p, "PEER_JOINING", joined))))
            if left is not None:
                out.append((RTK_PEER_EVENTS, orjson.dumps(_peer_event(m, p, "PEER_LEAVING", left))))
    if m.ended_ms is not None:
        # updated_at = ended_at, as meeting.ended's own time: both tellings end with one updated_at.
        out.append((RTK_SESSIONS, orjson.dumps(_session_message(m, "ENDED", m.ended_ms))))
    return out
