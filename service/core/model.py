"""Commands the worker applies, the read-side view of a session, and an in-memory reference model.

The Redis scripts are the production implementation of these rules; the
reference model is the plain, obviously-correct one that tests and the bench
compare Redis against.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import orjson

from .intervals import (
    MS_PER_MINUTE,
    Interval,
    Totals,
    connected_ms,
    decode,
    encode,
    peer_intervals,
    totals,
)

DETAIL_FIELDS = ("display_name", "custom_participant_id", "user_id", "preset_name")
META_FIELDS = (
    "associated_id",
    "meeting_display_name",
    "organization_id",
    "type",
    "breakout_rooms",
    "created_at",
    "started_ms",
)

Outcome = Literal["applied", "duplicate"]

# A peer event derived from a webhook carries this member (service/webhooks.py).
VIA_WEBHOOK = '"via":"webhook"'


class PeerEvent(NamedTuple):
    """A peer connection event, already validated; ``raw_json`` is the message as received.

    A named tuple, not a dataclass: the worker builds one per record, and a frozen
    dataclass costs three times as much to build.
    """

    session_id: str
    event_id: str
    peer_id: str
    code: int
    t_ms: int
    raw_json: str

    @property
    def encoded(self) -> int:
        return encode(self.t_ms, self.code)

    @property
    def copy_rank(self) -> tuple[bool, str]:
        """Which copy of one fact is kept: a topic copy (richer details) over a webhook-derived
        one, then the greatest; apply_rtk.lua's `better` is the same rule."""
        return (VIA_WEBHOOK not in self.raw_json, self.raw_json)


@dataclass(frozen=True)
class SessionMessage:
    """What an `rtk.sessions` message or a webhook's `meeting` object says about the session.

    ``meta_json`` holds only the descriptive fields the source carries (strings); each field
    comes from the newest source that carries it, ``(updated_ms, digest)`` deciding.
    """

    session_id: str
    status: Literal["LIVE", "ENDED"]
    updated_ms: int
    started_ms: int | None
    ended_ms: int | None
    meta_json: str
    digest: str


@dataclass(frozen=True)
class Artifact:
    """A link or status a webhook reported (transcript, summary, chat, a recording, ...).

    A session keeps, per ``slot``, the value with the greatest ``rank``: ranks are built so
    that the newer version of an artifact has the greater one, whatever the arrival order.
    """

    session_id: str
    slot: str
    rank: str
    value_json: str


@dataclass(frozen=True)
class PeerReport:
    """An `rtk.peer-reports` message: the newest (greatest ``rank``) per peer is kept."""

    session_id: str
    peer_id: str
    rank: str
    report_json: str


@dataclass(frozen=True)
class PeerView:
    peer_id: str
    intervals: list[Interval]
    events: list[int]
    details: Mapping[str, Any]

    @property
    def created_ms(self) -> int:
        return decode(self.events[0])[0]

    @property
    def updated_ms(self) -> int:
        return decode(self.events[-1])[0]

    @property
    def joined_ms(self) -> int | None:
        return self.intervals[0][0] if self.intervals else None

    @property
    def left_ms(self) -> int | None:
        if not self.intervals or self.intervals[-1][1] is None:
            return None
        return self.intervals[-1][1]

    def duration_minutes(self, now_ms: int) -> float:
        return connected_ms(self.intervals, now_ms) / MS_PER_MINUTE


@dataclass(frozen=True)
class SessionView:
    """Everything the read API and the summary need to know about one session."""

    session_id: str
    status: Literal["LIVE", "ENDED"]
    started_ms: int
    ended_ms: int | None
    end_reason: str | None
    updated_ms: int
    meta: Mapping[str, Any]
    peers: Mapping[str, PeerView]
    totals: Totals
    artifacts: Mapping[str, Any] = field(default_factory=dict)  # slot -> decoded value

    def live_participants(self) -> int:
        return 0 if self.status == "ENDED" else self.totals.open_count

    def minutes_at(self, now_ms: int) -> float:
        """minutes_consumed; while LIVE, open intervals count up to ``now_ms``."""
        return sum(connected_ms(p.intervals, now_ms) for p in self.peers.values()) / MS_PER_MINUTE


def event_details(event: Mapping[str, Any]) -> dict[str, Any]:
    """The participant details a peer event carries alongside (CONTRACT 2, `rtk.peer-events`)."""
    return {f: event[f] for f in DETAIL_FIELDS if event.get(f) is not None}


def _may_have_details(raw: str) -> bool:
    """False when the stored event certainly carries no detail: none of the keys, and no escape
    that could spell one. Substring tests, which are far cheaper than parsing (or a regex)."""
    return (
        '"display_name"' in raw
        or '"user_id"' in raw
        or '"custom_participant_id"' in raw
        or '"preset_name"' in raw
        or "\\" in raw
    )


def _newest_details(encoded: Sequence[int], events: Mapping[int, str]) -> dict[str, Any]:
    """Each detail from the newest applied event that carries it; equal times ordered by value.
    ``encoded`` lists the applied events' keys in ``events``, in ascending order.

    Per field, so that a webhook-derived event (display name only) does not hide the
    user id a topic event carried.
    """
    best: dict[str, tuple[int, Any]] = {}
    # Newest first, so that once every field is found no older event can change it (this
    # runs for every stored event of a summary): the event that completes the set is the
    # oldest of the found ones, so only events of its time can still matter.
    stop = -1
    for enc in reversed(encoded):
        t = enc >> 2  # decode(enc)[0], inlined
        if t < stop:
            break
        raw = events[enc]
        if not _may_have_details(raw):
            continue
        obj = orjson.loads(raw)
        for name in DETAIL_FIELDS:
            value = obj.get(name)
            if value is None:
                continue
            cur = best.get(name)
            if cur is None or t > cur[0] or (t == cur[0] and _order(value) > _order(cur[1])):
                best[name] = (t, value)
        if stop < 0 and len(best) == len(DETAIL_FIELDS):
            stop = t
    return {name: best[name][1] for name in DETAIL_FIELDS if name in best}


def _order(value: Any) -> tuple[bool, str]:
    """A total order over detail values of any JSON type (strings, as they almost always are, first)."""
    return (isinstance(value, str), value if isinstance(value, str) else orjson.dumps(value).decode())


def build_view(
    session_id: str,
    *,
    status: Literal["LIVE", "ENDED"],
    started_ms: int | None,
    ended_ms: int | None,
    end_reason: str | None,
    updated_ms: int,
    meta: Mapping[str, Any],
    stored_events: Mapping[str, Mapping[int, str]],
    stored_intervals: Mapping[str, list[Interval]] | None = None,
    stored_totals: Totals | None = None,
    artifacts: Mapping[str, Any] | None = None,
) -> SessionView:
    """The view of a session from its stored facts; shared by the model and the Redis reader.

    ``stored_events`` maps each peer to its events (encoded time and kind -> JSON as
    received). The Redis reader passes the intervals and totals the scripts stored, so
    that what the API shows is what Redis holds; the reference model lets this derive them.
    """
    peers: dict[str, PeerView] = {}
    # Stored intervals list exactly the participant rows; without them, a peer is a row
    # when at least one of its events was applied (none after the end).
    peer_ids = stored_intervals.keys() if stored_intervals is not None else stored_events.keys()
    no_events: Mapping[int, str] = {}
    for peer_id in peer_ids:
        events = stored_events.get(peer_id, no_events)
        encoded = sorted(events)
        if ended_ms is not None and encoded and encoded[-1] >> 2 > ended_ms:
            # Events after the end are kept but not applied: every encoding of a time up to
            # ended_ms is below encode(ended_ms + 1, 0).
            encoded = encoded[: bisect_left(encoded, encode(ended_ms + 1, 0))]
        if stored_intervals is None and not encoded:
            continue
        intervals = (
            stored_intervals[peer_id] if stored_intervals is not None else peer_intervals(encoded, ended_ms)
        )
        peers[peer_id] = PeerView(peer_id, intervals, encoded, _newest_details(encoded, events))
    if started_ms is None:
        raise ValueError(f"session {session_id!r} has no start: no session message and no event")
    return SessionView(
        session_id=session_id,
        status=status,
        started_ms=started_ms,
        ended_ms=ended_ms,
        end_reason=end_reason,
        updated_ms=updated_ms,
        meta=meta,
        peers=peers,
        totals=stored_totals or totals({pid: p.intervals for pid, p in peers.items()}),
        artifacts=artifacts or {},
    )


@dataclass
class ReferenceSession:
    """One session under the CONTRACT rules, applied in memory in any order."""

    session_id: str
    ids: set[str] = field(default_factory=set)
    events: dict[str, dict[int, PeerEvent]] = field(default_factory=dict)
    meta: dict[str, tuple[tuple[int, str], str]] = field(default_factory=dict)  # field -> (stamp, value)
    artifacts: dict[str, tuple[str, str]] = field(default_factory=dict)  # slot -> (rank, value JSON)
    explicit_end: tuple[int, int] | None = None  # (updated_ms of the end message, ended_ms)
    idle_end_ms: int | None = None
    last_ms: int | None = None
    first_message_ms: int | None = None  # the earliest session message or webhook meeting time

    def _seen(self, t_ms: int) -> None:
        self.last_ms = t_ms if self.last_ms is None else max(self.last_ms, t_ms)

    def apply_peer_event(self, ev: PeerEvent) -> Outcome:
        peer_events = self.events.setdefault(ev.peer_id, {})
        if ev.event_id in self.ids:
            return "duplicate"
        self.ids.add(ev.event_id)
        if ev.encoded in peer_events:
            # The same fact under another id or by another path: keep one copy, whatever the order.
            peer_events[ev.encoded] = max(peer_events[ev.encoded], ev, key=lambda e: e.copy_rank)
            return "duplicate"
        peer_events[ev.encoded] = ev
        self._seen(ev.t_ms)
        return "applied"

    def apply_session_message(self, msg: SessionMessage) -> Outcome:
        if "S:" + msg.digest in self.ids:
            return "duplicate"
        self.ids.add("S:" + msg.digest)
        fields: dict[str, str] = orjson.loads(msg.meta_json)
        if msg.started_ms is not None:
            fields["started_ms"] = str(msg.started_ms)
        stamp = (msg.updated_ms, msg.digest)
        for name, value in fields.items():
            known = name in META_FIELDS and isinstance(value, str)
            if known and (name not in self.meta or stamp > self.meta[name][0]):
                self.meta[name] = (stamp, value)
        if msg.status == "ENDED" and msg.ended_ms is not None:
            candidate = (msg.updated_ms, msg.ended_ms)
            if self.explicit_end is None or candidate > self.explicit_end:
                self.explicit_end = candidate
        self._seen(msg.updated_ms)
        first = self.first_message_ms
        self.first_message_ms = msg.updated_ms if first is None else min(first, msg.updated_ms)
        return "applied"

    def apply_artifact(self, art: Artifact) -> Outcome:
        if art.slot in self.artifacts and art.rank <= self.artifacts[art.slot][0]:
            return "duplicate"
        self.artifacts[art.slot] = (art.rank, art.value_json)
        return "applied"

    def apply(self, command: PeerEvent | SessionMessage | Artifact) -> Outcome:
        if isinstance(command, PeerEvent):
            return self.apply_peer_event(command)
        if isinstance(command, SessionMessage):
            return self.apply_session_message(command)
        return self.apply_artifact(command)

    @property
    def ended_ms(self) -> int | None:
        return self.explicit_end[1] if self.explicit_end else self.idle_end_ms

    def end_idle(self, now_ms: int, idle_timeout_ms: int) -> bool:
        """The idle rule (4.4); True when it ended the session."""
        if self.last_ms is None or self.ended_ms is not None or self.last_ms >= now_ms - idle_timeout_ms:
            return False
        if self.view().totals.open_count:
            return False
        self.idle_end_ms = self.last_ms
        return True

    @property
    def exists(self) -> bool:
        """Whether any session fact (not only artifacts) arrived."""
        return self.last_ms is not None

    def view(self) -> SessionView:
        ended = self.ended_ms
        # Until a source says the session type, it is a meeting (apply_rtk.lua does the same).
        meta: dict[str, Any] = {"type": "meeting"} | {name: value for name, (_, value) in self.meta.items()}
        if "breakout_rooms" in meta:
            meta["breakout_rooms"] = orjson.loads(meta["breakout_rooms"])
        started = meta.pop("started_ms", None)
        # started_at: the newest source's, else the earliest event, else the earliest message (as the scripts).
        first = min(
            (decode(e)[0] for evs in self.events.values() for e in evs), default=self.first_message_ms
        )
        return build_view(
            self.session_id,
            status="ENDED" if ended is not None else "LIVE",
            started_ms=int(started) if started is not None else first,
            ended_ms=ended,
            end_reason=None if ended is None else ("ended" if self.explicit_end else "idle_timeout"),
            updated_ms=max(self.last_ms or 0, ended or 0),
            meta=meta,
            stored_events={p: {e: ev.raw_json for e, ev in evs.items()} for p, evs in self.events.items()},
            artifacts={slot: orjson.loads(value) for slot, (_, value) in self.artifacts.items()},
        )
