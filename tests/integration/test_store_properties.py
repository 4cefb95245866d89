"""The Lua scripts against the reference model: same logs, shuffled, duplicated and split into batches."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from service import constants as C
from service.core import shapes
from service.core.model import PeerEvent, ReferenceSession
from service.core.streams import ReferenceStream, StreamEnd, stream_session_object, stream_summary
from service.livepeer import decode_livepeer_webhook, decode_snapshot
from service.store import Store
from service.stream_store import StreamStore
from service.webhooks import decode_rtk_webhook
from tests.meetings import Meeting, random_meeting, webhook_bodies
from tests.streams import T0, snapshot_series
from tests.streams import webhook as lp_webhook
from tests.unit.rtk_factory import apply
from tests.unit.test_properties import SECONDS, _sorted, event_logs, redeliveries, snapshot
from tests.unit.test_webhooks import by_topics, by_webhooks

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # Hypothesis drives plain functions; this loop runs their Redis calls.
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), log=event_logs(), now_s=SECONDS)
def test_scripts_equal_the_reference(
    loop: asyncio.AbstractEventLoop, redis_url: str, data: st.DataObject, log: list, now_s: int
) -> None:
    sid = f"prop-{uuid.uuid4()}"
    log = _with_session_id(log, sid)
    delivered = data.draw(redeliveries(log))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(delivered)), max_size=5)))
    batches = [delivered[a:b] for a, b in zip([0, *cuts], [*cuts, len(delivered)], strict=True) if b > a]

    _assert_scripts_equal_the_reference(loop, redis_url, sid, batches, now_s)


def _with_session_id(log: list[Any], sid: str) -> list[Any]:
    # Peer events are named tuples, the other commands dataclasses.
    return [
        item._replace(session_id=sid)
        if isinstance(item, PeerEvent)
        else dataclasses.replace(item, session_id=sid)
        for item in log
    ]


_TOTALS = (
    "max_concurrent_participants",
    "participants_total",
    "open_count",
    "closed_ms",
    "open_start_sum",
    "live_participants",
)


def _assert_scripts_equal_the_reference(
    loop: asyncio.AbstractEventLoop, redis_url: str, sid: str, batches: list[list[Any]], now_s: int
) -> None:
    """Apply `batches` one script call each; the state and each item's letter equal the reference's."""
    delivered = [item for batch in batches for item in batch]
    expected = ReferenceSession(sid)
    outcomes = [apply(expected, item) for item in delivered]

    async def run() -> tuple[object, dict[bytes, bytes], str]:
        redis = Redis.from_url(redis_url)
        try:
            store = Store(redis, retention_ms=3_600_000)
            await store.load_scripts()
            letters = ""
            for batch in batches:
                letters += (await store.apply({sid: batch}))[sid].letters  # type: ignore[union-attr]
            got = await store.read_view(sid)
            assert got is not None
            await redis.delete(*C.session_keys(sid))
            return got[0], got[1], letters
        finally:
            await redis.aclose()

    view, fields, letters = loop.run_until_complete(run())
    want = expected.view()
    now_ms = want.started_ms + now_s * 1000
    assert snapshot(view, now_ms) == snapshot(want, now_ms)
    # The stored numbers other services read straight from the hash (docs/redis-keys.md); every
    # log has a peer event, so they are all there.
    stored = {k.decode(): v.decode() for k, v in fields.items()}
    assert {f: int(stored[f]) for f in _TOTALS} == {
        "max_concurrent_participants": want.totals.peak,
        "participants_total": len(want.peers),
        "open_count": want.totals.open_count,
        "closed_ms": want.totals.closed_ms,
        "open_start_sum": want.totals.open_start_sum,
        "live_participants": want.live_participants(),
    }
    # Each message is classified as the reference does: applied (A, or L after the end) or duplicate (D).
    assert len(letters) == len(delivered)
    assert [("duplicate" if c == "D" else "applied") for c in letters] == outcomes


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), log=event_logs(), now_s=SECONDS)
def test_scripts_equal_the_reference_for_facts_in_time_order_one_per_call(
    loop: asyncio.AbstractEventLoop, redis_url: str, data: st.DataObject, log: list, now_s: int
) -> None:
    # Live traffic: one fact per call, mostly in time order, a few facts late or twice. The
    # random cuts of the test above rarely give one call per fact in this order.
    sid = f"prop-{uuid.uuid4()}"
    ordered = _sorted(_with_session_id(log, sid))
    late = data.draw(st.lists(st.integers(0, len(ordered) - 1), max_size=3, unique=True))
    delivered = [item for i, item in enumerate(ordered) if i not in late]
    for i in late:
        delivered.insert(data.draw(st.integers(min(i, len(delivered)), len(delivered))), ordered[i])
    again = data.draw(st.lists(st.tuples(st.integers(0, len(ordered) - 1), st.booleans()), max_size=3))
    for n, (i, new_id) in enumerate(again):
        item = ordered[i]
        if new_id and isinstance(item, PeerEvent):  # the same fact under another id
            item = item._replace(event_id=f"{item.event_id}#again-{n}")
        delivered.insert(data.draw(st.integers(0, len(delivered))), item)
    _assert_scripts_equal_the_reference(loop, redis_url, sid, [[item] for item in delivered], now_s)


def _extra_artifacts(m: Meeting, rng: random.Random) -> list[Any]:
    """Recording statuses, transcripts and unknown events, several versions of each."""
    meeting = webhook_bodies(m)[0]["meeting"]
    bodies: list[dict[str, Any]] = []
    for status in rng.sample(["INVOKED", "RECORDING", "UPLOADING", "UPLOADED"], k=rng.randint(1, 4)):
        rec = {"id": rng.choice(["r1", "r2"]), "status": status, "startedTime": meeting["startedAt"]}
        if status == "UPLOADED":
            rec["downloadUrl"] = f"https://x/{rec['id']}.mp4"
        bodies.append({"event": "recording.statusUpdate", "meeting": meeting, "recording": rec})
    for day in rng.sample(range(1, 5), k=rng.randint(0, 3)):
        bodies.append(
            {
                "event": "meeting.transcript",
                "meeting": meeting,
                "transcriptDownloadUrl": f"https://x/t{day}.csv",
                "transcriptDownloadUrlExpiry": f"2030-01-0{day}T00:00:00.000Z",
            }
        )
    bodies.append({"event": "meeting.brandNew", "meeting": meeting, "n": rng.randint(0, 3)})
    return [c for b in bodies for c in decode_rtk_webhook(orjson.dumps(b), None)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), ended=st.booleans(), both=st.booleans())
def test_scripts_equal_the_reference_for_webhooks_and_artifacts(
    loop: asyncio.AbstractEventLoop, redis_url: str, seed: int, ended: bool, both: bool
) -> None:
    rng = random.Random(seed)
    m = random_meeting(rng, ended=ended).renamed(f"prop-{uuid.uuid4()}")
    cmds = by_webhooks(m, transcript_url="https://x/t0.csv") + _extra_artifacts(m, rng)
    if both:
        cmds += by_topics(m)
    delivered = cmds + rng.sample(cmds, k=len(cmds) // 5)
    rng.shuffle(delivered)
    cuts = sorted(rng.sample(range(len(delivered) + 1), k=min(4, len(delivered))))
    batches = [delivered[a:b] for a, b in zip([0, *cuts], [*cuts, len(delivered)], strict=True) if b > a]

    expected = ReferenceSession(m.session_id)
    outcomes = [expected.apply(c) for c in delivered]

    async def run() -> tuple[Any, Any, str]:
        redis = Redis.from_url(redis_url)
        try:
            store = Store(redis, retention_ms=3_600_000)
            await store.load_scripts()
            letters = ""
            for batch in batches:
                letters += (await store.apply({m.session_id: batch}))[m.session_id].letters
            got = await store.read_view(m.session_id)
            assert got is not None
            await redis.delete(*C.session_keys(m.session_id))
            return got[0], got[2], letters
        finally:
            await redis.aclose()

    view, stored_events, letters = loop.run_until_complete(run())
    # The same copy of each fact is kept (a topic copy over a webhook-derived one).
    assert stored_events == {
        p: {e: ev.raw_json for e, ev in evs.items()} for p, evs in expected.events.items() if evs
    }
    now_ms = expected.view().started_ms + 3_600_000
    assert snapshot(view, now_ms) == snapshot(expected.view(), now_ms)
    assert view.artifacts == expected.view().artifacts
    assert shapes.transcript_ready(view) == shapes.transcript_ready(expected.view())
    assert [("duplicate" if c == "D" else "applied") for c in letters] == outcomes


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), idle=st.booleans(), idle_rule=st.booleans())
def test_the_stream_script_equals_the_reference(
    loop: asyncio.AbstractEventLoop, redis_url: str, seed: int, idle: bool, idle_rule: bool
) -> None:
    rng = random.Random(seed)
    sid, parent, snaps = snapshot_series(rng)
    sid = f"lp-prop-{uuid.uuid4()}"
    commands: list[Any] = [decode_snapshot(orjson.dumps({**s, "id": sid})) for s in snaps]
    last = snaps[-1]["lastSeen"]
    for event, url in (("recording.waiting", None), ("recording.ready", "https://x/a.mp4")):
        body = lp_webhook(event, t_ms=last + rng.randint(-5000, 5000), stream_id=parent, session_id=sid)
        if url:
            body["payload"]["mp4Url"] = url
        commands.append(decode_livepeer_webhook(orjson.dumps(body)))
    if idle:
        commands.append(StreamEnd(sid, last + rng.randint(-3000, 3000), ""))
    delivered = commands + rng.sample(commands, k=len(commands) // 3)
    rng.shuffle(delivered)
    cuts = sorted(rng.sample(range(len(delivered) + 1), k=min(3, len(delivered))))
    batches = [delivered[a:b] for a, b in zip([0, *cuts], [*cuts, len(delivered)], strict=True) if b > a]

    expected = ReferenceStream(sid)
    outcomes = [expected.apply(c) for c in delivered]
    idle_at = T0 + 10**10
    if idle_rule:
        expected.end_idle(idle_at, 600_000)

    async def run() -> tuple[Any, str]:
        redis = Redis.from_url(redis_url)
        try:
            store = Store(redis, retention_ms=3_600_000)
            await store.load_scripts()
            streams = StreamStore(store)
            letters = ""
            for batch in batches:
                letters += (await streams.apply({sid: batch}))[sid].letters
            if idle:
                # As the worker does for a live session whose parent went idle before it was indexed.
                await streams.end([(sid, end.t_ms) for end in delivered if isinstance(end, StreamEnd)][:1])
            if idle_rule:
                await streams.end_idle([sid], idle_at, 600_000)
            got = await streams.read(sid)
            assert got is not None
            await redis.delete(*C.stream_keys(sid))
            return got[0], letters
        finally:
            await redis.aclose()

    view, letters = loop.run_until_complete(run())
    want = expected.view()
    assert (view.status, view.end_reason, view.ended_ms) == (want.status, want.end_reason, want.ended_ms)
    assert stream_session_object(view) == stream_session_object(want)
    assert stream_summary(view) == stream_summary(want)
    # Snapshots and recordings are classified as the reference does (stream ends have no duplicates).
    kept = [not isinstance(c, StreamEnd) for c in delivered]
    want_outcomes = [o for o, k in zip(outcomes, kept, strict=True) if k]
    got_letters = [x for x, k in zip(letters, kept, strict=True) if k]
    assert [("duplicate" if x == "D" else "applied") for x in got_letters] == want_outcomes
