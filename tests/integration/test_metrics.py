"""/metrics of a worker process and of the API after a run: every metric of the dashboard is there."""

from __future__ import annotations

import random
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from service import metrics
from service.api import CountRequests
from service.constants import RTK_PEER_EVENTS, Topics
from service.embedded import free_port

from .harness import Item, WorkerProcess, drained, make_log, produce, wait_for, worker_env

pytestmark = pytest.mark.integration

WORKER_METRICS = (
    "sessionpulse_events_total",
    "sessionpulse_batch_size_bucket",
    "sessionpulse_batch_seconds_bucket",
    "sessionpulse_consumer_lag",
    "sessionpulse_outbox_depth",
    "sessionpulse_published_total",
    "sessionpulse_redis_script_seconds_bucket",
    "sessionpulse_live_sessions",
)


def samples(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            out.setdefault(name, []).append(line)
    return out


async def test_worker_metrics_after_a_run(
    kafka_bootstrap: str, redis_url: str, topics: Topics, redis_client: aioredis.Redis
) -> None:
    log = make_log(random.Random(4), sessions=6, with_bad=False)
    bad = Item(RTK_PEER_EVENTS, b"s-bad", b"{not json", "invalid_json")
    port = free_port()
    produced = produce(kafka_bootstrap, topics, [*log.items, bad])
    w = WorkerProcess(
        worker_env(kafka_bootstrap, redis_url, topics, METRICS_PORT=str(port), SWEEP_INTERVAL_SECONDS="0.5")
    )
    try:
        group = f"{topics.prefix}workers"
        await wait_for(lambda: drained(kafka_bootstrap, group, produced, redis_client), 60, "the drain")

        async def scraped() -> bool:
            async with httpx.AsyncClient() as c:
                text = (await c.get(f"http://127.0.0.1:{port}/metrics")).text
            got = samples(text)
            return all(m in got for m in WORKER_METRICS)

        await wait_for(scraped, 20, "every worker metric")
        async with httpx.AsyncClient() as c:
            got = samples((await c.get(f"http://127.0.0.1:{port}/metrics")).text)
        events = "\n".join(got["sessionpulse_events_total"])
        applied = sum(
            float(line.rsplit(" ", 1)[1])
            for line in got["sessionpulse_events_total"]
            if 'outcome="consumed"' in line
        )
        assert applied == len(log.items) + 1
        assert f'sessionpulse_events_total{{outcome="dead_lettered",topic="{RTK_PEER_EVENTS}"}} 1.0' in events
        assert any('channel="summary"' in line for line in got["sessionpulse_published_total"])
        assert any('script="apply_rtk"' in line for line in got["sessionpulse_redis_script_seconds_bucket"])
        lag = [float(line.rsplit(" ", 1)[1]) for line in got["sessionpulse_consumer_lag"]]
        assert lag and max(lag) == 0  # drained
    finally:
        w.stop()


async def test_api_metrics_count_requests_and_webhooks(api: httpx.AsyncClient) -> None:
    await api.get("/v1/sessions/nope")
    await api.post("/webhooks/realtimekit", content=orjson.dumps({"event": "x"}))  # not configured: 503
    text = (await api.get("/metrics")).text
    assert 'sessionpulse_http_requests_total{route="/v1/sessions/{session_id}",status="404"}' in text
    assert 'sessionpulse_webhooks_total{provider="realtimekit",status="503"}' in text


async def test_the_api_serves_the_asyncapi_document(api: httpx.AsyncClient) -> None:
    r = await api.get("/asyncapi.json")
    assert r.status_code == 200 and r.json()["asyncapi"].startswith("3.")


async def test_a_request_that_fails_is_counted_as_a_500() -> None:
    # Starlette's error middleware, outside the counter, answers an unhandled exception.
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    counted = metrics.HTTP_REQUESTS.labels("unmatched", "500")
    before = counted._value.get()
    with pytest.raises(RuntimeError):
        await CountRequests(failing)({"type": "http"}, None, None)
    assert counted._value.get() == before + 1
