"""The Lua scripts against the reference model: same logs, shuffled, duplicated and split into batches."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from service import constants as C
from service.core.model import ReferenceSession
from service.store import Store
from tests.unit.rtk_factory import apply
from tests.unit.test_properties import SECONDS, event_logs, redeliveries, snapshot

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
    log = [dataclasses.replace(item, session_id=sid) for item in log]
    delivered = data.draw(redeliveries(log))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(delivered)), max_size=5)))
    batches = [delivered[a:b] for a, b in zip([0, *cuts], [*cuts, len(delivered)], strict=True) if b > a]

    expected = ReferenceSession(sid)
    outcomes = [apply(expected, item) for item in delivered]

    async def run() -> tuple[object, str]:
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
            return got[0], letters
        finally:
            await redis.aclose()

    view, letters = loop.run_until_complete(run())
    now_ms = expected.view().started_ms + now_s * 1000
    assert snapshot(view, now_ms) == snapshot(expected.view(), now_ms)
    # Each message is classified as the reference does: applied (A, or L after the end) or duplicate (D).
    assert len(letters) == len(delivered)
    assert [("duplicate" if c == "D" else "applied") for c in letters] == outcomes
