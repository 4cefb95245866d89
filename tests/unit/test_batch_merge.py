"""Batches fetched while Redis is busy merge into one (Worker.submit): merging must be the same as
decoding all their records as one batch, each session's commands in record order."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from bench.logmix import backlog
from service.constants import RTK_PEER_EVENTS, RTK_SESSIONS, Topics
from service.wire import decode_peer_event, decode_session
from service.worker import Batch, Worker


def _worker() -> Worker:
    worker = Worker.__new__(Worker)  # only decoding: no broker, no Redis
    worker._decoders = {
        RTK_SESSIONS: lambda r: [decode_session(r.value)],
        RTK_PEER_EVENTS: lambda r: [decode_peer_event(r.value, r.key)],
    }
    worker.topics = Topics("")
    return worker


def _records() -> list[ConsumerRecord]:
    log = backlog(3, 900, 40)
    records = [
        ConsumerRecord(it.topic, n % 3, n, 0, 0, it.key, it.value, None, len(it.key), len(it.value), [])
        for n, it in enumerate(log.items)
    ]
    # Two that the decoders refuse: merging keeps them with their reasons.
    records.append(ConsumerRecord(RTK_PEER_EVENTS, 0, 10_000, 0, 0, b"k", b"{not json", None, 1, 9, []))
    records.append(ConsumerRecord(RTK_SESSIONS, 1, 10_001, 0, 0, b"k", b"[]", None, 1, 2, []))
    return records


def _decoded(worker: Worker, records: list[ConsumerRecord]) -> Batch:
    batch = worker.decode(records)
    batch.records = list(records)
    batch.consumed.update(r.topic for r in records)
    return batch


def _shape(b: Batch) -> tuple[object, ...]:
    return (
        b.records,
        {sid: list(cmds) for sid, cmds in b.by_session.items()},
        {sid: list(src) for sid, src in b.sources.items()},
        [(r, e.error_type) for r, e in b.bad],
        b.ignored,
        dict(b.consumed),
    )


@pytest.mark.parametrize("cuts", [[1], [450], [100, 101, 700], list(range(50, 900, 50))])
def test_merged_batches_equal_one_batch_of_all_their_records(cuts: list[int]) -> None:
    worker, records = _worker(), _records()
    whole = _decoded(worker, records)
    merged = Batch()
    for a, b in zip([0, *cuts], [*cuts, len(records)], strict=True):
        merged.merge(_decoded(worker, records[a:b]))
    assert _shape(merged) == _shape(whole)
    assert len(whole.bad) == 2 and len(whole.by_session) > 10


async def test_at_shutdown_a_sealed_batch_whose_calls_started_is_finished_and_the_rest_read_again() -> None:
    """Its facts may be in Redis already: given up, they would be read again and counted as
    duplicates, never as applied. The batch merging behind it, never sent, is read again."""
    records = _records()
    worker = _worker()
    worker.stopping = asyncio.Event()
    worker.in_flight = None
    worker.in_flight_records = 0
    worker.sealed, worker.pending = Batch(records=records[:10]), Batch(records=records[10:20])
    worker.sealed.early = asyncio.ensure_future(asyncio.sleep(0, result={}))
    finished: list[list[ConsumerRecord]] = []
    seeks: list[tuple[TopicPartition, int]] = []

    async def complete(recs: list[ConsumerRecord], batch: Batch) -> None:
        assert batch.early is not None
        await batch.early
        finished.append(recs)

    class Consumer:
        def seek(self, tp: TopicPartition, offset: int) -> None:
            seeks.append((tp, offset))

    worker.complete = complete  # type: ignore[method-assign]
    worker.consumer = Consumer()
    worker.stopping.set()
    await worker.drained()
    assert finished == [records[:10]]
    assert sorted(seeks) == _first_offsets(records[10:20])
    assert worker.in_flight is not None and worker.in_flight.done()

    # Without calls started, a sealed batch is read again like the rest.
    worker.sealed, worker.pending = Batch(records=records[20:30]), Batch()
    finished.clear()
    seeks.clear()
    await worker.drained()
    assert finished == [] and sorted(seeks) == _first_offsets(records[20:30])


def _first_offsets(records: list[ConsumerRecord]) -> list[tuple[TopicPartition, int]]:
    """Where reading them again starts: each partition's first offset among them."""
    first: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        first[tp] = min(first.get(tp, r.offset), r.offset)
    return sorted(first.items())
