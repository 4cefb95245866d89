"""Livepeer stream sessions end to end: snapshots and signed webhooks -> worker process -> API and summaries."""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from service.api import create_app
from service.config import Settings
from service.constants import LIVEPEER_SESSIONS, LIVEPEER_WEBHOOKS, Topics
from service.core.streams import ReferenceStream, StreamEnd, stream_session_object, stream_summary
from service.livepeer import decode_livepeer_webhook, decode_snapshot
from service.runtime import build_runtime
from tests.streams import SEED_000, snapshot_series, webhook
from tests.webhook_signing import livepeer_signature

from .harness import (
    Item,
    Offsets,
    WorkerProcess,
    consume_all,
    drained,
    latest_summaries,
    produce,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.integration
SECRET = "lp-secret"


@pytest.fixture
async def app(
    kafka_bootstrap: str, redis_url: str, topics: Topics, redis_client: aioredis.Redis
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        redis_url=redis_url,
        topic_prefix=topics.prefix,
        livepeer_webhook_secret=SECRET,
        api_keys=orjson.dumps(
            {"k-all": "*", "k-seed": SEED_000["projectId"], "k-other": "proj-zzz"}
        ).decode(),
    )
    rt = build_runtime(settings)
    transport = httpx.ASGITransport(app=create_app(rt))
    headers = {"Authorization": "Bearer k-all"}
    async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers) as client:
        yield client
    with contextlib.suppress(Exception):
        await rt.broker.stop()
    await rt.redis.aclose()


async def post_livepeer(app: httpx.AsyncClient, body: dict[str, Any]) -> None:
    raw = orjson.dumps(body)
    headers = {"Livepeer-Signature": livepeer_signature(SECRET, raw), "content-type": "application/json"}
    r = await app.post("/webhooks/livepeer", content=raw, headers=headers)
    assert r.status_code == 202, r.text


def ends_of(bootstrap: str, topic: str) -> Offsets:
    ends: Offsets = {}
    for m in consume_all(bootstrap, topic, partitions=3):
        tp = (m.topic(), m.partition())
        ends[tp] = max(ends.get(tp, 0), m.offset() + 1)
    return ends


async def test_the_seed_example_survives_the_round_trip(
    kafka_bootstrap: str, redis_url: str, topics: Topics, redis_client: aioredis.Redis, app: httpx.AsyncClient
) -> None:
    with_deprecated = {**SEED_000, "kind": "stream", "userId": "66E2161C-7670-4D05-B71D-DA2D6979556F"}
    produced = produce(
        kafka_bootstrap,
        topics,
        [Item(LIVEPEER_SESSIONS, SEED_000["id"].encode(), orjson.dumps(with_deprecated))],
    )
    w = WorkerProcess(worker_env(kafka_bootstrap, redis_url, topics))
    try:
        group = f"{topics.prefix}workers"
        await wait_for(lambda: drained(kafka_bootstrap, group, produced, redis_client), 60, "the drain")
        r = await app.get(f"/v1/streams/sessions/{SEED_000['id']}")
        assert r.status_code == 200, r.text
        got = r.json()
        assert got == SEED_000  # every field, same names, same values; kind and userId left out
        for name, value in SEED_000.items():
            assert type(got[name]) is type(value), name

        listed = (await app.get(f"/v1/streams/{SEED_000['parentId']}/sessions")).json()
        assert listed["data"]["sessions"] == [SEED_000] and listed["paging"]["total_count"] == 1

        # Organization scoping by projectId: another project's key sees nothing, not even the id.
        mine = await app.get(
            f"/v1/streams/sessions/{SEED_000['id']}", headers={"Authorization": "Bearer k-seed"}
        )
        assert mine.status_code == 200
        other = await app.get(
            f"/v1/streams/sessions/{SEED_000['id']}", headers={"Authorization": "Bearer k-other"}
        )
        assert other.status_code == 404
        other_list = await app.get(
            f"/v1/streams/{SEED_000['parentId']}/sessions", headers={"Authorization": "Bearer k-other"}
        )
        assert other_list.json()["data"]["sessions"] == []
        assert (await app.get("/v1/streams/sessions/nope")).status_code == 404
    finally:
        w.stop()


async def test_shuffled_snapshots_webhooks_and_both_ends(
    kafka_bootstrap: str, redis_url: str, topics: Topics, redis_client: aioredis.Redis, app: httpx.AsyncClient
) -> None:
    rng = random.Random(21)
    now = int(time.time() * 1000)
    parent = f"stream-{uuid.uuid4()}"
    # Three sessions of one parent stream: an old one ended by stream.idle, a recent live one,
    # and an old one nobody ends (the idle rule does). Two more of other streams, live.
    series = [
        snapshot_series(rng, parent=parent, count=6, t0=now - 3_600_000),
        snapshot_series(rng, parent=parent, count=4, t0=now - 120_000),
        snapshot_series(rng, count=5, t0=now - 7_200_000),
        snapshot_series(rng, count=3, t0=now - 100_000),
        snapshot_series(rng, count=1, t0=now - 90_000),
    ]
    expected = {sid: ReferenceStream(sid) for sid, _, _ in series}
    items: list[Item] = []
    for sid, _, snaps in series:
        for s in snaps:
            raw = orjson.dumps(s)
            items.append(Item(LIVEPEER_SESSIONS, sid.encode(), raw))
            expected[sid].apply(decode_snapshot(raw))
        stale = {**snaps[0], "sourceBytes": 1}  # an older lastSeen than the newest: changes nothing
        items.append(Item(LIVEPEER_SESSIONS, sid.encode(), orjson.dumps(stale)))
        expected[sid].apply(decode_snapshot(orjson.dumps(stale)))
    items += rng.sample(items, k=len(items) // 4)  # redeliveries
    rng.shuffle(items)

    ended_sid, _, ended_snaps = series[0]
    idle_at = ended_snaps[-1]["lastSeen"] + 30_000  # the first session went idle; the second came later
    for sid, p, _ in series:
        if p == parent:
            expected[sid].apply(StreamEnd(sid, idle_at, ""))
    quiet_sid = series[2][0]

    w = WorkerProcess(worker_env(kafka_bootstrap, redis_url, topics, IDLE_TIMEOUT_SECONDS="600"))
    try:
        # The stream.idle webhook comes first, before any snapshot: it still ends the session.
        await post_livepeer(app, webhook("stream.idle", t_ms=idle_at, stream_id=parent))
        await post_livepeer(app, webhook("stream.started", t_ms=idle_at + 60_000, stream_id=parent))
        produced = produce(kafka_bootstrap, topics, items) | ends_of(
            kafka_bootstrap, topics.name(LIVEPEER_WEBHOOKS)
        )
        group = f"{topics.prefix}workers"
        await wait_for(lambda: drained(kafka_bootstrap, group, produced, redis_client), 90, "the drain")
        expected[quiet_sid].end_idle(int(time.time() * 1000), 600_000)  # the worker's sweeper does the same
        await wait_for(lambda: _ended(app, quiet_sid), 30, "the idle rule to end the quiet session")

        # A recording.ready after the end: the summary's next revision carries it.
        ready = webhook(
            "recording.ready",
            t_ms=idle_at + 90_000,
            stream_id=parent,
            session_id=ended_sid,
            recordingUrl="https://x/index.m3u8",
            mp4Url="https://x/720.mp4",
        )
        await post_livepeer(app, ready)
        expected[ended_sid].apply(decode_livepeer_webhook(orjson.dumps(ready)))  # type: ignore[arg-type]
        produced |= ends_of(kafka_bootstrap, topics.name(LIVEPEER_WEBHOOKS))
        await wait_for(
            lambda: drained(kafka_bootstrap, group, produced, redis_client), 60, "the late recording"
        )

        for sid, ref in expected.items():
            want = ref.view()
            got = (await app.get(f"/v1/streams/sessions/{sid}")).json()
            assert got == stream_session_object(want), sid
        assert [
            s["id"] for s in (await app.get(f"/v1/streams/{parent}/sessions")).json()["data"]["sessions"]
        ] == [
            series[1][0],
            series[0][0],
        ]  # newest createdAt first

        summaries = latest_summaries(kafka_bootstrap, topics.summaries)
        ended = {sid for sid, ref in expected.items() if ref.view().status == "ENDED"}
        assert ended == {ended_sid, quiet_sid}
        assert set(summaries) == {f"{sid}:summary" for sid in ended}
        for sid in ended:
            s = summaries[f"{sid}:summary"]
            revision = s.pop("revision")
            assert s.pop("message_id") == f"{sid}:summary"
            assert s == stream_summary(expected[sid].view()), sid
            # Snapshots that follow the end, and the late recording, each re-issue it.
            assert revision >= (2 if sid == ended_sid else 1)
        assert summaries[f"{ended_sid}:summary"]["mp4_url"] == "https://x/720.mp4"
        assert summaries[f"{ended_sid}:summary"]["end_reason"] == "ended"
        assert summaries[f"{quiet_sid}:summary"]["end_reason"] == "idle_timeout"
        assert consume_all(kafka_bootstrap, topics.dead_letter, idle_s=0.5) == []
        assert w.alive()
    finally:
        w.stop()


async def _ended(app: httpx.AsyncClient, sid: str) -> bool:
    r = await app.get(f"/v1/sessions/{sid}/report")
    return r.status_code == 200 and r.json()["data"]["end_reason"] is not None
