"""Shared fixtures: one broker and one Redis per test session, fresh topics per test."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from service.constants import KEY_PREFIX, Topics
from service.embedded import ensure_topics, start_kafka, start_redis, topic_layout

# Point these at real servers to run the suite against them; by default the
# session starts embedded ones on free ports and never touches a shared Redis.
KAFKA_ENV = "SESSIONPULSE_TEST_KAFKA_BOOTSTRAP"
REDIS_ENV = "SESSIONPULSE_TEST_REDIS_URL"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    if external := os.environ.get(KAFKA_ENV):
        yield external
        return
    with start_kafka() as server:
        yield server.bootstrap


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if external := os.environ.get(REDIS_ENV):
        yield external
        return
    with start_redis() as server:
        yield server.url


@pytest.fixture
async def topics(kafka_bootstrap: str) -> Topics:
    """Topic names under a prefix of this test's own, so no test sees another's messages."""
    names = Topics(prefix=f"t{secrets.token_hex(4)}.")
    await ensure_topics(kafka_bootstrap, topic_layout(names, inbound=3, outbound=1))
    return names


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    yield client
    # Tests use unique session ids; wiping is only safe on our own embedded server.
    if not os.environ.get(REDIS_ENV):
        async for key in client.scan_iter(match=f"{KEY_PREFIX}:*", count=1000):
            await client.delete(key)
    await client.aclose()
