"""The composition root's clients: which connection class each Redis URL gets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection

from service.config import Settings
from service.runtime import _PackedConnection, build_redis, build_runtime


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


def test_waiting_for_replicas_is_refused_on_a_cluster() -> None:
    """One WAIT covers one primary's replication stream: a cluster would need one per primary."""
    with pytest.raises(ValidationError, match="REDIS_WAIT_REPLICAS is not supported with REDIS_CLUSTER"):
        Settings(redis_cluster=True, redis_wait_replicas=1)
    assert Settings(redis_cluster=True).redis_wait_replicas == 0


@pytest.mark.parametrize("timeout_ms", [0, 10_000])
def test_the_wait_timeout_stays_below_the_socket_timeout(timeout_ms: int) -> None:
    """0 would make WAIT block forever; 10 s or more would outlast the client's socket timeout."""
    with pytest.raises(ValidationError, match="redis_wait_timeout_ms"):
        Settings(redis_wait_timeout_ms=timeout_ms)


def test_the_store_gets_the_wait_settings() -> None:
    store = build_runtime(Settings(redis_wait_replicas=2, redis_wait_timeout_ms=500)).store
    assert (store.wait_replicas, store.wait_timeout_ms) == (2, 500)
