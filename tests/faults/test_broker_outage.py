"""Broker faults: unreachable when the worker and the API start, and gone for 10 s mid-run (issue 6.4).

tansu keeps everything in memory, so "the broker comes back" means a new tansu on the same port:
topics and committed offsets are gone, and the test creates the topics again, as an operator would
after losing a broker's disks. What must hold: the worker and the API keep running (no restart),
say clearly what is wrong, back off, report not ready, and consume the new broker's messages.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.constants import Topics
from service.core.model import ReferenceSession
from service.embedded import KafkaServer, ensure_topics, free_port, start_kafka, topic_layout
from tests.integration.harness import (
    WorkerProcess,
    drained,
    make_log,
    produce,
    reference,
    wait_for,
    worker_env,
)

from .support import (
    ApiProcess,
    assert_stored_state_matches,
    assert_summaries_match,
    record_figures,
    stored_summary_revisions,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

OUTAGE_S = 10.0


@dataclass
class BrokerRun:
    """What one run saw: at start (no broker), mid-run (broker gone), and after each comeback."""

    worker_alive_at_start: bool = False
    worker_log_at_start: str = ""
    readyz_at_start: list[tuple[int, str]] = field(default_factory=list)
    ready_after_start_s: float = 0.0
    first_log: dict[str, ReferenceSession] = field(default_factory=dict)
    second_log: dict[str, ReferenceSession] = field(default_factory=dict)
    second_log_events: int = 0
    worker_pid_before: int = 0
    worker_alive_mid_run: bool = False
    worker_pid_after: int = 0
    worker_log_mid_run: str = ""
    readyz_mid_run: list[tuple[int, str]] = field(default_factory=list)
    ready_again_s: float = 0.0
    second_log_applied_s: float = 0.0
    api_pid: tuple[int, int] = (0, 0)
    api_log: str = ""
    worker_rc: int | None = None
    summary_figures: dict[str, int] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


async def _sample_readyz(api: ApiProcess, seconds: float, into: list[tuple[int, str]]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status, body = await api.readyz()
        into.append((status, body["checks"]["kafka"]))
        await asyncio.sleep(1.0)


async def _ready(api: ApiProcess) -> bool:
    return (await api.readyz())[0] == 200


@pytest.fixture(scope="module")
async def broker_run(own_redis_url: str) -> AsyncIterator[tuple[BrokerRun, aioredis.Redis, str, Topics]]:
    run = BrokerRun()
    redis_url = own_redis_url
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    topics = Topics(prefix=f"b{random.randrange(16**8):08x}.")
    layout = topic_layout(topics, inbound=3, outbound=1)
    env = worker_env(bootstrap, redis_url, topics)
    redis = aioredis.Redis.from_url(redis_url)
    api = ApiProcess(env)
    worker = WorkerProcess(env)
    kafka: KafkaServer | None = None
    try:
        # 1. No broker at all: both processes start, say why they wait, and the API is not ready.
        await api.wait_serving()
        await _sample_readyz(api, 8.0, run.readyz_at_start)
        run.worker_alive_at_start = worker.alive()
        run.worker_log_at_start = worker.log_text()
        kafka = start_kafka(port)
        await ensure_topics(bootstrap, layout)
        up = time.monotonic()
        if not worker.alive():  # it gave up at start: the rest of the run needs a worker
            worker.stop()
            worker = WorkerProcess(env)
        await wait_for(lambda: _ready(api), 60, "the API to see the broker")
        run.ready_after_start_s = time.monotonic() - up

        # 2. A log through the first broker.
        rng = random.Random(64)
        first = make_log(rng, 60)
        run.first_log = reference(first)
        produced = produce(bootstrap, topics, first.items)
        await wait_for(
            lambda: drained(bootstrap, env["CONSUMER_GROUP"], produced, redis), 90, "the first log"
        )
        run.worker_pid_before = worker.proc.pid
        log_mark = len(worker.log_text())

        # 3. The broker dies; 10 s later a new one (empty) listens on the same port.
        kafka.stop()
        await _sample_readyz(api, OUTAGE_S, run.readyz_mid_run)
        run.worker_alive_mid_run = worker.alive()
        kafka = start_kafka(port)
        await ensure_topics(bootstrap, layout)
        back = time.monotonic()
        await wait_for(lambda: _ready(api), 60, "the API to see the new broker")
        run.ready_again_s = time.monotonic() - back

        # 4. New messages on the new broker are consumed by the same worker process.
        second = make_log(rng, 60, t0=1_800_000_000_000)
        run.second_log = reference(second)
        run.second_log_events = len(second.items)
        produced = produce(bootstrap, topics, second.items)
        await wait_for(
            lambda: drained(bootstrap, env["CONSUMER_GROUP"], produced, redis), 120, "the second log"
        )
        run.second_log_applied_s = time.monotonic() - back
        run.worker_pid_after = worker.proc.pid if worker.alive() else 0
        run.worker_log_mid_run = worker.log_text()[log_mark:]
        run.summary_figures = assert_summaries_match(
            bootstrap,
            topics.summaries,
            run.second_log,
            await stored_summary_revisions(redis, run.second_log),
        )
        run.api_pid = (api.proc.pid, api.proc.pid if api.alive() else 0)
        yield run, redis, bootstrap, topics
    finally:
        run.worker_rc = worker.stop()
        api.stop()
        run.api_log = api.log_text()
        await redis.aclose()
        if kafka is not None:
            kafka.stop()


async def test_the_api_is_not_ready_without_a_broker_and_recovers_without_a_restart(
    broker_run: tuple[BrokerRun, aioredis.Redis, str, Topics],
) -> None:
    run, *_ = broker_run
    assert run.readyz_at_start and all(s == 503 for s, _ in run.readyz_at_start), run.readyz_at_start
    assert all(k.startswith("unreachable: ") for _, k in run.readyz_at_start)
    assert run.readyz_mid_run and run.readyz_mid_run[-1][0] == 503, run.readyz_mid_run
    assert run.api_pid[0] == run.api_pid[1], "the API exited"
    record_figures(
        "broker_outage_api",
        {
            "test": "tests/faults/test_broker_outage.py::"
            "test_the_api_is_not_ready_without_a_broker_and_recovers_without_a_restart",
            "readyz_without_broker": sorted({f"{s} {k}" for s, k in run.readyz_at_start}),
            "ready_after_broker_appeared_s": round(run.ready_after_start_s, 1),
            "readyz_during_outage": [s for s, _ in run.readyz_mid_run],
            "ready_after_broker_came_back_s": round(run.ready_again_s, 1),
        },
    )


async def test_the_worker_rides_out_a_broker_restart_mid_run(
    broker_run: tuple[BrokerRun, aioredis.Redis, str, Topics],
) -> None:
    run, redis, *_ = broker_run
    assert run.worker_alive_mid_run, "the worker exited while the broker was gone"
    assert run.worker_pid_after == run.worker_pid_before, "the worker was restarted"
    # The state of both logs: the first one untouched by the outage, the second applied after it.
    await assert_stored_state_matches(redis, run.first_log)
    await assert_stored_state_matches(redis, run.second_log)
    record_figures(
        "broker_outage_worker",
        {
            "test": "tests/faults/test_broker_outage.py::test_the_worker_rides_out_a_broker_restart_mid_run",
            "outage_s": OUTAGE_S,
            "second_log_events": run.second_log_events,
            "second_log_applied_after_broker_back_s": round(run.second_log_applied_s, 1),
            **run.summary_figures,
        },
    )


async def test_the_worker_waits_for_a_broker_unreachable_at_start(
    broker_run: tuple[BrokerRun, aioredis.Redis, str, Topics],
) -> None:
    run, *_ = broker_run
    assert run.worker_alive_at_start, f"the worker exited: {run.worker_log_at_start[-1500:]}"
    delays = [float(d) for d in re.findall(r"Kafka[^\n]*retrying in ([\d.]+) ?s", run.worker_log_at_start)]
    assert len(delays) >= 3 and delays == sorted(delays) and delays[-1] > delays[0]


async def test_the_worker_logs_a_broker_outage_with_backoff(
    broker_run: tuple[BrokerRun, aioredis.Redis, str, Topics],
) -> None:
    run, *_ = broker_run
    text = run.worker_log_mid_run
    delays = [float(d) for d in re.findall(r"Kafka[^\n]*retrying in ([\d.]+) ?s", text)]
    # Two lines at least in a 10 s outage, the wait growing, then one saying it is over.
    assert len(delays) >= 2 and delays == sorted(delays) and delays[-1] > delays[0], text[-2000:]
    assert re.search(r"Kafka[^\n]* reachable again", text), text[-2000:]
