"""Security (issue 6.6): API keys, organization scoping on every route, secrets kept out of the logs,
webhook signature bypass attempts, header and body limits, and hostile ids end to end.

One world for the module: a worker and an API as OS processes, on a Redis of their own that wants
a password, fed through the topics with two organizations' sessions and sessions whose ids are made
to break key names.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from service import api as api_module
from service import constants as C
from service.api import create_app
from service.config import Settings
from service.constants import LIVEPEER_SESSIONS, RTK_PEER_EVENTS, RTK_PEER_REPORTS, RTK_SESSIONS, RTK_WEBHOOKS
from service.core.model import ReferenceSession
from service.core.timeutil import iso_ms
from service.embedded import RedisServer, start_redis
from service.intake import MAX_BODY_BYTES
from service.runtime import build_runtime
from tests.integration.harness import (
    Item,
    WorkerProcess,
    consume_all,
    drained,
    peer_event,
    produce,
    session_message,
    wait_for,
    worker_env,
)
from tests.streams import snapshot as lp_snapshot
from tests.webhook_signing import livepeer_signature, other_private_key, public_pem, rtk_private_key, rtk_sign

from .support import ApiProcess, assert_stored_state_matches, own_topics, record_figures, reference_of

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000
PASSWORD = "redis-pw-" + uuid.uuid4().hex
KEY_A, KEY_ALL = "key-a-" + uuid.uuid4().hex, "key-all-" + uuid.uuid4().hex
KEYS = {KEY_A: "org-a", KEY_ALL: "*", "k3-" + uuid.uuid4().hex: "org-c", "k4-" + uuid.uuid4().hex: "org-d"}
SECRET = "lp-secret-" + uuid.uuid4().hex
FORGED = "forged-" + uuid.uuid4().hex

# Ids made to break key names or reach another session's keys: hash-tag braces, the key separator,
# white space, a newline, 10 KB, and ids that spell out another id's keys.
VICTIM = "victim"
HOSTILE_IDS = [
    VICTIM,
    "{",
    "}",
    "}{",
    "{victim}",
    "victim}",
    "victim}:session",
    "victim}:pev",
    "sp:{victim}:session",
    "a:b:c",
    "with space",
    " ",
    "new\nline",
    "tab\tand\r\nCRLF",
    "x" * 10_240,
    "{" + "y" * 10_000 + "}:ids",
]


def hostile_peer(sid: str, n: int) -> str:
    return f"{{p{n}}}:{hashlib.sha1(sid.encode()).hexdigest()[:6]} \n:x"


def _meeting(sid: str, org: str, t: int) -> dict[str, Any]:
    return {
        "id": f"m-{hashlib.sha1(sid.encode()).hexdigest()[:8]}",
        "sessionId": sid,
        "title": "T",
        "status": "LIVE",
        "createdAt": iso_ms(t),
        "startedAt": iso_ms(t),
        "organizedBy": {"id": org, "name": org},
    }


def session_items(sid: str, org: str, n: int, *, end: bool) -> list[Item]:
    """A session with two peers (hostile peer ids), a transcript, a summary and a chat link, a report."""
    key, t = sid.encode(), T0 + n * 60_000
    items = [
        Item(RTK_SESSIONS, key, orjson.dumps(session_message(sid, "LIVE", t, t, None, organization_id=org)))
    ]
    for p in range(2):
        peer = hostile_peer(sid, p)
        items.append(
            Item(RTK_PEER_EVENTS, key, orjson.dumps(peer_event(sid, peer, "PEER_JOINING", t + 1000)))
        )
        items.append(
            Item(RTK_PEER_EVENTS, key, orjson.dumps(peer_event(sid, peer, "PEER_LEAVING", t + 9000)))
        )
    links = {
        "meeting.transcript": ("transcriptDownloadUrl", "transcriptDownloadUrlExpiry"),
        "meeting.summary": ("summaryDownloadUrl", "summaryDownloadUrlExpiry"),
    }
    for event, (url, expiry) in links.items():
        body = {
            "event": event,
            "meeting": _meeting(sid, org, t),
            url: f"https://x.invalid/{n}",
            expiry: iso_ms(t),
        }
        items.append(Item(RTK_WEBHOOKS, key, orjson.dumps(body)))
    chat = {"event": "meeting.chatSynced", "sessionId": sid, "chatDownloadUrl": f"https://x.invalid/c{n}"}
    items.append(Item(RTK_WEBHOOKS, key, orjson.dumps(chat)))
    report = {"session_id": sid, "peer_id": hostile_peer(sid, 0), "peer_report": {"metadata": {"n": n}}}
    items.append(Item(RTK_PEER_REPORTS, key, orjson.dumps(report)))
    if end:
        msg = session_message(sid, "ENDED", t, t + 20_000, t + 20_000, organization_id=org)
        items.append(Item(RTK_SESSIONS, key, orjson.dumps(msg)))
    return items


@dataclass
class World:
    redis: aioredis.Redis
    url: str
    env: dict[str, str]
    worker: WorkerProcess
    api: ApiProcess
    expected: dict[str, ReferenceSession]
    bootstrap: str
    rtk_webhooks: str
    livepeer_webhooks: str


@pytest.fixture(scope="module")
def redis_with_password() -> Iterator[RedisServer]:
    with start_redis() as server:
        yield server


@pytest.fixture(scope="module")
async def world(kafka_bootstrap: str, redis_with_password: RedisServer) -> AsyncIterator[World]:
    plain = aioredis.Redis.from_url(redis_with_password.url)
    await plain.config_set("requirepass", PASSWORD)
    await plain.aclose()
    url = f"redis://:{PASSWORD}@127.0.0.1:{redis_with_password.port}/0"
    redis = aioredis.Redis.from_url(url)
    topics = await own_topics(kafka_bootstrap, inbound=3)
    env = worker_env(
        kafka_bootstrap,
        url,
        topics,
        LOG_LEVEL="DEBUG",
        API_KEYS=orjson.dumps(KEYS).decode(),
        LIVEPEER_WEBHOOK_SECRET=SECRET,
        RTK_WEBHOOK_PUBLIC_KEY=public_pem().replace("\n", "\\n"),
    )
    items = session_items("org-a-1", "org-a", 0, end=True) + session_items("org-b-1", "org-b", 1, end=True)
    for n, sid in enumerate(HOSTILE_IDS):
        items += session_items(sid, "org-h", n + 2, end=n % 2 == 0)
    for sid, project in (("ls-a", "org-a"), ("ls-b", "org-b")):
        snap = lp_snapshot(sid, f"st-{sid}", T0 + 5000, T0, 1000, 2000, project=project)
        items.append(Item(LIVEPEER_SESSIONS, sid.encode(), orjson.dumps(snap)))
    worker = WorkerProcess(env)
    api = ApiProcess(env)
    try:
        produced = produce(kafka_bootstrap, topics, items)
        await wait_for(
            lambda: drained(kafka_bootstrap, env["CONSUMER_GROUP"], produced, redis), 90, "the log"
        )
        await api.wait_serving()
        yield World(
            redis,
            url,
            env,
            worker,
            api,
            reference_of(items),
            kafka_bootstrap,
            topics.rtk_webhooks,
            topics.livepeer_webhooks,
        )
    finally:
        worker.stop()
        api.stop()
        await redis.aclose()


# --- API keys -------------------------------------------------------------------------------------------


async def test_api_keys_are_compared_in_constant_time(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every configured key is compared, with hmac.compare_digest, whichever key (if any) matches."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api_module.hmac, "compare_digest", counting)
    rt = build_runtime(Settings(redis_url=world.url, api_keys=orjson.dumps(KEYS).decode()))
    seen: dict[str, int] = {}
    timings: dict[str, list[float]] = {"first key": [], "last key": [], "near miss": [], "far miss": []}
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(rt)), base_url="http://a"
        ) as c:
            keys = list(KEYS)
            tries = {
                "first key": keys[0],
                "last key": keys[-1],
                "near miss": keys[0][:-1] + ("0" if keys[0][-1] != "0" else "1"),
                "far miss": "z" * len(keys[0]),
            }
            for _ in range(200):
                for label, key in tries.items():
                    calls.clear()
                    t = time.perf_counter()
                    r = await c.get("/v1/sessions/no-such", headers={"Authorization": f"Bearer {key}"})
                    timings[label].append(time.perf_counter() - t)
                    assert r.status_code == (404 if "key" in label else 401)
                    seen[label] = len(calls)
    finally:
        await rt.redis.aclose()
    assert set(seen.values()) == {len(KEYS)}, seen  # no early exit on a match, none on a miss
    record_figures(
        "security_api_keys",
        {
            "test": "tests/faults/test_security.py::test_api_keys_are_compared_in_constant_time",
            "keys_configured": len(KEYS),
            "compare_digest_calls_per_request": seen,
            "median_request_us": {k: round(statistics.median(v) * 1e6) for k, v in timings.items()},
        },
    )


SCOPED_ROUTES = [
    ("GET", "/v1/sessions/{sid}"),
    ("GET", "/v1/sessions/{sid}/participants"),
    ("GET", "/v1/sessions/{sid}/participants/{peer}"),
    ("GET", "/v1/sessions/{sid}/chat"),
    ("GET", "/v1/sessions/{sid}/transcript"),
    ("GET", "/v1/sessions/{sid}/summary"),
    ("POST", "/v1/sessions/{sid}/summary"),
    ("GET", "/v1/sessions/{sid}/report"),
    ("GET", "/v1/sessions/peer-report/{peer}"),
    ("GET", "/v1/streams/sessions/{stream}"),
    ("GET", "/v1/streams/{parent}/sessions"),
]


async def test_another_organizations_objects_answer_exactly_like_missing_ones(world: World) -> None:
    """On every /v1 route, org-b's ids answer an org-a key byte for byte as ids that do not exist."""
    own = {"sid": "org-a-1", "peer": hostile_peer("org-a-1", 0), "stream": "ls-a", "parent": "st-ls-a"}
    other = {"sid": "org-b-1", "peer": hostile_peer("org-b-1", 0), "stream": "ls-b", "parent": "st-ls-b"}
    missing = {"sid": "no-such", "peer": "no-such-peer", "stream": "no-such", "parent": "no-such"}
    a = {"Authorization": f"Bearer {KEY_A}"}
    checked = []
    async with httpx.AsyncClient(base_url=world.api.url, timeout=10) as c:
        for method, route in SCOPED_ROUTES:

            def path(ids: dict[str, str], route: str = route) -> str:
                return route.format(**{k: quote(v, safe="") for k, v in ids.items()})

            mine = await c.request(method, path(own), headers=a)
            theirs = await c.request(method, path(other), headers=a)
            nothing = await c.request(method, path(missing), headers=a)
            everyone = await c.request(method, path(other), headers={"Authorization": f"Bearer {KEY_ALL}"})
            assert mine.status_code in (200, 202), (route, mine.text)
            assert everyone.status_code == mine.status_code, (route, everyone.text)
            assert (theirs.status_code, theirs.content) == (nothing.status_code, nothing.content), route
            checked.append(f"{method} {route}: {theirs.status_code}")
        for params in ({"organization_id": "org-b"}, {"associated_id": _meeting("org-b-1", "", 0)["id"]}):
            listed = (await c.get("/v1/sessions", params=params, headers=a)).json()
            assert listed["data"]["sessions"] == [] and listed["paging"]["total_count"] == 0
        listed = (await c.get("/v1/sessions", params={"per_page": 100}, headers=a)).json()["data"]["sessions"]
        assert {s["id"] for s in listed} == {"org-a-1"}
        assert (await c.get("/v1/sessions/org-a-1")).status_code == 401
    record_figures(
        "security_scoping",
        {
            "test": "tests/faults/test_security.py::test_another_organizations_objects_answer_exactly_like_missing_ones",
            "routes_checked": checked,
        },
    )


# --- webhook signatures ------------------------------------------------------------------------------


def _rtk_body() -> bytes:
    return orjson.dumps({"event": "meeting.started", "meeting": _meeting(f"sig-{uuid.uuid4()}", "org-a", T0)})


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def test_webhook_signature_bypass_attempts_are_refused(world: World) -> None:
    key = rtk_private_key()
    body = _rtk_body()
    good = rtk_sign(key, body)
    now = int(time.time() * 1000)
    lp = orjson.dumps(
        {"id": str(uuid.uuid4()), "event": "stream.started", "timestamp": now, "stream": {"id": "s"}}
    )
    lp_hex = hmac.new(SECRET.encode(), lp, hashlib.sha256).hexdigest()
    rtk_attempts: dict[str, tuple[bytes, dict[str, str]]] = {
        "body changed after signing (trailing space)": (body + b" ", {"rtk-signature": good}),
        "valid dyte-signature behind a bad rtk-signature": (
            body,
            {"rtk-signature": "AAAA", "dyte-signature": good},
        ),
        "signature with white space inside": (body, {"rtk-signature": good[:20] + " " + good[20:]}),
        "PSS padding instead of PKCS#1 v1.5": (
            body,
            {
                "rtk-signature": _b64(
                    key.sign(body, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
                )
            },
        ),
        "SHA-1 instead of SHA-256": (
            body,
            {"rtk-signature": _b64(key.sign(body, padding.PKCS1v15(), hashes.SHA1()))},
        ),
        "another key": (body, {"rtk-signature": rtk_sign(other_private_key(), body)}),
        "empty signature": (body, {"rtk-signature": ""}),
        "signature of nothing": (body, {"rtk-signature": _b64(b"")}),
        "8 KB of noise": (body, {"rtk-signature": _b64(uuid.uuid4().bytes * 512)}),
    }
    lp_attempts: dict[str, tuple[bytes, dict[str, str]]] = {
        "HMAC with an empty secret": (lp, {"Livepeer-Signature": livepeer_signature("", lp)}),
        "HMAC over t.body (Stripe style)": (
            lp,
            {
                "Livepeer-Signature": f"t={now},v1="
                + hmac.new(SECRET.encode(), f"{now}.".encode() + lp, "sha256").hexdigest()
            },
        ),
        "body changed after signing": (lp + b" ", {"Livepeer-Signature": f"t={now},v1={lp_hex}"}),
        "truncated v1": (lp, {"Livepeer-Signature": f"t={now},v1={lp_hex[:-2]}"}),
        "v1 with extra digits": (lp, {"Livepeer-Signature": f"t={now},v1={lp_hex}00"}),
        "empty v1 first": (lp, {"Livepeer-Signature": f"t={now},v1=,v1={'0' * 64}"}),
        "negative t": (lp, {"Livepeer-Signature": f"t=-{now},v1={lp_hex}"}),
        "upper-case keys": (lp, {"Livepeer-Signature": f"T={now},V1={lp_hex}"}),
        "t from an hour ago": (lp, {"Livepeer-Signature": f"t={now - 3_600_000},v1={lp_hex}"}),
        "no t": (lp, {"Livepeer-Signature": f"v1={lp_hex}"}),
    }
    async with httpx.AsyncClient(base_url=world.api.url, timeout=10) as c:
        for name, (content, headers) in rtk_attempts.items():
            r = await c.post("/webhooks/realtimekit", content=content, headers=headers)
            assert r.status_code == 401, (name, r.text)
        for name, (content, headers) in lp_attempts.items():
            r = await c.post("/webhooks/livepeer", content=content, headers=headers)
            assert r.status_code == 401, (name, r.text)
        # The genuine ones pass, so the refusals above are the signatures' doing.
        assert (
            await c.post("/webhooks/realtimekit", content=body, headers={"rtk-signature": good})
        ).status_code == 202
        sig = {"Livepeer-Signature": f"t={now},v1={lp_hex}"}
        assert (await c.post("/webhooks/livepeer", content=lp, headers=sig)).status_code == 202
    assert [m.value() for m in consume_all(world.bootstrap, world.rtk_webhooks, 3, 0.5)].count(body) == 1
    assert [m.value() for m in consume_all(world.bootstrap, world.livepeer_webhooks, 3, 0.5)] == [lp]
    record_figures(
        "security_signatures",
        {
            "test": "tests/faults/test_security.py::test_webhook_signature_bypass_attempts_are_refused",
            "realtimekit_attempts_refused": sorted(rtk_attempts),
            "livepeer_attempts_refused": sorted(lp_attempts),
        },
    )


# --- limits --------------------------------------------------------------------------------------------


def _raw_http(port: int, request: bytes) -> bytes:
    """One raw HTTP/1.1 exchange (what no well-behaved client would send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
            if b"\r\n\r\n" in out:
                break
        return out


def _status(port: int, request: bytes) -> int:
    reply = _raw_http(port, request)
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def _headers_of(size: int, count: int = 1) -> bytes:
    each = b"a" * (size // count)
    return b"".join(b"X-%d: %s\r\n" % (n, each) for n in range(count))


async def test_header_and_body_limits_on_the_real_server(world: World) -> None:
    port = world.api.port
    statuses: dict[str, int] = {
        "1 MiB header": _status(
            port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + _headers_of(1 << 20) + b"\r\n"
        ),
        "Content-Length of 5,000 digits": _status(
            port,
            b"POST /webhooks/realtimekit HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
        ),
    }
    async with httpx.AsyncClient(base_url=world.api.url, timeout=30) as c:

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(48):
                yield b" " * 65_536

        r = await c.post("/webhooks/realtimekit", content=chunks(), headers={"rtk-signature": "x"})
        statuses["3 MiB chunked body"] = r.status_code
        r = await c.post("/webhooks/livepeer", content=b" " * (MAX_BODY_BYTES + 1))
        statuses["1 MiB + 1 byte body"] = r.status_code
        long_id = quote("z" * 12_000, safe="")
        r = await c.get(f"/v1/sessions/{long_id}", headers={"Authorization": f"Bearer {KEY_ALL}"})
        statuses["12 KB unknown session id"] = r.status_code
        assert (await c.get("/healthz")).status_code == 200  # still serving
    assert world.api.alive()
    assert statuses == {
        "1 MiB header": 400,
        "Content-Length of 5,000 digits": 400,
        "3 MiB chunked body": 413,
        "1 MiB + 1 byte body": 413,
        "12 KB unknown session id": 404,
    }
    record_figures(
        "security_limits",
        {
            "test": "tests/faults/test_security.py::test_header_and_body_limits_on_the_real_server",
            "statuses": statuses,
        },
    )


async def test_headers_over_64_kib_are_refused_with_431(world: World) -> None:
    port = world.api.port
    one = _status(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + _headers_of(100_000) + b"\r\n")
    many = _status(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + _headers_of(100_000, 2000) + b"\r\n")
    assert (one, many) == (431, 431)


async def test_a_livepeer_timestamp_of_thousands_of_digits_is_refused_not_a_500(world: World) -> None:
    async with httpx.AsyncClient(base_url=world.api.url, timeout=10) as c:
        sig = {"Livepeer-Signature": "t=" + "9" * 5000 + ",v1=" + "0" * 64}
        r = await c.post("/webhooks/livepeer", content=b'{"event":"x"}', headers=sig)
    assert r.status_code == 401, r.text


# --- hostile ids --------------------------------------------------------------------------------------


async def test_hostile_ids_stay_in_their_own_keys_and_read_back(world: World) -> None:
    redis, expected = world.redis, world.expected
    hostile = {sid: ref for sid, ref in expected.items() if sid in HOSTILE_IDS}
    assert set(hostile) == set(HOSTILE_IDS)
    assert "not applied" not in world.worker.log_text() and "dead-lettered" not in world.worker.log_text()
    await assert_stored_state_matches(redis, expected)

    # Every key in this Redis is one of a session's own keys, a peer's report, or a global key.
    owner: dict[bytes, str] = {}
    for sid in expected:
        for key in C.session_keys(sid):
            assert key.encode() not in owner, (key, owner.get(key.encode()), sid)
            owner[key.encode()] = sid
    reports = {C.report_key(hostile_peer(sid, 0)).encode() for sid in expected}
    stream_keys = {k.encode() for sid in ("ls-a", "ls-b") for k in C.stream_keys(sid)}
    found = [k async for k in redis.scan_iter(match="sp:*", count=1000)]
    unknown = [
        k
        for k in found
        if k not in owner
        and not k.startswith(b"sp:{sig-")  # the genuine webhook of the signature test
        and k not in reports
        and k not in stream_keys
        and not k.startswith((b"sp:idx:", b"sp:outbox", b"sp:idle:", b"sp:webhook:"))
    ]
    assert unknown == [], unknown[:5]
    for sid in hostile:  # each session has exactly its keys: session, pev, piv, events, ids, art
        assert await redis.exists(*C.session_keys(sid)) == 6, repr(sid[:40])

    # Read back through the real API, ids URL-encoded.
    auth = {"Authorization": f"Bearer {KEY_ALL}"}
    async with httpx.AsyncClient(base_url=world.api.url, timeout=10, headers=auth) as c:
        for sid in hostile:
            q = quote(sid, safe="")
            r = await c.get(f"/v1/sessions/{q}")
            assert r.status_code == 200 and r.json()["data"]["id"] == sid, (repr(sid[:40]), r.text[:200])
            r = await c.get(f"/v1/sessions/{q}/participants")
            assert {p["id"] for p in r.json()["data"]["participants"]} == {
                hostile_peer(sid, n) for n in range(2)
            }
            peer = quote(hostile_peer(sid, 0), safe="")
            r = await c.get(f"/v1/sessions/{q}/participants/{peer}")
            assert r.status_code == 200, r.text[:200]
            assert (await c.get(f"/v1/sessions/{q}/transcript")).json()["data"]["sessionId"] == sid
            report = (await c.get(f"/v1/sessions/peer-report/{peer}")).json()["data"]["participant"]
            assert report["session_id"] == sid and report["id"] == hostile_peer(sid, 0)
        listed = (await c.get("/v1/sessions", params={"per_page": 100, "organization_id": "org-h"})).json()
        assert {s["id"] for s in listed["data"]["sessions"]} == set(HOSTILE_IDS)
    record_figures(
        "security_hostile_ids",
        {
            "test": "tests/faults/test_security.py::test_hostile_ids_stay_in_their_own_keys_and_read_back",
            "ids": [repr(s) if len(s) < 40 else f"{s[:12]!r}... ({len(s)} chars)" for s in HOSTILE_IDS],
            "keys_in_redis": len(found),
            "keys_not_owned_by_their_session": len(unknown),
        },
    )


# --- last: nothing secret in either process's log ---------------------------------------------------------


async def test_no_key_password_secret_or_signature_in_the_logs(world: World) -> None:
    """Both processes ran at DEBUG through every test above (refused keys and signatures included)."""
    async with httpx.AsyncClient(base_url=world.api.url, timeout=10) as c:
        for key in (KEY_A, KEY_A + "x", "Bearer-less"):
            await c.get("/v1/sessions", headers={"Authorization": f"Bearer {key}"})
        await c.post("/webhooks/livepeer", content=b"{}", headers={"Livepeer-Signature": f"t=1,v1={FORGED}"})
        await c.post("/webhooks/realtimekit", content=b"{}", headers={"rtk-signature": FORGED})
    logs = {"worker": world.worker.log_text(), "api": world.api.log_text()}
    assert "DEBUG" in logs["worker"] and "refused" in logs["api"]  # the logs are real and verbose
    for name, text in logs.items():
        for secret in (*KEYS, PASSWORD, SECRET, FORGED, public_pem().splitlines()[1]):
            assert secret not in text, (name, secret[:12])
    record_figures(
        "security_logs",
        {
            "test": "tests/faults/test_security.py::test_no_key_password_secret_or_signature_in_the_logs",
            "log_bytes_checked": {k: len(v) for k, v in logs.items()},
            "secrets_checked": len(KEYS) + 4,
        },
    )
