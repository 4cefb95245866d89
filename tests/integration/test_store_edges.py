"""Edge cases of the session script that the property tests do not reach by chance."""

from __future__ import annotations

import uuid

import orjson
import pytest
import redis.asyncio as aioredis

from service.core.model import Artifact, PeerEvent, SessionMessage
from service.core.streams import ReferenceStream, Snapshot, StreamCommand, StreamEnd
from service.livepeer import decode_snapshot
from service.store import Store
from service.stream_store import StreamStore

pytestmark = pytest.mark.integration


def _join(sid: str, t: int) -> PeerEvent:
    return PeerEvent(sid, f"e-{t}", "peer-1", 2, t, orjson.dumps({"peer_id": "peer-1"}).decode())


def _transcript(sid: str) -> Artifact:
    value = orjson.dumps({"url": "https://x/t.csv", "expiry": None}).decode()
    return Artifact(sid, "transcript", "000000000000000|a", value)


def _meeting_without_start(sid: str, t: int) -> SessionMessage:
    meta = orjson.dumps({"meeting_display_name": "m"}).decode()
    return SessionMessage(sid, "LIVE", t, None, None, meta, f"d-{t}")


async def test_a_transcript_before_the_session_is_due_once_the_session_exists(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, retention_ms=60_000)
    await store.load_scripts()
    sid = f"edge-{uuid.uuid4()}"
    first = (await store.apply({sid: [_transcript(sid)]}))[sid]
    assert first.status == "" and not first.due
    then = (await store.apply({sid: [_join(sid, 1_000)]}))[sid]
    assert then.status == "LIVE" and then.due


@pytest.mark.parametrize("order", ["message first", "join first"])
async def test_started_at_without_a_start_does_not_depend_on_the_order(
    redis_client: aioredis.Redis, order: str
) -> None:
    store = Store(redis_client, retention_ms=60_000)
    await store.load_scripts()
    sid = f"edge-{uuid.uuid4()}"
    items = [_meeting_without_start(sid, 600_000), _join(sid, 900_000)]
    if order == "join first":
        items.reverse()
    for item in items:
        await store.apply({sid: [item]})
    got = await store.read_view(sid)
    assert got is not None
    assert got[0].started_ms == 900_000  # the earliest peer event, whatever came first


@pytest.mark.parametrize("idle_position", [0, 1, 2])
async def test_stream_idle_without_created_at_does_not_depend_on_the_order(
    redis_client: aioredis.Redis, idle_position: int
) -> None:
    # Without createdAt a session's creation is its newest lastSeen, which moves as snapshots come.
    store = Store(redis_client, retention_ms=60_000)
    await store.load_scripts()
    streams = StreamStore(store)
    sid = f"edge-lp-{uuid.uuid4()}"

    def snap(last_seen: int) -> Snapshot:
        body = {"id": sid, "lastSeen": last_seen, "parentId": "p", "sourceBytes": last_seen}
        return decode_snapshot(orjson.dumps(body))

    commands: list[StreamCommand] = [snap(100_000), snap(200_000)]
    commands.insert(idle_position, StreamEnd(sid, 150_000, ""))
    expected = ReferenceStream(sid)
    for c in commands:
        expected.apply(c)
        await streams.apply({sid: [c]})
    got = await streams.read(sid)
    assert got is not None
    assert got[0].status == expected.view().status == "LIVE"


async def test_a_participant_read_holds_that_peer_alone_whatever_its_id(redis_client: aioredis.Redis) -> None:
    # The events hash's fields are `<encoded>:<peer id>`: ids with ':' in them must not pick up
    # another peer's events. A peer that was only created (never joined) is a row too.
    store = Store(redis_client, retention_ms=60_000)
    await store.load_scripts()
    sid = f"edge-{uuid.uuid4()}"
    t0 = 1_767_261_600_000
    peers = ["b", "a:b", ":b", "b:", "x:y:z", "12:34"]
    facts = []
    for n, peer in enumerate(peers):
        body = orjson.dumps({"peer_id": peer, "display_name": f"name {n}"}).decode()
        facts.append(PeerEvent(sid, f"c-{n}", peer, 0, t0 + n, body))
        if peer != "x:y:z":  # only created
            facts.append(PeerEvent(sid, f"j-{n}", peer, 2, t0 + 1_000 + n, body))
    await store.apply({sid: facts})
    whole = await store.read_view(sid)
    assert whole is not None
    assert sorted(whole[0].peers) == sorted(peers)
    for peer in peers:
        one = await store.read_view(sid, peer=peer)
        assert one is not None
        assert list(one[0].peers) == [peer]
        assert one[0].peers[peer] == whole[0].peers[peer]
        assert one[2] == {peer: whole[2][peer]}
    assert (await store.read_view(sid, peer="nobody")) is not None
