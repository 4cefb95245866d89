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
from .store import SessionError, Store

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
        for sid in await self.store.outbox_due(self.chunk):
            try:
                published += await self._drain_session(sid)
            except (SessionError, ValueError, KeyError) as exc:
                # Kept in the outbox, and the others go on: one broken session must not
                # hold back every other summary.
                log.error("summary for session %r failed, kept in the outbox: %r", sid, exc)
        return published

    async def _drain_session(self, sid: str) -> int:
        got = await self.store.read_view(sid)
        if got is None:  # expired after its retention
            await self.store.outbox_done(sid)
            return 0
        view, raw, _ = got
        if view.status != "ENDED":
            await self.store.outbox_done(sid)
            return 0
        content = shapes.session_summary(view, now_ms=view.ended_ms or 0)
        rev_seen = int(raw.get(b"summary_rev", b"0"))
        body = summary_body(content, sid, rev_seen + 1)
        kind, rev, stored, done = await self.store.commit_summary(
            sid, raw.get(b"ver", b"0").decode(), rev_seen, content_hash(content), body
        )
        if kind == "retry":
            return 0  # the state moved on while we built it; the next pass rebuilds
        count = 0
        if kind == "new" or done < rev:
            assert stored is not None
            message_id = shapes.summary_message_id(sid)
            await self.publisher.publish(
                stored,
                key=sid.encode(),
                headers={"message_id": message_id, "revision": str(rev)},
                # Deterministic, so every copy of one revision is identical, headers included.
                correlation_id=f"{message_id}:{rev}",
            )
            await self.store.mark_published(sid, rev)
            self.stats.add("summaries_published", self.publisher.topic or "")
            count = 1
        await self.store.outbox_done(sid)
        return count

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
