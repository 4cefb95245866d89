"""The Redis adapter: session scripts, global indexes, the summary outbox and the read side."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from redis import exceptions as rexc
from redis.asyncio import Redis

from . import constants as C
from .core.intervals import Totals, parse_intervals
from .core.model import PeerEvent, SessionMessage, SessionView, build_view
from .errors import StoreUnavailable

log = logging.getLogger(__name__)

Command = PeerEvent | SessionMessage

_TRANSIENT_PREFIXES = ("LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "OOM", "READONLY")


def _script(name: str) -> str:
    return resources.files("service").joinpath(f"lua/{name}.lua").read_text("utf-8")


@dataclass(frozen=True)
class Script:
    """A Lua script from `service/lua/`, called by SHA."""

    name: str
    source: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()


APPLY = Script("apply_rtk", _script("apply_rtk"))
SUMMARY = Script("summary", _script("summary"))
SCRIPTS = (APPLY, SUMMARY)


@dataclass(frozen=True)
class Applied:
    """What the apply script reports for one session."""

    status: str  # "LIVE" | "ENDED" | "" (no such session)
    started_ms: int | None
    last_ms: int | None
    due: bool
    letters: str  # one per item: A applied, D duplicate, L late (after the end), I idle-ended, N no-op


class SessionError(Exception):
    """A script failed for one session for a reason retrying will not cure."""


def _items(commands: Iterable[Command]) -> list[str]:
    argv: list[str] = []
    for c in commands:
        if isinstance(c, PeerEvent):
            argv += ["P", c.event_id, c.peer_id, str(c.encoded), str(c.t_ms), c.raw_json, ""]
        else:
            ended = "" if c.ended_ms is None else str(c.ended_ms)
            argv += ["S", c.digest, c.status, str(c.updated_ms), str(c.started_ms), ended, c.meta_json]
    return argv


def _idle_item(now_ms: int, idle_timeout_ms: int) -> list[str]:
    return ["I", str(now_ms), str(idle_timeout_ms), "", "", "", ""]


def _applied(reply: Sequence[Any]) -> Applied:
    status, started, last, due, letters = reply
    s = status.decode() if isinstance(status, bytes) else status
    return Applied(
        status=s,
        started_ms=int(started) if s else None,
        last_ms=int(last) if s else None,
        due=bool(int(due)),
        letters=letters.decode() if isinstance(letters, bytes) else letters,
    )


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, rexc.ConnectionError | rexc.TimeoutError | rexc.BusyLoadingError):
        return True
    return isinstance(exc, rexc.ResponseError) and str(exc).startswith(_TRANSIENT_PREFIXES)


class Store:
    """Session state in Redis. Every method is safe to repeat: callers retry whole batches."""

    def __init__(self, redis: Redis, *, retention_ms: int) -> None:
        self.redis = redis
        self.retention_ms = retention_ms

    async def load_scripts(self) -> None:
        try:
            for script in SCRIPTS:
                sha = await self.redis.script_load(script.source)
                if sha != script.sha:
                    raise RuntimeError(f"Redis computed another SHA for {script.name}.lua")
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            raise StoreUnavailable(f"Redis unreachable: {exc}") from exc

    async def _evalsha_many(self, script: Script, calls: Sequence[tuple[list[str], list[str]]]) -> list[Any]:
        """One pipelined round trip of script calls; per-call errors come back in place."""
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=False)
            for keys, argv in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *argv)
            try:
                replies: list[Any] = await pipe.execute(raise_on_error=False)
            except (rexc.ConnectionError, rexc.TimeoutError, rexc.BusyLoadingError) as exc:
                raise StoreUnavailable(f"Redis unavailable: {exc}") from exc
            if attempt == 1 and any(isinstance(r, rexc.NoScriptError) for r in replies):
                # A restarted or failed-over Redis forgot the scripts; every call is idempotent.
                await self.load_scripts()
                continue
            for r in replies:
                if isinstance(r, Exception) and _is_transient(r):
                    raise StoreUnavailable(f"Redis answered {r}") from r
            return replies
        raise StoreUnavailable("Redis keeps forgetting the scripts")

    async def apply(self, batch: Mapping[str, Sequence[Command]]) -> dict[str, Applied | SessionError]:
        """Apply each session's commands with one script call, all in one round trip."""
        sids = list(batch)
        calls = [
            (C.session_keys(sid), [str(self.retention_ms), str(len(batch[sid])), *_items(batch[sid])])
            for sid in sids
        ]
        replies = await self._evalsha_many(APPLY, calls)
        return {
            sid: SessionError(str(r)) if isinstance(r, Exception) else _applied(r)
            for sid, r in zip(sids, replies, strict=True)
        }

    async def end_idle(
        self, session_ids: Sequence[str], now_ms: int, idle_timeout_ms: int
    ) -> dict[str, Applied | SessionError]:
        item = _idle_item(now_ms, idle_timeout_ms)
        calls = [(C.session_keys(sid), [str(self.retention_ms), "1", *item]) for sid in session_ids]
        replies = await self._evalsha_many(APPLY, calls)
        return {
            sid: SessionError(str(r)) if isinstance(r, Exception) else _applied(r)
            for sid, r in zip(session_ids, replies, strict=True)
        }

    async def update_indexes(self, results: Mapping[str, Applied | SessionError], now_ms: int) -> list[str]:
        """Bring the global indexes in line with the script results; returns sessions now due.

        Not atomic with the scripts (other hash slots), but idempotent and re-run on every
        redelivery, so a crash between the two heals itself before the offsets commit.
        """
        due: list[str] = []
        pipe = self.redis.pipeline(transaction=False)
        for sid, r in results.items():
            if isinstance(r, SessionError) or not r.status:
                continue
            assert r.started_ms is not None and r.last_ms is not None
            pipe.zadd(C.IDX_SESSIONS, {sid: r.started_ms})
            if r.status == "LIVE":
                pipe.zadd(C.IDX_LIVE, {sid: r.last_ms}, gt=True)
            else:
                pipe.zrem(C.IDX_LIVE, sid)
            if r.due:
                pipe.zadd(C.OUTBOX, {sid: now_ms}, nx=True)
                due.append(sid)
        if len(pipe):
            try:
                await pipe.execute()
            except (rexc.ConnectionError, rexc.TimeoutError, rexc.BusyLoadingError) as exc:
                raise StoreUnavailable(f"Redis unavailable: {exc}") from exc
        return due

    async def idle_candidates(self, before_ms: int, limit: int, offset: int = 0) -> list[str]:
        ids = await self.redis.zrangebyscore(C.IDX_LIVE, "-inf", f"({before_ms}", start=offset, num=limit)
        return [i.decode() for i in ids]

    # --- summary outbox -------------------------------------------------------------

    async def outbox_due(self, limit: int) -> list[str]:
        return [m.decode() for m in await self.redis.zrange(C.OUTBOX, 0, limit - 1)]

    async def commit_summary(
        self, sid: str, ver: str, rev_seen: int, content_hash: str, body: bytes
    ) -> tuple[str, int, bytes | None, int]:
        """('retry'|'new'|'same', revision, stored body, published revision)."""
        key = C.session_keys(sid)[0]
        (reply,) = await self._evalsha_many(
            SUMMARY, [([key], ["commit", ver, str(rev_seen), content_hash, body])]
        )
        if isinstance(reply, Exception):
            raise SessionError(str(reply))
        kind = reply[0].decode()
        if kind == "retry":
            return kind, 0, None, 0
        published = int(reply[3]) if kind == "same" else 0
        return kind, int(reply[1]), reply[2], published

    async def mark_published(self, sid: str, rev: int) -> None:
        key = C.session_keys(sid)[0]
        await self._evalsha_many(SUMMARY, [([key], ["published", str(rev)])])

    async def outbox_done(self, sid: str) -> None:
        """Drop a drained entry; put it back if the session became due again meanwhile."""
        await self.redis.zrem(C.OUTBOX, sid)
        # The worker sets the flag before it adds the entry, so reading it after the removal
        # cannot miss a change that the removal swallowed.
        if (await self.redis.hget(C.session_keys(sid)[0], "summary_due")) == b"1":
            await self.redis.zadd(C.OUTBOX, {sid: 0}, nx=True)

    # --- read side --------------------------------------------------------------------

    async def read_raw(self, sid: str, *, events: bool = True) -> dict[str, dict[bytes, bytes]] | None:
        """The session's hashes, read in one transaction (one hash slot).

        ``events=False`` skips the stored peer events: enough for a Session object,
        not for participants' details or a summary.
        """
        k = C.session_keys(sid)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(k[0])
        pipe.hgetall(k[2])
        if events:
            pipe.hgetall(k[3])
        replies = await pipe.execute()
        s, piv = replies[0], replies[1]
        if not s or b"status" not in s:
            return None
        return {"session": s, "piv": piv, "events": replies[2] if events else {}}

    async def read_view(
        self, sid: str
    ) -> tuple[SessionView, dict[bytes, bytes], dict[str, dict[int, str]]] | None:
        """The session's view, its raw session hash, and its stored peer events by peer."""
        raw = await self.read_raw(sid)
        if raw is None:
            return None
        events = events_by_peer(raw["events"])
        return view_from_raw(sid, raw, events), raw["session"], events


def events_by_peer(fields: Mapping[bytes, bytes]) -> dict[str, dict[int, str]]:
    """The `events` hash (field `<encoded>:<peer id>`) grouped by peer."""
    out: dict[str, dict[int, str]] = {}
    for f, raw in fields.items():
        enc, _, peer = f.partition(b":")
        out.setdefault(peer.decode(), {})[int(enc)] = raw.decode()
    return out


def _int(h: Mapping[bytes, bytes], field: str) -> int | None:
    v = h.get(field.encode())
    return None if v is None else int(v)


def view_from_raw(
    sid: str, raw: Mapping[str, Mapping[bytes, bytes]], events: Mapping[str, Mapping[int, str]] | None = None
) -> SessionView:
    """A SessionView from what the scripts stored (their intervals and totals, not re-derived).

    Read without its events (``read_raw(events=False)``), the view's peers carry no
    details and no event times: enough for the Session object, not for participants.
    """
    s = raw["session"]
    meta: dict[str, Any] = {}
    for f in ("associated_id", "meeting_display_name", "organization_id", "type", "created_at"):
        if (v := s.get(f.encode())) is not None:
            meta[f] = v.decode()
    if (rooms := s.get(b"breakout_rooms")) is not None:
        meta["breakout_rooms"] = orjson.loads(rooms)
    intervals = {p.decode(): parse_intervals(v.decode()) for p, v in raw["piv"].items()}
    if events is None:
        events = events_by_peer(raw["events"])
    ended_ms = _int(s, "ended_ms")
    return build_view(
        sid,
        status="ENDED" if s[b"status"] == b"ENDED" else "LIVE",
        started_ms=_int(s, "started_ms"),
        ended_ms=ended_ms,
        end_reason=s[b"end_reason"].decode() if b"end_reason" in s else None,
        updated_ms=max(_int(s, "last_ms") or 0, ended_ms or 0),
        meta=meta,
        stored_events=events,
        stored_intervals=intervals,
        stored_totals=Totals(
            peak=_int(s, "max_concurrent_participants") or 0,
            open_count=_int(s, "open_count") or 0,
            closed_ms=_int(s, "closed_ms") or 0,
            open_start_sum=_int(s, "open_start_sum") or 0,
        ),
    )
