"""Faults that must lose nothing: Redis refusing writes, vanished sessions, races in the outbox."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka.errors import KafkaConnectionError

from service import constants as C
from service.constants import Topics
from service.core.model import Artifact, PeerEvent, SessionMessage
from service.errors import StoreUnavailable
from service.outbox import PASS_PART, READ_AHEAD, Outbox, Source, channels, rtk_source
from service.stats import Stats
from service.store import Command, Store

from .harness import (
    WorkerProcess,
    assert_state_matches,
    consume_all,
    drained,
    group_lag,
    make_log,
    produce,
    reference,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.integration
EMBEDDED_REDIS = not os.environ.get("SESSIONPULSE_TEST_REDIS_URL")


@pytest.mark.skipif(not EMBEDDED_REDIS, reason="changes server configuration: only on the suite's own Redis")
async def test_redis_refusing_writes_is_retried_not_dead_lettered(
    kafka_bootstrap: str, redis_url: str, topics: Topics, redis_client: aioredis.Redis, api: httpx.AsyncClient
) -> None:
    log = make_log(random.Random(3), sessions=8, with_bad=False)
    expected = reference(log)
    env = worker_env(kafka_bootstrap, redis_url, topics)
    # Writes refused as when a replica required by min-replicas-to-write is missing.
    await redis_client.config_set("min-replicas-to-write", "1")
    try:
        produced = produce(kafka_bootstrap, topics, log.items)
        w = WorkerProcess(env)
        await wait_for(lambda: _logged(w, "retrying"), 60, "the worker to hit the refusal")
        await asyncio.sleep(1.0)
        assert w.alive()
        assert await group_lag(kafka_bootstrap, env["CONSUMER_GROUP"], produced) == len(log.items)
        assert consume_all(kafka_bootstrap, topics.dead_letter, idle_s=0.5) == []
    finally:
        await redis_client.config_set("min-replicas-to-write", "0")
    try:
        await wait_for(
            lambda: drained(kafka_bootstrap, env["CONSUMER_GROUP"], produced, redis_client), 90, "recovery"
        )
        await assert_state_matches(api, expected)
    finally:
        assert w.stop() == 0


async def _logged(w: WorkerProcess, text: str) -> bool:
    return text in w.log_text()


def _ended(sid: str, ended_ms: int) -> SessionMessage:
    meta = orjson.dumps({"type": "meeting", "organization_id": "o"}).decode()
    digest = hashlib.sha1(f"{sid}{ended_ms}".encode()).hexdigest()
    return SessionMessage(sid, "ENDED", ended_ms + 1, 0, ended_ms, meta, digest)


def _join(sid: str, peer: str, t: int) -> PeerEvent:
    return PeerEvent(sid, f"{peer}-{t}", peer, 2, t, orjson.dumps({"peer_id": peer}).decode())


async def _apply_and_note(store: Store, outbox: Outbox, batch: dict[str, list[Command]]) -> None:
    """What the worker's batch path does: apply, bring the indexes in line, and tell the outbox
    which sessions it made due (their change counters and newest event times)."""
    results = await store.apply(batch)
    outbox.note(
        {sid: (results[sid].ver, results[sid].last_ms) for sid in await store.update_indexes(results)}
    )


class RecordingPublisher:
    """Stands in for the Kafka publisher; fails on demand, as a crash before the send would."""

    topic = "summaries"

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.fail = False

    async def publish(self, body: bytes, **_: object) -> None:
        if self.fail:
            raise ConnectionError("broker gone")
        self.sent.append(body)


async def test_a_vanished_session_leaves_the_indexes(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, retention_ms=60_000)
    await store.load_scripts()
    await redis_client.zadd(C.IDX_LIVE, {"ghost": 0})
    await redis_client.zadd(C.IDX_SESSIONS, {"ghost": 0})
    results = await store.end_idle(["ghost"], now_ms=10**12, idle_timeout_ms=1)
    assert results["ghost"].status == ""
    await store.update_indexes(results)
    assert await redis_client.zscore(C.IDX_LIVE, "ghost") is None
    assert await redis_client.zscore(C.IDX_SESSIONS, "ghost") is None


async def test_an_unpublished_revision_goes_out_before_the_next(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, retention_ms=60_000)
    await store.load_scripts()
    publisher = RecordingPublisher()
    outbox = Outbox(store, channels(publisher, publisher), Stats())  # type: ignore[arg-type]
    sid = "outbox-pending"
    await store.update_indexes(await store.apply({sid: [_join(sid, "a", 1_000), _ended(sid, 60_000)]}))

    publisher.fail = True  # revision 1 is stored, then the send fails
    await outbox.drain_once()
    assert publisher.sent == [] and (await store.outbox_due(10))[0][0] == sid

    # Late data changes the summary before the next pass.
    await store.update_indexes(await store.apply({sid: [_join(sid, "b", 2_000)]}))
    publisher.fail = False
    for _ in range(3):
        await outbox.drain_once()
    revisions = [(orjson.loads(b)["revision"], orjson.loads(b)["participants_total"]) for b in publisher.sent]
    assert revisions == [(1, 1), (2, 2)]
    assert await store.outbox_due(10) == []


async def test_a_change_during_a_drain_keeps_the_outbox_entry(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, retention_ms=60_000)
    await store.load_scripts()
    sid = "outbox-race"
    await store.update_indexes(await store.apply({sid: [_join(sid, "a", 1_000), _ended(sid, 60_000)]}))
    [(_, queued_at)] = await store.outbox_due(10)
    # Between reading the entry and removing it, the session changes and is queued again.
    await store.update_indexes(await store.apply({sid: [_join(sid, "b", 2_000)]}))
    assert await store.outbox_done([(sid, queued_at)]) == [False]
    [(again, newer)] = await store.outbox_due(10)
    assert again == sid and newer > queued_at
    assert await store.outbox_done([(sid, newer)]) == [True]


async def test_a_broker_outage_keeps_summaries_queued(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, retention_ms=60_000)
    await store.load_scripts()

    class Unreachable(RecordingPublisher):
        async def publish(self, body: bytes, **_: object) -> None:
            if self.fail:
                raise KafkaConnectionError("broker unreachable")
            self.sent.append(body)

    publisher = Unreachable()
    outbox = Outbox(store, channels(publisher, publisher), Stats())  # type: ignore[arg-type]
    sids = [f"outage-{i}" for i in range(3)]
    for sid in sids:
        await store.update_indexes(await store.apply({sid: [_join(sid, "a", 1_000), _ended(sid, 60_000)]}))
    publisher.fail = True
    with pytest.raises(KafkaConnectionError):  # the pass fails as a whole: the loop backs off
        await outbox.drain_once()
    assert sorted(sid for sid, _ in await store.outbox_due(10)) == sids
    publisher.fail = False
    assert await outbox.drain_once() == 3
    assert sorted(orjson.loads(b)["session_id"] for b in publisher.sent) == sids
    assert {orjson.loads(b)["revision"] for b in publisher.sent} == {1}
    assert await store.outbox_due(10) == []


async def test_a_pass_in_parts_overlaps_them_and_a_failing_part_keeps_the_rest_queued(
    redis_client: aioredis.Redis,
) -> None:
    """A pass larger than one part reads the parts after the first before the first is
    published, with at most READ_AHEAD reads in flight; every session goes out once, and when
    the broker becomes unreachable part-way the parts before are done while the failing part
    and those after it stay queued."""
    store = Store(redis_client, retention_ms=60_000)
    await store.load_scripts()
    n = (READ_AHEAD + 1) * PASS_PART + PASS_PART // 2  # READ_AHEAD + 2 parts, the last half full
    sids = [f"parts-{i:04d}" for i in range(n)]
    await store.update_indexes(
        await store.apply({sid: [_join(sid, "a", 1_000), _ended(sid, 60_000)] for sid in sids})
    )
    steps: list[str] = []  # reads and publishes, in the order they happen
    real = rtk_source(store)
    reading = most_reading = 0

    async def load(part: Sequence[str]) -> list[Any]:
        nonlocal reading, most_reading
        steps.append(f"read {len(part)}")
        reading += 1
        most_reading = max(most_reading, reading)
        try:
            return await real.load(part)
        finally:
            reading -= 1

    class DiesAfter(RecordingPublisher):
        def __init__(self, ok: int) -> None:
            super().__init__()
            self.ok = ok

        async def publish(self, body: bytes, **_: object) -> None:
            if len(self.sent) >= self.ok:
                raise KafkaConnectionError("broker unreachable")
            steps.append("publish")
            self.sent.append(body)

    # The first part goes out; the broker is gone from the first message of the second part.
    dying = DiesAfter(PASS_PART)
    source = Source(real.outbox_key, real.state_key, load)
    outbox = Outbox(store, channels(dying, dying), Stats(), source=source)  # type: ignore[arg-type]
    with pytest.raises(KafkaConnectionError):
        await outbox.drain_once()
    # The parts after the first are read before any publish, but only READ_AHEAD at a time.
    assert steps[:READ_AHEAD] == [f"read {PASS_PART}"] * READ_AHEAD
    assert most_reading == READ_AHEAD
    first = sorted(orjson.loads(b)["session_id"] for b in dying.sent)
    assert len(first) == PASS_PART
    queued = sorted(sid for sid, _ in await store.outbox_due(n))
    assert queued == sorted(set(sids) - set(first))

    publisher = RecordingPublisher()
    outbox = Outbox(store, channels(publisher, publisher), Stats())  # type: ignore[arg-type]
    assert await outbox.drain_once() == len(queued)
    assert sorted(orjson.loads(b)["session_id"] for b in publisher.sent) == queued
    assert await store.outbox_due(n) == []


async def test_a_read_failing_part_way_through_a_pass_still_finishes_the_parts_built(
    redis_client: aioredis.Redis,
) -> None:
    """Redis fails while the second part is read: the first part, already built, is still
    committed, published and removed before the pass fails; the others stay queued."""
    store = Store(redis_client, retention_ms=60_000)
    await store.load_scripts()
    n = 2 * PASS_PART
    sids = [f"read-fails-{i:04d}" for i in range(n)]
    await store.update_indexes(
        await store.apply({sid: [_join(sid, "a", 1_000), _ended(sid, 60_000)] for sid in sids})
    )
    real = rtk_source(store)
    reads = 0

    async def load(part: Sequence[str]) -> list[Any]:
        nonlocal reads
        reads += 1
        if reads > 1:
            raise StoreUnavailable("Redis unavailable: connection reset")
        return await real.load(part)

    publisher = RecordingPublisher()
    outbox = Outbox(
        store,
        channels(publisher, publisher),  # type: ignore[arg-type]
        Stats(),
        source=Source(real.outbox_key, real.state_key, load),
    )
    with pytest.raises(StoreUnavailable):
        await outbox.drain_once()
    sent = sorted(orjson.loads(b)["session_id"] for b in publisher.sent)
    assert len(sent) == PASS_PART
    assert sorted(sid for sid, _ in await store.outbox_due(n)) == sorted(set(sids) - set(sent))


async def test_a_transcript_ready_is_kept_until_published_and_issued_once_per_link(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, retention_ms=60_000)
    await store.load_scripts()
    summaries, transcripts = RecordingPublisher(), RecordingPublisher()
    outbox = Outbox(store, channels(summaries, transcripts), Stats())  # type: ignore[arg-type]
    sid = "outbox-transcript"

    def link(url: str, day: int) -> Artifact:
        value = orjson.dumps({"url": url, "expiry": f"2030-01-0{day}T00:00:00.000Z"}).decode()
        return Artifact(sid, "transcript", f"{day:015d}|{url}", value)

    await store.update_indexes(await store.apply({sid: [_join(sid, "a", 1_000), link("https://x/1", 1)]}))
    transcripts.fail = True  # a crash or an outage before the send: revision 1 stays queued
    await outbox.drain_once()
    assert transcripts.sent == [] and (await store.outbox_due(10))[0][0] == sid
    transcripts.fail = False
    await outbox.drain_once()
    [first] = transcripts.sent
    assert orjson.loads(first)["revision"] == 1 and orjson.loads(first)["session_status"] == "LIVE"

    # The session goes on and ends: the notification is not re-issued, the link did not change.
    await store.update_indexes(await store.apply({sid: [_join(sid, "b", 2_000), _ended(sid, 60_000)]}))
    for _ in range(2):
        await outbox.drain_once()
    assert transcripts.sent == [first] and len(summaries.sent) == 1
    # A new link is the next revision.
    await store.update_indexes(await store.apply({sid: [link("https://x/2", 2)]}))
    for _ in range(2):
        await outbox.drain_once()
    assert [orjson.loads(b)["revision"] for b in transcripts.sent] == [1, 2]
    assert orjson.loads(transcripts.sent[1])["transcript_download_url"] == "https://x/2"
    assert await store.outbox_due(10) == []


async def test_a_session_settles_before_its_summary_is_built(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, retention_ms=60_000)
    await store.load_scripts()
    publisher = RecordingPublisher()
    outbox = Outbox(store, channels(publisher, publisher), Stats(), quiet_s=0.3)  # type: ignore[arg-type]
    sid = "outbox-settle"
    await store.update_indexes(await store.apply({sid: [_join(sid, "a", 1_000), _ended(sid, 60_000)]}))
    assert await outbox.drain_once() == 0  # just seen: not settled yet
    # A late fact changes it while it settles: still one revision, with the late fact in it.
    await store.update_indexes(await store.apply({sid: [_join(sid, "b", 2_000)]}))
    assert await outbox.drain_once() == 0
    await asyncio.sleep(0.35)
    assert await outbox.drain_once() == 1
    [body] = publisher.sent
    assert (orjson.loads(body)["revision"], orjson.loads(body)["participants_total"]) == (1, 2)
    assert await store.outbox_due(10) == []
    # Shutdown does not wait for a session to settle.
    await store.update_indexes(await store.apply({sid: [_join(sid, "c", 3_000)]}))
    await outbox.flush(timeout_s=5)
    assert [orjson.loads(b)["revision"] for b in publisher.sent] == [1, 2]


async def test_sessions_a_backlog_changed_go_when_it_ends_unless_their_events_are_recent(
    redis_client: aioredis.Redis,
) -> None:
    """Facts that waited in Kafka are not trickling in: once a backlog is over and all of it is
    applied, a session it changed last whose newest event time is older than the quiet time is
    published without waiting it out. Nothing goes early while the backlog lasts (not even in
    a pass forced by max_defer_s) or while its last records are on their way to Redis; a
    session with recent event times, or changed outside a backlog, waits the quiet time."""
    store = Store(redis_client, retention_ms=60_000)
    await store.load_scripts()
    publisher = RecordingPublisher()
    in_backlog, all_applied = True, False
    outbox = Outbox(
        store,
        channels(publisher, publisher),  # type: ignore[arg-type]
        Stats(),
        quiet_s=0.5,
        defer=lambda: in_backlog,
        applied_all=lambda: all_applied,
    )
    future = int(time.time() * 1000) + 3_600_000  # recent however slow the machine: never old
    old, recent, live = "outbox-backlog-old", "outbox-backlog-recent", "outbox-backlog-live"
    await _apply_and_note(
        store,
        outbox,
        {
            old: [_join(old, "a", 1_000), _ended(old, 60_000)],
            recent: [_join(recent, "a", future - 2_000), _ended(recent, future)],
        },
    )
    assert await outbox.drain_once() == 0, "nothing settles early while the backlog lasts"
    in_backlog = False
    assert await outbox.drain_once() == 0, "nor while its last records are still being applied"
    all_applied = True
    # Changed outside a backlog: timed by the quiet time alone, however old its events.
    await _apply_and_note(store, outbox, {live: [_join(live, "a", 1_000), _ended(live, 60_000)]})
    assert outbox._settling[live][2] is None
    assert await outbox.drain_once() == 1
    assert [orjson.loads(b)["session_id"] for b in publisher.sent] == [old]
    await asyncio.sleep(0.6)
    assert await outbox.drain_once() == 2
    assert sorted(orjson.loads(b)["session_id"] for b in publisher.sent[1:]) == [live, recent]
    assert await store.outbox_due(10) == []


async def test_a_message_built_in_advance_is_used_only_while_the_session_is_unchanged(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, retention_ms=60_000)
    await store.load_scripts()
    publisher = RecordingPublisher()
    outbox = Outbox(store, channels(publisher, publisher), Stats(), quiet_s=0.3)  # type: ignore[arg-type]
    still, moved = "outbox-prebuilt-still", "outbox-prebuilt-moved"
    await _apply_and_note(
        store, outbox, {sid: [_join(sid, "a", 1_000), _ended(sid, 60_000)] for sid in (still, moved)}
    )
    await asyncio.sleep(0.2)  # past half the quiet time: worth building in advance
    assert await outbox.drain_once() == 0
    await outbox.prebuild()
    assert set(outbox._prebuilt) == {still, moved}
    loaded: list[str] = []  # sessions loaded from here on
    source = outbox.source
    outbox.source = Source(
        source.outbox_key, source.state_key, lambda sids: (loaded.extend(sids), source.load(sids))[1]
    )
    # A late fact changes one of them after its message was built (its quiet time starts again).
    await _apply_and_note(store, outbox, {moved: [_join(moved, "b", 2_000)]})
    await asyncio.sleep(0.35)
    for _ in range(3):
        await outbox.drain_once()
    sent = {orjson.loads(b)["session_id"]: orjson.loads(b) for b in publisher.sent}
    assert len(publisher.sent) == 2, "one message each: the stale one was built again, not sent"
    assert (sent[still]["revision"], sent[still]["participants_total"]) == (1, 1)
    assert (sent[moved]["revision"], sent[moved]["participants_total"]) == (1, 2)
    assert loaded == [moved], "the unchanged session's message was not the one built in advance"
    assert await store.outbox_due(10) == []
