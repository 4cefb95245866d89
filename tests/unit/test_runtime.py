"""The composition root's clients: which connection class each Redis URL gets."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection

from service.config import Settings
from service.runtime import _PackedConnection, build_redis


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost:6379/0", _PackedConnection),
        ("rediss://localhost:6380/0", SSLConnection),
        ("unix:///run/redis/redis.sock?db=0", UnixDomainSocketConnection),
    ],
)
def test_a_redis_url_keeps_the_connection_class_its_scheme_needs(url: str, expected: type) -> None:
    """TLS and a socket path are the scheme's own connection class: hiredis packing only
    replaces the plain TCP one (an explicit class would make rediss:// connect without TLS)."""
    redis = build_redis(Settings(redis_url=url))
    assert redis.connection_pool.connection_class is expected
