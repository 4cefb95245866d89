"""Correctness: Redis state against the CONTRACT rules applied in memory to the same log.

The expected state is `service.core.model.ReferenceSession` (the plain, in-memory rules)
applied to every message of the log, decoded by the service's own wire decoders. Both
sides are turned into what the read API shows (Session object, participants with their
peer events, the report) at one shared `now`, so LIVE minutes compare exactly.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from service import constants as C
from service.constants import RTK_SESSIONS
from service.core import shapes
from service.core.model import ReferenceSession, SessionView
from service.store import Store, events_by_peer, view_from_raw, zset_members
from service.wire import decode_peer_event, decode_session

from .logmix import Item

MAX_REPORTED = 5


def reference(items: Iterable[Item]) -> dict[str, ReferenceSession]:
    """The rules applied in memory, message by message in log order (they do not depend on order)."""
    out: dict[str, ReferenceSession] = {}
    for it in items:
        cmd = decode_session(it.value) if it.topic == RTK_SESSIONS else decode_peer_event(it.value, it.key)
        ref = out.get(cmd.session_id)
        if ref is None:
            ref = out[cmd.session_id] = ReferenceSession(cmd.session_id)
        ref.apply(cmd)
    return out


def observable(view: SessionView, events: Mapping[str, Mapping[int, str]], now_ms: int) -> dict[str, Any]:
    """Everything the read API shows about a session: Session, participants and their events, report."""
    participants = []
    for peer in shapes.participants_in_order(view):
        obj = shapes.participant_object(peer, now_ms)
        stored = events.get(peer.peer_id, {})
        obj["peer_events"] = [stored.get(e) for e in peer.events]
        participants.append(obj)
    return {
        "session": shapes.session_object(view, now_ms),
        "participants": participants,
        "report": shapes.session_summary(view, now_ms),
    }


def first_difference(want: Any, got: Any, path: str = "") -> str | None:
    if isinstance(want, dict) and isinstance(got, dict):
        for k in sorted(set(want) | set(got), key=str):
            if k not in got:
                return f"{path}.{k}: missing (want {want[k]!r:.120})"
            if k not in want:
                return f"{path}.{k}: unexpected {got[k]!r:.120}"
            d = first_difference(want[k], got[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return f"{path}: {len(got)} items, want {len(want)}"
        for i, (w, g) in enumerate(zip(want, got, strict=True)):
            d = first_difference(w, g, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if want == got else f"{path}: got {got!r:.120}, want {want!r:.120}"


@dataclass
class Check:
    """The outcome of one comparison: how much was compared and the first few mismatches."""

    name: str
    compared: int = 0
    failures: int = 0
    examples: list[str] = field(default_factory=list)

    def fail(self, msg: str) -> None:
        self.failures += 1
        if len(self.examples) < MAX_REPORTED:
            self.examples.append(msg)

    @property
    def ok(self) -> bool:
        return self.failures == 0 and self.compared > 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "compared": self.compared,
            "failures": self.failures,
            "examples": self.examples,
        }


async def compare_state(
    redis: Redis,
    expected: Mapping[str, ReferenceSession],
    sids: Sequence[str],
    *,
    name: str,
    indexes: bool = True,
    chunk: int = 200,
) -> Check:
    """Each session's observable state in Redis equals the reference's, and so do the indexes."""
    check = Check(name)
    store = Store(redis, retention_ms=0)  # only read from
    now = int(time.time() * 1000)
    for at in range(0, len(sids), chunk):
        part = list(sids[at : at + chunk])
        raws = await store.read_many(part)
        pipe = redis.pipeline(transaction=False)
        for sid in part:
            pipe.zscore(C.IDX_SESSIONS, sid)
            pipe.zscore(C.IDX_LIVE, sid)
        scores = await pipe.execute()
        for n, (sid, raw) in enumerate(zip(part, raws, strict=True)):
            check.compared += 1
            ref = expected[sid]
            want_view = ref.view()
            want = observable(
                want_view,
                {p: {e: ev.raw_json for e, ev in evs.items()} for p, evs in ref.events.items()},
                now,
            )
            if raw is None:
                check.fail(f"{sid}: missing in Redis")
                continue
            by_peer = events_by_peer(raw["events"])
            got = observable(view_from_raw(sid, raw, by_peer), by_peer, now)
            diff = first_difference(want, got)
            if diff:
                check.fail(f"{sid}: {diff}")
                continue
            if indexes:
                started, live = scores[2 * n], scores[2 * n + 1]
                want_live = ref.last_ms if want_view.status == "LIVE" else None
                if started != want_view.started_ms or live != want_live:
                    check.fail(
                        f"{sid}: indexes sessions={started} live={live},"
                        f" want sessions={want_view.started_ms} live={want_live}"
                    )
    if indexes:
        extra = {m.decode() for m in zset_members(await redis.zrange(C.IDX_SESSIONS, 0, -1))} - set(expected)
        if extra:
            check.fail(f"{len(extra)} sessions in {C.IDX_SESSIONS} not in the log, e.g. {sorted(extra)[:3]}")
    return check


def compare_summaries(
    expected: Mapping[str, ReferenceSession], latest: Mapping[str, dict[str, Any]]
) -> Check:
    """Every ENDED session has exactly its summary (newest revision) on sessions.summaries; LIVE ones none."""
    check = Check("summaries")
    ended = {sid for sid, ref in expected.items() if ref.ended_ms is not None}
    for sid in sorted(ended):
        check.compared += 1
        mid = shapes.summary_message_id(sid)
        got = latest.get(mid)
        if got is None:
            check.fail(f"{sid}: no summary published")
            continue
        view = expected[sid].view()
        want = shapes.session_summary(view, view.ended_ms or 0)
        body = {k: v for k, v in got.items() if k not in ("message_id", "revision")}
        diff = first_difference(want, body)
        if diff:
            check.fail(f"{sid}: summary revision {got.get('revision')}: {diff}")
    unexpected = {m for m in latest if m.removesuffix(":summary") not in ended}
    if unexpected:
        check.fail(f"{len(unexpected)} summaries of sessions not ended, e.g. {sorted(unexpected)[:3]}")
    return check
