"""`python -m service rebuild`: rewind the worker group to the earliest offsets, so workers replay into Redis.

For a Redis that lost its data (or holds state that must be thrown away): stop every
worker, run this, start the workers. They replay every retained record of the inbound
topics; the scripts are idempotent, so the replay rebuilds the state the log describes.

The command joins the consumer group itself, with the worker's range assignor. Only when
it was given every partition of every inbound topic, with no other member in the group,
does it write anything: then no worker can apply or commit meanwhile. A reset under
running workers could not work anyway, as their next commit would overwrite it, so it
refuses instead (exit code 2) and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import defaultdict
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from redis import exceptions as rexc

from . import constants as C
from .config import Settings, describe_invalid
from .constants import Topics
from .errors import ConfigurationError
from .runtime import build_redis, kafka_client_options

# The worker's subscription (worker.Worker._decoders): every topic whose records it applies.
INBOUND = (
    C.RTK_SESSIONS,
    C.RTK_PEER_EVENTS,
    C.RTK_WEBHOOKS,
    C.RTK_PEER_REPORTS,
    C.LIVEPEER_SESSIONS,
    C.LIVEPEER_WEBHOOKS,
)
# The intake's delivery marks are not derived from Kafka: a rebuild keeps them.
KEPT = f"{C.WEBHOOK_SEEN}:"

OK, FAILED, REFUSED = 0, 1, 2


class Refused(Exception):
    """The group has other members: nothing was changed."""


def _say(text: str) -> None:
    print(text, flush=True)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def rebuild(settings: Settings, *, clear_redis: bool, join_timeout_s: float) -> int:
    """Reset the group's committed offsets to the earliest ones (and clear Redis if asked); the exit code."""
    topics = Topics(settings.topic_prefix)
    group = settings.consumer_group
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_list,
        group_id=group,
        client_id=f"{settings.kafka_client_id}-rebuild",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        partition_assignment_strategy=(RangePartitionAssignor,),
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        **kafka_client_options(settings),
    )
    try:
        await consumer.start()
    except KafkaError as exc:
        _err(f"rebuild: Kafka at {settings.kafka_bootstrap_servers} unreachable: {exc}")
        await consumer.stop()
        return FAILED
    try:
        existing = await consumer.topics()
        wanted = [topics.name(t) for t in INBOUND]
        present = [t for t in wanted if t in existing]
        for t in wanted:
            if t not in existing:
                _say(f"rebuild: topic {t} does not exist; skipped")
        if not present:
            _err("rebuild: none of the inbound topics exists; nothing to replay")
            return FAILED
        owned = await _join_alone(consumer, settings, present, join_timeout_s)
        committed = {tp: await consumer.committed(tp) for tp in owned}
        beginning: dict[TopicPartition, int] = await consumer.beginning_offsets(list(owned))
        end: dict[TopicPartition, int] = await consumer.end_offsets(list(owned))
        if clear_redis:
            # While this process holds every partition, no worker writes: the replay starts clean.
            removed = await _clear_redis(settings)
            _say(f"rebuild: deleted {removed} keys {C.KEY_PREFIX}:* from Redis (kept {KEPT}*)")
        await consumer.commit(beginning)
        _report(group, owned, committed, beginning, end)
        return OK
    except Refused as exc:
        _err(f"rebuild: refused, nothing changed: {exc}")
        return REFUSED
    except TimeoutError:
        _err(
            f"rebuild: no partition assignment within {join_timeout_s:g} s; nothing changed. A worker may still"
            " be stopping, or (on the embedded tansu broker) a member that died during a rebalance holds"
            " the group: try again, or use a new CONSUMER_GROUP and delete the old one"
        )
        return FAILED
    except (KafkaError, rexc.RedisError) as exc:
        _err(f"rebuild: failed: {exc!r}")
        return FAILED
    finally:
        # Leaves the group: the workers started next get the partitions at once.
        await consumer.stop()


async def _join_alone(
    consumer: Any, settings: Settings, present: list[str], timeout_s: float
) -> set[TopicPartition]:
    """Join the group for `present`; every partition, or Refused when another member holds any."""
    every = {TopicPartition(t, p) for t in present for p in consumer.partitions_for_topic(t) or ()}
    consumer.subscribe(present)
    deadline = time.monotonic() + timeout_s
    while not consumer.assignment():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.05)
    owned = set(consumer.assignment())
    others = await _other_members(settings, consumer)
    if owned != every or others:
        who = f": {', '.join(others)}" if others else ""
        raise Refused(
            f"{len(every - owned)} of {len(every)} partitions went to other members of group"
            f" {settings.consumer_group!r}{who}. Stop every worker of the group first."
        )
    return owned


async def _other_members(settings: Settings, consumer: Any) -> list[str]:
    """Member ids the broker lists in the group besides ours (empty if it cannot describe groups)."""
    mine = consumer._coordinator.member_id
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_list,
        client_id=f"{settings.kafka_client_id}-rebuild",
        **kafka_client_options(settings),
    )
    try:
        await admin.start()
        described = await admin.describe_consumer_groups([settings.consumer_group])
    except KafkaError:
        return []
    finally:
        await admin.close()
    members: list[str] = []
    for response in described:
        for group in response.groups:
            members += [m[0] for m in group[5] if m[0] != mine]
    return members


async def _clear_redis(settings: Settings) -> int:
    """UNLINK the service's keys, found by SCAN (never FLUSHALL: the database may be shared)."""
    redis = build_redis(settings)
    removed = 0
    try:
        batch: list[bytes] = []
        async for key in redis.scan_iter(match=f"{C.KEY_PREFIX}:*", count=1000):
            if not key.startswith(KEPT.encode()):
                batch.append(key)
            if len(batch) >= 1000:
                removed += await _unlink(redis, batch)
                batch = []
        removed += await _unlink(redis, batch)
    finally:
        await redis.aclose()
    return removed


async def _unlink(redis: Any, keys: list[bytes]) -> int:
    if not keys:
        return 0
    # One key per command: a cluster refuses a multi-key UNLINK across slots.
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)
    removed: int = sum(await pipe.execute())
    return removed


def _report(
    group: str,
    owned: set[TopicPartition],
    committed: dict[TopicPartition, int | None],
    beginning: dict[TopicPartition, int],
    end: dict[TopicPartition, int],
) -> None:
    by_topic: dict[str, list[TopicPartition]] = defaultdict(list)
    for tp in owned:
        by_topic[tp.topic].append(tp)
    total = 0
    for topic in sorted(by_topic):
        tps = by_topic[topic]
        before = sum(committed[tp] or 0 for tp in tps)
        # tansu under-reports high watermarks; the committed offset is a lower bound of the end too.
        replay = sum(max(end[tp], committed[tp] or 0) - beginning[tp] for tp in tps)
        total += replay
        _say(
            f"rebuild: {topic}: {len(tps)} partitions, committed {before} -> {sum(beginning[tp] for tp in tps)}"
            f" (earliest), {replay} records to replay"
        )
    _say(
        f"rebuild: group {group!r} now starts at the earliest offsets; start the workers and they replay"
        f" {total} records"
    )


def main_rebuild(*, clear_redis: bool, join_timeout_s: float) -> int:
    """Entry point for `python -m service rebuild`."""
    try:
        settings = Settings()
        kafka_client_options(settings)  # its files load, before anything is changed
    except (ValidationError, ConfigurationError) as exc:
        _err(f"rebuild: invalid configuration: {describe_invalid(exc)}")
        return FAILED
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(rebuild(settings, clear_redis=clear_redis, join_timeout_s=join_timeout_s))
    return FAILED
