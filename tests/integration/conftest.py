"""Fixtures of the integration tests: the read API in-process, on the test's Redis and topics."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from service.api import create_app
from service.config import Settings
from service.constants import Topics
from service.runtime import build_runtime


@pytest.fixture
async def api(kafka_bootstrap: str, redis_url: str, topics: Topics) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap, redis_url=redis_url, topic_prefix=topics.prefix
    )
    rt = build_runtime(settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(rt)), base_url="http://api"
    ) as client:
        yield client
    await rt.redis.aclose()
