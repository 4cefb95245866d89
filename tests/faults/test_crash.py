"""Crash: the worker SIGKILLed ten times at random moments of a 200,000-event replay (issue 6.1)."""

from __future__ import annotations

import asyncio
import random
import signal
import time

import httpx
import pytest
import redis.asyncio as aioredis

from service import constants as C
from tests.integration.harness import (
    WorkerProcess,
    assert_state_matches,
    consume_all,
    drained,
    group_lag,
    produce,
    reference,
    wait_for,
    worker_env,
)

from .support import (
    assert_stored_state_matches,
    assert_summaries_match,
    own_topics,
    record_figures,
    sized_log,
    stored_summary_revisions,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

EVENTS = 200_000
KILLS = 10
SEED = 20260106


@pytest.mark.timeout(900)
async def test_ten_sigkills_during_a_200k_event_replay_change_nothing(
    kafka_bootstrap: str, redis_url: str, redis_client: aioredis.Redis, api: httpx.AsyncClient
) -> None:
    rng = random.Random(SEED)
    started = time.monotonic()
    log = sized_log(rng, EVENTS)
    expected = reference(log)
    topics = await own_topics(kafka_bootstrap, inbound=6)
    produced = produce(kafka_bootstrap, topics, log.items)
    prepared_s = time.monotonic() - started
    env = worker_env(kafka_bootstrap, redis_url, topics)
    group = env["CONSUMER_GROUP"]
    kills: list[dict[str, float | int]] = []
    t0 = time.monotonic()
    w = WorkerProcess(env)
    try:
        for _ in range(KILLS):

            async def assigned(w: WorkerProcess = w) -> bool:
                assert w.alive(), w.log_text()[-3000:]
                return "assigned to partitions" in w.log_text()

            await wait_for(assigned, 60, "the worker to join the group", every=0.05)
            # Anywhere in the first batches, their commits or an outbox pass; short enough that
            # ten lifetimes end well before the replay does (the worker drains about 25,000
            # events/s here, and a batch of 20,000 takes about 0.5 s).
            delay = rng.uniform(0.0, 0.8)
            await asyncio.sleep(delay)
            at = time.monotonic() - t0
            w.proc.send_signal(signal.SIGKILL)
            w.proc.wait(10)
            assert w.stop() == -signal.SIGKILL
            kills.append(
                {
                    "at_s": round(at, 2),
                    "after_join_s": round(delay, 2),
                    "records_not_committed": await group_lag(kafka_bootstrap, group, produced),
                }
            )
            w = WorkerProcess(env)
        await wait_for(
            lambda: drained(kafka_bootstrap, group, produced, redis_client), 300, "the last worker to drain"
        )
        replay_s = time.monotonic() - t0
    except BaseException:
        w.stop()
        print(w.log_text()[-5000:])
        raise
    assert w.stop() == 0, w.log_text()[-3000:]

    checked = time.monotonic()
    await assert_stored_state_matches(redis_client, expected)
    scores = await redis_client.zmscore(C.IDX_SESSIONS, list(expected))
    assert all(s is not None for s in scores), "a session is missing from the index"
    summaries = assert_summaries_match(
        kafka_bootstrap,
        topics.summaries,
        expected,
        await stored_summary_revisions(redis_client, expected),
    )
    # The HTTP path too, on a sample.
    await assert_state_matches(api, {sid: expected[sid] for sid in rng.sample(sorted(expected), 40)})
    # Dead letters are at least once: every bad message is there, with its reason, maybe more than once.
    dead = consume_all(kafka_bootstrap, topics.dead_letter, idle_s=1.0)
    got = {(m.value(), dict(m.headers())["x-error-type"].decode()) for m in dead}
    assert got == {(i.value, i.bad) for i in log.bad}
    assert all(k["records_not_committed"] > 0 for k in kills), "a kill came after the replay"

    record_figures(
        "crash",
        {
            "test": "tests/faults/test_crash.py::test_ten_sigkills_during_a_200k_event_replay_change_nothing",
            "events": len(log.items),
            "sessions": len(expected),
            "ended_sessions": summaries["summaries"],
            "bad_messages": len(log.bad),
            "dead_letters_published": len(dead),
            "kills": kills,
            "replay_with_kills_s": round(replay_s, 1),
            "prepare_s": round(prepared_s, 1),
            "check_s": round(time.monotonic() - checked, 1),
            **summaries,
        },
    )
