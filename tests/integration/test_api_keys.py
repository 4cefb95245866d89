"""API_KEYS: bearer keys bound to an organization; others' sessions answer 404, never 403."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from service.api import create_app
from service.config import Settings
from service.core.model import SessionMessage
from service.runtime import build_runtime
from service.store import Store

pytestmark = pytest.mark.integration
# Organizations of this test only: other tests' sessions in the same Redis never match them.
ORG_A, ORG_B = "org-keys-a", "org-keys-b"
KEYS = orjson.dumps({"key-a": ORG_A, "key-all": "*"}).decode()


@pytest.fixture
async def secured(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[httpx.AsyncClient]:
    store = Store(redis_client, retention_ms=60_000)
    await store.load_scripts()
    for sid, org in (("auth-a", ORG_A), ("auth-b", ORG_B)):
        meta = orjson.dumps({"organization_id": org, "type": "meeting", "meeting_display_name": sid}).decode()
        msg = SessionMessage(sid, "LIVE", 1_000, 1_000, None, meta, hashlib.sha1(sid.encode()).hexdigest())
        results = await store.apply({sid: [msg]})
        await store.update_indexes(results)
    rt = build_runtime(Settings(redis_url=redis_url, api_keys=KEYS))
    transport = httpx.ASGITransport(app=create_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client
    await rt.redis.aclose()


async def test_keys_are_required_and_scope_by_organization(secured: httpx.AsyncClient) -> None:
    assert (await secured.get("/v1/sessions/auth-a")).status_code == 401
    r = await secured.get("/v1/sessions/auth-a", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"

    a = {"Authorization": "Bearer key-a"}
    assert (await secured.get("/v1/sessions/auth-a", headers=a)).status_code == 200
    other = await secured.get("/v1/sessions/auth-b", headers=a)
    missing = await secured.get("/v1/sessions/no-such", headers=a)
    assert other.status_code == missing.status_code == 404
    assert other.json() == missing.json()  # nothing tells another organization's id from a missing one
    assert (await secured.get("/v1/sessions/auth-b/report", headers=a)).status_code == 404
    listed = (await secured.get("/v1/sessions", headers=a)).json()["data"]["sessions"]
    assert [s["id"] for s in listed] == ["auth-a"]
    listed = (await secured.get("/v1/sessions", params={"organization_id": ORG_B}, headers=a)).json()
    assert listed["data"]["sessions"] == []

    every = {"Authorization": "Bearer key-all"}
    assert (await secured.get("/v1/sessions/auth-b", headers=every)).status_code == 200
    assert (await secured.get("/healthz")).status_code == 200  # probes need no key


def test_malformed_api_keys_refuse_to_start() -> None:
    with pytest.raises(ValueError, match="API_KEYS"):
        create_app(build_runtime(Settings(api_keys="not json")))
