"""The summary outbox: turns sessions flagged in Redis into SessionSummary messages on Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time

import orjson
from aiokafka.errors import KafkaError
from faststream.kafka.publisher.usecase import DefaultPublisher
from redis import exceptions as rexc

from .core import shapes
from .errors import StoreUnavailable
from .stats import Stats
from .store import Store, events_by_peer, view_from_raw

log = logging.getLogger(__name__)


def summary_body(content: dict[str, object], session_id: str, revision: int) -> bytes:
    msg = {"message_id": shapes.summary_message_id(session_id), "revision": revision, **content}
    return orjson.dumps(msg)


def content_hash(content: dict[str, object]) -> str:
    return hashlib.sha1(orjson.dumps(content, option=orjson.OPT_SORT_KEYS), usedforsecurity=False).hexdigest()


class Outbox:
    """Drains `sp:outbox`. Publishes at least once; every copy of a revision is the stored bytes."""

    def __init__(self, store: Store, publisher: DefaultPublisher, stats: Stats, *, chunk: int = 200) -> None:
        self.store = store
        self.publisher = publisher
        self.stats = stats
        self.chunk = chunk
        self.wake = asyncio.Event()

    async def drain_once(self) -> int:
        """One pass over a chunk of due sessions; returns how many summaries it published.

        A handful of round trips for the whole chunk: read, commit, publish, record, remove.
        Redis being down fails the pass as a whole (it backs off); a session whose summary
        cannot be built or published stays in the outbox without holding back the others.
        """
        due = await self.store.outbox_due(self.chunk)
        if not due:
            return 0
        raws = await self.store.read_many([sid for sid, _ in due])
        done: list[tuple[str, int]] = []
        commits: list[tuple[str, str, int, str, bytes]] = []
        queued: dict[str, int] = {}
        for (sid, queued_at), raw in zip(due, raws, strict=True):
            if raw is None or raw["session"][b"status"] != b"ENDED":  # expired, or not ended
                done.append((sid, queued_at))
                continue
            try:
                view = view_from_raw(sid, raw, events_by_peer(raw["events"]))
                content = shapes.session_summary(view, now_ms=view.ended_ms or 0)
            except Exception as exc:
                self._failed(sid, exc)
                continue
            rev_seen = int(raw["session"].get(b"summary_rev", b"0"))
            ver = raw["session"].get(b"ver", b"0").decode()
            commits.append(
                (sid, ver, rev_seen, content_hash(content), summary_body(content, sid, rev_seen + 1))
            )
            queued[sid] = queued_at

        outcomes = await self.store.commit_summaries(commits)
        sends: list[tuple[str, int, bytes, bool]] = []  # session, revision, body, whether it was pending
        for (sid, *_), (kind, rev, body) in zip(commits, outcomes, strict=True):
            if kind == "retry":
                continue  # the state moved on while we built it: the next pass rebuilds
            if body:
                sends.append((sid, rev, body, kind == "pending"))
            else:
                done.append((sid, queued[sid]))
        results = await asyncio.gather(
            *(self._publish(sid, rev, body) for sid, rev, body, _ in sends), return_exceptions=True
        )
        published: list[tuple[str, int]] = []
        unreachable: list[KafkaError] = []
        for (sid, rev, _, pending), result in zip(sends, results, strict=True):
            if isinstance(result, KafkaError) and result.retriable:
                unreachable.append(result)  # the broker, not this summary: one warning, then back off
                continue
            if isinstance(result, BaseException):
                self._failed(sid, result)
                continue
            published.append((sid, rev))
            if not pending:  # after a pending revision went out, the next pass commits the new one
                done.append((sid, queued[sid]))
        await self.store.mark_published(published)
        await self.store.outbox_done(done)
        self.stats.add("summaries_published", self.publisher.topic or "", len(published))
        if unreachable:
            raise unreachable[0]
        return len(published)

    async def _publish(self, sid: str, rev: int, body: bytes) -> None:
        message_id = shapes.summary_message_id(sid)
        await self.publisher.publish(
            body,
            key=sid.encode(),
            headers={"message_id": message_id, "revision": str(rev)},
            # Deterministic, so every copy of one revision is identical, headers included.
            correlation_id=f"{message_id}:{rev}",
        )

    def _failed(self, sid: str, exc: BaseException) -> None:
        self.stats.add("summary_failures", self.publisher.topic or "")
        log.error("summary of session %r failed, kept in the outbox: %r", sid, exc)

    async def run(self, interval_s: float, stopping: asyncio.Event) -> None:
        backoff = interval_s
        while not stopping.is_set():
            try:
                n = await self.drain_once()
                backoff = interval_s
                if n:
                    log.debug("published %d summaries", n)
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
            if not await self.store.outbox_due(1):
                return
            await self.drain_once()
            await asyncio.sleep(0.05)
