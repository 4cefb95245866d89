"""Test harness: realistic RealtimeKit logs, the worker as a real OS process, and the expected state."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KafkaTopicPartition
from confluent_kafka import Consumer, Producer, TopicPartition

from service import constants as C
from service.constants import RTK_PEER_EVENTS, RTK_SESSIONS, Topics
from service.core import shapes
from service.core.model import PeerEvent, ReferenceSession, SessionMessage
from service.core.timeutil import iso_ms
from service.embedded import spawn
from service.messages import SessionSummary
from service.wire import decode_peer_event, decode_session

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z: event times well in the past


@dataclass(frozen=True)
class Item:
    """One message of a log: where it goes, its bytes, and the dead-letter type it must get (if bad)."""

    topic: str  # contract name, without the test's prefix
    key: bytes | None
    value: bytes
    bad: str | None = None


@dataclass
class Log:
    items: list[Item] = field(default_factory=list)
    session_ids: list[str] = field(default_factory=list)

    @property
    def bad(self) -> list[Item]:
        return [i for i in self.items if i.bad]


def session_message(
    sid: str, status: str, started: int, updated: int, ended: int | None, **meta: Any
) -> dict:
    msg = {
        "id": sid,
        "associated_id": meta.get("associated_id", f"meeting-{sid}"),
        "created_at": iso_ms(started),
        "live_participants": 0,
        "max_concurrent_participants": 0,
        "meeting_display_name": meta.get("title", f"Meeting {sid[:8]}"),
        "minutes_consumed": 0,
        "organization_id": meta.get("organization_id", "org-a"),
        "started_at": iso_ms(started),
        "status": status,
        "type": meta.get("type", "meeting"),
        "updated_at": iso_ms(updated),
    }
    if ended is not None:
        msg["ended_at"] = iso_ms(ended)
    return msg


def peer_event(
    sid: str, peer: str, name: str, t: int, *, event_id: str | None = None, details: bool = True
) -> dict:
    ev: dict[str, Any] = {
        "id": event_id or str(uuid.uuid4()),
        "created_at": iso_ms(t),
        "event_name": name,
        "minutes_consumed": 0,
        "participant_id": f"part-{peer}",
        "peer_id": peer,
        "preset_view_type": "GROUP_CALL",
        "session_id": sid,
        "socket_session_id": f"sock-{peer}",
        "updated_at": iso_ms(t),
    }
    if details:
        ev.update(
            display_name=f"User {peer[:6]}",
            user_id=f"user-{peer}",
            custom_participant_id=f"c-{peer}",
            preset_name="host",
        )
    return ev


def make_log(rng: random.Random, sessions: int, *, with_bad: bool = True, t0: int = T0) -> Log:
    """Sessions with joins, leaves, rejoins, duplicates (same id and same fact under a new id),
    ENDED messages that overtake peer events, events after the end, and every kind of bad input."""
    log = Log()
    for i in range(sessions):
        sid = f"s-{uuid.UUID(int=rng.getrandbits(128))}"
        log.session_ids.append(sid)
        start = t0 + i * 7_000
        key = sid.encode()
        items: list[Item] = []
        org = rng.choice(["org-a", "org-b"])
        items.append(
            Item(
                RTK_SESSIONS,
                key,
                orjson.dumps(session_message(sid, "LIVE", start, start, None, organization_id=org)),
            )
        )
        last = start
        for p in range(rng.randint(2, 7)):
            peer = f"peer-{uuid.UUID(int=rng.getrandbits(128))}"
            t = start + rng.randint(0, 20) * 1000
            items.append(Item(RTK_PEER_EVENTS, key, orjson.dumps(peer_event(sid, peer, "PEER_CREATED", t))))
            for _ in range(rng.randint(1, 3)):
                t += rng.randint(0, 5) * 1000
                items.append(
                    Item(
                        RTK_PEER_EVENTS,
                        key,
                        orjson.dumps(peer_event(sid, peer, "PEER_JOINING", t, details=p % 2 == 0)),
                    )
                )
                if rng.random() < 0.8:
                    t += rng.randint(1, 40) * 1000
                    items.append(
                        Item(RTK_PEER_EVENTS, key, orjson.dumps(peer_event(sid, peer, "PEER_LEAVING", t)))
                    )
            last = max(last, t)
        if rng.random() < 0.75:
            end = last + rng.randint(0, 10) * 1000
            ended = session_message(sid, "ENDED", start, end + 500, end, organization_id=org)
            items.append(Item(RTK_SESSIONS, key, orjson.dumps(ended)))
            if rng.random() < 0.3:  # a fact after the end: kept, not applied
                items.append(
                    Item(
                        RTK_PEER_EVENTS,
                        key,
                        orjson.dumps(peer_event(sid, "late-peer", "PEER_JOINING", end + 60_000)),
                    )
                )
        # Duplicates: redelivered copies, and the same fact again under a new id.
        for it in rng.sample(items, k=max(1, len(items) // 10)):
            items.append(it)
            if it.topic == RTK_PEER_EVENTS:
                ev = orjson.loads(it.value)
                ev["id"] = str(uuid.uuid4())
                items.append(Item(it.topic, key, orjson.dumps(ev)))
        rng.shuffle(items)  # the ENDED message may now come before the peer events it closes
        log.items.extend(items)
    if with_bad:
        log.items.extend(bad_items(sid=log.session_ids[0] if log.session_ids else "s-bad"))
    return log


def bad_items(sid: str) -> list[Item]:
    key = sid.encode()
    good = peer_event(sid, "peer-bad", "PEER_JOINING", T0)
    no_id = {k: v for k, v in good.items() if k != "id"}
    mistyped = {**good, "peer_id": 12345}
    unknown = {**good, "event_name": "PEER_DANCING"}
    bad_time = {**good, "created_at": "yesterday at noon"}
    sess = session_message(sid, "LIVE", T0, T0, None)
    sess_bad_time = {**sess, "started_at": "2026-13-45T99:00:00Z"}
    sess_missing = {k: v for k, v in sess.items() if k != "status"}
    return [
        Item(RTK_PEER_EVENTS, key, b'{"id": "x", "event_name": ', "invalid_json"),
        Item(RTK_PEER_EVENTS, key, b"\xff\xfe\x00garbage", "invalid_utf8"),
        Item(RTK_PEER_EVENTS, key, b'["not", "an", "object"]', "not_an_object"),
        Item(RTK_PEER_EVENTS, key, orjson.dumps(no_id), "missing_field"),
        Item(RTK_PEER_EVENTS, key, orjson.dumps(mistyped), "invalid_field"),
        Item(RTK_PEER_EVENTS, key, orjson.dumps(unknown), "unknown_event_name"),
        Item(RTK_PEER_EVENTS, key, orjson.dumps(bad_time), "invalid_timestamp"),
        Item(RTK_SESSIONS, key, orjson.dumps(sess_bad_time), "invalid_timestamp"),
        Item(RTK_SESSIONS, key, orjson.dumps(sess_missing), "missing_field"),
        Item(RTK_SESSIONS, key, b"42", "not_an_object"),
    ]


def reference(log: Log) -> dict[str, ReferenceSession]:
    """The rules applied in memory to the sorted, de-duplicated log."""
    cmds: list[PeerEvent | SessionMessage] = []
    seen: set[bytes] = set()
    for it in log.items:
        if it.bad or it.value in seen:
            continue
        seen.add(it.value)
        cmds.append(
            decode_session(it.value) if it.topic == RTK_SESSIONS else decode_peer_event(it.value, it.key)
        )
    cmds.sort(key=lambda c: c.t_ms if isinstance(c, PeerEvent) else c.updated_ms)
    out: dict[str, ReferenceSession] = {}
    for c in cmds:
        ref = out.setdefault(c.session_id, ReferenceSession(c.session_id))
        if isinstance(c, PeerEvent):
            ref.apply_peer_event(c)
        else:
            ref.apply_session_message(c)
    return out


Offsets = dict[tuple[str, int], int]


def produce(
    bootstrap: str, topics: Topics, items: Iterable[Item], headers: Sequence[tuple[str, bytes]] | None = None
) -> Offsets:
    """Produce with confluent-kafka (an independent client), Java's murmur2 key partitioner.

    Returns the next offset after the last delivered message of each partition, from the
    delivery reports: tansu's ListOffsets under-reports partitions written in batches.
    """
    ends: Offsets = {}
    for topic, partition, offset in produce_records(
        bootstrap, topics, [(i.topic, i.key, i.value) for i in items], headers
    ):
        ends[(topic, partition)] = max(ends.get((topic, partition), 0), offset + 1)
    return ends


Record = tuple[str, bytes | None, bytes | None]  # (contract topic, key, value)


def produce_records(
    bootstrap: str,
    topics: Topics,
    records: Sequence[Record],
    headers: Sequence[tuple[str, bytes]] | None = None,
) -> list[tuple[str, int, int]]:
    """Produce in order, as `produce` does; (topic, partition, offset) of each record, from the delivery
    reports. A value may be None (a record without a value). `headers` go on every record."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5, "acks": "all"}
    )
    where: list[tuple[str, int, int] | None] = [None] * len(records)
    errors: list[str] = []

    def delivered(n: int) -> Callable[[Any, Any], None]:
        def report(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                where[n] = (msg.topic(), msg.partition(), msg.offset())

        return report

    for n, (topic, key, value) in enumerate(records):
        while True:
            try:
                producer.produce(
                    topics.name(topic),
                    value=value,
                    key=key,
                    headers=list(headers or ()),
                    on_delivery=delivered(n),
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(30)
    assert left == 0 and not errors, f"{left} messages not delivered; errors: {errors[:3]}"
    return [w for w in where if w is not None]


def consume_all(
    bootstrap: str, topic: str, partitions: int = 1, idle_s: float = 1.0, timeout_s: float = 30.0
) -> list[Any]:
    """Every message currently in a topic (assign() avoids tansu's slow group join)."""
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4()}", "enable.auto.commit": False}
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out, deadline, quiet_since = [], time.monotonic() + timeout_s, time.monotonic()
    try:
        while time.monotonic() < deadline and time.monotonic() - quiet_since < idle_s:
            msg = c.poll(0.2)
            if msg is None or msg.error():
                continue
            out.append(msg)
            quiet_since = time.monotonic()
    finally:
        c.close()
    return out


def latest_summaries(bootstrap: str, topic: str) -> dict[str, dict[str, Any]]:
    """The highest revision of each summary message_id, as a downstream consumer keeps it."""
    best: dict[str, dict[str, Any]] = {}
    for m in consume_all(bootstrap, topic):
        s = orjson.loads(m.value())
        SessionSummary.model_validate(s)  # every published copy has the shape docs/asyncapi.json gives
        if s["message_id"] not in best or s["revision"] > best[s["message_id"]]["revision"]:
            best[s["message_id"]] = s
    return best


class WorkerProcess:
    """`python -m service worker` (or a wrapper script, or another `command`) as a separate OS process."""

    def __init__(
        self,
        env: dict[str, str],
        script: str | None = None,
        log_path: Path | None = None,
        *,
        command: str = "worker",
    ) -> None:
        argv = [sys.executable, script] if script else [sys.executable, "-m", "service", command]
        self.log_path = (
            log_path or Path(os.environ.get("TMPDIR", "/tmp")) / f"sp-worker-{uuid.uuid4().hex[:8]}.log"
        )
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        # spawn(): the worker dies with the test process, even when that is killed.
        self.proc = spawn(
            argv, env={**os.environ, **env}, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def worker_env(bootstrap: str, redis_url: str, topics: Topics, **extra: str) -> dict[str, str]:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "REDIS_URL": redis_url,
        "TOPIC_PREFIX": topics.prefix,
        "CONSUMER_GROUP": f"{topics.prefix}workers",
        "IDLE_TIMEOUT_SECONDS": str(10**9),
        "OUTBOX_INTERVAL_SECONDS": "0.2",
        "BATCH_TIMEOUT_MS": "20",
        # tansu holds a JoinGroup for half the session timeout: short ones keep restarts quick.
        "KAFKA_SESSION_TIMEOUT_MS": "3000",
        "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
        # Many workers run side by side in the tests: none serves /metrics unless asked to.
        "METRICS_PORT": "0",
    }
    env.update(extra)
    return env


async def wait_for(
    check: Callable[[], Awaitable[bool]], within: float, what: str, *, every: float = 0.3
) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


async def committed_offsets(bootstrap: str, group: str, partitions: Iterable[tuple[str, int]]) -> Offsets:
    """The group's committed offset of each partition (0 where none).

    Read by a consumer of the group that never joins it (so it triggers no rebalance).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {tp: await consumer.committed(KafkaTopicPartition(*tp)) or 0 for tp in partitions}
    finally:
        await consumer.stop()


async def group_lag(bootstrap: str, group: str, produced: Offsets) -> int:
    """Messages produced to the inbound topics that the consumer group has not committed yet."""
    committed = await committed_offsets(bootstrap, group, produced)
    return sum(max(0, end - committed[tp]) for tp, end in produced.items())


async def drained(bootstrap: str, group: str, produced: Offsets, redis: aioredis.Redis) -> bool:
    return await group_lag(bootstrap, group, produced) == 0 and await redis.zcard(C.OUTBOX) == 0


def approx_floats(obj: Any) -> Any:
    """Floats that count open intervals up to the query time are compared to within a second."""
    if isinstance(obj, float):
        return pytest.approx(obj, rel=1e-6, abs=1 / 60)
    if isinstance(obj, dict):
        return {k: approx_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [approx_floats(v) for v in obj]
    return obj


async def assert_state_matches(api: httpx.AsyncClient, expected: dict[str, ReferenceSession]) -> None:
    """Every number of CONTRACT 4.1 and 4.2, read through the API, equals the reference."""
    for sid, ref in expected.items():
        view = ref.view()
        r = await api.get(f"/v1/sessions/{sid}")
        assert r.status_code == 200, r.text
        now = int(time.time() * 1000)
        assert r.json()["data"] == approx_floats(shapes.session_object(view, now)), sid

        r = await api.get(
            f"/v1/sessions/{sid}/participants", params={"per_page": 100, "include_peer_events": "true"}
        )
        body = r.json()
        got = body["data"]["participants"]
        want = [shapes.participant_object(p, now) for p in shapes.participants_in_order(view)]
        assert [{k: v for k, v in p.items() if k != "peer_events"} for p in got] == approx_floats(want), sid
        assert body["paging"]["total_count"] == len(view.peers)
        for p, peer in zip(got, shapes.participants_in_order(view), strict=True):
            assert len(p["peer_events"]) == len(peer.events), (sid, peer.peer_id)
        for p in got[:3]:
            # One participant's read parses only that peer's events; it answers as the list does.
            one = await api.get(
                f"/v1/sessions/{sid}/participants/{quote(p['id'], safe='')}",
                params={"include_peer_events": "true"},
            )
            assert one.status_code == 200, one.text
            assert one.json()["data"]["participant"] == approx_floats(p), (sid, p["id"])

        if view.status == "ENDED":
            r = await api.get(f"/v1/sessions/{sid}/report")
            report = r.json()["data"]
            assert {
                k: v for k, v in report.items() if k not in ("message_id", "revision")
            } == shapes.session_summary(view, now)
