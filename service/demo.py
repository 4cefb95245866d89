"""Synthetic live meetings for `dev --demo`."""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from service import constants as c
from service.constants import Topics

_TITLES = (
    "Weekly sync", "Design review", "Customer onboarding", "Sprint planning",
    "Incident retro", "All hands", "1:1", "Sales demo", "Hiring panel", "Office hours",
)  # fmt: skip
_NAMES = (
    "Ada", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances",
    "Alan", "Radia", "Guido", "Hedy", "Edsger", "Anita", "Tim", "Katherine",
)  # fmt: skip
_DUPLICATE_CHANCE = 0.02


def _iso(t: datetime) -> str:
    """ISO-8601 UTC with milliseconds and Z, as RealtimeKit writes it."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


@dataclass
class _Peer:
    peer_id: str
    participant_id: str
    socket_session_id: str
    display_name: str
    custom_participant_id: str
    preset_name: str
    join_at: float  # seconds after the meeting starts
    leave_at: float | None  # None: stays until the end
    joined: datetime | None = None


class _Meeting:
    """One meeting's plan and its running numbers, in event time."""

    def __init__(self, rng: random.Random, organization_id: str) -> None:
        self.rng = rng
        self.organization_id = organization_id
        self.session_id, self.meeting_id = _uuid(rng), _uuid(rng)
        self.title = rng.choice(_TITLES)
        self.length = rng.uniform(30, 90)
        self.peers = [self._peer(i) for i in range(rng.randint(2, 12))]
        self.started = self.last = datetime.now(UTC)
        self.live = self.peak = 0
        self.minutes = 0.0

    def _peer(self, i: int) -> _Peer:
        rng = self.rng
        join_at = 0.5 + rng.uniform(0, min(20.0, self.length / 3))
        early = rng.random() < 0.3
        leave_at = rng.uniform(join_at + 3, self.length - 2) if early else None
        participant = _uuid(rng)
        return _Peer(
            peer_id=_uuid(rng),
            participant_id=participant,
            socket_session_id=_uuid(rng),
            display_name=rng.choice(_NAMES),
            custom_participant_id=f"demo-user-{participant[:8]}",
            preset_name="group_call_host" if i == 0 else "group_call_participant",
            join_at=join_at,
            leave_at=leave_at,
        )

    def now(self) -> datetime:
        # Never earlier than the previous event, even if the wall clock steps back.
        self.last = max(self.last, datetime.now(UTC))
        return self.last

    def session(self, *, ended: datetime | None = None) -> dict[str, Any]:
        at = self.now()
        body: dict[str, Any] = {
            "id": self.session_id,
            "associated_id": self.meeting_id,
            "created_at": _iso(self.started),
            "live_participants": self.live,
            "max_concurrent_participants": self.peak,
            "meeting_display_name": self.title,
            "minutes_consumed": round(self.minutes, 3),
            "organization_id": self.organization_id,
            "started_at": _iso(self.started),
            "status": "ENDED" if ended else "LIVE",
            "type": "meeting",
            "updated_at": _iso(at),
        }
        if ended:
            body["ended_at"] = _iso(ended)
        return body

    def peer_event(self, peer: _Peer, event_name: str) -> dict[str, Any]:
        at = self.now()
        if event_name == "PEER_JOINING":
            peer.joined = at
            self.live += 1
            self.peak = max(self.peak, self.live)
        elif event_name == "PEER_LEAVING" and peer.joined is not None:
            self.minutes += (at - peer.joined).total_seconds() / 60
            peer.joined = None
            self.live -= 1
        return {
            "id": _uuid(self.rng),
            "created_at": _iso(at),
            "event_name": event_name,
            "minutes_consumed": 0,
            "participant_id": peer.participant_id,
            "peer_id": peer.peer_id,
            "preset_view_type": "GROUP_CALL",
            "session_id": self.session_id,
            "socket_session_id": peer.socket_session_id,
            "updated_at": _iso(at),
            "display_name": peer.display_name,
            "custom_participant_id": peer.custom_participant_id,
            "user_id": peer.participant_id,
            "preset_name": peer.preset_name,
            "organization_id": self.organization_id,
            "associated_id": self.meeting_id,
        }

    def schedule(self) -> list[tuple[float, str, _Peer]]:
        """(seconds after start, event name, peer), in time order, ending with everyone out."""
        plan: list[tuple[float, str, _Peer]] = []
        for p in self.peers:
            plan.append((p.join_at, "PEER_CREATED", p))
            plan.append((p.join_at + 0.2, "PEER_JOINING", p))
            plan.append((p.leave_at or self.length, "PEER_LEAVING", p))
        return sorted(plan, key=lambda e: e[0])


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


async def _sleep(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, waking early when `stop` is set; True if it was."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0))
    except TimeoutError:
        return False
    return True


class _Publisher:
    def __init__(self, producer: AIOKafkaProducer, topics: Topics, rng: random.Random) -> None:
        self._producer = producer
        self._sessions = topics.name(c.RTK_SESSIONS)
        self._peer_events = topics.name(c.RTK_PEER_EVENTS)
        self._rng = rng

    async def session(self, body: dict[str, Any]) -> None:
        await self._producer.send_and_wait(self._sessions, orjson.dumps(body), key=body["id"].encode())

    async def peer_event(self, body: dict[str, Any]) -> None:
        value, key = orjson.dumps(body), body["session_id"].encode()
        await self._producer.send_and_wait(self._peer_events, value, key=key)
        # A redelivered copy, byte for byte: the service must count it once.
        if self._rng.random() < _DUPLICATE_CHANCE:
            await self._producer.send_and_wait(self._peer_events, value, key=key)


async def _meetings(
    publisher: _Publisher, rng: random.Random, orgs: list[str], stop: asyncio.Event, delay: float
) -> None:
    """One after another, with a short pause between them, until `stop`."""
    loop = asyncio.get_running_loop()
    while not await _sleep(stop, delay):
        meeting = _Meeting(rng, rng.choice(orgs))
        begun = loop.time()
        await publisher.session(meeting.session())
        for offset, event_name, peer in meeting.schedule():
            if await _sleep(stop, begun + offset - loop.time()):
                return
            await publisher.peer_event(meeting.peer_event(peer, event_name))
        if await _sleep(stop, begun + meeting.length + 0.5 - loop.time()):
            return
        await publisher.session(meeting.session(ended=meeting.now()))
        delay = rng.uniform(1, 5)


async def run_demo(
    bootstrap: str,
    topics: Topics,
    *,
    sessions: int = 8,
    stop: asyncio.Event,
    seed: int | None = None,
    client_options: dict[str, Any] | None = None,
) -> None:
    """Keep about `sessions` meetings live, in real time, until `stop` is set. `client_options`:
    aiokafka's security arguments for a broker other than the embedded one."""
    rng = random.Random(seed)
    orgs = [_uuid(rng) for _ in range(3)]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="sessionpulse-demo",
        acks="all",
        enable_idempotence=False,  # tansu refuses InitProducerId
        linger_ms=5,
        **(client_options or {}),
    )
    await producer.start()
    try:
        publisher = _Publisher(producer, topics, rng)
        async with asyncio.TaskGroup() as group:
            for i in range(sessions):
                # Staggered so the first meetings show up at once and they don't all end together.
                group.create_task(_meetings(publisher, rng, orgs, stop, delay=0.2 * i))
    finally:
        await producer.stop()
