"""Dead-letter publishing: a value that no longer fits goes out as its coordinates, not forever retried."""

from __future__ import annotations

import types

from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord

from service.constants import Topics
from service.errors import InvalidMessage
from service.stats import Stats
from service.worker import Worker


class TooLargeOnce:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, dict[str, str]]] = []

    async def publish(self, value: bytes, *, key: bytes | None, headers: dict[str, str]) -> None:
        if len(value) > 10:
            raise MessageSizeTooLargeError("too large")
        self.sent.append((value, dict(headers)))


async def test_an_oversized_dead_letter_is_published_without_its_value() -> None:
    worker = Worker.__new__(Worker)  # only the dead-letter path: no broker, no Redis
    worker.topics, worker.stats, worker.dlq = Topics(""), Stats(), TooLargeOnce()
    worker.outbox = types.SimpleNamespace()
    rec = ConsumerRecord("rtk.peer-events", 2, 77, 0, 0, b"k", b"x" * 100, None, 1, 100, [])
    await worker.dead_letter([(rec, InvalidMessage("invalid_json", "value is not JSON"))])
    [(value, headers)] = worker.dlq.sent
    assert value == b""
    assert headers["x-value-omitted"].startswith("100 bytes")
    assert (headers["x-source-topic"], headers["x-source-partition"], headers["x-source-offset"]) == (
        "rtk.peer-events",
        "2",
        "77",
    )
    assert worker.stats.total("dead_lettered") == 1
