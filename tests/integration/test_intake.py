"""Webhook intake (CONTRACT 5) against the real broker and Redis: signatures, limits, dedupe, outages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from service import constants as C
from service import intake
from service.api import create_app
from service.config import Settings
from service.constants import Topics
from service.embedded import free_port
from service.intake import MAX_BODY_BYTES, PUBLISH_TIMEOUT_S
from service.runtime import build_runtime
from tests.integration.harness import consume_all
from tests.webhook_signing import (
    livepeer_signature,
    other_private_key,
    public_pem,
    rtk_private_key,
    rtk_sign,
)

pytestmark = pytest.mark.integration

SECRET = "lp-test-secret"
RTK, LP = "/webhooks/realtimekit", "/webhooks/livepeer"
SIX_MINUTES_MS = 6 * 60 * 1000

MakeSettings = Callable[..., Settings]


@pytest.fixture
def make_settings(kafka_bootstrap: str, redis_url: str, topics: Topics) -> MakeSettings:
    def make(**changes: Any) -> Settings:
        base: dict[str, Any] = {
            "kafka_bootstrap_servers": kafka_bootstrap,
            "redis_url": redis_url,
            "topic_prefix": topics.prefix,
            "rtk_webhook_public_key": public_pem(),
            "livepeer_webhook_secret": SECRET,
        }
        return Settings(**{**base, **changes})

    return make


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API in-process; httpx's ASGITransport runs no lifespan, so the intake connects the broker."""
    rt = build_runtime(settings)
    try:
        transport = httpx.ASGITransport(app=create_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client
    finally:
        with contextlib.suppress(Exception):
            await rt.broker.stop()
        await rt.redis.aclose()


@pytest.fixture
async def client(
    make_settings: MakeSettings, redis_client: aioredis.Redis
) -> AsyncIterator[httpx.AsyncClient]:
    # redis_client: its teardown removes the dedupe marks this test leaves.
    async with serve(make_settings()) as c:
        yield c


async def published(bootstrap: str, topic: str) -> list[Any]:
    return await asyncio.to_thread(consume_all, bootstrap, topic, 3)


def rtk_body(event: str = "meeting.started", session: str | None = None, **extra: Any) -> bytes:
    meeting = {
        "id": "meeting-1",
        "sessionId": session or f"sess-{uuid.uuid4()}",
        "title": "Standup",
        "roomName": "room-1",
        "status": "LIVE",
        "createdAt": "2026-01-01T10:00:00.000Z",
        "startedAt": "2026-01-01T10:00:00.000Z",
        "organizedBy": {"id": "org-a", "name": "Org A"},
    }
    return orjson.dumps({"event": event, "meeting": meeting, **extra})


def lp_body(event: str = "stream.started", **extra: Any) -> bytes:
    now = int(time.time() * 1000)
    doc = {
        "id": str(uuid.uuid4()),
        "webhookId": "wh-1",
        "createdAt": now,
        "timestamp": now,
        "event": event,
        "stream": {"id": "stream-1", "name": "my stream"},
        **extra,
    }
    return orjson.dumps(doc)


def rtk_headers(body: bytes, delivery: str | None = None, header: str = "rtk-signature") -> dict[str, str]:
    headers = {header: rtk_sign(rtk_private_key(), body), "rtk-webhook-id": "wh-1"}
    if delivery is not None:
        headers["rtk-uuid"] = delivery
    return headers


def lp_headers(body: bytes, secret: str = SECRET, t_ms: int | None = None) -> dict[str, str]:
    return {"Livepeer-Signature": livepeer_signature(secret, body, t_ms)}


def error_of(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    out = resp.json()
    assert out["success"] is False
    message: str = out["error"]["message"]
    return message


def accepted(resp: httpx.Response, status: str = "accepted") -> dict[str, Any]:
    assert resp.status_code == 202, resp.text
    data: dict[str, Any] = resp.json()["data"]
    assert data["status"] == status
    return data


async def test_realtimekit_delivery_is_published_unchanged(
    client: httpx.AsyncClient, kafka_bootstrap: str, topics: Topics
) -> None:
    sid = f"sess-{uuid.uuid4()}"
    # Odd spacing and key order: the bytes must go out exactly as they came in.
    started = b'{ "meeting": {"sessionId": "%s", "id": "m-1"},  "event": "meeting.started" }' % sid.encode()
    delivery = str(uuid.uuid4())
    data = accepted(await client.post(RTK, content=started, headers=rtk_headers(started, delivery)))
    assert data == {"status": "accepted", "event": "meeting.started", "delivery_id": delivery}

    older = rtk_body("meeting.participantJoined", session=sid)
    accepted(await client.post(RTK, content=older, headers=rtk_headers(older, None, header="dyte-signature")))

    chat = orjson.dumps({"event": "meeting.chatSynced", "meetingId": "m-1", "sessionId": "flat-session"})
    accepted(await client.post(RTK, content=chat, headers=rtk_headers(chat, str(uuid.uuid4()))))

    no_session = orjson.dumps({"event": "meeting.somethingNew", "brandNew": {"x": 1}})
    accepted(await client.post(RTK, content=no_session, headers=rtk_headers(no_session)))

    msgs = {m.value(): m for m in await published(kafka_bootstrap, topics.rtk_webhooks)}
    assert sorted(msgs) == sorted([started, older, chat, no_session])
    assert msgs[started].key() == sid.encode()
    assert msgs[older].key() == sid.encode()
    assert msgs[chat].key() == b"flat-session"
    assert msgs[no_session].key() is None
    headers = dict(msgs[started].headers())
    assert headers["x-delivery-id"] == delivery.encode()
    assert headers["x-webhook-event"] == b"meeting.started"
    assert "x-delivery-id" not in dict(msgs[older].headers())  # no rtk-uuid: no delivery id


async def test_realtimekit_bad_signatures_are_refused(
    client: httpx.AsyncClient, kafka_bootstrap: str, topics: Topics
) -> None:
    body = rtk_body()
    good = rtk_headers(body, str(uuid.uuid4()))
    tampered = body.replace(b"Standup", b"Standup!")
    msg = error_of(await client.post(RTK, content=tampered, headers=good), 401)
    assert msg == "rtk-signature does not verify against RTK_WEBHOOK_PUBLIC_KEY"

    foreign = {"rtk-signature": rtk_sign(other_private_key(), body)}
    assert "does not verify" in error_of(await client.post(RTK, content=body, headers=foreign), 401)
    assert "missing" in error_of(await client.post(RTK, content=body), 401)
    not_b64 = {"rtk-signature": "this is not base64!"}
    assert error_of(await client.post(RTK, content=body, headers=not_b64), 401) == (
        "rtk-signature is not base64"
    )
    old_wrong = {"dyte-signature": rtk_sign(other_private_key(), body)}
    assert error_of(await client.post(RTK, content=body, headers=old_wrong), 401).startswith("dyte-signature")

    assert await published(kafka_bootstrap, topics.rtk_webhooks) == []


async def test_livepeer_delivery_is_published_keyed_by_session(
    client: httpx.AsyncClient, kafka_bootstrap: str, topics: Topics
) -> None:
    started = lp_body("stream.started")
    data = accepted(await client.post(LP, content=started, headers=lp_headers(started)))
    assert data["delivery_id"] == orjson.loads(started)["id"]
    session = {"id": "lp-session-1", "parentId": "stream-1"}
    ready = lp_body("recording.ready", payload={"recordingUrl": "https://x/r.m3u8", "session": session})
    accepted(await client.post(LP, content=ready, headers=lp_headers(ready)))
    # Several v1 values (a secret being rotated): any match is enough.
    idle = lp_body("stream.idle")
    two = f"{livepeer_signature('old-secret', idle)},v1={livepeer_signature(SECRET, idle).split('v1=')[1]}"
    accepted(await client.post(LP, content=idle, headers={"Livepeer-Signature": two}))

    msgs = {m.value(): m for m in await published(kafka_bootstrap, topics.livepeer_webhooks)}
    assert sorted(msgs) == sorted([started, ready, idle])
    assert msgs[started].key() == b"stream-1"
    assert msgs[ready].key() == b"lp-session-1"
    headers = dict(msgs[ready].headers())
    assert headers["x-delivery-id"] == orjson.loads(ready)["id"].encode()
    assert headers["x-webhook-event"] == b"recording.ready"


async def test_livepeer_bad_signatures_are_refused(
    client: httpx.AsyncClient, kafka_bootstrap: str, topics: Topics
) -> None:
    body = lp_body()
    wrong = lp_headers(body, secret="not-the-secret")
    assert "HMAC-SHA256" in error_of(await client.post(LP, content=body, headers=wrong), 401)
    assert "missing" in error_of(await client.post(LP, content=body), 401)
    v1 = livepeer_signature(SECRET, body).split(",")[1]
    for malformed in ("garbage", v1, f"t=soon,{v1}", "t=1700000000000", f"t=1,t=2,{v1}"):
        resp = await client.post(LP, content=body, headers={"Livepeer-Signature": malformed})
        assert error_of(resp, 401) == "Livepeer-Signature must be t=<epoch ms>,v1=<hex HMAC>", malformed
    now = int(time.time() * 1000)
    past = lp_headers(body, t_ms=now - SIX_MINUTES_MS)
    assert "in the past" in error_of(await client.post(LP, content=body, headers=past), 401)
    future = lp_headers(body, t_ms=now + SIX_MINUTES_MS)
    assert "in the future" in error_of(await client.post(LP, content=body, headers=future), 401)
    tampered = body.replace(b"my stream", b"my stream!")
    assert "HMAC" in error_of(await client.post(LP, content=tampered, headers=lp_headers(body)), 401)

    assert await published(kafka_bootstrap, topics.livepeer_webhooks) == []


async def test_unconfigured_provider_answers_503(
    make_settings: MakeSettings, redis_client: aioredis.Redis, kafka_bootstrap: str, topics: Topics
) -> None:
    async with serve(make_settings(rtk_webhook_public_key=None, livepeer_webhook_secret="  ")) as c:
        body = rtk_body()
        msg = error_of(await c.post(RTK, content=body, headers=rtk_headers(body, str(uuid.uuid4()))), 503)
        assert msg == "RTK_WEBHOOK_PUBLIC_KEY is not set on this service"
        lp = lp_body()
        assert "LIVEPEER_WEBHOOK_SECRET" in error_of(
            await c.post(LP, content=lp, headers=lp_headers(lp)), 503
        )
    assert await published(kafka_bootstrap, topics.rtk_webhooks) == []


async def test_key_from_a_pem_file_and_bad_keys_refuse_to_start(
    make_settings: MakeSettings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    pem = tmp_path / "rtk.pem"
    pem.write_text(public_pem())
    async with serve(make_settings(rtk_webhook_public_key=str(pem))) as c:
        body = rtk_body()
        accepted(await c.post(RTK, content=body, headers=rtk_headers(body)))
    for bad in (
        str(tmp_path / "missing.pem"),
        "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n",
    ):
        with pytest.raises(ValueError, match="RTK_WEBHOOK_PUBLIC_KEY"):
            create_app(build_runtime(make_settings(rtk_webhook_public_key=bad)))


async def test_bodies_over_one_mib_are_refused_unread(
    client: httpx.AsyncClient, kafka_bootstrap: str, topics: Topics
) -> None:
    pulled = 0

    async def chunks(total: int) -> AsyncIterator[bytes]:
        nonlocal pulled
        sent = 0
        while sent < total:
            piece = b" " * min(65_536, total - sent)
            sent += len(piece)
            pulled += len(piece)
            yield piece

    big = MAX_BODY_BYTES + 1
    declared = {"Content-Length": str(big), **rtk_headers(b"")}
    msg = error_of(await client.post(RTK, content=chunks(big), headers=declared), 413)
    assert msg == f"body is {big} bytes, the limit is {MAX_BODY_BYTES}"
    assert pulled == 0  # refused on Content-Length alone

    streamed = 3 * MAX_BODY_BYTES  # chunked: no Content-Length
    msg = error_of(await client.post(RTK, content=chunks(streamed), headers=rtk_headers(b"")), 413)
    assert msg == f"body is more than {MAX_BODY_BYTES} bytes, the limit is {MAX_BODY_BYTES}"
    assert pulled <= MAX_BODY_BYTES + 65_536  # stopped at the first chunk past the limit

    lp_big = b" " * big
    assert error_of(await client.post(LP, content=lp_big, headers=lp_headers(lp_big)), 413)

    assert await published(kafka_bootstrap, topics.rtk_webhooks) == []


async def test_bodies_that_are_not_json_objects_with_an_event(
    client: httpx.AsyncClient, kafka_bootstrap: str, topics: Topics
) -> None:
    cases = {
        b'{"event": "meeting.started",': 400,
        b'{"event": "caf\xe9"}': 400,  # Latin-1, not UTF-8
        b"": 400,
        b'[{"event": "meeting.started"}]': 422,
        b'{"meeting": {"sessionId": "s"}}': 422,
        b'{"event": 42}': 422,
    }
    for body, status in cases.items():
        msg = error_of(await client.post(RTK, content=body, headers=rtk_headers(body)), status)
        if status == 422:
            assert "JSON object" in msg or '"event"' in msg
        resp = await client.post(LP, content=body, headers=lp_headers(body))
        assert resp.status_code == status, (body, resp.text)
    unknown = lp_body("multistream.somethingElse", brandNewField={"nested": [1, 2]})
    accepted(await client.post(LP, content=unknown, headers=lp_headers(unknown)))

    assert await published(kafka_bootstrap, topics.rtk_webhooks) == []
    assert [m.value() for m in await published(kafka_bootstrap, topics.livepeer_webhooks)] == [unknown]


async def test_replays_are_acknowledged_and_published_once_across_instances(
    make_settings: MakeSettings, redis_client: aioredis.Redis, kafka_bootstrap: str, topics: Topics
) -> None:
    body, delivery = rtk_body(), str(uuid.uuid4())
    lp = lp_body()
    async with serve(make_settings()) as a, serve(make_settings()) as b:
        accepted(await a.post(RTK, content=body, headers=rtk_headers(body, delivery)))
        accepted(await a.post(RTK, content=body, headers=rtk_headers(body, delivery)), "duplicate")
        dup = accepted(await b.post(RTK, content=body, headers=rtk_headers(body, delivery)), "duplicate")
        assert dup["delivery_id"] == delivery
        accepted(await b.post(LP, content=lp, headers=lp_headers(lp)))
        accepted(await a.post(LP, content=lp, headers=lp_headers(lp)), "duplicate")
    seen = f"{C.WEBHOOK_SEEN}:realtimekit:{delivery}"
    assert await redis_client.get(seen) == b"1"
    assert 0 < await redis_client.ttl(seen) <= 86_400
    assert [m.value() for m in await published(kafka_bootstrap, topics.rtk_webhooks)] == [body]
    assert [m.value() for m in await published(kafka_bootstrap, topics.livepeer_webhooks)] == [lp]


async def test_unreachable_broker_answers_503_and_marks_nothing(
    make_settings: MakeSettings, redis_client: aioredis.Redis, kafka_bootstrap: str, topics: Topics
) -> None:
    body, delivery = rtk_body(), str(uuid.uuid4())
    down = make_settings(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    async with serve(down) as c:
        t0 = time.monotonic()
        msg = error_of(await c.post(RTK, content=body, headers=rtk_headers(body, delivery)), 503)
        assert time.monotonic() - t0 < PUBLISH_TIMEOUT_S + 2
        assert "broker" in msg
    assert await redis_client.exists(f"{C.WEBHOOK_SEEN}:realtimekit:{delivery}") == 0
    async with serve(make_settings()) as c:  # the provider's retry, once the broker is back
        accepted(await c.post(RTK, content=body, headers=rtk_headers(body, delivery)))
    assert [m.value() for m in await published(kafka_bootstrap, topics.rtk_webhooks)] == [body]


async def test_unreachable_redis_still_publishes(
    make_settings: MakeSettings, kafka_bootstrap: str, topics: Topics
) -> None:
    body = rtk_body()
    async with serve(make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")) as c:
        accepted(await c.post(RTK, content=body, headers=rtk_headers(body, str(uuid.uuid4()))))
    assert [m.value() for m in await published(kafka_bootstrap, topics.rtk_webhooks)] == [body]


async def test_silent_broker_answers_503_after_the_publish_timeout(
    make_settings: MakeSettings, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake, "PUBLISH_TIMEOUT_S", 0.5)
    # Listening but never accepting: the TCP handshake completes and no Kafka answer ever comes.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        down = make_settings(kafka_bootstrap_servers=f"127.0.0.1:{silent.getsockname()[1]}")
        body, delivery = rtk_body(), str(uuid.uuid4())
        async with serve(down) as c:
            t0 = time.monotonic()
            error_of(await c.post(RTK, content=body, headers=rtk_headers(body, delivery)), 503)
            assert time.monotonic() - t0 < 3
    assert await redis_client.exists(f"{C.WEBHOOK_SEEN}:realtimekit:{delivery}") == 0


async def test_a_body_of_exactly_the_limit_reaches_kafka_whole(
    client: httpx.AsyncClient, kafka_bootstrap: str, topics: Topics
) -> None:
    head = b'{"event": "meeting.started", "pad": "'
    body = head + b"x" * (MAX_BODY_BYTES - len(head) - 2) + b'"}'
    assert len(body) == MAX_BODY_BYTES  # the producer's request size leaves room for the record around it
    accepted(await client.post(RTK, content=body, headers=rtk_headers(body)))
    [msg] = await published(kafka_bootstrap, topics.rtk_webhooks)
    assert msg.value() == body


async def test_no_key_secret_or_signature_reaches_the_logs(
    make_settings: MakeSettings, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    api_key = "k-" + uuid.uuid4().hex
    settings = make_settings(api_keys=orjson.dumps({api_key: "org-a"}).decode(), log_level="DEBUG")
    caplog.set_level(logging.DEBUG)
    body = rtk_body()
    good = rtk_headers(body, str(uuid.uuid4()))
    forged = rtk_sign(other_private_key(), body)
    lp = lp_body()
    async with serve(settings) as c:
        accepted(await c.post(RTK, content=body, headers=good))
        error_of(await c.post(RTK, content=body, headers={"rtk-signature": forged}), 401)
        error_of(await c.post(LP, content=lp, headers=lp_headers(lp, secret="guessed-secret")), 401)
        accepted(await c.post(LP, content=lp, headers=lp_headers(lp)))
        await c.get("/v1/sessions/none", headers={"Authorization": f"Bearer {api_key}"})
        await c.get("/v1/sessions/none", headers={"Authorization": f"Bearer {api_key}x"})
    logged = caplog.text
    assert logged  # the refusals above were logged, so the check below looks at real lines
    for secret in (
        api_key,
        SECRET,
        "guessed-secret",
        good["rtk-signature"],
        forged,
        lp_headers(lp)["Livepeer-Signature"].partition("v1=")[2],
    ):
        assert secret not in logged
    assert public_pem().splitlines()[1] not in logged
