"""The Redis adapter of Livepeer stream sessions: their script, indexes, parent streams, reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from . import constants as C
from .core.streams import Previous, RecordingUpdate, Snapshot, StreamCommand, StreamEnd, StreamView
from .store import APPLY_LIVEPEER, Store, execute, zset_members


@dataclass(frozen=True)
class StreamApplied:
    """What apply_livepeer.lua reports for one stream session."""

    status: str  # "LIVE" | "ENDED" | "" (no snapshot yet)
    created_ms: int | None
    last_seen: int | None
    due: bool
    ver: int
    parent_id: str
    letters: str


def _items(commands: Sequence[StreamCommand]) -> list[str]:
    argv: list[str] = []
    for c in commands:
        if isinstance(c, Snapshot):
            snap = orjson.loads(c.raw_json)
            created = snap.get("createdAt")
            parent = snap.get("parentId")
            argv += [
                "N",
                c.digest,
                str(c.last_seen),
                repr(c.source_bytes),
                repr(c.transcoded_bytes),
                c.raw_json,
                c.recording_json,
                str(int(created)) if isinstance(created, int | float) else "",
                parent if isinstance(parent, str) else "",
            ]
        elif isinstance(c, RecordingUpdate):
            argv += ["R", c.digest, str(c.t_ms), c.recording_json, "", "", "", "", ""]
        else:
            argv += ["E", str(c.t_ms), "", "", "", "", "", "", ""]
    return argv


def _applied(reply: Sequence[Any]) -> StreamApplied:
    status, created, last, due, ver, parent, letters = (
        v.decode() if isinstance(v, bytes) else v for v in reply
    )
    return StreamApplied(
        status=status,
        created_ms=int(created) if status else None,
        last_seen=int(last) if status else None,
        due=bool(int(due)),
        ver=int(ver),
        parent_id=parent,
        letters=letters,
    )


class StreamStore:
    """Stream-session state in Redis; like Store, every method is safe to repeat."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.redis = store.redis

    async def apply(self, batch: Mapping[str, Sequence[StreamCommand]]) -> dict[str, StreamApplied]:
        sids = list(batch)
        retention = str(self.store.retention_ms)
        calls = [(C.stream_keys(sid), [retention, str(len(batch[sid])), *_items(batch[sid])]) for sid in sids]
        replies = await self.store._evalsha_many(APPLY_LIVEPEER, calls) if calls else []
        return {sid: _applied(r) for sid, r in zip(sids, replies, strict=True)}

    async def end_idle(
        self, sids: Sequence[str], now_ms: int, idle_timeout_ms: int
    ) -> dict[str, StreamApplied]:
        item = ["I", str(now_ms), str(idle_timeout_ms), "", "", "", "", "", ""]
        retention = str(self.store.retention_ms)
        calls = [(C.stream_keys(sid), [retention, "1", *item]) for sid in sids]
        replies = await self.store._evalsha_many(APPLY_LIVEPEER, calls) if calls else []
        return {sid: _applied(r) for sid, r in zip(sids, replies, strict=True)}

    # --- parent streams: stream.idle finds the sessions, in whatever order they arrive ----

    async def record_idle(self, idles: Sequence[tuple[str, int]]) -> list[list[tuple[str, int]]]:
        """Remember each parent's stream.idle, then list the parent's sessions created by then.

        Recorded before listing, while `sessions_to_end` lists after indexing: whichever of the
        two runs second sees the other's write, so no session misses its parent's idle.
        """
        pipe = self.redis.pipeline(transaction=False)
        for parent, t in idles:
            pipe.zadd(C.parent_idle_key(parent), {str(t): t})
            pipe.pexpire(C.parent_idle_key(parent), self.store.retention_ms)
        for parent, t in idles:
            pipe.zrangebyscore(C.parent_sessions_key(parent), "-inf", t)
        replies = await execute(pipe)
        found = replies[2 * len(idles) :]
        return [
            [(m.decode(), t) for m in zset_members(ids)] for ids, (_, t) in zip(found, idles, strict=True)
        ]

    async def idle_since(self, sessions: Sequence[tuple[str, str, int]]) -> list[tuple[str, int]]:
        """For (session, parent, created_ms) of live sessions: (session, t) where the parent went
        idle at t >= created_ms."""
        if not sessions:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for _, parent, created in sessions:
            pipe.zrangebyscore(C.parent_idle_key(parent), created, "+inf", start=0, num=1, withscores=True)
        replies = await execute(pipe)
        return [(sid, int(hits[0][1])) for (sid, _, _), hits in zip(sessions, replies, strict=True) if hits]

    async def end(self, ends: Sequence[tuple[str, int]]) -> dict[str, StreamApplied]:
        """Apply `stream.idle` ends to sessions (one script call each; a session may repeat)."""
        batch: dict[str, list[StreamCommand]] = {}
        for sid, t in ends:
            batch.setdefault(sid, []).append(StreamEnd(sid, t, ""))
        return await self.apply(batch)

    async def update_indexes(self, results: Mapping[str, StreamApplied]) -> bool:
        """Parent and live indexes, and the outbox; True when a summary became due."""
        due = False
        pipe = self.redis.pipeline(transaction=False)
        for sid, r in results.items():
            if not r.status:
                pipe.zrem(C.IDX_LIVE_STREAMS, sid)
                continue
            assert r.created_ms is not None and r.last_seen is not None
            if r.parent_id:
                pipe.zadd(C.parent_sessions_key(r.parent_id), {sid: r.created_ms})
            if r.status == "LIVE":
                pipe.zadd(C.IDX_LIVE_STREAMS, {sid: r.last_seen}, gt=True)
            else:
                pipe.zrem(C.IDX_LIVE_STREAMS, sid)
            if r.due:
                pipe.zadd(C.OUTBOX_STREAMS, {sid: r.ver}, gt=True)
                due = True
        if len(pipe):
            await execute(pipe)
        return due

    async def idle_candidates(self, before_ms: int, limit: int, offset: int = 0) -> list[str]:
        ids = await self.redis.zrangebyscore(
            C.IDX_LIVE_STREAMS, "-inf", f"({before_ms}", start=offset, num=limit
        )
        return [i.decode() for i in zset_members(ids)]

    # --- read side ------------------------------------------------------------------------

    async def read_many(self, sids: Sequence[str]) -> list[tuple[StreamView, dict[bytes, bytes]] | None]:
        pipe = self.redis.pipeline(transaction=False)
        for sid in sids:
            pipe.hgetall(C.stream_keys(sid)[0])
        replies = await execute(pipe)
        return [_view(sid, h) for sid, h in zip(sids, replies, strict=True)]

    async def read(self, sid: str) -> tuple[StreamView, dict[bytes, bytes]] | None:
        return (await self.read_many([sid]))[0]

    async def sessions_of(self, parent_id: str) -> list[tuple[StreamView, dict[bytes, bytes]]]:
        """The parent stream's sessions, newest createdAt first.

        Members whose session expired, or now names another parent, leave the index here.
        """
        key = C.parent_sessions_key(parent_id)
        ids = [i.decode() for i in zset_members(await self.redis.zrevrange(key, 0, -1))]
        found = await self.read_many(ids)
        stale = [
            sid for sid, got in zip(ids, found, strict=True) if got is None or got[0].parent_id != parent_id
        ]
        if stale:
            await self.redis.zrem(key, *stale)
        return [got for got in found if got is not None and got[0].parent_id == parent_id]


def _view(sid: str, h: Mapping[bytes, bytes]) -> tuple[StreamView, dict[bytes, bytes]] | None:
    if b"cur" not in h or b"status" not in h:
        return None
    previous = None
    if b"prev_ls" in h:
        previous = Previous(int(h[b"prev_ls"]), float(h[b"prev_sb"]), float(h[b"prev_tb"]))
    status: Literal["LIVE", "ENDED"] = "ENDED" if h[b"status"] == b"ENDED" else "LIVE"
    view = StreamView(
        session_id=sid,
        status=status,
        end_reason=h[b"end_reason"].decode() if status == "ENDED" and b"end_reason" in h else None,
        snapshot=orjson.loads(h[b"cur"]),
        previous=previous,
        recording={
            f: h[f.encode()].decode()
            for f in ("recordingStatus", "recordingUrl", "mp4Url")
            if f.encode() in h
        },
    )
    return view, dict(h)
