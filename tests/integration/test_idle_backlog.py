"""The idle rule's backlog guard (CONTRACT 4.4): replaying an old log never ends a session early."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from service import constants as C
from service.constants import Topics
from service.core.timeutil import iso_ms

from .harness import T0, Item, WorkerProcess, drained, peer_event, produce, wait_for, worker_env

pytestmark = pytest.mark.integration


async def test_replaying_an_old_backlog_never_ends_a_session_early(
    kafka_bootstrap: str, redis_url: str, topics: Topics, redis_client: aioredis.Redis, api: httpx.AsyncClient
) -> None:
    # Every event is months old, so each session looks idle as soon as its first peer has
    # left; but each one has a second visit further down the log. Small batches and a
    # sweeper that runs all the time give the idle rule every chance to strike too early.
    sessions = [f"old-{i}-{time.time_ns()}" for i in range(30)]
    first = [
        Item(C.RTK_PEER_EVENTS, sid.encode(), orjson.dumps(peer_event(sid, "a", name, T0 + dt)))
        for sid in sessions
        for name, dt in (("PEER_JOINING", 0), ("PEER_LEAVING", 1000))
    ]
    second = [
        Item(C.RTK_PEER_EVENTS, sid.encode(), orjson.dumps(peer_event(sid, "b", name, T0 + dt)))
        for sid in sessions
        for name, dt in (("PEER_JOINING", 100_000), ("PEER_LEAVING", 160_000))
    ]
    # Between the two visits, traffic of other sessions (whose peers stay connected, so the
    # idle rule never ends them) makes the backlog last many sweep intervals.
    filler = [
        Item(
            C.RTK_PEER_EVENTS,
            f"busy-{i % 50}".encode(),
            orjson.dumps(peer_event(f"busy-{i % 50}", f"p{i}", "PEER_JOINING", T0 + i)),
        )
        for i in range(3000)
    ]
    produced = produce(
        kafka_bootstrap, topics, first + filler + second
    )  # the backlog, before any worker runs

    env = worker_env(
        kafka_bootstrap,
        redis_url,
        topics,
        IDLE_TIMEOUT_SECONDS="1",
        SWEEP_INTERVAL_SECONDS="0.05",
        BATCH_MAX_RECORDS="7",
    )
    w = WorkerProcess(env)
    try:
        await wait_for(
            lambda: drained(kafka_bootstrap, env["CONSUMER_GROUP"], produced, redis_client), 90, "drain"
        )

        async def all_ended() -> bool:
            for sid in sessions:
                r = await api.get(f"/v1/sessions/{sid}")
                if r.json()["data"]["status"] != "ENDED":
                    return False
            return True

        # Once caught up, the idle rule does end them: at their newest event, with both visits.
        await wait_for(all_ended, 60, "the idle rule after the backlog")
        for sid in sessions:
            data = (await api.get(f"/v1/sessions/{sid}")).json()["data"]
            assert data["ended_at"] == iso_ms(T0 + 160_000), sid
            assert data["minutes_consumed"] == pytest.approx((1000 + 60_000) / 60_000), sid
            parts = (await api.get(f"/v1/sessions/{sid}/participants")).json()["data"]["participants"]
            assert sorted(p["id"] for p in parts) == ["a", "b"], sid
    finally:
        assert w.stop() == 0, w.log_text()[-3000:]
