"""Quick drain figure: how fast one worker process applies a pre-filled backlog.

Not the issue-5 benchmark (that one adds a bare-consumer ceiling and a naive baseline
in the same run); this prints one events/s figure for a realistic RealtimeKit mix.
Run: .venv/bin/python -m bench.quick_drain [events]
"""

from __future__ import annotations

import asyncio
import random
import sys
import time

import redis.asyncio as aioredis

from service.constants import Topics
from service.embedded import ensure_topics, start_kafka, start_redis, topic_layout
from tests.integration.harness import WorkerProcess, drained, make_log, produce, wait_for, worker_env


async def main(target: int) -> None:
    with start_kafka() as kafka, start_redis() as redis_server:
        topics = Topics("bench.")
        await ensure_topics(kafka.bootstrap, topic_layout(topics, inbound=6, outbound=1))
        rng = random.Random(1)
        items = []
        while len(items) < target:
            items += make_log(rng, 200, with_bad=False).items
        t0 = time.monotonic()
        produced = produce(kafka.bootstrap, topics, items)
        print(f"produced {len(items)} events in {time.monotonic() - t0:.1f}s")
        redis = aioredis.Redis.from_url(redis_server.url)
        env = worker_env(kafka.bootstrap, redis_server.url, topics)
        w = WorkerProcess(env)
        start = None
        try:
            while start is None:
                if await redis.exists("sp:idx:sessions"):
                    start = time.monotonic()  # first batch applied: the group has joined
                await asyncio.sleep(0.01)
            await wait_for(
                lambda: drained(kafka.bootstrap, env["CONSUMER_GROUP"], produced, redis),
                600,
                "drain",
                every=0.1,
            )
            took = time.monotonic() - start
        finally:
            w.stop()
            await redis.aclose()
        batches = w.log_text().count(" - Received")
        print(f"worker applied {len(items)} events in {took:.2f}s: {len(items) / took:,.0f} events/s")
        print(f"{batches} batches, {len(items) / max(batches, 1):,.0f} events per batch on average")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
