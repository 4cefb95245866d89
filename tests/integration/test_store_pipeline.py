"""`pipeline_replies`, the store's own pipeline, against a real Redis-protocol server."""

from __future__ import annotations

import uuid

import hiredis
import pytest
import redis.asyncio as aioredis
from redis import exceptions as rexc

from service.core.model import PeerEvent
from service.embedded import start_redis
from service.store import Store, pipeline_replies

pytestmark = pytest.mark.integration


async def test_replies_come_back_in_order_with_errors_in_place(redis_client: aioredis.Redis) -> None:
    key = f"sp:test:{uuid.uuid4()}"
    try:
        replies = await pipeline_replies(
            redis_client, [("SET", key, "x"), ("INCR", key), ("GET", key), ("ECHO", "y" * 200_000)]
        )
    finally:
        await redis_client.delete(key)
    assert replies[0] == b"OK"
    assert isinstance(replies[1], hiredis.ReplyError) and "not an integer" in str(replies[1])
    assert replies[2:] == [b"x", b"y" * 200_000]  # a reply larger than one read of the stream


async def test_a_connection_given_up_part_way_is_not_reused(redis_url: str) -> None:
    """A read that times out leaves a reply on its way: the next pipeline must not read it."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=0.2, max_connections=1)
    key = f"sp:test:{uuid.uuid4()}"
    try:
        with pytest.raises(rexc.TimeoutError):
            await pipeline_replies(client, [("PING",), ("BLPOP", key, "1")])
        assert await pipeline_replies(client, [("ECHO", "after")]) == [b"after"]
    finally:
        await client.aclose()


async def test_scripts_forgotten_by_redis_are_loaded_again() -> None:
    """A restarted or failed-over Redis has no scripts: the store loads them and applies the
    batch anyway. Its own server, since the test empties the script cache."""
    with start_redis() as server:
        client = aioredis.Redis.from_url(server.url)
        try:
            store = Store(client, retention_ms=60_000)
            await store.load_scripts()
            sid = f"pipe-{uuid.uuid4()}"
            join = PeerEvent(sid, "e-1", "peer-1", 2, 1_000, '{"peer_id":"peer-1"}')
            leave = PeerEvent(sid, "e-2", "peer-1", 1, 61_000, '{"peer_id":"peer-1"}')
            assert (await store.apply({sid: [join]}))[sid].letters == "A"
            await client.script_flush()
            assert (await store.apply({sid: [leave]}))[sid].letters == "A"
            view = await store.read_view(sid)
            assert view is not None and view[0].totals.closed_ms == 60_000
        finally:
            await client.aclose()


async def test_push_messages_are_not_taken_for_replies(redis_url: str) -> None:
    """RESP3 sends push messages in band (here a client-tracking invalidation, which the
    server sends to the very connection that changes a key it tracks): they are skipped."""
    client = aioredis.Redis.from_url(redis_url, protocol=3, max_connections=1)
    key = f"sp:test:{uuid.uuid4()}"
    try:
        await pipeline_replies(client, [("SET", key, "1")])
        assert await pipeline_replies(client, [("CLIENT", "TRACKING", "ON"), ("GET", key)]) == [b"OK", b"1"]
        replies = await pipeline_replies(client, [("SET", key, "2"), ("ECHO", "after")])
        assert replies == [b"OK", b"after"]
        assert await pipeline_replies(client, [("GET", key)]) == [b"2"]
    finally:
        await client.delete(key)
        await client.aclose()
