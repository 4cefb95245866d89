"""Livepeer stream sessions (CONTRACT 4.3): snapshots, derived rates, recordings, the end.

`apply_livepeer.lua` is the production implementation; `ReferenceStream` is the plain
in-memory one that tests and the bench compare it with. Both keep, whatever the order:
- the newest snapshot (greatest `(lastSeen, digest)`) and the newest one before it
  (greatest with a smaller `lastSeen`), from which the rates are derived;
- each recording field from the newest source that carries it (snapshot or webhook);
- whether the session ended: by `stream.idle` of its parent stream (explicit, wins) or
  by the idle rule; `ended_at` is always the newest snapshot's `lastSeen`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from .model import Outcome
from .timeutil import iso_ms

RECORDING_FIELDS = ("recordingStatus", "recordingUrl", "mp4Url")
# Deprecated in seed 000 and left out of the object the API answers.
DEPRECATED_FIELDS = ("kind", "userId")


@dataclass(frozen=True)
class Snapshot:
    """A `livepeer.sessions` message: the session's cumulative counters at `lastSeen`."""

    session_id: str
    last_seen: int
    source_bytes: float
    transcoded_bytes: float
    raw_json: str  # the seed-000 object as received
    recording_json: str  # the recording fields it carries, as a JSON object
    digest: str


@dataclass(frozen=True)
class RecordingUpdate:
    """A `recording.*` webhook about one session: the recording fields it reports, at `t_ms`."""

    session_id: str
    t_ms: int
    recording_json: str
    digest: str


@dataclass(frozen=True)
class StreamIdle:
    """`stream.idle` of a parent stream at `t_ms`: its sessions created by then have ended."""

    parent_id: str
    t_ms: int
    digest: str


@dataclass(frozen=True)
class StreamEnd:
    """The end a `stream.idle` means for one session (the worker finds the sessions)."""

    session_id: str
    t_ms: int
    digest: str


StreamCommand = Snapshot | RecordingUpdate | StreamEnd


@dataclass(frozen=True)
class Previous:
    last_seen: int
    source_bytes: float
    transcoded_bytes: float


@dataclass(frozen=True)
class StreamView:
    session_id: str
    status: Literal["LIVE", "ENDED"]
    end_reason: str | None
    snapshot: Mapping[str, Any]  # the newest snapshot as received
    previous: Previous | None
    recording: Mapping[str, Any]

    @property
    def last_seen(self) -> int:
        return int(self.snapshot["lastSeen"])

    @property
    def created_ms(self) -> int:
        created = self.snapshot.get("createdAt")
        return int(created) if isinstance(created, int | float) else self.last_seen

    @property
    def ended_ms(self) -> int | None:
        return self.last_seen if self.status == "ENDED" else None

    @property
    def parent_id(self) -> str | None:
        parent = self.snapshot.get("parentId")
        return parent if isinstance(parent, str) else None

    @property
    def project_id(self) -> str | None:
        project = self.snapshot.get("projectId")
        return project if isinstance(project, str) else None

    def rate(self, field: Literal["ingestRate", "outgoingRate"]) -> float | None:
        """The snapshot's rate when present and non-zero, else derived from the two newest."""
        given = self.snapshot.get(field)
        if isinstance(given, int | float) and not isinstance(given, bool) and given != 0:
            return given
        prev = self.previous
        if prev is None or self.last_seen <= prev.last_seen:
            return given if isinstance(given, int | float) else None
        counter = "sourceBytes" if field == "ingestRate" else "transcodedBytes"
        now = _number(self.snapshot.get(counter))
        before = prev.source_bytes if field == "ingestRate" else prev.transcoded_bytes
        return (now - before) / ((self.last_seen - prev.last_seen) / 1000)


def _number(v: Any) -> float:
    return v if isinstance(v, int | float) and not isinstance(v, bool) else 0


def stream_session_object(view: StreamView) -> dict[str, Any]:
    """The seed-000 Session object: the newest snapshot as received, rates and recording
    fields by the rules, deprecated fields left out."""
    out = {k: v for k, v in view.snapshot.items() if k not in DEPRECATED_FIELDS}
    for f in ("ingestRate", "outgoingRate"):
        rate = view.rate(f)
        if rate is not None:
            out[f] = rate
    out.update(view.recording)
    return out


def stream_summary(view: StreamView) -> dict[str, Any]:
    """The SessionSummary content (CONTRACT 6, Livepeer) without ``message_id`` and ``revision``."""
    snap = view.snapshot
    end = view.ended_ms if view.ended_ms is not None else view.last_seen
    seconds = max(0, end - view.created_ms) / 1000

    def avg(counter: str, field: Literal["ingestRate", "outgoingRate"]) -> float | None:
        # Over the whole session: its bytes by its duration; a zero-length one has its rate.
        return _number(snap.get(counter)) / seconds if seconds > 0 else view.rate(field)

    return {
        "session_id": view.session_id,
        "source": "livepeer",
        "type": "stream",
        "associated_id": view.parent_id,
        "title": snap.get("name"),
        "organization_id": view.project_id,
        "started_at": iso_ms(view.created_ms),
        "ended_at": iso_ms(end),
        "duration_seconds": seconds,
        "end_reason": view.end_reason,
        "source_bytes": snap.get("sourceBytes"),
        "transcoded_bytes": snap.get("transcodedBytes"),
        "source_segments": snap.get("sourceSegments"),
        "transcoded_segments": snap.get("transcodedSegments"),
        "source_segments_duration": snap.get("sourceSegmentsDuration"),
        "transcoded_segments_duration": snap.get("transcodedSegmentsDuration"),
        "avg_ingest_rate": avg("sourceBytes", "ingestRate"),
        "avg_outgoing_rate": avg("transcodedBytes", "outgoingRate"),
        "is_healthy": snap.get("isHealthy"),
        "issues": snap.get("issues"),
        "recording_status": view.recording.get("recordingStatus"),
        "recording_url": view.recording.get("recordingUrl"),
        "mp4_url": view.recording.get("mp4Url"),
    }


@dataclass
class ReferenceStream:
    """One stream session under the CONTRACT rules, applied in memory in any order.

    A `stream.idle` is remembered even when it comes before the session's first snapshot:
    the worker does the same by recording it on the parent stream (StreamStore.record_idle).
    """

    session_id: str
    ids: set[str] = field(default_factory=set)
    cur: Snapshot | None = None
    prev: Snapshot | None = None
    recording: dict[str, tuple[tuple[int, str], Any]] = field(default_factory=dict)
    idle_webhooks: set[int] = field(default_factory=set)  # times of its parent's stream.idle
    ended_by_idle_rule: bool = False

    def apply(self, command: StreamCommand) -> Outcome:
        if isinstance(command, StreamEnd):
            self.idle_webhooks.add(command.t_ms)
            return "applied"
        if command.digest in self.ids:
            return "duplicate"
        self.ids.add(command.digest)
        if isinstance(command, Snapshot):
            counters = self._snapshot(command)
            recording = self._recording(command.last_seen, command.digest, command.recording_json)
            return "applied" if counters or recording else "duplicate"
        changed = self._recording(command.t_ms, command.digest, command.recording_json)
        return "applied" if changed else "duplicate"

    def _snapshot(self, s: Snapshot) -> bool:
        key = (s.last_seen, s.digest)
        if self.cur is None or key > (self.cur.last_seen, self.cur.digest):
            if self.cur is not None and s.last_seen > self.cur.last_seen:
                self.prev = self.cur
            self.cur = s
            return True
        if s.last_seen < self.cur.last_seen and (
            self.prev is None or key > (self.prev.last_seen, self.prev.digest)
        ):
            self.prev = s
            return True
        return False

    def _recording(self, t_ms: int, digest: str, recording_json: str) -> bool:
        changed = False
        for name, value in orjson.loads(recording_json).items():
            stamp = (t_ms, digest)
            if name not in self.recording or stamp > self.recording[name][0]:
                self.recording[name] = (stamp, value)
                changed = True
        return changed

    def _created_ms(self) -> int:
        assert self.cur is not None
        created = orjson.loads(self.cur.raw_json).get("createdAt")
        return int(created) if isinstance(created, int | float) else self.cur.last_seen

    @property
    def ended_by_idle_webhook(self) -> bool:
        return self.cur is not None and any(t >= self._created_ms() for t in self.idle_webhooks)

    def end_idle(self, now_ms: int, idle_timeout_ms: int) -> bool:
        """The idle rule (4.4); True when it ended the session."""
        if self.cur is None or self.ended_by_idle_webhook or self.ended_by_idle_rule:
            return False
        if self.cur.last_seen >= now_ms - idle_timeout_ms:
            return False
        self.ended_by_idle_rule = True
        return True

    def view(self) -> StreamView:
        if self.cur is None:
            raise ValueError(f"stream session {self.session_id!r} has no snapshot")
        explicit = self.ended_by_idle_webhook
        ended = explicit or self.ended_by_idle_rule
        prev = self.prev
        return StreamView(
            session_id=self.session_id,
            status="ENDED" if ended else "LIVE",
            end_reason=None if not ended else ("ended" if explicit else "idle_timeout"),
            snapshot=orjson.loads(self.cur.raw_json),
            previous=None
            if prev is None
            else Previous(prev.last_seen, prev.source_bytes, prev.transcoded_bytes),
            recording={name: value for name, (_, value) in self.recording.items()},
        )
