"""Produce-to-visible latency at a steady offered rate, with the worker caught up.

A paced producer offers the realistic mix (new sessions) at `rate` events/s. Some of the
messages are probes; each probe's produce time is taken when it is handed to the
producer (so the producer's own linger counts). Two kinds of visibility are measured:

- **read API**: `GET /v1/sessions/{id}/participants/{peer}?include_peer_events=true` of
  `python -m service api` (its own process) until the probe's event is listed; a small
  sample, because every poll costs the 2 cores a request;
- **Redis**: `SISMEMBER sp:{id}:ids <event id or S:sha1>`, written in the same atomic
  script call as the rest of the session's state; a larger sample, all pending probes
  checked in one pipelined round trip.

Latency is taken when the poll that sees the probe returns: an upper bound, by up to one
poll interval plus one round trip. API probes are polled every 5 ms for their first 50 ms,
then every tenth of their age (at most 50 ms), so slow probes cost fewer requests. The
bench, the worker, the API, the broker and Redis share the machine's cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from service import constants as C
from service.constants import RTK_PEER_EVENTS, Topics

from .kafka_io import CommittedOffsets, Deliveries, Offsets, producer
from .logmix import Item, LogMix


@dataclass
class Probe:
    item: Item
    produced: float
    visible: float | None = None
    acked: float | None = None  # when the broker's acknowledgement reached the producer

    @property
    def ms(self) -> float | None:
        return None if self.visible is None else (self.visible - self.produced) * 1000


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean in ms (nearest rank), and the count."""
    if not values:
        return {"count": 0}
    v = sorted(values)

    def rank(q: float) -> float:
        return round(v[min(len(v) - 1, max(0, int(q * len(v) + 0.999999) - 1))], 2)

    return {
        "count": len(v),
        "p50_ms": rank(0.50),
        "p90_ms": rank(0.90),
        "p99_ms": rank(0.99),
        "p99_9_ms": rank(0.999),
        "max_ms": round(v[-1], 2),
        "mean_ms": round(sum(v) / len(v), 2),
    }


class HttpPool:
    """A minimal keep-alive HTTP/1.1 GET client: httpx costs the shared cores several times more."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.requests = 0

    async def get(self, path: str) -> tuple[int, bytes]:
        """One GET; a kept-alive connection the server has closed meanwhile is replaced once."""
        if self.idle:
            try:
                return await self._get(self.idle.pop(), path)
            except (OSError, asyncio.IncompleteReadError):
                pass  # uvicorn closes connections idle for 5 s
        return await self._get(await asyncio.open_connection(self.host, self.port), path)

    async def _get(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str
    ) -> tuple[int, bytes]:
        reader, writer = conn
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        body = await reader.readexactly(length)
        self.requests += 1
        if close:
            writer.close()
        else:
            self.idle.append(conn)
        return status, body

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


def _ids_key(sid: str) -> str:
    return next(k for k in C.session_keys(sid) if k.endswith(":ids"))


async def run_latency(
    *,
    bootstrap: str,
    topics: Topics,
    redis_url: str,
    api_url: str,
    log: LogMix,
    rate: float,
    committed: CommittedOffsets,
    ends: Offsets,
    redis_every: int = 20,
    api_every: int = 250,
    redis_poll_s: float = 0.005,
    api_poll_s: float = 0.005,
    settle_s: float = 30.0,
) -> dict[str, Any]:
    """Offer `log` at `rate` events/s; returns latency percentiles and whether the worker kept up.

    `ends` (the end offsets so far) is updated in place with what this phase produced.
    """
    items = log.items
    # An API probe must be the only message of its (peer, time) fact and not after its
    # session's end, or the event listed may be another copy (or none).
    fact_copies = Counter((i.sid, i.peer, i.t_ms) for i in items if i.topic == RTK_PEER_EVENTS)
    seen: set[str] = set()
    redis_pending: dict[int, Probe] = {}
    redis_probes: list[Probe] = []
    api_probes: list[Probe] = []
    api_tasks: list[asyncio.Task[None]] = []
    errors: list[str] = []
    producing = True
    redis = aioredis.Redis.from_url(redis_url)
    stats_before = await redis.info("commandstats")
    host, _, port = api_url.removeprefix("http://").partition(":")
    client = HttpPool(host, int(port))

    async def api_probe(pr: Probe) -> None:
        it = pr.item
        url = f"/v1/sessions/{it.sid}/participants/{it.peer}?include_peer_events=true"
        while time.monotonic() - pr.produced < settle_s:
            try:
                status, body = await client.get(url)
            except (OSError, asyncio.IncompleteReadError) as exc:
                errors.append(repr(exc))
                await asyncio.sleep(api_poll_s)
                continue
            if status == 200:
                events = orjson.loads(body)["data"]["participant"].get("peer_events") or []
                if any(e.get("id") == it.fact for e in events):
                    pr.visible = time.monotonic()
                    return
            # Fine-grained while a probe may still meet the target, coarser after: polls cost CPU
            # on the same cores as the worker.
            await asyncio.sleep(max(api_poll_s, min(0.05, (time.monotonic() - pr.produced) / 10)))

    async def redis_poller() -> None:
        # Each probe is checked every poll interval while young, then every tenth of its age
        # (at most 50 ms), as the API probes are: checking every pending probe every 5 ms
        # would load Redis more the further the worker falls behind, and push it further.
        next_check: dict[int, float] = {}
        while producing or redis_pending:
            now = time.monotonic()
            batch = [(n, pr) for n, pr in list(redis_pending.items()) if next_check.get(n, 0.0) <= now]
            if batch:
                pipe = redis.pipeline(transaction=False)
                for _, pr in batch:
                    pipe.sismember(_ids_key(pr.item.sid), pr.item.fact)
                found = await pipe.execute()
                now = time.monotonic()
                for (n, pr), hit in zip(batch, found, strict=True):
                    if hit:
                        pr.visible = now
                        del redis_pending[n]
                        next_check.pop(n, None)
                    elif now - pr.produced > settle_s:
                        del redis_pending[n]  # never seen: reported as unresolved
                        next_check.pop(n, None)
                    else:
                        next_check[n] = now + max(redis_poll_s, min(0.05, (now - pr.produced) / 10))
            await asyncio.sleep(redis_poll_s)

    # 20 ms, not 5: the embedded broker (tansu, memory://) lists every stored record batch of a
    # partition on each fetch, so its CPU per fetch grows with the batches written. At 5 ms this
    # producer wrote ~2,400 one- or two-record batches a second over 12 partitions, and tansu's
    # share of the 2 cores climbed through the run. The linger is counted in the latency.
    p = producer(bootstrap, linger_ms=20)
    d = Deliveries()
    acks: dict[int, Probe] = {}

    def on_delivery(n: int) -> Any:
        def report(err: Any, msg: Any) -> None:
            d(err, msg)
            pr = acks.pop(n, None)
            if pr is not None and err is None:
                pr.acked = time.monotonic()

        return report

    poller = asyncio.create_task(redis_poller())
    n = len(items)
    t0 = time.monotonic()
    i = 0
    last_tick, max_stall = t0, 0.0
    try:
        while i < n:
            tick = time.monotonic()
            max_stall, last_tick = max(max_stall, tick - last_tick), tick
            due = min(n, int((tick - t0) * rate) + 1)
            while i < due:
                it = items[i]
                p.produce(topics.name(it.topic), value=it.value, key=it.key, on_delivery=on_delivery(i))
                now = time.monotonic()
                first = not it.dup and it.fact not in seen
                seen.add(it.fact)
                if first and i % redis_every == 0:
                    pr = Probe(it, now)
                    redis_probes.append(pr)
                    redis_pending[i] = pr
                    acks[i] = pr
                ended = log.ended_ms.get(it.sid)
                if (
                    first
                    and i % api_every == 0
                    and it.topic == RTK_PEER_EVENTS
                    and fact_copies[(it.sid, it.peer, it.t_ms)] == 1
                    and (ended is None or it.t_ms <= ended)
                ):
                    pr = Probe(it, now)
                    api_probes.append(pr)
                    api_tasks.append(asyncio.create_task(api_probe(pr)))
                i += 1
            p.poll(0)
            await asyncio.sleep(0.002)
        offered_s = time.monotonic() - t0
        while len(p) > 0 and time.monotonic() - t0 < offered_s + 30:
            p.poll(0.01)
            await asyncio.sleep(0.005)
        for tp, end in d.ends.items():
            ends[tp] = max(ends.get(tp, 0), end)
        lag_at_end = sum(ends.values()) - await committed.committed(ends)
        redis_time = _command_time(stats_before, await redis.info("commandstats"), n)
        producing = False
        await asyncio.wait([poller, *api_tasks], timeout=settle_s + 5)
        # The worker must have applied all of it, not only the probes.
        total = sum(ends.values())
        caught_up_at: float | None = None
        while time.monotonic() - t0 < offered_s + settle_s:
            if await committed.committed(ends) >= total:
                caught_up_at = time.monotonic() - t0
                break
            await asyncio.sleep(0.1)
    finally:
        producing = False
        for t in (poller, *api_tasks):
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(poller, *api_tasks, return_exceptions=True)
        await client.close()
        await redis.aclose()
    redis_ms = [pr.ms for pr in redis_probes if pr.ms is not None]
    by_second: dict[int, list[float]] = {}
    for pr in redis_probes:
        if pr.ms is not None:
            by_second.setdefault(int(pr.produced - t0), []).append(pr.ms)
    acked_ms = [(pr.acked - pr.produced) * 1000 for pr in redis_probes if pr.acked is not None]
    api_ms = [pr.ms for pr in api_probes if pr.ms is not None]
    return {
        "offered_events": n,
        "offered_rate": round(n / offered_s) if offered_s else 0,
        "target_rate": rate,
        "offered_seconds": round(offered_s, 2),
        # The producer's loop wakes every 2 ms; a longer gap means it was starved of CPU and then
        # offered a burst, which the latency figures then include.
        "producer_max_stall_ms": round(max_stall * 1000, 1),
        "delivery_errors": d.errors[:3],
        "lag_when_offering_stopped": lag_at_end,
        # Everything Redis did while the events were offered (the worker's scripts and index
        # upkeep, the outbox, the API's reads, the bench's probes), per offered event.
        "redis_us_per_event_by_command": redis_time,
        "all_committed_after_s": None if caught_up_at is None else round(caught_up_at, 2),
        "read_api": {
            **percentiles(api_ms),
            "probes": len(api_probes),
            "unresolved": len(api_probes) - len(api_ms),
            "sample": f"1 in {api_every} messages (peer events)",
            "poll_interval_ms": api_poll_s * 1000,
            "requests": client.requests,
            "request_errors": len(errors),
            "request_error_examples": errors[:3],
        },
        "redis_by_second": [
            {"second": sec, "p50_ms": percentiles(v)["p50_ms"], "max_ms": percentiles(v)["max_ms"]}
            for sec, v in sorted(by_second.items())
        ],
        "broker_ack": {
            **percentiles(acked_ms),
            "what": "produce() to the broker's acknowledgement (acks=all), same probes as redis",
        },
        "redis": {
            **percentiles(redis_ms),
            "probes": len(redis_probes),
            "unresolved": len(redis_probes) - len(redis_ms),
            "sample": f"1 in {redis_every} messages",
            "poll_interval_ms": redis_poll_s * 1000,
        },
    }


def _command_time(before: dict[str, Any], after: dict[str, Any], events: int) -> dict[str, float]:
    """Microseconds Redis spent per offered event in each command between two INFO commandstats."""
    out: dict[str, float] = {}
    for key, st in after.items():
        usec = st["usec"] - before.get(key, {}).get("usec", 0)
        if usec > 0 and events:
            out[key.removeprefix("cmdstat_")] = round(usec / events, 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:8])
