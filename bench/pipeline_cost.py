"""The worker's CPU per script call on the Redis side of a batch: redis-py's pipeline against
`service.store.pipeline_replies`, on the same calls, in one process.

Replays live-sized batches of the bench's log (`batch records` records each, grouped by
session as the worker groups them: about one call per session) into an embedded valkey,
first once to store the facts, then `rounds` times through each way in turn. Every call is
the real `apply_rtk.lua` call of the worker; after the first pass the facts are duplicates,
so valkey's work is the same for both ways and only this process's CPU is compared. Prints
this process's CPU per script call for each way, and their ratio.
Not part of `make bench`.
Run: .venv/bin/python -m bench.pipeline_cost [batch records] [rounds]
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from service.config import Settings
from service.embedded import start_redis
from service.runtime import build_redis
from service.store import APPLY, Store, pipeline_replies

from .logmix import backlog
from .script_cost import commands_by_session


async def _run(url: str, batch_records: int, rounds: int) -> None:
    redis = build_redis(Settings(redis_url=url))
    store = Store(redis, retention_ms=7 * 24 * 3600 * 1000)
    await store.load_scripts()
    items = backlog(5, 20_000, 2000).items
    batches = []
    for i in range(0, len(items), batch_records):
        by_session = commands_by_session(items[i : i + batch_records])
        batches.append(
            [
                ("EVALSHA", APPLY.sha, 6, *k, *a)
                for k, a in (store.apply_call(s, c) for s, c in by_session.items())
            ]
        )
    calls = sum(len(b) for b in batches)

    async def redis_py(commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = redis.pipeline(transaction=False)
        for c in commands:
            pipe.execute_command(*c)
        return await pipe.execute(raise_on_error=False)

    async def raw(commands: list[tuple[Any, ...]]) -> list[Any]:
        return await pipeline_replies(redis, commands)

    for b in batches:  # store the facts once: every later pass is the same work for valkey
        await raw(b)
    cpu: dict[str, float] = {"redis-py pipeline": 0.0, "pipeline_replies": 0.0}
    for _ in range(rounds):
        for name, way in (("redis-py pipeline", redis_py), ("pipeline_replies", raw)):
            started = time.process_time()
            for b in batches:
                replies = await way(b)
                assert len(replies) == len(b) and not any(isinstance(r, Exception) for r in replies)
            cpu[name] += time.process_time() - started
    await redis.aclose()
    print(
        f"{len(batches)} batches of {batch_records} records, {calls / len(batches):.1f} script calls each, {rounds} rounds"
    )
    for name, seconds in cpu.items():
        print(f"  {name:18s} {seconds / (calls * rounds) * 1e6:6.1f} µs of this process's CPU per call")
    print(f"  ratio {cpu['pipeline_replies'] / cpu['redis-py pipeline']:.2f}")


def main(batch_records: int = 35, rounds: int = 3) -> None:
    with start_redis() as server:
        asyncio.run(_run(server.url, batch_records, rounds))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
