"""The Redis adapter: session scripts, global indexes, peer reports, the outbox and the read side."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, cast

import hiredis
import orjson
from redis import exceptions as rexc
from redis.asyncio import Redis

from . import constants as C
from .core.intervals import Totals, encode, parse_intervals
from .core.model import Artifact, PeerEvent, PeerReport, SessionMessage, SessionView, build_view
from .errors import StoreUnavailable
from .metrics import REDIS_SCRIPT_SECONDS

log = logging.getLogger(__name__)

Command = PeerEvent | SessionMessage | Artifact
# Facts per pipeline of apply_rtk.lua calls (Store.apply).
APPLY_CHUNK_COMMANDS = 4000
Channel = str  # an outbound message kind with its own revisions: "summary" or "transcript"
StateKey = Callable[[str], str]


def rtk_state_key(sid: str) -> str:
    """The hash holding a RealtimeKit session's `ver` and outbound revisions."""
    return C.session_keys(sid)[0]


# redis-py types replies for either client mode; ours is built without `decode_responses`,
# so members come back as bytes.
def zset_members(reply: object) -> list[bytes]:
    """The members of a sorted-set range reply."""
    return cast(list[bytes], reply)


def _zset_scored_members(reply: object) -> list[tuple[bytes, float]]:
    """The (member, score) pairs of a sorted-set range reply `withscores=True`."""
    return cast(list[tuple[bytes, float]], reply)


def _script(name: str) -> str:
    return resources.files("service").joinpath(f"lua/{name}.lua").read_text("utf-8")


@dataclass(frozen=True)
class Script:
    """A Lua script from `service/lua/`, called by SHA."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        # Computed once: it is sent with every call on the hot path.
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest())


APPLY = Script("apply_rtk", _script("apply_rtk"))
REVISION = Script("revision", _script("revision"))
OUTBOX_DONE = Script("outbox_done", _script("outbox_done"))
PEER_REPORT = Script("peer_report", _script("peer_report"))
APPLY_LIVEPEER = Script("apply_livepeer", _script("apply_livepeer"))
READ = Script("read", _script("read"))
SCRIPTS = (APPLY, REVISION, OUTBOX_DONE, PEER_REPORT, APPLY_LIVEPEER, READ)


@dataclass(frozen=True)
class Applied:
    """What the apply script reports for one session."""

    status: str  # "LIVE" | "ENDED" | "" (no such session)
    started_ms: int | None
    last_ms: int | None
    due: bool
    ver: int  # the session's change counter: the outbox entry's score
    letters: str  # one per item: A applied, D duplicate, L late (after the end), I idle-ended, N no-op


def _items(commands: Iterable[Command]) -> list[str]:
    """The script's item arguments (apply_rtk.lua's header lists them)."""
    argv: list[str] = []
    for c in commands:
        if type(c) is PeerEvent:  # by far the most: unpacked as the tuple it is
            _, event_id, peer_id, code, t_ms, raw_json = c
            argv += ("P", event_id, peer_id, str(encode(t_ms, code)), raw_json)
        elif isinstance(c, SessionMessage):
            started = "" if c.started_ms is None else str(c.started_ms)
            ended = "" if c.ended_ms is None else str(c.ended_ms)
            stamp = f"{c.updated_ms:015d}:{c.digest}"
            meta = [(k, v) for k, v in orjson.loads(c.meta_json).items() if type(v) is str]
            argv += ("S", c.digest, c.status, str(c.updated_ms), started, ended, stamp, str(len(meta)))
            for k, v in meta:
                argv += (k, v)
        else:
            assert isinstance(c, Artifact)
            argv += ("A", c.slot, c.rank, c.value_json)
    return argv


def _idle_item(now_ms: int, idle_timeout_ms: int) -> list[str]:
    return ["I", str(now_ms), str(idle_timeout_ms)]


def _applied(reply: Sequence[Any]) -> Applied:
    status, started, last, due, ver, letters = reply
    s = status.decode() if isinstance(status, bytes) else status
    return Applied(
        status=s,
        started_ms=int(started) if s else None,
        last_ms=int(last) if s else None,
        due=bool(int(due)),
        ver=int(ver),
        letters=letters.decode() if isinstance(letters, bytes) else letters,
    )


_NOT_YET = object()  # hiredis.Reader.gets() when no whole reply is buffered yet


def _no_script(reply: Any) -> bool:
    """Whether a reply is Redis's NOSCRIPT error (redis-py's exception, or hiredis's reply error)."""
    return isinstance(reply, rexc.NoScriptError) or (
        isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")
    )


async def pipeline_replies(redis: Redis, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Send commands in one write on one pooled connection and return their replies in order,
    error replies in place (as `hiredis.ReplyError`), none raised.

    What `pipeline(transaction=False).execute(raise_on_error=False)` does, without redis-py's
    machinery per command: reading each reply through `read_response` (a timeout context and
    several awaits each) and the command stack cost the worker about 13 µs per script call,
    against 5 µs for this (`python -m bench.pipeline_cost`). The replies are parsed by hiredis
    straight from the connection's stream, as redis-py's hiredis parser does with each one;
    RESP3 push messages (client tracking, maintenance notices) are not replies and are skipped.

    A connection left in an unknown state (a timeout, a reset, a cancellation part-way through
    the replies, more bytes than the replies) is closed before it goes back to the pool, so no
    later command can read another's reply.
    """
    pool = redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command(conn.pack_commands(commands))
        enc = conn.encoder
        codec = {"encoding": enc.encoding, "errors": enc.encoding_errors} if enc.decode_responses else {}
        reader = hiredis.Reader(notEnoughData=_NOT_YET, **codec)
        stream = conn._reader  # set by the send above, which connects when needed
        if stream is None:
            raise rexc.ConnectionError("Redis connection closed")
        replies: list[Any] = []
        while len(replies) < len(commands):
            try:
                async with asyncio.timeout(conn.socket_timeout):
                    data = await stream.read(1 << 16)
            except TimeoutError as exc:  # redis-py's exceptions, as its own reads raise them
                raise rexc.TimeoutError("Timeout reading from Redis") from exc
            except OSError as exc:
                raise rexc.ConnectionError(f"Error while reading from Redis: {exc}") from exc
            if not data:
                raise rexc.ConnectionError("Redis closed the connection")
            reader.feed(data)
            while (reply := reader.gets()) is not _NOT_YET:
                if not isinstance(reply, hiredis.PushNotification):
                    replies.append(reply)
        if len(replies) != len(commands) or reader.has_data():
            raise rexc.InvalidResponse(f"{len(replies)} replies and more data for {len(commands)} commands")
        if conn.health_check_interval:
            # A connection that just answered is healthy: no PING before its next use.
            conn.next_health_check = asyncio.get_running_loop().time() + conn.health_check_interval
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)
    return replies


class Store:
    """Session state in Redis. Every method is safe to repeat: callers retry whole batches."""

    def __init__(
        self, redis: Redis, *, retention_ms: int, wait_replicas: int = 0, wait_timeout_ms: int = 1000
    ) -> None:
        self.redis = redis
        self.retention_ms = retention_ms
        self.wait_replicas = wait_replicas  # REDIS_WAIT_REPLICAS; 0: replicated() waits for nothing
        self.wait_timeout_ms = wait_timeout_ms

    async def replicated(self) -> None:
        """Return once `wait_replicas` replicas have every write Redis acknowledged before this
        call; StoreUnavailable when fewer have it after `wait_timeout_ms` (the caller retries
        and commits nothing meanwhile). Nothing to wait for with `wait_replicas` 0.

        WAIT counts the replicas that have the calling connection's own last write. Every write
        made before this call has had its reply, so the primary ran it before the INCR sent
        here, and a replica that has the INCR has them all (a replication stream is in order).
        """
        if self.wait_replicas <= 0:
            return
        pipe = self.redis.pipeline(transaction=False)  # one connection: the INCR, then its WAIT
        pipe.incr(C.REPLICATED)
        pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
        try:
            _, acknowledged = await execute(pipe)
        except rexc.ReadOnlyError as exc:  # a primary demoted by a failover
            raise StoreUnavailable(f"Redis refused the write (a replica now): {exc}") from exc
        if int(acknowledged) < self.wait_replicas:
            raise StoreUnavailable(
                f"Redis replicated the writes to {acknowledged} of {self.wait_replicas} replicas"
                f" (REDIS_WAIT_REPLICAS) within {self.wait_timeout_ms} ms"
            )

    async def load_scripts(self) -> None:
        try:
            for script in SCRIPTS:
                sha = await self.redis.script_load(script.source)
                if sha != script.sha:
                    raise RuntimeError(f"Redis computed another SHA for {script.name}.lua")
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            raise StoreUnavailable(f"Redis unreachable: {exc}") from exc

    async def _evalsha_many(
        self, script: Script, calls: Sequence[tuple[Sequence[str], Sequence[str | bytes]]]
    ) -> list[Any]:
        """One pipelined round trip of script calls; per-call errors come back in place."""
        for attempt in (1, 2):
            commands = [("EVALSHA", script.sha, len(keys), *keys, *argv) for keys, argv in calls]
            started = time.perf_counter()
            try:
                replies: list[Any]
                if isinstance(self.redis, Redis):  # RedisCluster is not a subclass
                    try:
                        replies = await pipeline_replies(self.redis, commands)
                    except rexc.ConnectionError:
                        # A pooled connection the server closed meanwhile (a restart, a
                        # timeout): once more on a new one, as redis-py's pipeline retries.
                        replies = await pipeline_replies(self.redis, commands)
                else:
                    pipe = self.redis.pipeline(transaction=False)
                    for command in commands:
                        # By name, not pipe.evalsha(): redis-py's cluster pipeline refuses that
                        # method, while the command itself is routed by its keys (one hash slot
                        # per call).
                        pipe.execute_command(*command)
                    replies = await pipe.execute(raise_on_error=False)
            except (
                rexc.ConnectionError,
                rexc.TimeoutError,
                rexc.BusyLoadingError,
                rexc.InvalidResponse,
                hiredis.ProtocolError,
                OSError,  # the builtin TimeoutError of a read that timed out among them
            ) as exc:
                # str(), which names the address; a read that timed out says nothing but its type.
                raise StoreUnavailable(f"Redis unavailable: {str(exc) or type(exc).__name__}") from exc
            REDIS_SCRIPT_SECONDS.labels(script.name).observe(time.perf_counter() - started)
            if attempt == 1 and any(_no_script(r) for r in replies):
                # A restarted or failed-over Redis forgot the scripts; every call is idempotent.
                await self.load_scripts()
                continue
            # Input never reaches a script unvalidated, so an error here is Redis refusing
            # (NOREPLICAS, MISCONF, OOM, READONLY...) or a bug: retry, never drop the facts.
            for r in replies:
                if isinstance(r, Exception):
                    raise StoreUnavailable(f"Redis answered {r}") from r
            return replies
        raise StoreUnavailable("Redis keeps forgetting the scripts")

    def apply_call(self, sid: str, cmds: Sequence[Command]) -> tuple[list[str], list[str | bytes]]:
        """The keys and arguments of the apply_rtk.lua call for one session's commands."""
        return C.session_keys(sid), [str(self.retention_ms), str(len(cmds)), *_items(cmds)]

    async def apply(self, batch: Mapping[str, Sequence[Command]]) -> dict[str, Applied]:
        """Apply each session's commands with one script call.

        The calls go out in pipelines of about APPLY_CHUNK_COMMANDS commands, each on its own
        connection, one after the other without waiting for replies: Redis normally starts on
        the first while the worker still builds and encodes the next (see below), and each
        pipeline's replies are read as they come. The sessions are distinct, so the order in
        which Redis runs the pipelines does not matter.
        """
        parts: list[list[str]] = [[]]
        size = 0
        for sid, cmds in batch.items():
            if size >= APPLY_CHUNK_COMMANDS:
                parts.append([])
                size = 0
            parts[-1].append(sid)
            size += len(cmds)

        async def run(sids: list[str]) -> list[Any]:
            return await self._evalsha_many(APPLY, [self.apply_call(sid, batch[sid]) for sid in sids])

        # One pipeline is started at a time, and given a step of the event loop to be built and
        # written before the next is built. Started all at once, every pipeline was built before
        # the first was written (the event loop writes between the steps of its tasks, and on
        # Python 3.11 redis-py writes in a task of its own, by `asyncio.wait_for`, when a
        # socket timeout is set): Redis sat idle for about 0.15 s per merged batch of 60,000
        # records (docs/performance.md, "Sixth round"). On a pooled connection that is open and
        # needs no health check, one step is enough; one that must connect or PING first is
        # written a little later, as before.
        running: list[asyncio.Future[list[Any]]] = []
        try:
            for n, p in enumerate(parts, 1):
                running.append(asyncio.ensure_future(run(p)))
                if n < len(parts):
                    await asyncio.sleep(0)  # its step (build, then write) runs before the next's
        except asyncio.CancelledError:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise
        # Every pipeline runs to its end before a failure is raised: none is left running
        # while the caller retries the batch.
        outcomes = await asyncio.gather(*running, return_exceptions=True)
        for o in outcomes:
            if isinstance(o, BaseException):
                raise o
        replies = cast(list[list[Any]], outcomes)
        return {
            sid: _applied(r)
            for sids, rs in zip(parts, replies, strict=True)
            for sid, r in zip(sids, rs, strict=True)
        }

    async def end_idle(
        self, session_ids: Sequence[str], now_ms: int, idle_timeout_ms: int
    ) -> dict[str, Applied]:
        item = _idle_item(now_ms, idle_timeout_ms)
        calls = [(C.session_keys(sid), [str(self.retention_ms), "1", *item]) for sid in session_ids]
        replies = await self._evalsha_many(APPLY, calls)
        return {sid: _applied(r) for sid, r in zip(session_ids, replies, strict=True)}

    async def update_indexes(self, results: Mapping[str, Applied]) -> list[str]:
        """Bring the global indexes in line with the script results; returns sessions now due.

        Not atomic with the scripts (other hash slots), but idempotent and re-run on every
        redelivery, so a crash between the two heals itself before the offsets commit.
        """
        due: list[str] = []
        gone: list[str] = []
        started: dict[str, int] = {}
        live: dict[str, int] = {}
        ended: list[str] = []
        queued: dict[str, int] = {}
        for sid, r in results.items():
            if not r.status:
                # No such session (expired, or deleted by hand): it leaves every index.
                gone.append(sid)
                continue
            assert r.started_ms is not None and r.last_ms is not None
            started[sid] = r.started_ms
            if r.status == "LIVE":
                live[sid] = r.last_ms
            else:
                ended.append(sid)
            if r.due:
                # The score is the session's change counter: the outbox removes an entry only
                # while it is unchanged, so a change made during a drain is never lost.
                queued[sid] = r.ver
                due.append(sid)
        # One command per index, whatever the number of sessions (each index is one key).
        pipe = self.redis.pipeline(transaction=False)
        if gone:
            pipe.zrem(C.IDX_LIVE, *gone)
            pipe.zrem(C.IDX_SESSIONS, *gone)
        if started:
            pipe.zadd(C.IDX_SESSIONS, started)
        if live:
            pipe.zadd(C.IDX_LIVE, live, gt=True)
        if ended:
            pipe.zrem(C.IDX_LIVE, *ended)
        if queued:
            pipe.zadd(C.OUTBOX, queued, gt=True)
        if len(pipe):
            await execute(pipe)
        return due

    async def idle_candidates(self, before_ms: int, limit: int, offset: int = 0) -> list[str]:
        ids = await self.redis.zrangebyscore(C.IDX_LIVE, "-inf", f"({before_ms}", start=offset, num=limit)
        return [i.decode() for i in zset_members(ids)]

    async def put_reports(self, reports: Sequence[PeerReport]) -> list[bool]:
        """Keep each peer's newest report; True where a report was stored, False if not newer."""
        calls = [
            ([C.report_key(r.peer_id)], [r.rank, r.session_id, r.report_json, str(self.retention_ms)])
            for r in reports
        ]
        return [bool(x) for x in await self._evalsha_many(PEER_REPORT, calls)] if calls else []

    async def read_report(self, peer_id: str) -> tuple[str, bytes] | None:
        """(session id, PeerReport JSON) of the peer's newest report, if any."""
        got = cast(
            list[bytes | None], await self.redis.hmget(C.report_key(peer_id), ["session_id", "peer_report"])
        )
        sid, report = got
        if sid is None or report is None:
            return None
        return sid.decode(), report

    # --- outbox -------------------------------------------------------------------------

    async def outbox_due(self, limit: int, outbox: str = C.OUTBOX) -> list[tuple[str, int]]:
        """Sessions with outbound messages due, with the change counter they were queued at."""
        entries = await self.redis.zrange(outbox, 0, limit - 1, withscores=True)
        return [(m.decode(), int(score)) for m, score in _zset_scored_members(entries)]

    async def commit_revisions(
        self, items: Sequence[tuple[str, Channel, str, int, str, bytes]], state_key: StateKey = rtk_state_key
    ) -> list[tuple[str, int, bytes]]:
        """For each (session, channel, ver read, <channel>_rev read, content hash, body):
        (kind, revision, body to publish or b''), in one round trip; the kinds are revision.lua's.
        ``state_key`` names the hash that holds the session's `ver` and revisions."""
        calls: list[tuple[Sequence[str], Sequence[str | bytes]]] = [
            ([state_key(sid)], ["commit", ch, ver, str(rev_seen), digest, body])
            for sid, ch, ver, rev_seen, digest, body in items
        ]
        replies = await self._evalsha_many(REVISION, calls) if calls else []
        return [(r[0].decode(), int(r[1]), r[2]) for r in replies]

    async def mark_published(
        self, published: Sequence[tuple[str, Channel, int]], state_key: StateKey = rtk_state_key
    ) -> None:
        """Record, per session and channel, the revision the broker acknowledged."""
        calls = [([state_key(sid)], ["published", ch, str(rev)]) for sid, ch, rev in published]
        if calls:
            await self._evalsha_many(REVISION, calls)

    async def outbox_done(self, entries: Sequence[tuple[str, int]], outbox: str = C.OUTBOX) -> list[bool]:
        """Drop drained entries, each unless its session changed since it was read."""
        calls = [([outbox], [sid, str(queued_at)]) for sid, queued_at in entries]
        return [bool(r) for r in await self._evalsha_many(OUTBOX_DONE, calls)] if calls else []

    # --- read side --------------------------------------------------------------------

    async def read_raw(self, sid: str, *, events: bool = True) -> dict[str, dict[bytes, bytes]] | None:
        """The session's hashes, read atomically by one script call (one hash slot).

        ``events=False`` skips the stored peer events: enough for a Session object,
        not for participants' details or a summary.
        """
        k = C.session_keys(sid)
        keys = [k[0], k[2], k[5], *([k[3]] if events else [])]
        [replies] = await self._evalsha_many(READ, [(keys, [])])
        hashes = [_pairs(r) for r in replies]
        return _session_raw(hashes[0], hashes[1], hashes[2], hashes[3] if events else {})

    async def read_many(self, sids: Sequence[str]) -> list[dict[str, dict[bytes, bytes]] | None]:
        """Several sessions' hashes in one round trip: one `read.lua` call per session, so each
        session is read atomically and comes back as one reply (not four)."""
        calls: list[tuple[Sequence[str], Sequence[str | bytes]]] = []
        for sid in sids:
            k = C.session_keys(sid)
            calls.append(([k[0], k[2], k[5], k[3]], []))
        replies = await self._evalsha_many(READ, calls) if calls else []
        return [_session_raw(*(_pairs(h) for h in r)) for r in replies]

    async def read_view(
        self, sid: str, *, events: bool = True, peer: str | None = None
    ) -> tuple[SessionView, dict[bytes, bytes], dict[str, dict[int, str]]] | None:
        """The session's view, its raw session hash, and its stored peer events by peer.

        With ``peer``, the view is that participant's only: its peers and events hold that
        peer alone (no other peer's events are parsed). Only the session's own fields and
        stored totals then describe the whole session: do not build a Session object, a
        summary or minutes from such a view. Redis still returns the whole session.
        """
        raw = await self.read_raw(sid, events=events)
        if raw is None:
            return None
        if peer is not None:
            wanted = peer.encode()
            raw = {
                **raw,
                "piv": {p: v for p, v in raw["piv"].items() if p == wanted},
                "events": {f: v for f, v in raw["events"].items() if f.partition(b":")[2] == wanted},
            }
        by_peer = events_by_peer(raw["events"])
        return view_from_raw(sid, raw, by_peer), raw["session"], by_peer


async def execute(pipe: Any) -> list[Any]:
    """Run a pipeline; Redis being unreachable or loading becomes StoreUnavailable (retriable)."""
    try:
        replies: list[Any] = await pipe.execute()
    except (rexc.ConnectionError, rexc.TimeoutError, rexc.BusyLoadingError) as exc:
        raise StoreUnavailable(f"Redis unavailable: {exc}") from exc
    return replies


def _session_raw(
    session: dict[bytes, bytes], piv: dict[bytes, bytes], art: dict[bytes, bytes], events: dict[bytes, bytes]
) -> dict[str, dict[bytes, bytes]] | None:
    """A session's hashes as read, or None when it does not exist (expired, or never seen)."""
    if not session or b"status" not in session:
        return None
    return {"session": session, "piv": piv, "art": art, "events": events}


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """A flat HGETALL reply [field, value, ...] as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def artifacts_from_raw(art: Mapping[bytes, bytes]) -> dict[str, Any]:
    """The `art` hash's values (fields `v:<slot>`) by slot."""
    return {f[2:].decode(): orjson.loads(v) for f, v in art.items() if f.startswith(b"v:")}


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
        artifacts=artifacts_from_raw(raw.get("art", {})),
    )
