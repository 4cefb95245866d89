"""Livepeer stream-session logs for tests: snapshots of one session over time, and webhooks."""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import orjson

SEED_000 = orjson.loads((Path(__file__).parent / "data" / "livepeer_session_seed000.json").read_bytes())
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def snapshot(
    sid: str,
    parent: str,
    last_seen: int,
    created: int,
    source_bytes: int,
    transcoded_bytes: int,
    *,
    rates: bool = False,
    project: str = "proj-a",
    **extra: Any,
) -> dict[str, Any]:
    """A seed-000 Session at `last_seen`; with `rates=False` its rates are 0 (to be derived)."""
    snap = {**SEED_000}
    snap.update(
        id=sid,
        name=f"stream {sid[:6]}",
        lastSeen=last_seen,
        createdAt=created,
        parentId=parent,
        projectId=project,
        sourceBytes=source_bytes,
        transcodedBytes=transcoded_bytes,
        sourceSegments=source_bytes // 1000,
        transcodedSegments=transcoded_bytes // 1000,
        sourceSegmentsDuration=(last_seen - created) / 1000,
        transcodedSegmentsDuration=(last_seen - created) / 1000,
        ingestRate=3000 if rates else 0,
        outgoingRate=6000 if rates else 0,
        isHealthy=True,
        issues=[],
    )
    snap.update(extra)
    return snap


def snapshot_series(
    rng: random.Random, *, parent: str | None = None, count: int | None = None, t0: int = T0
) -> tuple[str, str, list[dict[str, Any]]]:
    """(session id, parent id, snapshots in time order): counters grow, rates sometimes given."""
    sid = str(uuid.UUID(int=rng.getrandbits(128)))
    parent = parent or f"stream-{uuid.UUID(int=rng.getrandbits(128))}"
    created = t0 + rng.randint(0, 10**6)
    t, sb, tb = created, 0, 0
    snaps = []
    for i in range(count or rng.randint(1, 8)):
        t += rng.randint(1, 10) * 1000
        sb += rng.randint(0, 10**6)
        tb += rng.randint(0, 2 * 10**6)
        extra: dict[str, Any] = {}
        if rng.random() < 0.3:
            extra["isHealthy"] = False
            extra["issues"] = ["Buffer underflow"]
        if i >= 1 and rng.random() < 0.3:
            extra["recordingStatus"] = "waiting"
        snaps.append(snapshot(sid, parent, t, created, sb, tb, rates=rng.random() < 0.3, **extra))
    return sid, parent, snaps


def webhook(event: str, *, t_ms: int, stream_id: str, session_id: str | None = None, **payload: Any) -> dict:
    """A Livepeer webhook body (CONTRACT 5.2)."""
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "webhookId": "wh-1",
        "createdAt": t_ms,
        "timestamp": t_ms,
        "event": event,
        "stream": {"id": stream_id, "name": "my stream"},
    }
    if session_id is not None:
        body["payload"] = {"session": {"id": session_id, "parentId": stream_id}, **payload}
    return body
