"""Outward shapes: seed-003 Session and Participant objects, the CONTRACT-6 SessionSummary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .intervals import MS_PER_MINUTE, connected_ms
from .model import PeerView, SessionView
from .timeutil import iso_ms, iso_or_none, parse_iso_ms


def session_object(view: SessionView, now_ms: int) -> dict[str, Any]:
    """A RealtimeKit Session (seed 003); a LIVE session's minutes count up to ``now_ms``."""
    meta = view.meta
    out: dict[str, Any] = {
        "id": view.session_id,
        "associated_id": meta.get("associated_id"),
        "created_at": iso_ms(parse_iso_ms(meta["created_at"]) if meta.get("created_at") else view.started_ms),
        "live_participants": view.live_participants(),
        "max_concurrent_participants": view.totals.peak,
        "meeting_display_name": meta.get("meeting_display_name"),
        "minutes_consumed": view.minutes_at(now_ms),
        "organization_id": meta.get("organization_id"),
        "started_at": iso_ms(view.started_ms),
        "status": view.status,
        "type": meta.get("type"),
        "updated_at": iso_ms(view.updated_ms),
    }
    if meta.get("breakout_rooms") is not None:
        out["breakout_rooms"] = meta["breakout_rooms"]
    if view.ended_ms is not None:
        out["ended_at"] = iso_ms(view.ended_ms)
    return out


def participant_object(peer: PeerView, now_ms: int) -> dict[str, Any]:
    """A RealtimeKit Participant (seed 003); its ``id`` is the peer id (CONTRACT 4.1)."""
    d = peer.details
    return {
        "id": peer.peer_id,
        "created_at": iso_ms(peer.created_ms),
        "custom_participant_id": d.get("custom_participant_id"),
        "display_name": d.get("display_name"),
        "duration": peer.duration_minutes(now_ms),
        "joined_at": iso_or_none(peer.joined_ms),
        "left_at": iso_or_none(peer.left_ms),
        "preset_name": d.get("preset_name"),
        "updated_at": iso_ms(peer.updated_ms),
        "user_id": d.get("user_id"),
    }


def participants_in_order(view: SessionView) -> list[PeerView]:
    """Participants by join time (never-joined last), then id: a stable order for pages."""
    return sorted(
        view.peers.values(),
        key=lambda p: (p.joined_ms is None, p.joined_ms or 0, p.peer_id),
    )


def summary_message_id(session_id: str) -> str:
    return f"{session_id}:summary"


def transcript_message_id(session_id: str) -> str:
    return f"{session_id}:transcript-ready"


def artifact_fields(artifacts: Mapping[str, Any]) -> dict[str, Any]:
    """The SessionSummary fields the artifacts add, only those known (CONTRACT 6).

    Slots are written by service/webhooks.py: `transcript`, `summary`, `chat` hold
    `{url, expiry}`; `recording:<id>` and `livestream:<id>` hold `{id, status, ...}`.
    """
    out: dict[str, Any] = {}
    if t := artifacts.get("transcript"):
        out["transcript_download_url"] = t["url"]
    if s := artifacts.get("summary"):
        out["summary_download_url"] = s["url"]
    if c := artifacts.get("chat"):
        out["chat_download_url"] = c["url"]
    recordings = [v for k, v in artifacts.items() if k.startswith("recording:")]
    if recordings:
        latest = max(recordings, key=lambda r: (r.get("started_at") or "", r["id"]))
        out["recording_status"] = latest["status"]
        with_url = [r for r in recordings if r.get("url")]
        if with_url:
            newest = max(with_url, key=lambda r: (r.get("started_at") or "", r["id"]))
            out["recording_download_url"] = newest["url"]
    streams = [v for k, v in artifacts.items() if k.startswith("livestream:")]
    if streams:
        out["livestreaming_status"] = max(streams, key=lambda r: r["id"])["status"]
    return out


def transcript_ready(view: SessionView) -> dict[str, Any] | None:
    """The TranscriptReady content (CONTRACT 6) without ``message_id`` and ``revision``;
    None until a transcript link is known. A function of the stored facts only."""
    t = view.artifacts.get("transcript")
    if not t:
        return None
    as_of = view.ended_ms if view.ended_ms is not None else view.updated_ms
    return {
        "session_id": view.session_id,
        "meeting_id": view.meta.get("associated_id"),
        "title": view.meta.get("meeting_display_name"),
        "organization_id": view.meta.get("organization_id"),
        "transcript_download_url": t["url"],
        "transcript_download_url_expiry": t["expiry"],
        "session_status": view.status,
        "ended_at": iso_or_none(view.ended_ms),
        "participants_total": len(view.peers),
        "minutes_consumed": view.minutes_at(as_of),
    }


def session_summary(view: SessionView, now_ms: int) -> dict[str, Any]:
    """The SessionSummary content (CONTRACT 6) without ``message_id`` and ``revision``.

    For an ENDED session it depends on the stored facts only, so every rebuild
    gives the same bytes; a LIVE session is reported as if it ended at ``now_ms``.
    """
    end = view.ended_ms if view.ended_ms is not None else now_ms
    meta = view.meta
    participants = []
    total_ms = 0  # minutes_consumed, summed once with the participants (view.minutes_at(end))
    for peer in participants_in_order(view):
        left = peer.left_ms if peer.left_ms is not None or view.ended_ms is not None else None
        if left is None and peer.intervals and view.ended_ms is None:
            left = now_ms  # the report of a live session closes open intervals now
        details = peer.details
        connected = connected_ms(peer.intervals, end)
        total_ms += connected
        participants.append(
            {
                "id": peer.peer_id,
                "user_id": details.get("user_id"),
                "custom_participant_id": details.get("custom_participant_id"),
                "display_name": details.get("display_name"),
                "joined_at": iso_or_none(peer.joined_ms),
                "left_at": iso_or_none(left),
                "duration": connected / MS_PER_MINUTE,  # peer.duration_minutes(end)
            }
        )
    return {
        "session_id": view.session_id,
        "source": "realtimekit",
        "type": meta.get("type"),
        "associated_id": meta.get("associated_id"),
        "title": meta.get("meeting_display_name"),
        "organization_id": meta.get("organization_id"),
        "started_at": iso_ms(view.started_ms),
        "ended_at": iso_ms(end),
        "duration_seconds": max(0, end - view.started_ms) / 1000,
        "end_reason": view.end_reason,
        "participants_total": len(view.peers),
        "max_concurrent_participants": view.totals.peak,
        "minutes_consumed": total_ms / MS_PER_MINUTE,
        "participants": participants,
        **artifact_fields(view.artifacts),
    }
