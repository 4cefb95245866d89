"""Signed RealtimeKit webhooks -> intake -> Kafka -> worker process -> Redis -> API and outbound topics.

The same meetings are told by webhooks, by topic messages and by both, against the real
broker and Redis; they must end in the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from confluent_kafka import Producer

from service.api import create_app
from service.config import Settings
from service.constants import RTK_PEER_REPORTS, RTK_WEBHOOKS, Topics
from service.core import shapes
from service.core.timeutil import iso_ms
from service.messages import SessionSummary, TranscriptReady
from service.runtime import build_runtime
from tests.meetings import Meeting, random_meeting, topic_messages, webhook_bodies
from tests.webhook_signing import public_pem, rtk_private_key, rtk_sign

from .harness import Item, Offsets, WorkerProcess, consume_all, drained, produce, wait_for, worker_env

pytestmark = pytest.mark.integration

ARTIFACT_FIELDS = (
    "transcript_download_url",
    "summary_download_url",
    "chat_download_url",
    "recording_download_url",
    "recording_status",
    "livestreaming_status",
)


@pytest.fixture
async def app(
    kafka_bootstrap: str, redis_url: str, topics: Topics, redis_client: aioredis.Redis
) -> AsyncIterator[httpx.AsyncClient]:
    """Intake and read API in-process, on the test's broker, Redis and topics."""
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        redis_url=redis_url,
        topic_prefix=topics.prefix,
        rtk_webhook_public_key=public_pem(),
    )
    rt = build_runtime(settings)
    transport = httpx.ASGITransport(app=create_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client
    with contextlib.suppress(Exception):
        await rt.broker.stop()
    await rt.redis.aclose()


async def post_webhook(app: httpx.AsyncClient, body: dict[str, Any], delivery: str | None = None) -> str:
    raw = orjson.dumps(body)
    headers = {
        "rtk-signature": rtk_sign(rtk_private_key(), raw),
        "rtk-uuid": delivery or str(uuid.uuid4()),
        "rtk-webhook-id": "wh-test",
        "content-type": "application/json",
    }
    r = await app.post("/webhooks/realtimekit", content=raw, headers=headers)
    assert r.status_code == 202, r.text
    status: str = r.json()["data"]["status"]
    return status


def webhook_ends(bootstrap: str, topics: Topics) -> Offsets:
    """The end offsets of `rtk.webhooks`, from what is in it (tansu under-reports watermarks)."""
    ends: Offsets = {}
    for m in consume_all(bootstrap, topics.name(RTK_WEBHOOKS), partitions=3):
        tp = (m.topic(), m.partition())
        ends[tp] = max(ends.get(tp, 0), m.offset() + 1)
    return ends


def produce_reports(bootstrap: str, topics: Topics, reports: list[tuple[str, str, dict, int]]) -> Offsets:
    """Peer reports with explicit record timestamps (the newest is the one produced last)."""
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "acks": "all"})
    ends: Offsets = {}

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        tp = (msg.topic(), msg.partition())
        ends[tp] = max(ends.get(tp, 0), msg.offset() + 1)

    for sid, peer, report, ts in reports:
        value = orjson.dumps({"session_id": sid, "peer_id": peer, "peer_report": report})
        producer.produce(
            topics.name(RTK_PEER_REPORTS), value=value, key=sid.encode(), timestamp=ts, on_delivery=delivered
        )
    assert producer.flush(30) == 0
    return ends


def normalised(obj: Any, sid: str) -> Any:
    """An API answer with the session id replaced, so twins of one meeting compare equal."""
    return orjson.loads(orjson.dumps(obj).replace(sid.encode(), b"<sid>"))


async def state_of(app: httpx.AsyncClient, sid: str) -> dict[str, Any]:
    session = (await app.get(f"/v1/sessions/{sid}")).json()["data"]
    participants = (await app.get(f"/v1/sessions/{sid}/participants", params={"per_page": 100})).json()[
        "data"
    ]
    report = (await app.get(f"/v1/sessions/{sid}/report")).json()["data"]
    for f in ("revision", *ARTIFACT_FIELDS):
        report.pop(f, None)
    if session["status"] == "LIVE":  # counted up to the query time: compared to the minute
        session.pop("minutes_consumed")
        report.pop("minutes_consumed")
        report.pop("ended_at")
        report.pop("duration_seconds")
        for p in participants["participants"]:
            p.pop("duration")
        for p in report["participants"]:
            p.pop("duration")
            p.pop("left_at")  # a live session's report closes open intervals at the query time
    return normalised({"session": session, "participants": participants, "report": report}, sid)


async def test_webhooks_topics_and_both_tell_the_same_meetings(
    kafka_bootstrap: str, redis_url: str, topics: Topics, redis_client: aioredis.Redis, app: httpx.AsyncClient
) -> None:
    rng = random.Random(5)
    meetings = [random_meeting(rng, ended=i % 3 != 2) for i in range(6)]
    by_hooks = meetings
    by_topics = [m.renamed(f"{m.session_id}-topics") for m in meetings]
    by_both = [m.renamed(f"{m.session_id}-both") for m in meetings]
    transcript = {m.session_id: f"https://transcripts.example/{m.session_id}.csv" for m in meetings}

    bodies: list[dict[str, Any]] = []
    for m in by_hooks + by_both:
        url = transcript[m.session_id.removesuffix("-both")] if m.ended_ms else None
        bodies += webhook_bodies(m, transcript_url=url)
    rng.shuffle(bodies)  # webhooks arrive in any order
    items = [
        Item(topic, m.session_id.encode(), value)
        for m in by_topics + by_both
        for topic, value in topic_messages(m)
    ]
    rng.shuffle(items)

    w = WorkerProcess(worker_env(kafka_bootstrap, redis_url, topics))
    try:
        deliveries = []
        for body in bodies:
            delivery = str(uuid.uuid4())
            assert await post_webhook(app, body, delivery) == "accepted"
            deliveries.append((body, delivery))
        # A provider retry of the same delivery is acknowledged and not republished.
        for body, delivery in deliveries[:5]:
            assert await post_webhook(app, body, delivery) == "duplicate"
        # The same transcript sent again as a new delivery changes nothing.
        again = next(b for b in bodies if b["event"] == "meeting.transcript")
        assert await post_webhook(app, again) == "accepted"

        produced = produce(kafka_bootstrap, topics, items) | webhook_ends(kafka_bootstrap, topics)
        assert sum(produced[tp] for tp in produced if tp[0] == topics.name(RTK_WEBHOOKS)) == len(bodies) + 1
        await wait_for(
            lambda: drained(kafka_bootstrap, f"{topics.prefix}workers", produced, redis_client),
            90,
            "the drain",
        )

        for hooks, tops, both in zip(by_hooks, by_topics, by_both, strict=True):
            want = await state_of(app, tops.session_id)
            assert await state_of(app, hooks.session_id) == want
            assert await state_of(app, both.session_id) == want
            assert want["session"]["status"] == ("ENDED" if hooks.ended_ms else "LIVE")

        # Exactly one TranscriptReady per ended meeting told by webhooks, whatever the duplicates.
        ready = [orjson.loads(m.value()) for m in consume_all(kafka_bootstrap, topics.transcript_ready)]
        told = [m for m in by_hooks + by_both if m.ended_ms]
        assert sorted(r["message_id"] for r in ready) == sorted(
            shapes.transcript_message_id(m.session_id) for m in told
        )
        for r in ready:
            TranscriptReady.model_validate(r)  # the shape docs/asyncapi.json gives
            sid = r["session_id"]
            base = sid.removesuffix("-both")
            assert r["revision"] == 1
            assert r["transcript_download_url"] == transcript[base]
            session = (await app.get(f"/v1/sessions/{sid}")).json()["data"]
            assert (
                r["meeting_id"] == session["associated_id"] and r["title"] == session["meeting_display_name"]
            )
            assert r["organization_id"] == session["organization_id"]
            assert r["participants_total"] == len(
                (await app.get(f"/v1/sessions/{sid}/participants", params={"per_page": 100})).json()["data"][
                    "participants"
                ]
            )
            t = (await app.get(f"/v1/sessions/{sid}/transcript")).json()["data"]
            assert t == {
                "sessionId": sid,
                "transcript_download_url": transcript[base],
                "transcript_download_url_expiry": r["transcript_download_url_expiry"],
            }

        # The summaries of webhook-told meetings carry the transcript link; topic-only ones do not.
        summaries: dict[str, dict[str, Any]] = {}
        for msg in consume_all(kafka_bootstrap, topics.summaries):
            s = orjson.loads(msg.value())
            SessionSummary.model_validate(s)
            if s["message_id"] not in summaries or s["revision"] > summaries[s["message_id"]]["revision"]:
                summaries[s["message_id"]] = s
        for m in told:
            assert (
                summaries[shapes.summary_message_id(m.session_id)]["transcript_download_url"]
                == transcript[m.session_id.removesuffix("-both")]
            )
        for m in by_topics:
            if m.ended_ms:
                assert "transcript_download_url" not in summaries[shapes.summary_message_id(m.session_id)]
                assert (await app.get(f"/v1/sessions/{m.session_id}/transcript")).status_code == 404
        assert w.alive()
    finally:
        w.stop()


async def test_artifacts_peer_reports_and_summary_requests(
    kafka_bootstrap: str, redis_url: str, topics: Topics, redis_client: aioredis.Redis, app: httpx.AsyncClient
) -> None:
    m: Meeting = random_meeting(random.Random(9), ended=True)
    sid = m.session_id
    assert m.ended_ms is not None
    w = WorkerProcess(worker_env(kafka_bootstrap, redis_url, topics))
    try:
        for body in webhook_bodies(m):
            await post_webhook(app, body)
        meeting = webhook_bodies(m)[0]["meeting"]
        expiry = iso_ms(m.ended_ms + 86_400_000)
        await post_webhook(
            app,
            {
                "event": "meeting.chatSynced",
                "meetingId": m.meeting_id,
                "sessionId": sid,
                "chatDownloadUrl": "https://x/chat.csv",
                "chatDownloadUrlExpiry": expiry,
            },
        )
        await post_webhook(
            app,
            {
                "event": "meeting.summary",
                "meeting": meeting,
                "summaryDownloadUrl": "https://x/summary.txt",
                "summaryDownloadUrlExpiry": expiry,
            },
        )
        for status, url in (("RECORDING", None), ("UPLOADED", "https://x/rec.mp4"), ("UPLOADING", None)):
            rec = {"id": "rec-1", "status": status, "startedTime": iso_ms(m.started_ms)}
            if url:
                rec["downloadUrl"] = url
            await post_webhook(app, {"event": "recording.statusUpdate", "meeting": meeting, "recording": rec})
        await post_webhook(app, {"event": "meeting.somethingNew", "meeting": meeting, "novel": True})

        peer = m.peers[0].peer_id
        older = {"quality": {"mos": 3.1}, "metadata": {"sdk_name": "web"}}
        newer = {"quality": {"mos": 4.2}, "metadata": {"sdk_name": "web"}}
        # Produced newest first: the record timestamps, not the order, decide.
        produced = produce_reports(
            kafka_bootstrap,
            topics,
            [(sid, peer, newer, 2_000_000_000_000), (sid, peer, older, 1_900_000_000_000)],
        )
        produced |= webhook_ends(kafka_bootstrap, topics)
        await wait_for(
            lambda: drained(kafka_bootstrap, f"{topics.prefix}workers", produced, redis_client),
            60,
            "the drain",
        )

        chat = (await app.get(f"/v1/sessions/{sid}/chat")).json()["data"]
        assert chat == {"chat_download_url": "https://x/chat.csv", "chat_download_url_expiry": expiry}
        summary = (await app.get(f"/v1/sessions/{sid}/summary")).json()["data"]
        assert summary == {
            "sessionId": sid,
            "summaryDownloadUrl": "https://x/summary.txt",
            "summaryDownloadUrlExpiry": expiry,
        }
        assert (await app.get(f"/v1/sessions/{sid}/transcript")).status_code == 404
        assert (await app.get("/v1/sessions/no-such-session/chat")).status_code == 404

        report = (await app.get(f"/v1/sessions/{sid}/report")).json()["data"]
        assert report["summary_download_url"] == "https://x/summary.txt"
        assert report["chat_download_url"] == "https://x/chat.csv"
        assert report["recording_download_url"] == "https://x/rec.mp4"
        assert report["recording_status"] == "UPLOADED"  # a late UPLOADING does not go back
        assert "transcript_download_url" not in report

        # The newest summary revision carries them too.
        revisions = [
            orjson.loads(msg.value())
            for msg in consume_all(kafka_bootstrap, topics.summaries)
            if orjson.loads(msg.value())["session_id"] == sid
        ]
        newest = max(revisions, key=lambda s: s["revision"])
        assert newest == report  # revision included: the report names the revision it equals

        # An unknown event is kept in the session's state as it came (docs/redis-keys.md).
        kept = await redis_client.hget(f"sp:{{{sid}}}:art", "v:event:meeting.somethingNew")
        assert kept is not None and orjson.loads(kept)["novel"] is True

        r = await app.get(f"/v1/sessions/peer-report/{peer}")
        assert r.status_code == 200, r.text
        got = r.json()["data"]["participant"]
        assert got["session_id"] == sid and got["peer_report"] == newer
        assert got["id"] == peer and got["display_name"] == m.peers[0].display_name
        assert got["peer_events"][0]["event_name"] == "PEER_JOINING"
        assert (await app.get("/v1/sessions/peer-report/nobody")).status_code == 404

        r = await app.post(f"/v1/sessions/{sid}/summary")
        assert r.status_code == 202 and r.json()["data"] == {"session_id": sid, "status": "queued"}
        assert (await app.post("/v1/sessions/no-such-session/summary")).status_code == 404
        [request] = await asyncio.to_thread(consume_all, kafka_bootstrap, topics.summary_requests)
        assert request.key() == sid.encode()
        assert orjson.loads(request.value())["session_id"] == sid
        assert w.alive()
    finally:
        w.stop()
