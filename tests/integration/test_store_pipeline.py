"""`pipeline_replies`, the store's own pipeline, against a real Redis-protocol server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import hiredis
import pytest
import redis.asyncio as aioredis
from redis import exceptions as rexc

from service import store as store_module
from service.config import Settings
from service.core.model import PeerEvent
from service.embedded import start_redis
from service.runtime import build_redis
from service.store import Command, Store, pipeline_replies

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


async def test_a_batch_pipeline_is_written_before_the_next_one_is_built(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis works on a batch's first pipeline while the worker builds the next: each pipeline
    is written before the next one's calls are built. Started all at once, every pipeline was
    built before the first was written, and Redis waited meanwhile."""
    monkeypatch.setattr(store_module, "APPLY_CHUNK_COMMANDS", 10)
    client = build_redis(Settings(redis_url=redis_url))  # the worker's client and connections
    store = Store(client, retention_ms=60_000)
    await store.load_scripts()

    def batch_of(sids: list[str]) -> dict[str, list[Command]]:
        return {sid: [PeerEvent(sid, f"e-{sid}", "peer-1", 2, 1_000, '{"peer_id":"peer-1"}')] for sid in sids}

    # As in a running worker, the pipelines' connections are open already (a first batch).
    await store.apply(batch_of([f"stagger-{uuid.uuid4()}" for _ in range(35)]))
    sids = [f"stagger-{uuid.uuid4()}" for _ in range(35)]  # four pipelines, the last one short
    batch = batch_of(sids)
    built = 0
    written: list[tuple[int, int]] = []  # per write of script calls: (calls built, calls written)
    build = store.apply_call

    def apply_call(sid: str, cmds: Sequence[Command]) -> Any:
        nonlocal built
        built += 1
        return build(sid, cmds)

    writelines = asyncio.StreamWriter.writelines

    def recording(self: asyncio.StreamWriter, data: Iterable[bytes]) -> None:
        chunks = list(data)
        calls = b"".join(chunks).count(b"EVALSHA")
        if calls:
            written.append((built, calls))
        writelines(self, chunks)

    monkeypatch.setattr(store, "apply_call", apply_call)
    monkeypatch.setattr(asyncio.StreamWriter, "writelines", recording)
    try:
        results = await store.apply(batch)
    finally:
        await client.aclose()
    assert [r.letters for r in results.values()] == ["A"] * len(sids)
    assert [calls for _, calls in written] == [10, 10, 10, 5]
    sent = 0
    for built_then, calls in written:
        sent += calls
        assert built_then == sent  # nothing of the next pipeline built before this one went out
