"""The outbox: turns sessions flagged in Redis into SessionSummary and TranscriptReady messages."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from faststream.kafka.publisher.usecase import DefaultPublisher
from redis import exceptions as rexc

from . import constants as C
from .core import shapes
from .core.model import SessionView
from .core.streams import StreamView, stream_summary
from .core.timeutil import now_ms
from .errors import StoreUnavailable
from .stats import Stats
from .store import StateKey, Store, events_by_peer, rtk_state_key, view_from_raw
from .stream_store import StreamStore

log = logging.getLogger(__name__)

# Due sessions looked at per pass for their settling (the head of the outbox, lowest counters first).
SETTLE_WINDOW = 10_000
# Sessions built between two yields to the event loop.
BUILD_SLICE = 50
# Sessions per part of a pass: parts are read ahead and built while the ones before are published.
PASS_PART = 100
# Parts of a pass whose reads are on their way while one is built: with one, the worker still
# waited on the next read for a fifth of a pass (docs/performance.md, "Sixth round").
READ_AHEAD = 3
# Most sessions whose settling the outbox keeps track of.
SETTLING_LIMIT = 100_000


def content_hash(followed: Any) -> str:
    """What a channel's revisions follow, hashed: a new revision only when this changes."""
    return hashlib.sha1(
        orjson.dumps(followed, option=orjson.OPT_SORT_KEYS), usedforsecurity=False
    ).hexdigest()


@dataclass(frozen=True)
class Channel:
    """One kind of outbound message: its Redis field prefix, topic, message id and content.

    ``build`` gives (content, what its revisions follow) or None when nothing is due yet:
    a new revision is stored only when the followed part changes.
    """

    name: str
    publisher: DefaultPublisher
    message_id: Callable[[str], str]
    build: Callable[[Any], tuple[dict[str, Any], Any] | None]  # from the source's view

    def body(self, sid: str, revision: int, content: dict[str, Any]) -> bytes:
        return orjson.dumps({"message_id": self.message_id(sid), "revision": revision, **content})


def _summary(view: SessionView) -> tuple[dict[str, Any], Any] | None:
    if view.status != "ENDED":
        return None
    content = shapes.session_summary(view, now_ms=view.ended_ms or 0)
    return content, content  # re-issued whenever late data changed any of it


def _transcript(view: SessionView) -> tuple[dict[str, Any], Any] | None:
    content = shapes.transcript_ready(view)
    if content is None:
        return None
    # Once per session: a next revision only when the link itself changes, not the session.
    return content, (content["transcript_download_url"], content["transcript_download_url_expiry"])


def channels(summaries: DefaultPublisher, transcripts: DefaultPublisher) -> tuple[Channel, ...]:
    return (
        Channel("summary", summaries, shapes.summary_message_id, _summary),
        Channel("transcript", transcripts, shapes.transcript_message_id, _transcript),
    )


def _stream_summary(view: StreamView) -> tuple[dict[str, Any], Any] | None:
    if view.status != "ENDED":
        return None
    content = stream_summary(view)
    return content, content


def stream_channels(summaries: DefaultPublisher) -> tuple[Channel, ...]:
    return (Channel("summary", summaries, shapes.summary_message_id, _stream_summary),)


Loaded = tuple[Any, Mapping[bytes, bytes]]  # a session's view and the hash its revisions live in
# A revision to commit: session, channel, `ver` read, <channel>_rev read, content hash, body.
Commit = tuple[str, str, str, int, str, bytes]


@dataclass(frozen=True)
class Source:
    """Which sessions an outbox drains: its ZSET, the hash of each session, how to load them."""

    outbox_key: str
    state_key: StateKey
    load: Callable[[Sequence[str]], Awaitable[list[Loaded | None]]]


def rtk_source(store: Store) -> Source:
    async def load(sids: Sequence[str]) -> list[Loaded | None]:
        raws = await store.read_many(sids)
        out: list[Loaded | None] = []
        for n, (sid, raw) in enumerate(zip(sids, raws, strict=True), 1):
            if n % BUILD_SLICE == 0:
                await asyncio.sleep(0)  # CPU work on the event loop: let a batch in
            out.append(
                None
                if raw is None
                else (view_from_raw(sid, raw, events_by_peer(raw["events"])), raw["session"])
            )
        return out

    return Source(C.OUTBOX, rtk_state_key, load)


def stream_source(streams: StreamStore) -> Source:
    async def load(sids: Sequence[str]) -> list[Loaded | None]:
        return list(await streams.read_many(sids))

    return Source(C.OUTBOX_STREAMS, lambda sid: C.stream_keys(sid)[0], load)


async def _first_of(*events: asyncio.Event, timeout_s: float) -> None:
    """Wait until one of the events is set, at most `timeout_s`."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


class Outbox:
    """Drains a source's outbox ZSET. Publishes at least once; every copy of a revision is the
    stored bytes."""

    def __init__(
        self,
        store: Store,
        channels: Sequence[Channel],
        stats: Stats,
        *,
        source: Source | None = None,
        chunk: int = 2000,
        defer: Callable[[], bool] | None = None,
        applied_all: Callable[[], bool] | None = None,
        max_defer_s: float = 10.0,
        quiet_s: float = 0.0,
    ) -> None:
        self.store = store
        self.source = source or rtk_source(store)
        self.channels = {c.name: c for c in channels}
        self.stats = stats
        # Sessions per pass, taken in parts of PASS_PART that overlap (one is built while the ones
        # before are published and up to READ_AHEAD are read), so a backlog of due sessions goes
        # out in a pass or two. Building is CPU work on the worker's event loop: it yields every
        # BUILD_SLICE sessions, so a batch never waits behind a whole pass.
        self.chunk = chunk
        # While `defer()` says the worker is draining a backlog, late facts keep changing ended
        # sessions: waiting (at most max_defer_s) publishes one revision instead of many.
        self.defer = defer
        self.max_defer_s = max_defer_s
        self.more = False  # the last pass left due sessions behind (a full chunk)
        # A session is taken once its change counter has stood still for quiet_s: facts that
        # trickle in after an end then give one revision, not one per batch. One that a backlog
        # changed last is taken at once when its newest event time is older than quiet_s by
        # the service's clock and `applied_all()` says the worker has applied everything there
        # was to fetch: its facts were waiting in Kafka, not trickling in, and are all in.
        self.quiet_s = quiet_s
        self.applied_all = applied_all
        # session -> (counter, first seen, its newest event time when a backlog changed it last)
        self._settling: dict[str, tuple[int, float, int | None]] = {}
        # (session, counter) settling for half the quiet time or more (any, right after a
        # backlog), in queue order: built in advance
        self._waiting: list[tuple[str, int]] = []
        self._backlog_ended = -1e9  # monotonic time the last deferral (a backlog) ended
        # session -> (counter it was queued at, its commits or why it failed), built in advance
        self._prebuilt: dict[str, tuple[int, list[Commit] | Exception]] = {}
        self.wake = asyncio.Event()
        # Seconds until the first session still settling may be taken (None: none settling).
        self.settles_in: float | None = None

    def _settled(self, due: list[tuple[str, int]], quiet_s: float) -> list[tuple[str, int]]:
        if quiet_s <= 0:
            return due
        now = time.monotonic()
        eager = now - self._backlog_ended < 2 * quiet_s
        # Sessions a backlog changed last, with event times older than this, go once all of it
        # is applied (not in a pass that max_defer_s forces while it lasts, nor while its last
        # records are still on their way to Redis).
        backlog_done = (self.defer is None or not self.defer()) and (
            self.applied_all is None or self.applied_all()
        )
        old_ms = now_ms() - int(quiet_s * 1000) if backlog_done else -1
        ready = []
        self._waiting = []
        self.settles_in = None
        for sid, queued_at in due:
            seen = self._settling.get(sid)
            if seen is None or seen[0] != queued_at:
                self._settling[sid] = (queued_at, now, None)
                wait = quiet_s
            elif now - seen[1] >= quiet_s or (seen[2] is not None and seen[2] < old_ms):
                ready.append((sid, queued_at))
                continue
            else:
                wait = quiet_s - (now - seen[1])
            # Worth building in advance: likely to settle now, or touched by a backlog that
            # just ended (the worker has nothing else to do).
            if wait <= quiet_s / 2 or eager:
                self._waiting.append((sid, queued_at))
            self.settles_in = wait if self.settles_in is None else min(self.settles_in, wait)
        if len(self._settling) > 2 * SETTLE_WINDOW:  # sessions drained by another worker
            self._settling = {sid: v for sid, v in self._settling.items() if now - v[1] < 60}
        return ready

    async def drain_once(self, *, final: bool = False) -> int:
        """One pass over a chunk of due sessions; returns how many messages it published.

        ``final`` (at shutdown) takes every due session, settled or not.

        A handful of round trips per part of the chunk: read, commit, publish, record, remove.
        Redis being down fails the pass as a whole once the parts already built have finished
        (it backs off); a session whose message cannot be built or published stays in the
        outbox without holding back the others.
        """
        src = self.source
        quiet_s = 0.0 if final else self.quiet_s
        # Settling sessions are looked at further down the queue than one chunk, so that those
        # still settling at its head do not keep the others waiting.
        window = self.chunk if quiet_s <= 0 else SETTLE_WINDOW
        queue = await self.store.outbox_due(window, src.outbox_key)
        due = self._settled(queue, quiet_s)[: self.chunk]
        self.more = len(due) >= self.chunk
        if not due:
            return 0
        # Sessions built while they settled (prebuild) are not loaded again; if one changed
        # since, revision.lua answers "retry" for it and the next pass builds it anew.
        # Taken out before any await: a flush at shutdown may run a pass beside this one.
        built_for: dict[str, list[Commit] | Exception] = {}
        for sid, queued_at in due:
            pre = self._prebuilt.pop(sid, None)
            if pre is not None and pre[0] == queued_at:
                built_for[sid] = pre[1]
        # The pass goes in parts, overlapped: while one part is committed, published and
        # recorded (round trips to Redis and the broker's acknowledgements), the next ones are
        # read and one is built. A pass done in one piece waited for them about a third of its
        # time.
        parts = [due[i : i + PASS_PART] for i in range(0, len(due), PASS_PART)]
        fresh = [[sid for sid, _ in part if sid not in built_for] for part in parts]
        finishing: list[asyncio.Task[int]] = []
        reads = [self._load_soon(sids) for sids in fresh[:READ_AHEAD]]
        try:
            for i, part in enumerate(parts):
                if any(t.done() and not t.cancelled() and t.exception() is not None for t in finishing):
                    break  # a part failed (Redis, or the broker unreachable): the rest waits
                loaded = await reads[i]
                if i + READ_AHEAD < len(parts):
                    reads.append(self._load_soon(fresh[i + READ_AHEAD]))
                built_for.update(zip(fresh[i], await self._build_loaded(fresh[i], loaded), strict=True))
                finishing.append(asyncio.create_task(self._finish(part, built_for)))
        except (Exception, asyncio.CancelledError) as exc:
            # The parts already built still go out before the failure is raised. Cancelled with
            # the pass (at shutdown), parts in flight stay in the outbox for the next pass, or
            # the next worker, to take again.
            if isinstance(exc, asyncio.CancelledError):
                for task in finishing:
                    task.cancel()
            for read in reads:
                read.cancel()  # nothing for those awaited already; Redis may be what failed
            await asyncio.gather(*reads, *finishing, return_exceptions=True)
            raise
        # The reads of parts that a failed part left out, if any, are let finish rather than
        # cancelled (Redis answers; a read cancelled part-way would close its connection).
        await asyncio.gather(*reads, return_exceptions=True)
        outcomes = await asyncio.gather(*finishing, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome  # the first failure in queue order; every part has finished
        return sum(o for o in outcomes if isinstance(o, int))

    def _load_soon(self, sids: Sequence[str]) -> asyncio.Future[list[Loaded | None]]:
        """Start reading sessions (the read goes out now; it is awaited later)."""
        if not sids:
            done: asyncio.Future[list[Loaded | None]] = asyncio.get_running_loop().create_future()
            done.set_result([])
            return done
        return asyncio.ensure_future(self.source.load(sids))

    async def _finish(
        self, part: Sequence[tuple[str, int]], built_for: Mapping[str, list[Commit] | Exception]
    ) -> int:
        """Commit, publish and record one part of a pass; returns how many messages went out."""
        src = self.source
        commits: list[Commit] = []
        queued: dict[str, int] = {}
        unfinished: dict[str, int] = {}  # session -> channels still to be confirmed this pass
        for sid, queued_at in part:
            queued[sid] = queued_at
            unfinished[sid] = 0
            built = built_for[sid]
            if isinstance(built, Exception):
                self._failed(sid, "all", built)
                unfinished[sid] += 1  # stays queued
                continue
            commits += built
            unfinished[sid] += len(built)

        outcomes = await self.store.commit_revisions(commits, src.state_key)
        # Every copy of a revision is the stored bytes: with REDIS_WAIT_REPLICAS, none goes out
        # before replicas have them (a failover could otherwise lose a published revision).
        if commits:
            await self.store.replicated()
        sends: list[tuple[str, Channel, int, bytes, bool]] = []  # session, channel, rev, body, was pending
        for (sid, name, *_), (kind, rev, body) in zip(commits, outcomes, strict=True):
            if kind == "retry":
                continue  # the state moved on while we built it: the next pass rebuilds
            if body:
                sends.append((sid, self.channels[name], rev, body, kind == "pending"))
            else:
                unfinished[sid] -= 1
        results = await self._publish_all(sends)
        published: list[tuple[str, str, int]] = []
        unreachable: list[KafkaError] = []
        for (sid, ch, rev, _, pending), result in zip(sends, results, strict=True):
            if isinstance(result, KafkaError) and result.retriable:
                unreachable.append(result)  # the broker, not this message: one warning, then back off
                continue
            if isinstance(result, BaseException):
                self._failed(sid, ch.name, result)
                continue
            published.append((sid, ch.name, rev))
            self.stats.add(f"{ch.name}_published", ch.publisher.topic or "")
            if not pending:  # after a pending revision went out, the next pass commits the new one
                unfinished[sid] -= 1
        await self.store.mark_published(published, src.state_key)
        finished = [(sid, queued[sid]) for sid, left in unfinished.items() if left == 0]
        await self.store.outbox_done(finished, src.outbox_key)
        for sid, queued_at in finished:
            # Done with this change; a later one starts a new clock (note, or the next pass).
            if self._settling.get(sid, (None,))[0] == queued_at:
                del self._settling[sid]
        if unreachable:
            raise unreachable[0]
        return len(published)

    async def _build_many(self, sids: Sequence[str]) -> list[list[Commit] | Exception]:
        """Load sessions and build their due messages: per session, the revision commits to
        make (none for a session gone or with nothing due), or why it could not be built."""
        return await self._build_loaded(sids, await self.source.load(sids) if sids else [])

    async def _build_loaded(
        self, sids: Sequence[str], loaded: Sequence[Loaded | None]
    ) -> list[list[Commit] | Exception]:
        """`_build_many` for sessions already loaded."""
        out: list[list[Commit] | Exception] = []
        for n, (sid, got) in enumerate(zip(sids, loaded, strict=True), 1):
            if n % BUILD_SLICE == 0:
                await asyncio.sleep(0)  # CPU work on the event loop: let a batch in
            if got is None:  # expired, or deleted by hand
                out.append([])
                continue
            view, session = got
            try:
                built = [(ch, ch.build(view)) for ch in self.channels.values()]
            except Exception as exc:
                out.append(exc)
                continue
            ver = session.get(b"ver", b"0").decode()
            commits: list[Commit] = []
            for ch, content_followed in built:
                if content_followed is None:
                    continue
                content, followed = content_followed
                rev_seen = int(session.get(f"{ch.name}_rev".encode(), b"0"))
                commits.append(
                    (sid, ch.name, ver, rev_seen, content_hash(followed), ch.body(sid, rev_seen + 1, content))
                )
            out.append(commits)
        return out

    async def prebuild(self) -> None:
        """Build the messages of sessions half-way through settling, while the outbox would
        wait anyway: when they settle, only the commit and the publish are left. A session that
        changes meanwhile is built again then (only the second half of the quiet time is spent
        on sessions that may still change, so live traffic rarely wastes a build). In parts of
        PASS_PART, like a pass, so that one read never holds thousands of sessions."""
        todo = [(sid, q) for sid, q in self._waiting if self._prebuilt.get(sid, (None, None))[0] != q]
        if len(self._prebuilt) + len(todo) > 2 * SETTLE_WINDOW:  # sessions drained by another worker
            self._prebuilt.clear()
        for i in range(0, min(len(todo), SETTLE_WINDOW), PASS_PART):
            part = todo[i : i + PASS_PART]
            for (sid, q), built in zip(part, await self._build_many([sid for sid, _ in part]), strict=True):
                if not isinstance(built, Exception):  # a failure is reported when the pass builds it
                    self._prebuilt[sid] = (q, built)

    def note(self, changed: Mapping[str, tuple[int, int | None]]) -> None:
        """Sessions this worker just made due, with their change counters and newest event
        times: their settling clocks start now, when they changed (while a backlog defers the
        outbox too), rather than when a pass first sees them in the queue. Sessions changed by
        other workers are timed from when a pass sees them. Called while a backlog defers the
        outbox, the event times let old sessions go once all of it is applied (see `quiet_s`)."""
        if self.quiet_s <= 0:
            return
        now = time.monotonic()
        backlog = self.defer is not None and self.defer()
        settling = self._settling
        if len(settling) > SETTLING_LIMIT:
            # Bounded: a session forgotten here is timed again from when a pass sees it.
            settling.clear()
        for sid, (ver, newest_ms) in changed.items():
            seen = settling.get(sid)
            if seen is None or seen[0] != ver:
                settling[sid] = (ver, now, newest_ms if backlog else None)

    async def _publish_all(
        self, sends: Sequence[tuple[str, Channel, int, bytes, bool]]
    ) -> list[BaseException | None]:
        """Publish every message; returns, per message, None once the broker acknowledged it or
        what went wrong.

        The messages are handed to the producer one after the other and the acknowledgements
        awaited together. Hundreds of concurrent sends to one partition would all wait on each
        full producer batch and wake together: about 0.7 ms of the worker's CPU per message
        (docs/performance.md), where this costs a tenth of that.
        """
        results: list[BaseException | None] = [None] * len(sends)
        acks: list[tuple[int, Awaitable[Any]]] = []
        for i, (sid, ch, rev, body, _) in enumerate(sends):
            try:
                ack = await self._publish(sid, ch, rev, body)
            except Exception as exc:
                results[i] = exc
                if isinstance(exc, KafkaError) and exc.retriable:
                    # The broker, not this message: the rest waits for the next pass rather
                    # than each waiting out the producer's timeout here.
                    results[i + 1 :] = [exc] * (len(sends) - i - 1)
                    break
                continue
            if ack is not None:
                acks.append((i, ack))
        outcomes = await asyncio.gather(*(a for _, a in acks), return_exceptions=True)
        for (i, _), outcome in zip(acks, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                results[i] = outcome
        return results

    async def _publish(self, sid: str, ch: Channel, rev: int, body: bytes) -> Awaitable[Any] | None:
        """Hand one message to the producer; returns the future of its acknowledgement."""
        message_id = ch.message_id(sid)
        ack: Awaitable[Any] | None = await ch.publisher.publish(
            body,
            key=sid.encode(),
            headers={"message_id": message_id, "revision": str(rev)},
            # Deterministic, so every copy of one revision is identical, headers included.
            correlation_id=f"{message_id}:{rev}",
            no_confirm=True,
        )
        return ack

    def _failed(self, sid: str, channel: str, exc: BaseException) -> None:
        self.stats.add("outbox_failures", channel)
        log.error("%s message of session %r failed, kept in the outbox: %r", channel, sid, exc)

    async def run(self, interval_s: float, stopping: asyncio.Event) -> None:
        backoff = interval_s
        last_drain = time.monotonic()
        deferred = False
        while not stopping.is_set():
            if self.defer is not None and self.defer() and time.monotonic() - last_drain < self.max_defer_s:
                # Woken by each batch that makes sessions due, so that the end of a backlog is
                # seen at once (the batches note when their sessions changed: note()).
                self.wake.clear()
                await _first_of(self.wake, stopping, timeout_s=interval_s)
                deferred = True
                continue
            if deferred:
                deferred = False
                self._backlog_ended = time.monotonic()
            try:
                n = await self.drain_once()
                last_drain = time.monotonic()
                backoff = interval_s
                if n:
                    log.debug("published %d messages", n)
                if self.more:
                    await asyncio.sleep(0)  # let a batch in, then the next chunk
                    continue
                if not n and self.settles_in is not None:
                    # Sessions still settling, nothing ready: a wake (a batch made sessions
                    # due) cannot make one ready sooner than this, and a pass per batch would
                    # read the whole settling window again each time. Meanwhile their
                    # messages are built, so that settling is all that is left to wait for.
                    until = time.monotonic() + min(self.settles_in, interval_s)
                    await self.prebuild()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), timeout=max(0.0, until - time.monotonic()))
                    continue
            except (StoreUnavailable, rexc.ConnectionError, rexc.TimeoutError, KafkaError, OSError) as exc:
                backoff = min(backoff * 2, 30.0)
                log.warning("outbox paused, retrying in %.1fs: %s", backoff, exc)
            except Exception:
                backoff = min(backoff * 2, 30.0)
                log.exception("outbox pass failed, retrying in %.1fs", backoff)
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=backoff)

    async def flush(self, timeout_s: float) -> None:
        """Drain until empty or out of time (used at shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not await self.store.outbox_due(1, self.source.outbox_key):
                return
            await self.drain_once(final=True)
            await asyncio.sleep(0.05)
