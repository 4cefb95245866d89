"""The summary outbox: turns sessions flagged in Redis into SessionSummary messages on Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time

import orjson
from faststream.kafka.publisher.usecase import DefaultPublisher
from redis import exceptions as rexc

from .core import shapes
from .errors import StoreUnavailable
from .stats import Stats
from .store import Store

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
        """One pass over the due sessions; returns how many summaries it published."""
        published = 0
        for sid, queued_at in await self.store.outbox_due(self.chunk):
            try:
                published += await self._drain_session(sid, queued_at)
            except (StoreUnavailable, rexc.ConnectionError, rexc.TimeoutError):
                raise  # Redis is down for everyone: the pass backs off as a whole
            except Exception as exc:
                # Kept in the outbox, and the others go on: one session whose summary cannot
                # be built or published (too large for the broker, say) must not hold back the rest.
                self.stats.add("summary_failures", self.publisher.topic or "")
                log.error("summary of session %r failed, kept in the outbox: %r", sid, exc)
        return published

    async def _drain_session(self, sid: str, queued_at: int) -> int:
        got = await self.store.read_view(sid)
        if got is None or got[0].status != "ENDED":  # expired after its retention, or live again
            await self.store.outbox_done(sid, queued_at)
            return 0
        view, raw, _ = got
        content = shapes.session_summary(view, now_ms=view.ended_ms or 0)
        rev_seen = int(raw.get(b"summary_rev", b"0"))
        kind, rev, body = await self.store.commit_summary(
            sid,
            raw.get(b"ver", b"0").decode(),
            rev_seen,
            content_hash(content),
            summary_body(content, sid, rev_seen + 1),
        )
        if kind == "retry":
            return 0  # the state moved on while we built it; the next pass rebuilds
        if body:
            message_id = shapes.summary_message_id(sid)
            await self.publisher.publish(
                body,
                key=sid.encode(),
                headers={"message_id": message_id, "revision": str(rev)},
                # Deterministic, so every copy of one revision is identical, headers included.
                correlation_id=f"{message_id}:{rev}",
            )
            await self.store.mark_published(sid, rev)
            self.stats.add("summaries_published", self.publisher.topic or "")
        if kind != "pending":  # after a pending revision went out, the next pass commits the new one
            await self.store.outbox_done(sid, queued_at)
        return 1 if body else 0

    async def run(self, interval_s: float, stopping: asyncio.Event) -> None:
        backoff = interval_s
        while not stopping.is_set():
            try:
                n = await self.drain_once()
                backoff = interval_s
                if n:
                    log.debug("published %d summaries", n)
            except (StoreUnavailable, rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
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
