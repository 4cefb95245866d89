"""Scale-out: three workers share six partitions; one stops mid-stream and another starts (issue 6.2)."""

from __future__ import annotations

import random
import time

import httpx
import pytest
import redis.asyncio as aioredis

from tests.integration.harness import (
    Offsets,
    WorkerProcess,
    assert_state_matches,
    drained,
    produce,
    reference,
    wait_for,
    worker_env,
)

from .support import (
    assert_stored_state_matches,
    assert_summaries_match,
    assigned_partitions,
    count,
    expected_counts,
    own_topics,
    probes,
    progress,
    record_figures,
    sized_log,
    stored_summary_revisions,
    worker_counts,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

EVENTS = 60_000
PARTITIONS = 6
INBOUND_TOPICS = 6  # every inbound topic the worker subscribes to, each with PARTITIONS partitions


@pytest.mark.timeout(600)
async def test_three_workers_then_one_stopped_and_one_started_equal_the_rules(
    kafka_bootstrap: str, redis_url: str, redis_client: aioredis.Redis, api: httpx.AsyncClient
) -> None:
    rng = random.Random(62)
    log = sized_log(rng, EVENTS)
    expected = reference(log)
    once = expected_counts(log.items)
    topics = await own_topics(kafka_bootstrap, inbound=PARTITIONS)
    env = worker_env(kafka_bootstrap, redis_url, topics)
    group = env["CONSUMER_GROUP"]
    gauge = probes(log)
    third = len(log.items) // 3
    chunks = [log.items[:third], log.items[third : 2 * third], log.items[2 * third :]]
    produced: Offsets = {}

    def send(items: list) -> None:
        for tp, end in produce(kafka_bootstrap, topics, items).items():
            produced[tp] = max(produced.get(tp, 0), end)

    t0 = time.monotonic()
    workers = [WorkerProcess(env) for _ in range(3)]
    try:

        async def shared_by_three() -> bool:
            got = [assigned_partitions(w) for w in workers]
            return sum(got) == PARTITIONS * INBOUND_TOPICS and all(got)

        await wait_for(shared_by_three, 60, "three workers to share the partitions")
        split_three = [assigned_partitions(w) for w in workers]
        send(chunks[0])
        await wait_for(lambda: _at_least(redis_client, gauge, 0.15), 60, "the first third to be applied")
        send(chunks[1])
        await wait_for(lambda: _at_least(redis_client, gauge, 0.40), 60, "the second third to flow")
        # Mid-stream: the second third is still being consumed when one worker leaves and another joins.
        stopped_at = round(await progress(redis_client, gauge), 3)
        assert workers[1].stop() == 0, workers[1].log_text()[-3000:]
        workers.append(WorkerProcess(env))
        live = [workers[0], workers[2], workers[3]]

        async def shared_again() -> bool:
            got = [assigned_partitions(w) for w in live]
            return sum(got) == PARTITIONS * INBOUND_TOPICS and all(got)

        # The last third goes to the new worker's partitions too, whatever the rebalance took.
        await wait_for(shared_again, 60, "the new worker to get partitions")
        split_after = [assigned_partitions(w) for w in live]
        send(chunks[2])
        await wait_for(
            lambda: drained(kafka_bootstrap, group, produced, redis_client), 180, "the group to drain"
        )
        took = time.monotonic() - t0
    except BaseException:
        for w in workers:
            w.stop()
            print(w.log_text()[-3000:])
        raise
    for w in workers:
        assert w.stop() == 0, w.log_text()[-3000:]

    await assert_stored_state_matches(redis_client, expected)
    summaries = assert_summaries_match(
        kafka_bootstrap, topics.summaries, expected, await stored_summary_revisions(redis_client, expected)
    )
    await assert_state_matches(api, {sid: expected[sid] for sid in rng.sample(sorted(expected), 30)})

    # Nothing lost, nothing counted twice: over all four workers, every record consumed was applied,
    # a duplicate or dead-lettered, and the facts applied are exactly those of one clean delivery.
    counts = [worker_counts(w.log_text()) for w in workers]
    per_topic = {}
    for topic in sorted({t for _, t in once}):
        consumed = sum(count(c, "consumed", topic) for c in counts)
        applied = sum(count(c, "applied", topic) for c in counts)
        duplicate = sum(count(c, "duplicate", topic) for c in counts)
        dead = sum(count(c, "dead_lettered", topic) for c in counts)
        produced_n = sum(1 for i in log.items if i.topic == topic)
        assert consumed == applied + duplicate + dead, topic
        assert applied == once[("applied", topic)], topic
        assert consumed >= produced_n and dead >= once[("dead_lettered", topic)], topic
        per_topic[topic] = {
            "produced": produced_n,
            "consumed": consumed,
            "applied": applied,
            "duplicate": duplicate,
            "dead_lettered": dead,
            "redelivered": consumed - produced_n,
        }
    assert all(count(c, "consumed") > 0 for c in counts), "a worker consumed nothing"

    record_figures(
        "scale_out",
        {
            "test": "tests/faults/test_scale_out.py::"
            "test_three_workers_then_one_stopped_and_one_started_equal_the_rules",
            "events": len(log.items),
            "sessions": len(expected),
            "partitions_per_topic": PARTITIONS,
            "partitions_per_worker_with_three": split_three,
            "partitions_per_worker_after_swap": split_after,
            "progress_when_worker_2_stopped": stopped_at,
            "consumed_per_worker": [count(c, "consumed") for c in counts],
            "counts_by_topic": per_topic,
            "run_s": round(took, 1),
            **summaries,
        },
    )


async def _at_least(redis: aioredis.Redis, gauge: list[str], share: float) -> bool:
    return await progress(redis, gauge) >= share
