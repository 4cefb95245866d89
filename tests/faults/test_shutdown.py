"""Shutdown: SIGTERM while a large batch is in flight (issue 6.7).

The batch finishes, its offsets commit, the outbox drains, and the worker exits with 0 within the
graceful timeout (FastStream waits up to 30 s for a batch in flight: runtime.build_broker).
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest
import redis.asyncio as aioredis

from service import constants as C
from service.constants import RTK_WEBHOOKS, Topics
from service.core.model import ReferenceSession
from tests.integration.harness import (
    Item,
    Log,
    WorkerProcess,
    committed_offsets,
    produce_records,
    wait_for,
    worker_env,
)
from tests.meetings import T0, random_meeting, webhook_bodies

from .support import (
    Counts,
    assert_stored_state_matches,
    assert_summaries_match,
    count,
    own_topics,
    record_figures,
    reference_of,
    stored_summary_revisions,
    worker_counts,
)

pytestmark = pytest.mark.integration

GRACEFUL_TIMEOUT_S = 30.0  # runtime.build_broker(graceful_timeout=...)
BATCH = 20_000
PAUSE_MS = 2000


@dataclass
class Stopped:
    log: Log
    topics: Topics
    expected: dict[str, ReferenceSession]  # the rules applied to the committed records
    committed_records: int
    committed_by_topic: dict[str, int]
    in_flight_at_signal: bool
    exit_code: int
    exit_s: float
    counts: Counts
    worker_log: str


def meetings_log(rng: random.Random, events: int) -> Log:
    """Meetings told by their webhooks only (joins, leaves, the end, a transcript), all on one topic,
    so that every batch ends sessions and queues their summaries."""
    log = Log()
    while len(log.items) < events:
        m = random_meeting(rng, t0=T0 + len(log.session_ids) * 60_000)
        log.session_ids.append(m.session_id)
        for body in webhook_bodies(m, transcript_url=f"https://x.invalid/{m.session_id}.vtt"):
            log.items.append(Item(RTK_WEBHOOKS, m.session_id.encode(), orjson.dumps(body)))
    return log


@pytest.fixture(scope="module")
async def stopped(kafka_bootstrap: str, own_redis_url: str) -> AsyncIterator[tuple[Stopped, aioredis.Redis]]:
    """A worker SIGTERMed while its first batch (up to 20,000 webhooks) waits on Redis."""
    redis_url = own_redis_url
    redis = aioredis.Redis.from_url(redis_url)
    log = meetings_log(random.Random(67), 60_000)
    topics = await own_topics(kafka_bootstrap, inbound=3)
    where = produce_records(kafka_bootstrap, topics, [(i.topic, i.key, i.value) for i in log.items])
    env = worker_env(kafka_bootstrap, redis_url, topics, BATCH_MAX_RECORDS=str(BATCH))
    heads = [C.session_keys(sid)[0] for sid in log.session_ids]
    w = WorkerProcess(env)
    try:
        # The first script has run: the batch is in Redis' hands, its index upkeep and commit to come.
        async def applying() -> bool:
            assert w.alive(), w.log_text()[-3000:]
            return bool(await redis.exists(*heads))

        await wait_for(applying, 60, "the first batch to reach Redis", every=0.005)
        # Hold the rest of the batch's writes for 2 s (reads go on): the signal then always finds the
        # batch waiting on Redis, as it mostly is, whatever the load on this machine.
        await redis.execute_command("CLIENT", "PAUSE", str(PAUSE_MS), "WRITE")
        indexed = await redis.zmscore(C.IDX_SESSIONS, log.session_ids)
        w.proc.send_signal(signal.SIGTERM)
        t = time.monotonic()
        w.proc.wait(GRACEFUL_TIMEOUT_S + 30)
        exit_s = time.monotonic() - t
        rc = w.stop()
        partitions = sorted({(t, p) for t, p, _ in where})
        committed = await committed_offsets(
            kafka_bootstrap, group=env["CONSUMER_GROUP"], partitions=partitions
        )
        done = [it for it, (t, p, o) in zip(log.items, where, strict=True) if o < committed[(t, p)]]
        by_topic: dict[str, int] = {}
        for it in done:
            by_topic[it.topic] = by_topic.get(it.topic, 0) + 1
        yield (
            Stopped(
                log=log,
                topics=topics,
                expected=reference_of(done),
                committed_records=len(done),
                committed_by_topic=by_topic,
                in_flight_at_signal=all(s is None for s in indexed),
                exit_code=rc,
                exit_s=exit_s,
                counts=worker_counts(w.log_text()) if rc == 0 else {},
                worker_log=w.log_text(),
            ),
            redis,
        )
    finally:
        w.stop()
        await redis.aclose()


async def test_sigterm_finishes_the_batch_commits_it_and_exits_0_in_time(
    stopped: tuple[Stopped, aioredis.Redis],
) -> None:
    run, redis = stopped
    assert run.exit_code == 0, run.worker_log[-3000:]
    assert run.exit_s < GRACEFUL_TIMEOUT_S
    assert run.in_flight_at_signal, "the signal came after the batch's index upkeep: not in flight"
    assert run.committed_records > 0, "the batch in flight was not committed"
    # Committed = applied, exactly: Redis holds the committed records' effects and nothing else.
    await assert_stored_state_matches(redis, run.expected)
    others = [C.session_keys(sid)[0] for sid in run.log.session_ids if sid not in run.expected]
    assert not others or await redis.exists(*others) == 0, "a record past the committed offsets was applied"
    # Every record it consumed is counted once: applied, duplicate or dead-lettered.
    for topic, n in run.committed_by_topic.items():
        handled = sum(count(run.counts, what, topic) for what in ("applied", "duplicate", "dead_lettered"))
        assert (count(run.counts, "consumed", topic), handled) == (n, n), topic
    record_figures(
        "shutdown",
        {
            "test": "tests/faults/test_shutdown.py::test_sigterm_finishes_the_batch_commits_it_and_exits_0_in_time",
            "batch_max_records": BATCH,
            "records_committed": run.committed_records,
            "sessions_applied": len(run.expected),
            "exit_code": run.exit_code,
            "sigterm_to_exit_s": round(run.exit_s, 2),
            "redis_writes_held_after_sigterm_ms": PAUSE_MS,
            "graceful_timeout_s": GRACEFUL_TIMEOUT_S,
        },
    )


async def test_sigterm_drains_the_outbox(
    stopped: tuple[Stopped, aioredis.Redis], kafka_bootstrap: str
) -> None:
    run, redis = stopped
    assert run.exit_code == 0
    queued = [s for s in await redis.zmscore(C.OUTBOX, list(run.expected)) if s is not None]
    assert queued == [], f"{len(queued)} sessions left in sp:outbox"
    summaries = assert_summaries_match(
        kafka_bootstrap,
        run.topics.summaries,
        run.expected,
        await stored_summary_revisions(redis, run.expected),
    )
    record_figures(
        "shutdown_outbox",
        {
            "test": "tests/faults/test_shutdown.py::test_sigterm_drains_the_outbox",
            "left_in_outbox": len(queued),
            **summaries,
        },
    )
