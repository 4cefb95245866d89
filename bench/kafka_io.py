"""Kafka helpers of the bench: the prefill producer, committed offsets of a group, the summaries."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import Producer

from service.constants import Topics

from .logmix import Item

Offsets = dict[tuple[str, int], int]  # (topic, partition) -> offset after the last delivered message


def producer(bootstrap: str, *, linger_ms: int) -> Any:
    """confluent-kafka (an independent client) with Java's murmur2 key partitioner, as the service expects."""
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": linger_ms,
            "acks": "all",
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        }
    )


class Deliveries:
    """Delivery reports: the end offset of every partition written (tansu's ListOffsets under-reports)."""

    def __init__(self) -> None:
        self.ends: Offsets = {}
        self.errors: list[str] = []
        self.delivered = 0

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))
            return
        self.delivered += 1
        tp = (msg.topic(), msg.partition())
        self.ends[tp] = max(self.ends.get(tp, 0), msg.offset() + 1)


def produce(bootstrap: str, topics: Topics, items: Iterable[Item], *, linger_ms: int = 20) -> Offsets:
    """Produce every item keyed by its session; returns the end offsets once all are acknowledged."""
    p = producer(bootstrap, linger_ms=linger_ms)
    d = Deliveries()
    for n, it in enumerate(items):
        while True:
            try:
                p.produce(topics.name(it.topic), value=it.value, key=it.key, on_delivery=d)
                break
            except BufferError:
                p.poll(0.05)
        if n % 1000 == 0:
            p.poll(0)
    left = p.flush(60)
    if left or d.errors:
        raise RuntimeError(f"{left} messages not delivered; errors: {d.errors[:3]}")
    return d.ends


class CommittedOffsets:
    """Reads a consumer group's committed offsets without joining the group.

    tansu's admin offset listing does not answer, so this asks the group coordinator
    through an aiokafka consumer that never subscribes (so it triggers no rebalance).
    """

    def __init__(self, bootstrap: str, group: str) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )

    async def start(self) -> None:
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()

    async def committed(self, ends: Offsets) -> int:
        """How many of the produced records (up to `ends`) the group has committed."""
        got = await asyncio.gather(
            *(self.consumer.committed(TopicPartition(t, p)) for (t, p) in ends), return_exceptions=True
        )
        total = 0
        for (tp, end), c in zip(ends.items(), got, strict=True):
            if isinstance(c, BaseException):
                raise RuntimeError(f"committed offset of {tp} unreadable: {c!r}") from c
            total += min(end, c or 0)
        return total


class SummaryReader:
    """Reads `sessions.summaries` from the beginning, keeping the newest revision per message_id."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.topic = topic
        self.partitions = partitions
        # A short fetch wait: tansu holds a fetch for its whole wait when there is nothing new,
        # and aiokafka's default (500 ms) would make the bench see the last summaries up to
        # half a second after the worker published them.
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=20,
        )
        self.latest: dict[str, dict[str, Any]] = {}
        self.messages = 0
        self.last_seen = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=200, max_records=5000)
            for recs in batches.values():
                for r in recs:
                    s = orjson.loads(r.value)
                    self.messages += 1
                    self.last_seen = time.monotonic()
                    have = self.latest.get(s["message_id"])
                    if have is None or s["revision"] > have["revision"]:
                        self.latest[s["message_id"]] = s

    async def quiet(self, idle_s: float = 1.0, within_s: float = 30.0) -> None:
        """Wait until nothing new arrived for `idle_s` (the topic's end, as far as anyone can tell)."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if time.monotonic() - self.last_seen >= idle_s:
                return
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """Idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.consumer.stop()
