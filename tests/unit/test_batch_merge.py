"""Batches fetched while Redis is busy merge into one (Worker.submit): merging must be the same as
decoding all their records as one batch, each session's commands in record order."""

from __future__ import annotations

import pytest
from aiokafka.structs import ConsumerRecord

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
