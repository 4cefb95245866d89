"""The embedded broker and Redis behave like the real thing for our clients."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from confluent_kafka import Consumer, Message, Producer
from confluent_kafka import TopicPartition as CkTopicPartition

from service.constants import Topics
from service.embedded import start_redis

pytestmark = pytest.mark.integration


async def _produce(bootstrap: str, topic: str, *values: bytes) -> list[tuple[int, int]]:
    """(partition, offset) of each value, all keyed alike so they share a partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        sent = [await producer.send_and_wait(topic, v, key=b"session-1") for v in values]
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in sent]


async def test_topics_get_their_partition_counts(kafka_bootstrap: str, topics: Topics) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        assert await producer.partitions_for(topics.rtk_peer_events) == {0, 1, 2}
        assert await producer.partitions_for(topics.summaries) == {0}
    finally:
        await producer.stop()


async def test_aiokafka_round_trip(kafka_bootstrap: str, topics: Topics) -> None:
    [(partition, offset)] = await _produce(kafka_bootstrap, topics.rtk_sessions, b'{"id": 1}')
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topics.rtk_sessions, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        record = await asyncio.wait_for(consumer.getone(), 10)
    finally:
        await consumer.stop()
    assert (record.key, record.value, record.offset) == (b"session-1", b'{"id": 1}', offset)


async def test_confluent_kafka_round_trip(kafka_bootstrap: str, topics: Topics) -> None:
    topic = topics.rtk_peer_events

    def round_trip() -> tuple[bytes | None, bytes | None]:
        delivered: list[Message] = []
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": False})
        producer.produce(topic, b'{"id": 2}', key=b"session-2", on_delivery=lambda _, m: delivered.append(m))
        assert producer.flush(10) == 0
        [sent] = delivered
        partition, offset = sent.partition(), sent.offset()
        assert sent.error() is None and partition is not None and offset is not None
        # assign() rather than subscribe(): a group join takes ~20 s on tansu.
        consumer = Consumer(
            {"bootstrap.servers": kafka_bootstrap, "group.id": "unused", "enable.auto.commit": False}
        )
        try:
            consumer.assign([CkTopicPartition(topic, partition, offset)])
            msg = consumer.poll(10)
        finally:
            consumer.close()
        assert msg is not None and msg.error() is None
        return msg.key(), msg.value()

    assert await asyncio.to_thread(round_trip) == (b"session-2", b'{"id": 2}')


async def test_committed_offset_survives_consumer_restart(kafka_bootstrap: str, topics: Topics) -> None:
    topic, group = topics.summaries, f"{topics.prefix}group"
    await _produce(kafka_bootstrap, topic, b"a", b"b", b"c")
    tp = TopicPartition(topic, 0)

    def consumer() -> AIOKafkaConsumer:
        # tansu holds a JoinGroup for half the session timeout, and numbers the
        # first generation 0, for which aiokafka skips LeaveGroup on stop: the
        # restarted member then also waits for the old one to time out.
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=2000,
            heartbeat_interval_ms=400,
        )

    first = consumer()
    await first.start()
    try:
        read = [await asyncio.wait_for(first.getone(), 20) for _ in range(2)]
        await first.commit({tp: read[-1].offset + 1})
    finally:
        await first.stop()
    assert [r.value for r in read] == [b"a", b"b"]

    second = consumer()
    await second.start()
    try:
        assert await second.committed(tp) == 2
        record = await asyncio.wait_for(second.getone(), 20)
    finally:
        await second.stop()
    assert record.value == b"c"


async def test_redis_answers(redis_client: aioredis.Redis) -> None:
    assert await redis_client.ping()


async def test_redis_appendonly_keeps_data_across_restart(tmp_path: Path) -> None:
    for expected in (None, b"1"):
        with start_redis(appendonly=True, data_dir=str(tmp_path)) as server:
            client = aioredis.Redis.from_url(server.url)
            try:
                assert await client.get("k") == expected
                await client.set("k", "1")
            finally:
                await client.aclose()


def test_servers_die_with_their_parent(tmp_path: Path) -> None:
    """Even a SIGKILLed test run or `dev` leaves no broker or Redis behind."""
    script = (
        "import time\n"
        "from service.embedded import start_kafka, start_redis\n"
        "k, r = start_kafka(), start_redis()\n"
        "print(k.pid, r.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    # Its scratch directories outlive it: keep them under tmp_path.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    assert parent.stdout is not None
    pids = [int(p) for p in parent.stdout.readline().split()]
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)]


def _alive(pid: int) -> bool:
    """Running and not a zombie waiting for init to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
