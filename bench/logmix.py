"""Deterministic RealtimeKit logs for the bench: the backlog mix, the memory set, the latency stream.

Every message is a seed-003 shape (the same fields as tests/integration/harness.py builds),
keyed by session id. Everything comes from one `random.Random(seed)`, ids included, so
the same seed gives the same bytes on every machine.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from service.constants import RTK_PEER_EVENTS, RTK_SESSIONS
from service.core.timeutil import iso_ms

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z: event times well in the past
CREATED, JOINING, LEAVING = "PEER_CREATED", "PEER_JOINING", "PEER_LEAVING"
TITLES = ("Weekly sync", "Design review", "1:1", "All hands", "Standup", "Customer call", "Interview")
PRESETS = ("host", "participant", "viewer")


@dataclass(frozen=True, slots=True)
class Item:
    """One message of a log, with what the bench needs to know about it."""

    topic: str  # contract topic name, without a prefix
    key: bytes
    value: bytes
    sid: str
    fact: str  # the member the apply script adds to sp:{sid}:ids: event id, or S:<sha1 of the bytes>
    peer: str | None  # peer id of a peer event
    t_ms: int  # event time: created_at of a peer event, updated_at of a session message
    dup: bool = False  # a redelivered copy, or the same peer-event fact under another id


@dataclass
class LogMix:
    items: list[Item] = field(default_factory=list)
    session_ids: list[str] = field(default_factory=list)
    peers: dict[str, int] = field(default_factory=dict)  # session -> peers in the log
    ended_ms: dict[str, int] = field(default_factory=dict)  # session -> ended_at, for sessions it ends

    def stats(self) -> dict[str, Any]:
        topics = Counter(i.topic for i in self.items)
        counts = sorted(self.peers.values())
        n = len(self.items)
        return {
            "events": n,
            "sessions": len(self.session_ids),
            "sessions_ended": len(self.ended_ms),
            "peers_total": sum(counts),
            "peers_per_session": {
                "min": counts[0] if counts else 0,
                "median": counts[len(counts) // 2] if counts else 0,
                "mean": round(sum(counts) / len(counts), 2) if counts else 0,
                "max": counts[-1] if counts else 0,
            },
            "peer_events": topics[RTK_PEER_EVENTS],
            "session_messages": topics[RTK_SESSIONS],
            "session_message_share": round(topics[RTK_SESSIONS] / n, 4) if n else 0,
            "duplicates": sum(1 for i in self.items if i.dup),
            "duplicate_share": round(sum(1 for i in self.items if i.dup) / n, 4) if n else 0,
            "value_bytes_mean": round(sum(len(i.value) for i in self.items) / n, 1) if n else 0,
        }


def _uuid(rng: random.Random) -> str:
    """A version-4-looking UUID from `rng` (deterministic, unlike uuid4)."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"


@functools.lru_cache(maxsize=65536)
def _iso(ms: int) -> str:
    return iso_ms(ms)


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Building hundreds of thousands of small objects: the cyclic GC only slows it down."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _digest(value: bytes) -> str:
    return hashlib.sha1(value, usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class _Meta:
    associated_id: str
    title: str
    organization_id: str
    type: str


class _Builder:
    """Bodies of one session's messages (seed-003 Session and PeerEvent)."""

    def __init__(self, rng: random.Random, sid: str, start_ms: int) -> None:
        self.rng = rng
        self.sid = sid
        self.key = sid.encode()
        self.start = start_ms
        self.meta = _Meta(
            associated_id=f"meeting-{_uuid(rng)[:8]}",
            title=rng.choice(TITLES),
            organization_id=f"org-{rng.randrange(20):02d}",
            type="meeting" if rng.random() < 0.9 else rng.choice(("livestream", "participant")),
        )

    def session(self, status: str, updated: int, ended: int | None, live: int, peak: int) -> Item:
        msg: dict[str, Any] = {
            "id": self.sid,
            "associated_id": self.meta.associated_id,
            "created_at": _iso(self.start),
            "live_participants": live,
            "max_concurrent_participants": peak,
            "meeting_display_name": self.meta.title,
            "minutes_consumed": round((updated - self.start) / 60_000 * max(live, 1), 3),
            "organization_id": self.meta.organization_id,
            "started_at": _iso(self.start),
            "status": status,
            "type": self.meta.type,
            "updated_at": _iso(updated),
        }
        if ended is not None:
            msg["ended_at"] = _iso(ended)
        value = orjson.dumps(msg)
        return Item(RTK_SESSIONS, self.key, value, self.sid, "S:" + _digest(value), None, updated)

    def peer_event(self, peer: str, name: str, t: int, details: bool, event_id: str | None = None) -> Item:
        eid = event_id or _uuid(self.rng)
        ev: dict[str, Any] = {
            "id": eid,
            "created_at": _iso(t),
            "event_name": name,
            "minutes_consumed": 0,
            "participant_id": f"part-{peer[:13]}",
            "peer_id": peer,
            "preset_view_type": "GROUP_CALL",
            "session_id": self.sid,
            "socket_session_id": f"sock-{peer[:13]}",
            "updated_at": _iso(t),
        }
        if details:
            ev.update(
                display_name=f"User {peer[:6]}",
                user_id=f"user-{peer[:13]}",
                custom_participant_id=f"c-{peer[:8]}",
                preset_name=PRESETS[int(peer[:2], 16) % len(PRESETS)],
            )
        return Item(RTK_PEER_EVENTS, self.key, orjson.dumps(ev), self.sid, eid, peer, t)


def _under_new_id(rng: random.Random, it: Item) -> Item:
    """The same peer-event fact (peer, name, time) under a new id: a duplicate by the rules."""
    ev = orjson.loads(it.value)
    ev["id"] = _uuid(rng)
    return Item(it.topic, it.key, orjson.dumps(ev), it.sid, ev["id"], it.peer, it.t_ms, dup=True)


def _peer_story(b: _Builder, count: int, created: int) -> list[Item]:
    """CREATED, JOINING, LEAVING, JOINING, LEAVING, ... cut after `count` events."""
    rng = b.rng
    peer = _uuid(rng)
    details = rng.random() < 0.8
    out: list[Item] = []
    t = created
    for n in range(count):
        if n == 0:
            name = CREATED
        elif n % 2 == 1:
            name = JOINING
            t += rng.randint(0, 5) * 1000 if n == 1 else rng.randint(1, 120) * 1000
        else:
            name = LEAVING
            t += rng.randint(1, 1800) * 1000
        # Details ride on most events of a peer that has them, not on every one.
        out.append(b.peer_event(peer, name, t, details and (n < 2 or rng.random() < 0.5)))
    return out


def _session_messages(
    b: _Builder, count: int, peer_events: list[Item], end: bool, late: bool
) -> tuple[list[Item], int | None]:
    """`count` messages: LIVE at the start, LIVE updates, and ENDED last when the session ends."""
    rng = b.rng
    last = max((i.t_ms for i in peer_events), default=b.start)
    ended: int | None = None
    if end:
        if late and last > b.start + 10_000:
            # An end that some peer events come after: kept, not applied (CONTRACT 4.2).
            ended = b.start + int((last - b.start) * rng.uniform(0.85, 0.98)) // 1000 * 1000
        else:
            ended = last + rng.randint(0, 30) * 1000
    peers = len({i.peer for i in peer_events})
    out: list[Item] = []
    if not (end and count == 1):
        out.append(b.session("LIVE", b.start, None, 0, 0))
    upper = ended if ended is not None else last
    for _ in range(max(0, count - len(out) - (1 if end else 0))):
        t = rng.randint(b.start // 1000, max(b.start, upper) // 1000) * 1000
        live = rng.randint(0, peers)
        out.append(b.session("LIVE", t, None, live, max(live, rng.randint(0, peers))))
    if ended is not None:
        out.append(b.session("ENDED", ended + 500, ended, 0, rng.randint(1, max(1, peers))))
    return out, ended


def _interleave(rng: random.Random, per_session: list[list[Item]]) -> list[Item]:
    """Sessions interleaved by event time; each session's own messages in a shuffled order.

    Each session's messages take the time slots of its events, sorted, but in a random
    permutation: an ENDED message may come before the peer events it closes, a LEAVING
    before its JOINING, as when the topics are read in parallel or producers retry.
    """
    slotted: list[tuple[int, float, Item]] = []
    for items in per_session:
        slots = sorted(i.t_ms for i in items)
        shuffled = items[:]
        rng.shuffle(shuffled)
        slotted.extend((t, rng.random(), it) for t, it in zip(slots, shuffled, strict=True))
    slotted.sort(key=lambda x: (x[0], x[1]))
    return [it for _, _, it in slotted]


def backlog(
    seed: int,
    events: int,
    sessions: int = 5000,
    *,
    min_peers: int = 2,
    max_peers: int = 50,
    session_share: float = 0.10,
    dup_share: float = 0.02,
    ended_share: float = 0.4,
    late_share: float = 0.1,
    id_prefix: str = "s",
    t0: int = T0,
) -> LogMix:
    """Exactly `events` messages over `sessions` concurrent sessions (fewer when `events` is small).

    Peers per session are log-uniform in [min_peers, max_peers] (many small meetings, some
    large ones; mean about 15 for 2..50). `session_share` of the messages are `rtk.sessions`
    messages (LIVE, LIVE updates, ENDED for `ended_share` of the sessions, `late_share` of
    those with peer events after the end), `dup_share` are duplicates (3/4 redelivered byte
    for byte, 1/4 the same fact under a new event id), the rest peer events.
    """
    with _no_gc():
        return _backlog(
            random.Random(seed), events, sessions, min_peers, max_peers, session_share, dup_share,
            ended_share, late_share, id_prefix, t0,
        )  # fmt: skip


def _backlog(
    rng: random.Random,
    events: int,
    sessions: int,
    min_peers: int,
    max_peers: int,
    session_share: float,
    dup_share: float,
    ended_share: float,
    late_share: float,
    id_prefix: str,
    t0: int,
) -> LogMix:
    n_dup = round(events * dup_share)
    n_smsg = max(1, round(events * session_share))
    n_pev = events - n_dup - n_smsg
    sessions = max(1, min(sessions, n_smsg, max(1, n_pev // (2 * min_peers))))
    ratio = max_peers / min_peers
    peers = [round(min_peers * ratio ** rng.random()) for _ in range(sessions)]
    if sum(peers) > n_pev:  # a tiny log: fewer peers, each at least created
        scale = n_pev / sum(peers)
        peers = [max(1, int(p * scale)) for p in peers]
    # Events per peer: CREATED, then JOINING while the budget allows, then the rest at random.
    n_peers = sum(peers)
    counts = [1] * n_peers
    left = n_pev - n_peers
    for i in rng.sample(range(n_peers), k=min(n_peers, max(0, left))):
        counts[i] += 1
    left = n_pev - sum(counts)
    for i, n in Counter(rng.choices(range(n_peers), k=max(0, left))).items():
        counts[i] += n
    # Session messages: one LIVE each, the rest by size (RealtimeKit updates on participant changes).
    msgs = [1] * sessions
    for i, n in Counter(rng.choices(range(sessions), weights=peers, k=n_smsg - sessions)).items():
        msgs[i] += n

    log = LogMix()
    per_session: list[list[Item]] = []
    at = 0
    for s in range(sessions):
        sid = f"{id_prefix}-{_uuid(rng)}"
        b = _Builder(rng, sid, t0 + rng.randrange(3600) * 1000)
        pevs: list[Item] = []
        for c in counts[at : at + peers[s]]:
            pevs += _peer_story(b, c, b.start + rng.randint(0, 600) * 1000)
        at += peers[s]
        end = rng.random() < ended_share
        smsgs, ended = _session_messages(b, msgs[s], pevs, end, rng.random() < late_share)
        log.session_ids.append(sid)
        log.peers[sid] = peers[s]
        if ended is not None:
            log.ended_ms[sid] = ended
        per_session.append(pevs + smsgs)
    # Duplicates, added to their session before its messages are shuffled.
    flat = [(s, i) for s, items in enumerate(per_session) for i in range(len(items))]
    for s, i in rng.sample(flat, k=min(n_dup, len(flat))):
        it = per_session[s][i]
        if it.topic == RTK_PEER_EVENTS and rng.random() < 0.25:
            per_session[s].append(_under_new_id(rng, it))
        else:
            per_session[s].append(Item(it.topic, it.key, it.value, it.sid, it.fact, it.peer, it.t_ms, True))
    log.items = _interleave(rng, per_session)
    return log


def memory_set(seed: int, sessions: int = 10_000, peers: int = 10, ended_share: float = 0.5) -> LogMix:
    """`sessions` sessions of exactly `peers` peers, `ended_share` of them ended, no duplicates.

    Peers of an ended session joined and left (a third of them twice); in a live session
    about half the peers are still connected. One LIVE message at the start, one update,
    and ENDED for the ended ones.
    """
    rng = random.Random(seed)
    log = LogMix()
    with _no_gc():
        for _ in range(sessions):
            _memory_session(rng, log, peers, ended_share)
    return log


def _memory_session(rng: random.Random, log: LogMix, peers: int, ended_share: float) -> None:
    sid = f"m-{_uuid(rng)}"
    b = _Builder(rng, sid, T0 + rng.randrange(3600) * 1000)
    end = rng.random() < ended_share
    pevs: list[Item] = []
    for _ in range(peers):
        count = rng.choice((3, 3, 5)) if end else rng.choice((2, 3, 4, 5))
        pevs += _peer_story(b, count, b.start + rng.randint(0, 600) * 1000)
    smsgs, ended = _session_messages(b, 3 if end else 2, pevs, end, late=False)
    log.session_ids.append(sid)
    log.peers[sid] = peers
    if ended is not None:
        log.ended_ms[sid] = ended
    log.items += pevs + smsgs
