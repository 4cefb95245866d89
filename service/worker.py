"""`python -m service worker`: FastStream batch consumer that applies session facts to Redis.

It reads `rtk.sessions`, `rtk.peer-events`, `rtk.webhooks`, `rtk.peer-reports`,
`livepeer.sessions` and `livepeer.webhooks`. One
batch is handled as: decode every record (bad ones are dead-lettered), group by session,
one pipelined script call per session (and one per peer report), index upkeep, then the
offset commit.
Nothing is committed before Redis holds every effect of the batch; on any retriable
fault the whole batch is retried, which is safe because every script is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any, cast

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError, MessageSizeTooLargeError
from aiokafka.partitioner import murmur2
from faststream import AckPolicy, FastStream
from redis import exceptions as rexc

from . import constants as C
from . import metrics
from .core.model import PeerReport
from .core.streams import RecordingUpdate, Snapshot, StreamCommand, StreamIdle
from .core.timeutil import now_ms
from .errors import InvalidMessage, StoreUnavailable
from .livepeer import decode_livepeer_webhook, decode_snapshot
from .messages import SessionSummary, TranscriptReady
from .outbox import Outbox, channels, stream_channels, stream_source
from .runtime import FASTSTREAM_LOGGER, Runtime, build_runtime, configure_logging, runtime_or_exit
from .stats import Stats
from .store import Applied, Command
from .stream_store import StreamApplied, StreamStore
from .webhooks import decode_rtk_webhook
from .wire import decode_peer_event, decode_peer_report, decode_session

log = logging.getLogger("service.worker")

Decoded = list[Command] | PeerReport | Snapshot | RecordingUpdate | StreamIdle | None

# A consumer this many records behind is draining a backlog, not keeping up with live traffic
# (which leaves a few hundred records at most between two fetches).
BACKLOG_RECORDS = 2000
# Records decoded between two yields to the event loop.
YIELD_EVERY = 1000
# Also at most this many bytes of values queued behind the batch in Redis: webhook bodies can
# be up to 1 MiB each, and BATCH_MERGE_MAX_RECORDS of those would not fit a worker's memory.
MERGE_MAX_BYTES = 64 * 1024 * 1024


@dataclass
class Batch:
    """Records decoded: commands by session (with the records they came from and how many
    commands each gave), peer reports, and invalid records with their reason. Several fetched
    batches can merge into one before it goes to Redis (see Worker.submit)."""

    records: list[ConsumerRecord] = field(default_factory=list)
    by_session: dict[str, list[Command]] = field(default_factory=lambda: defaultdict(list))
    sources: dict[str, list[tuple[ConsumerRecord, int]]] = field(default_factory=lambda: defaultdict(list))
    reports: list[tuple[ConsumerRecord, PeerReport]] = field(default_factory=list)
    streams: dict[str, list[StreamCommand]] = field(default_factory=lambda: defaultdict(list))
    stream_sources: dict[str, list[ConsumerRecord]] = field(default_factory=lambda: defaultdict(list))
    idles: list[tuple[ConsumerRecord, StreamIdle]] = field(default_factory=list)
    ignored: list[ConsumerRecord] = field(default_factory=list)  # valid, but no state to change
    bad: list[tuple[ConsumerRecord, InvalidMessage]] = field(default_factory=list)
    consumed: Counter[str] = field(default_factory=Counter)  # records by topic
    value_bytes: int = 0  # of the records' values
    # Its script calls, started while the batch before it finished (Worker._start_next_calls).
    early: asyncio.Task[dict[str, Applied]] | None = None
    # What the first attempt whose calls all replied found (letters by session, reports stored,
    # stream letters): a retry applies the batch anew (a failover may have lost its writes),
    # finds its own facts known, and counts from these instead.
    counted: tuple[dict[str, str], list[bool], dict[str, str]] | None = None

    def merge(self, later: Batch) -> None:
        """Append a later batch: each session's commands stay in record order."""
        self.records += later.records
        self.value_bytes += later.value_bytes
        for sid, cmds in later.by_session.items():
            self.by_session[sid] += cmds
        for sid, src in later.sources.items():
            self.sources[sid] += src
        self.reports += later.reports
        for sid, scmds in later.streams.items():
            self.streams[sid] += scmds
        for sid, recs in later.stream_sources.items():
            self.stream_sources[sid] += recs
        self.idles += later.idles
        self.ignored += later.ignored
        self.bad += later.bad
        self.consumed.update(later.consumed)


# A source's record, and a record's topic: counted per record, so in C (operator).
_RECORD = itemgetter(0)
_TOPIC = attrgetter("topic")


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default (murmur2) key partitioner, as the Java client and aiokafka use it."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


async def _raw_records(msg: Any) -> tuple[ConsumerRecord, ...]:
    """The handler's argument: the batch's raw records (set by `_parse_first_only`). The worker
    decodes them itself, so FastStream's JSON decoding is skipped."""
    return cast(tuple[ConsumerRecord, ...], msg.raw_message)


async def _parse_first_only(
    records: tuple[ConsumerRecord, ...], original: Callable[[tuple[ConsumerRecord, ...]], Awaitable[Any]]
) -> Any:
    """FastStream's batch parser builds a body entry and a header dict for every record, which
    the handler never reads (it takes the raw records): only the first record is parsed, for
    the message's own fields, and the message carries every record.

    The record it parses has its headers left out: the parser decodes header values as
    UTF-8, and a value it cannot decode would make FastStream drop the whole fetched batch
    before the handler sees it (its records neither applied nor dead-lettered, and covered
    by the next commit). The worker itself never reads headers.
    """
    msg = await original((dataclasses.replace(records[0], headers=[]),))
    msg.raw_message = records
    return msg


class Worker:
    """Applies batches of inbound records; never raises for bad input, retries faults."""

    def __init__(self, rt: Runtime, stats: Stats | None = None) -> None:
        self.rt = rt
        self.stats = stats or Stats()
        self.topics = rt.topics
        self.stopping = asyncio.Event()
        self.batch_lock = asyncio.Lock()
        self.dlq = rt.broker.publisher(
            self.topics.dead_letter,
            title="sessions.dead-letter",
            description=(
                "Inbound messages that could not be processed, byte for byte (any payload), with the"
                " reason in headers: x-error-type, x-error-message, x-source-topic, x-source-partition,"
                " x-source-offset."
            ),
        )
        self.summaries = rt.broker.publisher(
            self.topics.summaries,
            title="sessions.summaries",
            description="One SessionSummary per ended session; re-issued with a higher revision on late data.",
            schema=SessionSummary,
        )
        self.transcripts = rt.broker.publisher(
            self.topics.transcript_ready,
            title="sessions.transcript-ready",
            description="One TranscriptReady per session whose transcript link became known.",
            schema=TranscriptReady,
        )

        # While a backlog drains, summaries wait for it (up to 10 s) rather than being rebuilt
        # for every late fact that reaches an ended session.
        def backlog() -> bool:
            return self.behind or self.queued_records() >= BACKLOG_RECORDS

        quiet = rt.settings.outbox_quiet_seconds
        self.outbox = Outbox(
            rt.store,
            channels(self.summaries, self.transcripts),
            self.stats,
            defer=backlog,
            applied_all=self.applied_all,
            quiet_s=quiet,
        )
        self.streams = StreamStore(rt.store)
        self.stream_outbox = Outbox(
            rt.store,
            stream_channels(self.summaries),
            self.stats,
            source=stream_source(self.streams),
            defer=backlog,
            applied_all=self.applied_all,
            quiet_s=quiet,
        )
        self.consumer: Any = None  # the aiokafka consumer, once FastStream has started it
        self.in_flight: asyncio.Task[None] | None = None  # the batch being applied, if any
        self.in_flight_records = 0  # records of the batch being applied
        self.pending = Batch()  # decoded records queued behind it, merged into one batch
        # The next batch, its script calls already started (see _start_next_calls); it is the
        # next to launch, and nothing merges into it any more.
        self.sealed: Batch | None = None
        self.unmerged = 0  # records handed to submit() and not merged into `pending` yet
        self.generation = 0  # counts rewinds of queued records, so a decode in progress is dropped
        self.committing: asyncio.Task[None] | None = None  # the last offset commit sent, if any
        self.last_batch_full = False
        self.behind = False  # the last batch left a backlog behind it (see submit)
        self.fetch_lag = 0  # records left on the broker after the last fetch (this worker's partitions)
        # Every inbound topic is keyed by session id and has the same partition count.
        self._decoders: dict[str, Callable[[ConsumerRecord], Decoded]] = {
            self.topics.rtk_sessions: lambda r: [decode_session(r.value)],
            self.topics.rtk_peer_events: lambda r: [decode_peer_event(r.value, r.key)],
            self.topics.rtk_webhooks: lambda r: decode_rtk_webhook(r.value, r.key),
            self.topics.peer_reports: lambda r: decode_peer_report(r.value, r.timestamp),
            self.topics.livepeer_sessions: lambda r: decode_snapshot(r.value),
            self.topics.livepeer_webhooks: lambda r: decode_livepeer_webhook(r.value),
        }

    @property
    def inbound_topics(self) -> list[str]:
        return list(self._decoders)

    # --- the batch path ----------------------------------------------------------------

    def decode(self, records: Sequence[ConsumerRecord], batch: Batch | None = None) -> Batch:
        """Group valid records' commands by session; collect reports and invalid records
        (into ``batch``, when given)."""
        batch = batch or Batch()
        peer_events, by_session, sources = self.topics.rtk_peer_events, batch.by_session, batch.sources
        for rec in records:
            try:
                if rec.topic == peer_events:
                    # By far the most records: one fact each, straight into the batch.
                    ev = decode_peer_event(rec.value, rec.key)
                    by_session[ev.session_id].append(ev)
                    sources[ev.session_id].append((rec, 1))
                    continue
                decoded = self._decoders[rec.topic](rec)
            except InvalidMessage as exc:
                batch.bad.append((rec, exc))
                continue
            except Exception as exc:
                batch.bad.append((rec, self._decoder_failed(rec, exc)))
                continue
            if type(decoded) is list:  # RealtimeKit facts: by far the most records
                if decoded:
                    sid = decoded[0].session_id
                    batch.by_session[sid].extend(decoded)
                    batch.sources[sid].append((rec, len(decoded)))
                else:
                    batch.ignored.append(rec)
            elif isinstance(decoded, PeerReport):
                batch.reports.append((rec, decoded))
            elif isinstance(decoded, Snapshot | RecordingUpdate):
                batch.streams[decoded.session_id].append(decoded)
                batch.stream_sources[decoded.session_id].append(rec)
            elif isinstance(decoded, StreamIdle):
                batch.idles.append((rec, decoded))
            else:
                batch.ignored.append(rec)
        return batch

    @staticmethod
    def _decoder_failed(rec: ConsumerRecord, exc: Exception) -> InvalidMessage:
        """A decoder raised something else than InvalidMessage: a bug, dead-lettered with its
        reason. Decoding is pure: a retry cannot help, and retrying would stall the partition."""
        log.exception("decoder failed on %s[%d]@%d", rec.topic, rec.partition, rec.offset)
        return InvalidMessage("decode_error", f"{type(exc).__name__}: {exc}")

    async def process(self, records: Sequence[ConsumerRecord], batch: Batch) -> None:
        """Apply one decoded batch; returns only when every effect is in Redis (or dead-lettered).

        Counts go to the worker's stats only when the whole batch succeeded: a batch retried
        after a fault is counted once.
        """
        counted, self.stats = self.stats, Stats()
        try:
            await self._process(records, batch)
        except BaseException:
            self.stats = counted
            raise
        counted.merge(self.stats)
        self.stats = counted

    async def _process(self, records: Sequence[ConsumerRecord], batch: Batch) -> None:
        strip = self.topics.strip
        for topic, n in batch.consumed.items():
            self.stats.add("consumed", strip(topic), n)
        store = self.rt.store
        results: dict[str, Applied] = {}
        if batch.by_session:
            early, batch.early = batch.early, None  # a retry applies the batch anew
            results = await early if early is not None else await store.apply(batch.by_session)
            self._start_next_calls()
        stored = await store.put_reports([r for _, r in batch.reports])
        stream_results = await self.streams.apply(batch.streams) if batch.streams else {}
        if batch.counted is None:
            batch.counted = (
                {sid: r.letters for sid, r in results.items()},
                stored,
                {sid: r.letters for sid, r in stream_results.items()},
            )
        counted_letters, counted_reports, counted_streams = batch.counted
        # Per record, by the letters of the facts it carried: a duplicate when every one was
        # known already, late after the end when one came after it.
        outcomes: Counter[tuple[str, str]] = Counter()
        for sid, letters in counted_letters.items():
            sources = batch.sources[sid]
            if len(sources) == len(letters):  # one fact per record: the usual case
                outcomes.update(zip(letters, map(_TOPIC, map(_RECORD, sources)), strict=True))
                continue
            at = 0
            for rec, n in sources:
                mine, at = letters[at : at + n], at + n
                outcomes["D" if set(mine) == {"D"} else "L" if "L" in mine else "A", rec.topic] += 1
        for (letter, topic), n in outcomes.items():
            self.stats.add("duplicate" if letter == "D" else "applied", strip(topic), n)
            if letter == "L":
                self.stats.add("late_after_end", strip(topic), n)
        for (rec, _), new in zip(batch.reports, counted_reports, strict=True):
            self.stats.add("applied" if new else "duplicate", self.topics.strip(rec.topic))
        await self.process_streams(batch, stream_results, counted_streams)
        due = await store.update_indexes(results)
        # With REDIS_WAIT_REPLICAS, the batch is done only once replicas have every write above
        # (see README, Redis); a retry applies it again.
        await store.replicated()
        if batch.bad:
            await self.dead_letter(batch.bad)  # last: a retry before it publishes none twice
        if due:
            self.outbox.note({sid: (results[sid].ver, results[sid].last_ms) for sid in due})
            self.outbox.wake.set()

    async def process_streams(
        self, batch: Batch, results: dict[str, StreamApplied], counted: Mapping[str, str]
    ) -> None:
        """Livepeer snapshots and webhooks, applied already (`results`; `counted`: the letters to
        count them by); `stream.idle` ends the parent stream's sessions."""
        streams = self.streams
        for sid, letters in counted.items():
            for rec, letter in zip(batch.stream_sources[sid], letters, strict=True):
                self.stats.add("duplicate" if letter == "D" else "applied", self.topics.strip(rec.topic))
        for rec in batch.ignored:
            self.stats.add("applied", self.topics.strip(rec.topic))
            self.stats.add("no_state", self.topics.strip(rec.topic))
        if batch.idles:
            found = await streams.record_idle([(i.parent_id, i.t_ms) for _, i in batch.idles])
            results.update(await streams.end([pair for pairs in found for pair in pairs]))
            for rec, _ in batch.idles:
                self.stats.add("applied", self.topics.strip(rec.topic))
        due = await streams.update_indexes(results)
        # A stream.idle handled before these sessions were indexed is found now (record_idle).
        live = [(sid, r.parent_id, r.created_ms or 0) for sid, r in results.items() if r.status == "LIVE"]
        late = await streams.idle_since([x for x in live if x[1]])
        if late:
            due = await streams.update_indexes(await streams.end(late)) or due
        if due:
            self.stream_outbox.wake.set()

    async def dead_letter(self, bad: Sequence[tuple[ConsumerRecord, InvalidMessage]]) -> None:
        async def one(rec: ConsumerRecord, exc: InvalidMessage) -> None:
            headers = {
                "x-error-type": exc.error_type,
                "x-error-message": exc.message[:1000],
                "x-source-topic": rec.topic,
                "x-source-partition": str(rec.partition),
                "x-source-offset": str(rec.offset),
            }
            value = rec.value if rec.value is not None else b""
            try:
                await self.dlq.publish(value, key=rec.key, headers=headers)
            except MessageSizeTooLargeError:
                # The value with our headers no longer fits: retrying would block the partition
                # forever, so the reason and the source coordinates go out without the value.
                headers["x-value-omitted"] = f"{len(value)} bytes; read it at the source coordinates"
                await self.dlq.publish(b"", key=rec.key, headers=headers)

        await asyncio.gather(*(one(rec, exc) for rec, exc in bad))
        for rec, exc in bad:
            topic = self.topics.strip(rec.topic)
            self.stats.add("dead_lettered", topic)
            log.warning(
                "dead-lettered %s[%d]@%d: %s: %s",
                rec.topic,
                rec.partition,
                rec.offset,
                exc.error_type,
                exc.message,
                extra={
                    "topic": rec.topic,
                    "partition": rec.partition,
                    "offset": rec.offset,
                    "error_type": exc.error_type,
                    "session_id": rec.key.decode("utf-8", "replace") if rec.key else None,
                },
            )

    async def submit(self, records: Sequence[ConsumerRecord]) -> None:
        """Take one fetched batch from the consumer: decode it and queue it for Redis, then return.

        Decoding is pure CPU work and runs while Redis applies an earlier batch. At most one
        batch is applied at a time; the batches fetched meanwhile merge into the next one, so
        while Redis is the slower side (a backlog) it gets large batches, with more facts per
        session and script call, and while it keeps up (live traffic) each batch goes at once.
        Each applied batch commits its own offsets, in order, so a commit never covers a record
        that is not in Redis. The handler waits only while `BATCH_MERGE_MAX_RECORDS` records
        are queued.
        """
        if self.stopping.is_set():
            # Not applied: read again after the restart (or by the partitions' next owner).
            self.rewind(records)
            return
        # Counted from here until merged, so that the idle sweeper (which takes the lock
        # between two batches) does not judge sessions while records wait for the lock.
        self.unmerged += len(records)
        try:
            await self._submit(records)
        finally:
            self.unmerged -= len(records)

    async def _submit(self, records: Sequence[ConsumerRecord]) -> None:
        async with self.batch_lock:
            generation = self.generation
            try:
                batch = await self._decode_sliced(records)
                if generation != self.generation:
                    return  # partitions were rewound meanwhile: these records will be read again
                self.last_batch_full = len(records) >= self.rt.settings.batch_max_records
                self.pending.merge(batch)
                self.fetch_lag = await self.lag()
                self.behind = self.last_batch_full or self.fetch_lag >= BACKLOG_RECORDS
                self._launch()
            except Exception:
                # A bug, not bad input (decode() catches that per record): this batch must not
                # be skipped, or the next batch's commit would cover it. Read it again, and the
                # records queued before it too (they may have been merged with it only in part).
                log.exception("batch of %d could not be submitted; it will be read again", len(records))
                self._read_again(records)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), timeout=1.0)
                return
            limit = self.rt.settings.batch_merge_max_records
            while (
                self.queued_behind() >= limit or self.pending.value_bytes >= MERGE_MAX_BYTES
            ) and not self.stopping.is_set():
                await self.settled()
                self._launch()

    async def _decode_sliced(self, records: Sequence[ConsumerRecord]) -> Batch:
        """decode() in slices, yielding in between: the event loop runs nothing else while
        Python decodes, and the batch in flight needs it to write its calls to Redis and read
        the replies. One pass over 20,000 records would leave Redis idle meanwhile."""
        batch = Batch()
        for i in range(0, len(records), YIELD_EVERY):
            self.decode(records[i : i + YIELD_EVERY], batch)
            await asyncio.sleep(0)
        batch.records = list(records)
        batch.consumed.update(rec.topic for rec in records)
        batch.value_bytes = sum(rec.serialized_value_size for rec in records)
        return batch

    def _launch(self) -> None:
        """Start applying the queued records, unless a batch is in Redis already (its end
        launches them) or the worker is stopping (they are read again after the restart).

        A sealed batch whose script calls have started is finished even when stopping: its
        facts may be in Redis already, and read again they would be counted as duplicates,
        never as applied (the counts must add up to one clean delivery)."""
        if self.in_flight is not None and not self.in_flight.done():
            return
        if self.sealed is not None:
            batch, self.sealed = self.sealed, None
        elif self.pending.records:
            batch, self.pending = self.pending, Batch()
        else:
            return
        if self.stopping.is_set() and batch.early is None:
            # Not applied: the next owner of these partitions (or this worker after a
            # restart) reads them again from the last committed offsets.
            self.rewind(batch.records)
            return
        self.in_flight_records = len(batch.records)
        self.in_flight = asyncio.create_task(self.complete(batch.records, batch))
        self.in_flight.add_done_callback(lambda task: self._after(task, batch.records))

    def _after(self, task: asyncio.Task[None], records: Sequence[ConsumerRecord]) -> None:
        """When a batch is done: launch the next one. A batch whose task failed (a bug:
        complete() handles what it expects) was neither committed nor rewound, so it and the
        records queued behind it are read again rather than covered by the next commit."""
        if task.cancelled() or task.exception() is not None:
            log.error("a batch of %d ended without its commit; it will be read again", len(records))
            self._read_again(records)
        self._launch()

    def _read_again(self, records: Sequence[ConsumerRecord]) -> None:
        """Give up these records and every record queued behind them (they may be merged with
        them): rewind to the first of each partition, so that no later commit covers them, and
        drop a decode in progress."""
        sealed = self.sealed.records if self.sealed is not None else []
        self.rewind([*records, *sealed, *self.pending.records])
        self.sealed = None
        self.pending = Batch()
        self.generation += 1

    def applied_all(self) -> bool:
        """Whether everything fetched is in Redis and the last fetch left nothing on the broker:
        no more facts of a backlog are on their way (the outbox's settling rule)."""
        return (
            not self.queued_records()
            and not self.unmerged
            and not self.last_batch_full
            and self.fetch_lag == 0
        )

    def queued_records(self) -> int:
        """Records fetched and not yet applied: queued, or in the batch being applied."""
        running = self.in_flight is not None and not self.in_flight.done()
        return self.queued_behind() + (self.in_flight_records if running else 0)

    def queued_behind(self) -> int:
        """Records queued behind the batch in flight: the sealed next batch and the merging one."""
        return len(self.pending.records) + (len(self.sealed.records) if self.sealed is not None else 0)

    def _start_next_calls(self) -> None:
        """Start the queued batch's script calls now that the batch in flight has its replies:
        valkey works on them while the worker counts the batch's outcomes, updates the
        indexes and commits. The queued batch is sealed (later records merge into a new one)
        and launched as usual after the batch in flight; its outcomes, indexes and commit stay
        in batch order. Its calls may run before a retry of the batch in flight (after a later
        fault there), which is safe: a session's state is a function of its stored facts, in
        whatever order they came. If the calls fail, or the batch is given up, nothing is
        committed for it: the scripts are idempotent, and it is applied again (or read again)."""
        if self.sealed is not None or not self.pending.by_session or self.stopping.is_set():
            return
        batch, self.pending = self.pending, Batch()
        batch.early = asyncio.create_task(self.rt.store.apply(batch.by_session))
        # Not awaited if the batch is given up: its failure is not an error of its own.
        batch.early.add_done_callback(lambda t: t.cancelled() or t.exception())
        self.sealed = batch

    async def settled(self) -> None:
        """Wait until the batch in flight, if any, is applied (or given up); its commit may
        still be on its way, and the batch queued behind it may have started."""
        task = self.in_flight
        if task is None:
            return
        try:
            await asyncio.shield(task)
        except Exception:
            # complete() handles what it expects; anything else must not stop the next batch.
            log.exception("a batch ended with an unexpected error")

    async def drained(self) -> None:
        """Wait until no batch is in flight and none is queued (at shutdown, the queued records
        are rewound instead of applied, except a sealed batch whose calls have started)."""
        while True:
            while self.in_flight is not None and not self.in_flight.done():
                await self.settled()
            self._launch()
            if self.in_flight is None or self.in_flight.done():
                return

    async def complete(self, records: Sequence[ConsumerRecord], batch: Batch) -> None:
        """Apply a submitted batch (retrying faults), then commit its offsets."""
        started = time.perf_counter()
        if await self.handle(records, batch):
            self.commit_in_order(records)
            metrics.BATCH_SIZE.observe(len(records))
            metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        else:
            # Given up at shutdown: so are the records queued behind it, which a later commit
            # would otherwise cover.
            self._read_again(records)

    async def handle(self, records: Sequence[ConsumerRecord], batch: Batch) -> bool:
        """Process a batch until it succeeds; False if the worker is stopping first (no commit)."""
        backoff = 0.1
        while True:
            try:
                await self.process(records, batch)
                return True
            except (StoreUnavailable, rexc.ConnectionError, rexc.TimeoutError) as exc:
                # The store's own errors say what Redis did ("Redis unavailable: ...").
                reason = str(exc) if isinstance(exc, StoreUnavailable) else f"Redis unavailable: {exc}"
            except KafkaError as exc:
                reason = f"Kafka unavailable for the dead-letter/outbound topics: {exc!r}"
            except Exception:
                log.exception("batch failed unexpectedly; it will be retried")
                reason = "unexpected error"
            if self.stopping.is_set():
                log.warning("stopping with a batch not applied; it will be redelivered")
                return False
            backoff = min(backoff * 2, self.rt.settings.redis_retry_max_seconds)
            first = records[0] if records else None
            log.warning(
                "batch of %d not applied (%s); retrying in %.1fs",
                len(records),
                reason,
                backoff,
                extra={"topic": first.topic, "partition": first.partition, "offset": first.offset}
                if first
                else {},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=backoff)

    def commit_in_order(self, records: Sequence[ConsumerRecord]) -> None:
        """Commit an applied batch's offsets after every commit before it, without waiting for
        the broker's answer: that round trip overlaps the next batch instead of delaying it."""
        previous = self.committing

        async def after_previous() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            await self.commit(records)

        self.committing = asyncio.create_task(after_previous())

    async def commits_done(self) -> None:
        """Wait for the commits sent so far."""
        if self.committing is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.committing)

    async def commit(self, records: Sequence[ConsumerRecord]) -> None:
        """Commit, per partition, the offset after the batch's last record: only this batch's
        records, never what the consumer has fetched since."""
        # Keyed by plain tuples: a TopicPartition per record cost about 30 ms of worker CPU for
        # a merged batch of 60,000 records, these 11 ms.
        last: dict[tuple[str, int], int] = {}
        get = last.get
        for rec in records:
            key = (rec.topic, rec.partition)
            if rec.offset >= get(key, -1):
                last[key] = rec.offset
        if not last:
            return
        offsets = {TopicPartition(topic, part): offset + 1 for (topic, part), offset in last.items()}
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took the partitions away; their new owner re-applies idempotently.
            log.warning("offset commit refused after a rebalance: %s", exc)
        except KafkaError as exc:
            # The batch is applied: the next batch's commit covers these offsets, or they are
            # read again and re-applied idempotently.
            log.warning("offset commit failed: %r", exc)

    def rewind(self, records: Sequence[ConsumerRecord]) -> None:
        """Seek every partition of an abandoned batch back to its first record.

        Without this, a later batch's commit would cover the abandoned offsets too: it commits
        the offset after its own last record of each partition.
        """
        first: dict[TopicPartition, int] = {}
        for rec in records:
            tp = TopicPartition(rec.topic, rec.partition)
            first[tp] = min(first.get(tp, rec.offset), rec.offset)
        for tp, offset in first.items():
            # A partition no longer ours raises: its next owner starts from the committed offset.
            with contextlib.suppress(IllegalStateError):
                self.consumer.seek(tp, offset)

    # --- the idle rule (CONTRACT 4.4) ----------------------------------------------------

    async def caught_up(self) -> bool:
        """True when this worker has applied everything it can see on every partition it owns.

        Two signals, because either alone can mislead: positions at the high watermarks
        (tansu under-reports watermarks of batch-written partitions), and a last batch
        that came back short of `max_records` (a backlog fills every batch).
        """
        consumer = self.consumer
        if consumer is None or self.last_batch_full:
            return False
        assignment = consumer.assignment()
        if not assignment:
            return False
        for tp in assignment:
            hw = consumer.highwater(tp)
            if hw is None or await consumer.position(tp) < hw:
                return False
        return True

    def owns(self, session_id: str, assignment: set[TopicPartition]) -> bool:
        """Whether every inbound partition that can carry this session's facts is ours."""
        key = session_id.encode()
        for topic in self._decoders:
            parts = self.consumer.partitions_for_topic(topic)
            if not parts or TopicPartition(topic, partition_for(key, len(parts))) not in assignment:
                return False
        return True

    async def sweep_once(self, max_pages: int = 20) -> int:
        """End idle sessions this worker may judge; returns how many it ended.

        At most ``max_pages`` pages of candidates per sweep, so one sweep never holds the
        batch lock for long; the next sweep goes on where the index still has candidates.
        """
        s = self.rt.settings
        ended = 0
        async with self.batch_lock:
            if self.queued_records() or self.unmerged:
                return 0  # a batch is still on its way to Redis
            if not await self.caught_up():
                return 0
            assignment = set(self.consumer.assignment())
            now = now_ms()
            offset = 0
            for _ in range(max_pages):
                ids = await self.rt.store.idle_candidates(now - s.idle_timeout_ms, 500, offset)
                if not ids:
                    break
                offset += len(ids)
                mine = [sid for sid in ids if self.owns(sid, assignment)]
                if not mine:
                    continue
                results = await self.rt.store.end_idle(mine, now, s.idle_timeout_ms)
                ended += sum(1 for r in results.values() if r.letters == "I")
                # Ended and vanished sessions leave the index, so the next page starts earlier.
                offset -= sum(1 for r in results.values() if r.status != "LIVE")
                if await self.rt.store.update_indexes(results):
                    self.outbox.wake.set()
            ended += await self._sweep_streams(now, assignment, max_pages)
        if ended:
            self.stats.add("idle_ended", "sweeper", ended)
            log.info("idle rule ended %d sessions", ended)
        return ended

    async def _sweep_streams(self, now: int, assignment: set[TopicPartition], max_pages: int) -> int:
        s = self.rt.settings
        ended, offset = 0, 0
        for _ in range(max_pages):
            ids = await self.streams.idle_candidates(now - s.idle_timeout_ms, 500, offset)
            if not ids:
                break
            offset += len(ids)
            mine = [sid for sid in ids if self.owns(sid, assignment)]
            if not mine:
                continue
            results: dict[str, StreamApplied] = await self.streams.end_idle(mine, now, s.idle_timeout_ms)
            ended += sum(1 for r in results.values() if r.letters == "I")
            offset -= sum(1 for r in results.values() if r.status != "LIVE")
            if await self.streams.update_indexes(results):
                self.stream_outbox.wake.set()
        return ended

    async def lags(self) -> dict[TopicPartition, int]:
        """Records between this worker's position and the high watermark, per assigned partition
        (as of the last fetch response; partitions without one yet are left out)."""
        consumer = self.consumer
        out: dict[TopicPartition, int] = {}
        if consumer is not None:
            for tp in consumer.assignment():
                hw = consumer.highwater(tp)
                if hw is not None:
                    out[tp] = max(0, hw - await consumer.position(tp))
        return out

    async def lag(self) -> int:
        return sum((await self.lags()).values())

    async def refresh_gauges(self) -> None:
        """Consumer lag per assigned partition, outbox depths and live sessions, for /metrics."""
        if self.consumer is not None:
            metrics.CONSUMER_LAG.clear()  # partitions no longer ours leave the gauge
            for tp, lag in (await self.lags()).items():
                metrics.CONSUMER_LAG.labels(self.topics.strip(tp.topic), str(tp.partition)).set(lag)
        pipe = self.rt.redis.pipeline(transaction=False)
        for key in (C.OUTBOX, C.OUTBOX_STREAMS, C.IDX_LIVE, C.IDX_LIVE_STREAMS):
            pipe.zcard(key)
        rtk_due, streams_due, rtk_live, streams_live = await pipe.execute()
        metrics.OUTBOX_DEPTH.labels("rtk").set(rtk_due)
        metrics.OUTBOX_DEPTH.labels("streams").set(streams_due)
        metrics.LIVE_SESSIONS.labels("rtk").set(rtk_live)
        metrics.LIVE_SESSIONS.labels("streams").set(streams_live)

    async def watch_broker(self, every: float = 2.0) -> None:
        """Say when Kafka becomes unreachable and when it is back (aiokafka's own retries are
        silenced in the logs); the consumer and producer recover by themselves.

        It checks every `every` seconds; while the broker stays away it says so again after
        waits that double up to 30 s, so a long outage does not flood the log."""
        bootstrap = self.rt.settings.kafka_bootstrap_servers
        down_since: float | None = None
        next_line, wait = 0.0, every
        while not self.stopping.is_set():
            try:
                ok = await self.rt.broker.ping(timeout=1.0)
                error = "" if ok else "no answer"
            except Exception as exc:
                ok, error = False, str(exc) or type(exc).__name__
            now = time.monotonic()
            if ok and down_since is not None:
                log.warning("Kafka at %s reachable again after %.0fs", bootstrap, now - down_since)
                down_since, wait = None, every
            elif not ok:
                if down_since is None:
                    down_since, next_line = now, now
                if now >= next_line:
                    wait = min(wait * 2, 30.0)
                    next_line = now + wait
                    log.warning("Kafka at %s unreachable (%s); retrying in %.0fs", bootstrap, error, wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=every)

    async def run_gauges(self, interval: float) -> None:
        while not self.stopping.is_set():
            try:
                await self.refresh_gauges()
            except Exception as exc:
                log.debug("gauges not refreshed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=interval)

    async def run_sweeper(self) -> None:
        interval = self.rt.settings.sweep_interval_seconds
        while not self.stopping.is_set():
            try:
                await self.sweep_once()
            except Exception as exc:
                log.warning("idle sweep failed, next try in %.1fs: %s", interval, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=interval)


def build_app(rt: Runtime | None = None) -> tuple[FastStream, Worker]:
    rt = rt or build_runtime()
    s = rt.settings
    worker = Worker(rt)
    subscriber = rt.broker.subscriber(
        *worker.inbound_topics,
        group_id=s.consumer_group,
        group_instance_id=s.kafka_group_instance_id,
        batch=True,
        max_records=s.batch_max_records,
        batch_timeout_ms=s.batch_timeout_ms,
        auto_offset_reset="earliest",
        # Range assignment gives one worker partition p of every inbound topic (they have equal
        # partition counts), which the idle rule's ownership check relies on; round-robin does not.
        partition_assignment_strategy=(RangePartitionAssignor,),
        session_timeout_ms=s.kafka_session_timeout_ms,
        fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
        max_partition_fetch_bytes=s.kafka_max_partition_fetch_bytes,
        heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
        ack_policy=AckPolicy.MANUAL,
        decoder=_raw_records,
        parser=_parse_first_only,
        title="session-facts",
        description=(
            "RealtimeKit sessions, peer events, webhooks and peer reports, and Livepeer session snapshots"
            " and webhooks, applied to session state in Redis. Values are UTF-8 JSON keyed by session id"
            " (CONTRACT section 2); invalid ones go to sessions.dead-letter."
        ),
    )

    @subscriber
    async def on_batch(records: Any) -> None:
        worker.consumer = subscriber.consumer
        # The batch's raw records (`_raw_records`), typed Any for the AsyncAPI document,
        # which would otherwise describe a ConsumerRecord as the payload. The handler returns
        # once the batch is on its way to Redis; the worker commits it when applied.
        await worker.submit(cast(tuple[ConsumerRecord, ...], records))

    tasks: list[asyncio.Task[None]] = []
    app = FastStream(rt.broker, logger=logging.getLogger(FASTSTREAM_LOGGER))

    @app.on_startup
    async def _start() -> None:
        configure_logging(s.log_level, s.log_format)
        metrics.serve(s.metrics_port, worker.stats)
        backoff = 0.5
        while True:
            try:
                await rt.store.load_scripts()
                break
            except StoreUnavailable as exc:
                backoff = min(backoff * 2, 30.0)
                log.warning(
                    "waiting for Redis at %s (%s); retrying in %.1fs", _safe_url(s.redis_url), exc, backoff
                )
                await asyncio.sleep(backoff)
        backoff = 0.5
        while True:
            try:
                await rt.connect_broker()
                break
            except Exception as exc:
                backoff = min(backoff * 2, 30.0)
                log.warning(
                    "waiting for Kafka at %s (%s); retrying in %.1fs",
                    s.kafka_bootstrap_servers,
                    exc or type(exc).__name__,
                    backoff,
                )
                await asyncio.sleep(backoff)
        log.info(
            "worker starting: kafka=%s redis=%s group=%s topics=%s",
            s.kafka_bootstrap_servers,
            _safe_url(s.redis_url),
            s.consumer_group,
            ",".join(worker.inbound_topics),
        )

    @app.after_startup
    async def _after() -> None:
        worker.consumer = subscriber.consumer
        tasks.append(asyncio.create_task(worker.outbox.run(s.outbox_interval_seconds, worker.stopping)))
        tasks.append(
            asyncio.create_task(worker.stream_outbox.run(s.outbox_interval_seconds, worker.stopping))
        )
        tasks.append(asyncio.create_task(worker.run_sweeper()))
        tasks.append(asyncio.create_task(worker.run_gauges(s.sweep_interval_seconds)))
        tasks.append(asyncio.create_task(worker.watch_broker()))

    @app.on_shutdown
    async def _stop() -> None:
        # Before the broker closes: what is queued for Kafka still has a producer to go out on.
        worker.stopping.set()
        # The batch in flight finishes and commits (or, if it is waiting out a fault, gives up
        # and is redelivered), and no new one starts; then its summaries can be flushed.
        try:
            await worker.drained()
            await worker.commits_done()
        except Exception as exc:
            log.warning("the batch in flight did not finish: %s", exc)
        try:
            await subscriber.stop()
        except Exception as exc:
            log.warning("consumer did not stop cleanly: %s", exc)
        try:
            await worker.outbox.flush(timeout_s=10.0)
            await worker.stream_outbox.flush(timeout_s=5.0)
        except Exception as exc:
            log.warning("outbox not fully drained at shutdown (it resumes on the next start): %s", exc)

    @app.after_shutdown
    async def _drained() -> None:
        for t in tasks:
            t.cancel()
        # A task blocked in a Redis call may not notice the cancel at once: do not wait forever.
        await asyncio.wait(tasks, timeout=5.0)
        log.info("worker stopped; counts %s", worker.stats.snapshot())
        await rt.redis.aclose()

    return app, worker


def _safe_url(url: str) -> str:
    """A Redis URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def main() -> int:
    rt = runtime_or_exit("worker")
    # Before the app starts: FastStream logs "starting" before its startup hooks run.
    configure_logging(rt.settings.log_level, rt.settings.log_format)
    app, _ = build_app(rt)
    # What the imports and the set-up so far created is frozen out of every scan (what the
    # application's start-up hooks create later is not). The young generation is collected
    # only after a million more tracked objects than were freed: the records of the batches
    # being decoded, merged and applied (a few objects each, up to three merged batches of
    # BATCH_MERGE_MAX_RECORDS) are alive until their batch is done, and every collection of
    # them found nothing to free. With CPython's default threshold (700) the collector took
    # about a quarter of the worker's CPU in a drain; with 50,000, 12-85 ms per collection,
    # 0.5-0.65 s per 300,000-event drain (docs/performance.md). Reference counting frees
    # almost everything; what only the collector frees (cycles) waits for the next run.
    gc.freeze()
    gc.set_threshold(1_000_000, 20, 100)
    asyncio.run(app.run())
    return 0
