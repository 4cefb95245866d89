"""Hostile input: fuzzed records on every inbound topic and fuzzed deliveries to both webhook routes,
through a real worker process (issue 6.5).

Per example: the webhook routes answer exactly what their rules say (never 500); then every record on
every inbound topic, the accepted webhooks included, is applied, a duplicate or dead-lettered, and the
worker's own counts (logged when it stops) give produced = applied + duplicate + dead-lettered exactly.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from service.api import create_app
from service.config import Settings
from service.constants import (
    LIVEPEER_SESSIONS,
    LIVEPEER_WEBHOOKS,
    RTK_PEER_EVENTS,
    RTK_PEER_REPORTS,
    RTK_SESSIONS,
    RTK_WEBHOOKS,
    Topics,
)
from service.intake import MAX_BODY_BYTES
from service.runtime import build_runtime
from tests.integration.harness import (
    Record,
    WorkerProcess,
    consume_all,
    group_lag,
    peer_event,
    produce_records,
    session_message,
    worker_env,
)
from tests.meetings import random_meeting, webhook_bodies
from tests.streams import snapshot as lp_snapshot
from tests.streams import webhook as lp_webhook
from tests.webhook_signing import livepeer_signature, other_private_key, public_pem, rtk_private_key, rtk_sign

from .support import count, own_topics, record_figures, worker_counts

pytestmark = pytest.mark.integration

INBOUND = (
    RTK_SESSIONS,
    RTK_PEER_EVENTS,
    RTK_WEBHOOKS,
    RTK_PEER_REPORTS,
    LIVEPEER_SESSIONS,
    LIVEPEER_WEBHOOKS,
)
ERROR_TYPES = {
    "empty_value",
    "invalid_utf8",
    "invalid_json",
    "not_an_object",
    "missing_field",
    "unknown_event_name",
    "invalid_field",
    "invalid_timestamp",
}
SECRET = "lp-fuzz-secret"
RUN = uuid.uuid4().hex[:8]  # delivery ids of this run: marks left by an earlier run never match
TOTALS: Counter[str] = Counter()  # figures over all examples of the last run

# --- what is sent ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
times = st.sampled_from(
    [
        "2026-01-01T10:00:00.000Z",
        "2026-01-01T10:00:00+05:30",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999Z",
        "1969-12-31T23:59:59Z",
        "2026-02-30T10:00:00Z",
        "yesterday",
        "",
        "2026-01-01",
    ]
)
MUTATIONS = ("none", "drop", "retype", "time", "unknown", "huge", "whole")


def valid_document(topic: str, rng: random.Random) -> dict[str, Any]:
    """A message the worker applies: the factories of the other tests."""
    sid = f"fz-{rng.randrange(40)}"  # few session ids, so that records meet in one session's state
    t = 1_767_225_600_000 + rng.randrange(10**7)
    if topic == RTK_SESSIONS:
        status = rng.choice(["LIVE", "ENDED"])
        return session_message(sid, status, t, t + 1000, t + 5000 if status == "ENDED" else None)
    if topic == RTK_PEER_EVENTS:
        name = rng.choice(["PEER_CREATED", "PEER_JOINING", "PEER_LEAVING"])
        return peer_event(sid, f"p-{rng.randrange(5)}", name, t, event_id=f"e-{rng.randrange(10**6)}")
    if topic == RTK_WEBHOOKS:
        meeting = random_meeting(rng)
        return rng.choice(webhook_bodies(meeting, transcript_url="https://x.invalid/t.vtt"))
    if topic == RTK_PEER_REPORTS:
        return {
            "session_id": sid,
            "peer_id": f"p-{rng.randrange(5)}",
            "peer_report": {"metadata": {"os": "x"}},
        }
    if topic == LIVEPEER_SESSIONS:
        return lp_snapshot(sid, "stream-1", t + 1000, t, rng.randrange(10**6), rng.randrange(10**6))
    event = rng.choice(
        ["recording.ready", "recording.started", "stream.idle", "stream.started", "asset.ready"]
    )
    return lp_webhook(event, t_ms=t, stream_id="stream-1", session_id=sid, recordingUrl="https://x.invalid/r")


@st.composite
def documents(draw: st.DrawFn, topic: str) -> bytes | None:
    """A valid document, a mutated one, or junk: bytes as a producer might send them (None: no value)."""
    kind = draw(st.sampled_from(["valid", "mutated", "mutated", "junk"]))
    if kind == "junk":
        return draw(
            st.one_of(
                st.none(),
                st.binary(max_size=40),
                json_values.map(orjson.dumps),
                st.sampled_from([b"", b"{", b"[]", b'"x"', b"null", b"\xff\xfe{}", b'{"a":1}{"b":2}']),
            )
        )
    doc = valid_document(topic, random.Random(draw(st.integers(0, 2**32))))
    if kind == "mutated":
        op = draw(st.sampled_from(MUTATIONS))
        name = draw(st.sampled_from(sorted(doc)))
        if op == "drop":
            doc.pop(name)
        elif op == "retype":
            doc[name] = draw(json_values)
        elif op == "time":
            for f in ("created_at", "updated_at", "started_at", "ended_at", "lastSeen", "timestamp"):
                if f in doc:
                    doc[f] = draw(times) if isinstance(doc[f], str) else draw(json_values)
        elif op == "unknown":
            doc[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
        elif op == "huge":
            doc[name] = "x" * 60_000
        elif op == "whole":
            return orjson.dumps(draw(json_values))
    return orjson.dumps(doc)


@st.composite
def records(draw: st.DrawFn) -> list[Record]:
    out: list[Record] = []
    for topic in INBOUND:
        for _ in range(draw(st.integers(5, 12))):
            value = draw(documents(topic))
            key = draw(st.one_of(st.none(), st.binary(max_size=12), st.sampled_from([b"fz-1", b"fz-2"])))
            out.append((topic, key, value))
            if value is not None and draw(st.booleans()):
                out.append((topic, key, value))  # a redelivered copy
    return out


@st.composite
def posts(draw: st.DrawFn) -> list[tuple[str, bytes, str, str]]:
    """(provider, body, signature mode, delivery id) for the two webhook routes."""
    out = []
    for _ in range(draw(st.integers(6, 14))):
        provider = draw(st.sampled_from(["realtimekit", "livepeer"]))
        topic = RTK_WEBHOOKS if provider == "realtimekit" else LIVEPEER_WEBHOOKS
        body = draw(documents(topic)) or b""
        if draw(st.integers(0, 9)) == 0:
            body = b" " * (MAX_BODY_BYTES + 1)
        mode = draw(st.sampled_from(["valid", "valid", "valid", "forged", "missing", "garbage", "stale"]))
        delivery = f"{RUN}-{draw(st.integers(0, 5))}"
        out.append((provider, body, mode, delivery))
    return out


# --- what each route must answer --------------------------------------------------------------------


def expected_status(body: bytes, mode: str) -> int:
    """The intake's rules (README, Webhook intake): size, then signature, then the body."""
    if len(body) > MAX_BODY_BYTES:
        return 413
    if mode != "valid":
        return 401
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 400
    if not isinstance(doc, dict) or not isinstance(doc.get("event"), str):
        return 422
    return 202


def signed(provider: str, body: bytes, mode: str, delivery: str) -> tuple[dict[str, str], str | None]:
    """Headers for a delivery, and its delivery id as the intake sees it."""
    if provider == "realtimekit":
        headers = {"rtk-uuid": delivery}
        if mode == "valid":
            headers["rtk-signature"] = rtk_sign(rtk_private_key(), body)
        elif mode in ("forged", "stale"):
            headers["rtk-signature"] = rtk_sign(other_private_key(), body)
        elif mode == "garbage":
            headers["rtk-signature"] = "not base64 at all!"
        return headers, delivery
    now = int(time.time() * 1000)
    value = {
        "valid": livepeer_signature(SECRET, body, now),
        "forged": livepeer_signature("guessed", body, now),
        "stale": livepeer_signature(SECRET, body, now - 600_000),
        "garbage": "t=,v1=",
    }.get(mode)
    try:
        doc = orjson.loads(body)
        delivery_id = doc.get("id") if isinstance(doc, dict) else None
    except orjson.JSONDecodeError:
        delivery_id = None
    return ({"Livepeer-Signature": value} if value else {}), (
        delivery_id if isinstance(delivery_id, str) and delivery_id else None
    )


# --- one example --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


SEEN: set[str] = set()  # delivery ids the intake has accepted in this run


async def post_all(settings_: Settings, deliveries: list[tuple[str, bytes, str, str]]) -> Counter[str]:
    """Post every delivery to the in-process API; the number accepted (published) per topic."""
    rt = build_runtime(settings_)
    accepted: Counter[str] = Counter()
    try:
        transport = httpx.ASGITransport(app=create_app(rt))  # an exception in the app fails the test
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            for provider, body, mode, delivery in deliveries:
                headers, delivery_id = signed(provider, body, mode, delivery)
                r = await client.post(f"/webhooks/{provider}", content=body, headers=headers)
                want = expected_status(body, mode)
                assert r.status_code == want, (provider, mode, body[:200], r.text)
                if want == 202:
                    seen = f"{provider}:{delivery_id}"
                    status = "duplicate" if delivery_id is not None and seen in SEEN else "accepted"
                    assert r.json()["data"]["status"] == status, (provider, delivery_id)
                    if status == "accepted":
                        accepted[RTK_WEBHOOKS if provider == "realtimekit" else LIVEPEER_WEBHOOKS] += 1
                        if delivery_id is not None:
                            SEEN.add(seen)
    finally:
        await rt.broker.stop()
        await rt.redis.aclose()
    return accepted


async def one_example(bootstrap: str, redis_url: str, sent: list[Record], deliveries: list[Any]) -> None:
    topics = await own_topics(bootstrap, inbound=3)
    env = worker_env(bootstrap, redis_url, topics)
    w = WorkerProcess(env)  # joining the group overlaps the posts
    try:
        settings_ = Settings(
            kafka_bootstrap_servers=bootstrap,
            redis_url=redis_url,
            topic_prefix=topics.prefix,
            rtk_webhook_public_key=public_pem(),
            livepeer_webhook_secret=SECRET,
        )
        produced = await post_all(settings_, deliveries)
        where = produce_records(bootstrap, topics, sent)
        produced.update(topic for topic, _, _ in sent)
        ends = await asyncio.to_thread(_ends, bootstrap, topics, where)
        deadline = time.monotonic() + 90
        while await group_lag(bootstrap, env["CONSUMER_GROUP"], ends) > 0:
            assert "batch failed unexpectedly" not in w.log_text(), w.log_text()[-3000:]
            assert w.alive() and time.monotonic() < deadline, w.log_text()[-3000:]
            await asyncio.sleep(0.3)
    finally:
        rc = w.stop()
    text = w.log_text()
    assert rc == 0, text[-3000:]
    assert "not applied" not in text and "decoder failed" not in text, text[-3000:]
    counts = worker_counts(text)
    for topic in INBOUND:
        handled = sum(count(counts, what, topic) for what in ("applied", "duplicate", "dead_lettered"))
        assert (produced[topic], count(counts, "consumed", topic), handled) == (produced[topic],) * 3, topic
    dead = await asyncio.to_thread(consume_all, bootstrap, topics.dead_letter, 1, 0.5)
    assert len(dead) == count(counts, "dead_lettered")
    for m in dead:
        h = {k: v.decode() for k, v in m.headers()}
        assert h["x-error-type"] in ERROR_TYPES and h["x-source-topic"] in {topics.name(t) for t in INBOUND}
    TOTALS.update(
        {
            "examples": 1,
            "records_produced": sum(produced.values()),
            "webhooks_posted": len(deliveries),
            "webhooks_accepted": produced[RTK_WEBHOOKS] + produced[LIVEPEER_WEBHOOKS] - _direct(sent),
            "applied": count(counts, "applied"),
            "duplicate": count(counts, "duplicate"),
            "dead_lettered": count(counts, "dead_lettered"),
        }
    )
    note(f"counts {counts}")


def _direct(sent: list[Record]) -> int:
    return sum(1 for topic, _, _ in sent if topic in (RTK_WEBHOOKS, LIVEPEER_WEBHOOKS))


def _ends(bootstrap: str, topics: Topics, where: list[tuple[str, int, int]]) -> dict[tuple[str, int], int]:
    """The end offset of every inbound partition written: the records produced here, and what the
    intake published (read back, as its offsets are not known here)."""
    ends: dict[tuple[str, int], int] = {}
    for t, p, o in where:
        ends[(t, p)] = max(ends.get((t, p), 0), o + 1)
    for topic in (topics.rtk_webhooks, topics.livepeer_webhooks):
        for m in consume_all(bootstrap, topic, partitions=3, idle_s=0.5):
            tp = (m.topic(), m.partition())
            ends[tp] = max(ends.get(tp, 0), m.offset() + 1)
    return ends


@pytest.mark.faults
@pytest.mark.timeout(600)
@settings(
    max_examples=15,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: each example runs a worker
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(sent=records(), deliveries=posts())
def test_every_inbound_record_is_applied_duplicate_or_dead_lettered(
    loop: asyncio.AbstractEventLoop,
    kafka_bootstrap: str,
    own_redis_url: str,
    sent: list[Record],
    deliveries: list[Any],
) -> None:
    loop.run_until_complete(one_example(kafka_bootstrap, own_redis_url, sent, deliveries))
    record_figures(
        "hostile_input",
        {
            "test": "tests/faults/test_hostile_input.py::"
            "test_every_inbound_record_is_applied_duplicate_or_dead_lettered",
            **TOTALS,
        },
    )


# --- a poison the fuzzer is kept away from: nesting deeper than orjson writes ----------------------------


async def test_json_nested_too_deeply_to_store_is_dead_lettered(
    kafka_bootstrap: str, own_redis_url: str
) -> None:
    topics = await own_topics(kafka_bootstrap, inbound=3)
    nested = b"[" * 300 + b"]" * 300
    session = orjson.dumps(session_message("deep-1", "LIVE", 1_767_225_600_000, 1_767_225_600_000, None))
    poison = session[:-1] + b',"breakout_rooms":' + nested + b"}"
    report = b'{"session_id":"deep-1","peer_id":"p","peer_report":' + b'{"a":' * 300 + b"1" + b"}" * 301
    env = worker_env(kafka_bootstrap, own_redis_url, topics)
    w = WorkerProcess(env)
    try:
        where = produce_records(
            kafka_bootstrap,
            topics,
            [(RTK_SESSIONS, b"deep-1", poison), (RTK_PEER_REPORTS, b"deep-1", report)],
        )
        ends = {(t, p): o + 1 for t, p, o in where}
        deadline = time.monotonic() + 30
        while await group_lag(kafka_bootstrap, env["CONSUMER_GROUP"], ends) > 0:
            assert "batch failed unexpectedly" not in w.log_text(), "the batch is retried forever"
            assert time.monotonic() < deadline
            await asyncio.sleep(0.3)
    finally:
        w.stop()
    dead = consume_all(kafka_bootstrap, topics.dead_letter, idle_s=0.5)
    assert sorted(m.value() for m in dead) == sorted([poison, report])
