"""The three drains of one prefilled log: (a) the ceiling, (b) the baseline, (c) the worker.

All three read the same topics, each with its own consumer group from the earliest offset,
so they see identical data. Rates are given two ways: `rate` counts from the first record
(or first commit) seen, which leaves out the group join; `rate_with_startup` counts from the
moment the consumer or process was started.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from service import constants as C
from service.constants import Topics
from service.store import Store
from service.wire import decode_peer_event, decode_session

from .kafka_io import CommittedOffsets, Offsets, SummaryReader
from .logmix import Item
from .procs import CpuWindow, ServiceProcess, cpu_seconds, status_kib

# Consumer settings the three share with the worker's defaults (service/config.py), so the
# comparison is about processing, not fetching; short group timeouts because tansu holds a
# JoinGroup for half the session timeout.
FETCH = {"fetch_max_wait_ms": 500, "max_partition_fetch_bytes": 1_048_576}
GROUP = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500}


@dataclass
class Drain:
    """One phase's figures."""

    name: str
    events: int = 0  # records consumed (and, for b and c, applied)
    seconds: float = 0.0  # from the first record/commit seen to the end
    seconds_with_startup: float = 0.0  # from the start of the consumer or process to the end
    startup_seconds: float = 0.0  # start to first record/commit
    events_after_first: int = 0  # records counted in `seconds`
    complete: bool = False
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events_after_first / self.seconds if self.seconds > 0 else 0.0

    @property
    def rate_with_startup(self) -> float:
        return self.events / self.seconds_with_startup if self.seconds_with_startup > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "events_per_s": round(self.rate),
            "events_per_s_with_startup": round(self.rate_with_startup),
            "seconds": round(self.seconds, 3),
            "seconds_with_startup": round(self.seconds_with_startup, 3),
            "startup_seconds": round(self.startup_seconds, 3),
            "events_after_first": self.events_after_first,
            "complete": self.complete,
            "notes": self.notes,
            **self.extra,
        }


# --- (a) the ceiling -------------------------------------------------------------------


async def ceiling(bootstrap: str, topics: Topics, group: str, total: int, timeout_s: float) -> Drain:
    """A bare aiokafka consumer that only decodes each value with orjson: no validation, no Redis."""
    d = Drain("ceiling")
    consumer = AIOKafkaConsumer(
        topics.rtk_sessions,
        topics.rtk_peer_events,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        partition_assignment_strategy=(RangePartitionAssignor,),
        **FETCH,
        **GROUP,
    )
    t0 = time.monotonic()
    await consumer.start()
    first: float | None = None
    count = at_first = 0
    deadline = t0 + timeout_s
    loads = orjson.loads
    try:
        while count < total and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for recs in batches.values():
                for r in recs:
                    loads(r.value)
                count += len(recs)
            if first is None and count:
                first, at_first = time.monotonic(), count
        end = time.monotonic()
    finally:
        await consumer.stop()
    d.events, d.complete = count, count >= total
    d.startup_seconds = (first or end) - t0
    d.seconds, d.events_after_first = end - (first or end), count - at_first
    d.seconds_with_startup = end - t0
    return d


# --- (b) the baseline ------------------------------------------------------------------


async def baseline(
    bootstrap: str, topics: Topics, group: str, redis_url: str, total: int, budget_s: float
) -> tuple[Drain, list[Item]]:
    """A straightforward FastStream app: one message per handler call, each with its own awaits.

    Same decoders (pydantic) and the same Lua scripts as the worker, so the same state
    rules; per message: decode, `Store.apply` of that one command, `Store.update_indexes`,
    then FastStream's default acknowledgement (ACK_FIRST, auto-commit). It is slow, so it
    runs for `budget_s` seconds after its first message; its rate is what it applied over
    that time. It publishes no summaries (no outbox). Returns the records it applied.
    """
    d = Drain("baseline")
    redis = aioredis.Redis.from_url(redis_url)
    store = Store(redis, retention_ms=7 * 24 * 3600 * 1000)
    await store.load_scripts()
    # FastStream's access log (two lines per message) is off: the baseline is about the
    # handler's design, not about logging.
    broker = KafkaBroker(bootstrap, client_id="bench-baseline", logger=None)
    applied: list[Item] = []
    done = asyncio.Event()
    first: list[float] = []
    sessions_topic = topics.rtk_sessions

    async def _raw(msg: Any) -> None:
        return None

    subscriber = broker.subscriber(
        topics.rtk_sessions,
        topics.rtk_peer_events,
        group_id=group,
        auto_offset_reset="earliest",
        partition_assignment_strategy=(RangePartitionAssignor,),
        decoder=_raw,
        fetch_max_wait_ms=FETCH["fetch_max_wait_ms"],
        max_partition_fetch_bytes=FETCH["max_partition_fetch_bytes"],
        session_timeout_ms=GROUP["session_timeout_ms"],
        heartbeat_interval_ms=GROUP["heartbeat_interval_ms"],
    )

    @subscriber
    async def handle(msg: KafkaMessage) -> None:
        if done.is_set():
            return  # over budget: not applied, not counted
        rec: ConsumerRecord = msg.raw_message
        now = time.monotonic()
        if not first:
            first.append(now)
        elif now - first[0] >= budget_s:
            done.set()
            return
        if rec.topic == sessions_topic:
            cmd: Any = decode_session(rec.value)
        else:
            cmd = decode_peer_event(rec.value, rec.key)
        result = await store.apply({cmd.session_id: [cmd]})
        await store.update_indexes(result)
        applied.append(Item(topics.strip(rec.topic), rec.key, rec.value, cmd.session_id, "", None, 0))
        if len(applied) >= total:
            done.set()

    t0 = time.monotonic()
    await broker.start()
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=budget_s + 60)
        end = time.monotonic()
    finally:
        await broker.stop()
        await redis.aclose()
    d.events = len(applied)
    d.complete = d.events >= total
    start = first[0] if first else end
    d.startup_seconds = start - t0
    d.seconds, d.events_after_first = end - start, d.events
    d.seconds_with_startup = end - t0
    d.notes.append(
        f"per-message handler run for a {budget_s:g} s budget"
        f" ({d.events:,} of {total:,} events); rate = events applied / elapsed"
    )
    return d, applied


# --- (c) the worker --------------------------------------------------------------------


def worker_env(bootstrap: str, redis_url: str, topics: Topics, group: str) -> dict[str, str]:
    """The service's defaults, except: the idle rule off, a quick outbox, quick group joins on tansu."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "REDIS_URL": redis_url,
        "TOPIC_PREFIX": topics.prefix,
        "CONSUMER_GROUP": group,
        "IDLE_TIMEOUT_SECONDS": str(10**9),
        "OUTBOX_INTERVAL_SECONDS": "0.1",
        "KAFKA_SESSION_TIMEOUT_MS": "3000",
        "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
        "LOG_LEVEL": "INFO",
    }


@dataclass
class WorkerRun:
    """A running worker and the readers that watch it."""

    proc: ServiceProcess
    env: dict[str, str]
    committed: CommittedOffsets
    summaries: SummaryReader


async def start_worker(
    bootstrap: str,
    redis_url: str,
    topics: Topics,
    group: str,
    log_path: Path,
    outbound_partitions: int,
    extra_env: dict[str, str] | None = None,
    argv: list[str] | None = None,
) -> WorkerRun:
    env = worker_env(bootstrap, redis_url, topics, group) | (extra_env or {})
    committed = CommittedOffsets(bootstrap, group)
    summaries = SummaryReader(bootstrap, topics.summaries, outbound_partitions)
    await committed.start()
    await summaries.start()
    return WorkerRun(ServiceProcess("worker", env, log_path, argv), env, committed, summaries)


async def drain_worker(
    run: WorkerRun,
    redis: aioredis.Redis,
    ends: Offsets,
    expected_summaries: int,
    timeout_s: float,
    cpu: CpuWindow,
    poll_s: float = 0.05,
) -> Drain:
    """From process start until every record is committed, the outbox is empty and every summary is out."""
    d = Drain("worker")
    total = sum(ends.values())
    t0 = run.proc.started
    first: float | None = None
    at_first = 0
    cpu_at_first: dict[str, float] = {}
    committed_at: float | None = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not run.proc.alive():
            raise RuntimeError(f"the worker exited with {run.proc.proc.returncode}:\n{run.proc.log_tail()}")
        done = await run.committed.committed(ends)
        now = time.monotonic()
        if first is None and done:
            first, at_first = now, done
            cpu_at_first = {n: cpu_seconds(p) for n, p in cpu.pids.items()}
        if done >= total and committed_at is None:
            committed_at = now
        if committed_at is not None:
            outbox = await redis.zcard(C.OUTBOX)
            if outbox == 0 and len(run.summaries.latest) >= expected_summaries:
                d.complete = True
                break
        await asyncio.sleep(poll_s)
    end = time.monotonic()
    d.extra["cpu_seconds"] = cpu.read()
    d.events = await run.committed.committed(ends)
    steady = d.events - at_first
    # From the first commit on: the worker's imports and group join are not per-event work.
    d.extra["cpu_us_per_event"] = {
        name: round((cpu_seconds(cpu.pids[name]) - cpu_at_first[name]) / steady * 1e6, 1)
        for name in [*(n for n in cpu.pids if n.startswith("worker")), "valkey", "tansu"]
        if name in cpu.pids and name in cpu_at_first and steady > 0
    }
    d.extra["peak_rss_mib"] = round((status_kib(run.proc.pid, "VmHWM") or 0) / 1024, 1)
    d.startup_seconds = (first or end) - t0
    d.seconds, d.events_after_first = end - (first or end), d.events - at_first
    d.seconds_with_startup = end - t0
    d.extra["all_committed_after_s"] = round((committed_at or end) - t0, 3)
    d.extra["summaries_published"] = run.summaries.messages
    d.extra["summaries_distinct"] = len(run.summaries.latest)
    d.notes.append(
        "from `python -m service worker` start until committed == end offsets, sp:outbox empty"
        " and every ENDED session's summary read back from sessions.summaries;"
        f" events/s excludes start-up up to the first commit seen ({at_first:,} events then)"
    )
    return d
