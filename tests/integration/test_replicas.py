"""REDIS_WAIT_REPLICAS against a real valkey primary and replica: nothing is committed, and no
summary published, before the replica has the writes."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import httpx
import pytest
import redis.asyncio as aioredis

from service import constants as C
from service.api import create_app
from service.config import Settings
from service.constants import Topics
from service.embedded import RedisServer, start_redis
from service.errors import StoreUnavailable
from service.runtime import build_runtime
from service.store import Store
from tests.faults.support import count, expected_counts, worker_counts
from tests.integration.harness import (
    WorkerProcess,
    assert_state_matches,
    consume_all,
    drained,
    group_lag,
    latest_summaries,
    make_log,
    produce,
    reference,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.integration


async def _synced(replica: RedisServer) -> None:
    client = aioredis.Redis.from_url(replica.url)
    try:

        async def up() -> bool:
            info = await client.info("replication")
            return info.get("master_link_status") == "up"

        await wait_for(up, 30, "the replica to sync with its primary", every=0.1)
    finally:
        await client.aclose()


@pytest.fixture
def primary() -> Iterator[RedisServer]:
    with start_redis() as server:
        yield server


async def test_replicated_waits_for_the_replicas_and_refuses_without_them(primary: RedisServer) -> None:
    client = aioredis.Redis.from_url(primary.url)
    try:
        await Store(client, retention_ms=60_000).replicated()  # waits for nothing by default
        assert await client.exists(C.REPLICATED) == 0
        store = Store(client, retention_ms=60_000, wait_replicas=1, wait_timeout_ms=300)
        with start_redis(replica_of=primary.port) as replica:
            await _synced(replica)
            await client.set("sp:test:written", "1")
            await store.replicated()
            two = Store(client, retention_ms=60_000, wait_replicas=2, wait_timeout_ms=300)
            with pytest.raises(StoreUnavailable, match="to 1 of 2 replicas"):
                await two.replicated()  # it counts the replicas that have the writes
            follower = aioredis.Redis.from_url(replica.url)
            try:
                assert await follower.get("sp:test:written") == b"1"  # what came before the WAIT is there
            finally:
                await follower.aclose()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="to 0 of 1 replicas"):
            await store.replicated()
        assert time.monotonic() - started >= 0.25  # it waited its timeout before refusing
    finally:
        await client.aclose()


async def test_a_worker_commits_only_what_a_replica_has(
    kafka_bootstrap: str, topics: Topics, primary: RedisServer
) -> None:
    """With the replica gone the worker applies the next batches but commits none of them, and
    neither publishes their summaries nor their dead letters; a new replica lets them through,
    with the rules' state and the counts of one clean delivery."""
    first = make_log(random.Random(5), sessions=6)
    second = make_log(random.Random(6), sessions=6, t0=1_800_000_000_000)
    env = worker_env(
        kafka_bootstrap, primary.url, topics, REDIS_WAIT_REPLICAS="1", REDIS_WAIT_TIMEOUT_MS="200"
    )
    group = env["CONSUMER_GROUP"]
    redis = aioredis.Redis.from_url(primary.url)
    worker: WorkerProcess | None = None
    try:
        with start_redis(replica_of=primary.port) as replica:
            await _synced(replica)
            produced = produce(kafka_bootstrap, topics, first.items)
            worker = WorkerProcess(env)
            await wait_for(lambda: drained(kafka_bootstrap, group, produced, redis), 60, "the first log")
        dead_before = len(consume_all(kafka_bootstrap, topics.dead_letter))
        # The replica is gone: the second log is applied and retried, never committed.
        more = produce(kafka_bootstrap, topics, second.items)
        produced = {tp: max(produced.get(tp, 0), more.get(tp, 0)) for tp in {*produced, *more}}
        w = worker

        async def logged(*parts: str) -> bool:
            assert w.alive(), w.log_text()
            return any(all(part in line for part in parts) for line in w.log_text().splitlines())

        refused = "replicated the writes to 0 of 1 replicas"
        await wait_for(
            lambda: logged(f"not applied (Redis {refused}"), 30, "a batch refused for want of a replica"
        )
        await wait_for(lambda: logged("outbox paused", refused), 30, "the outbox to wait for a replica")
        assert await group_lag(kafka_bootstrap, group, produced) > 0
        for sid in second.session_ids:  # applied on the primary all the same
            assert await redis.hget(C.session_keys(sid)[0], "status") is not None, sid
        ended = {f"{sid}:summary" for sid, ref in reference(second).items() if ref.view().status == "ENDED"}
        assert ended, "the second log ends sessions"
        assert not ended & set(latest_summaries(kafka_bootstrap, topics.summaries))
        assert len(consume_all(kafka_bootstrap, topics.dead_letter)) == dead_before
        with start_redis(replica_of=primary.port) as replica:
            await _synced(replica)
            await wait_for(lambda: drained(kafka_bootstrap, group, produced, redis), 60, "the second log")
        assert ended <= set(latest_summaries(kafka_bootstrap, topics.summaries))
        rt = build_runtime(
            Settings(
                kafka_bootstrap_servers=kafka_bootstrap, redis_url=primary.url, topic_prefix=topics.prefix
            )
        )
        try:
            transport = httpx.ASGITransport(app=create_app(rt))
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
                await assert_state_matches(api, reference(first) | reference(second))
        finally:
            await rt.redis.aclose()
        assert worker.stop() == 0, worker.log_text()
        # Retried batches count what their first attempt applied: one clean delivery's counts.
        counts, once = worker_counts(worker.log_text()), expected_counts([*first.items, *second.items])
        for what, topic in once:
            assert count(counts, what, topic) == once[(what, topic)], (what, topic)
        assert len(consume_all(kafka_bootstrap, topics.dead_letter)) == sum(
            1 for i in [*first.items, *second.items] if i.bad
        )
    finally:
        if worker is not None:
            worker.stop()
        await redis.aclose()
