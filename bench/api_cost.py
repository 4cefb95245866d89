"""The read API's CPU per request, for the request the latency phase polls with.

Starts an embedded broker and valkey, stores one session of 20 peers (four events each),
starts `python -m service api` as its own process and sends `requests` keep-alive GETs of
`/v1/sessions/{id}/participants/{peer}?include_peer_events=true` from four concurrent
clients, after 300 to warm up. Prints the API process's CPU per request (from /proc) and
the elapsed time divided by the requests (the inverse of the throughput, not a latency).
Not part of `make bench`.
Run: .venv/bin/python -m bench.api_cost [requests]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from service.core.model import PeerEvent
from service.embedded import free_port, start_kafka, start_redis
from service.store import Store

from .latency import HttpPool
from .procs import ServiceProcess, cpu_seconds, wait_http

SESSION = "api-cost-session"
T0 = 1_767_261_600_000


def _events() -> list[PeerEvent]:
    out = []
    for p in range(20):
        for k, code in enumerate((0, 2, 1, 2)):  # created, joining, leaving, joining
            eid = f"e{p}-{k}"
            body = {"id": eid, "session_id": SESSION, "peer_id": f"peer-{p}", "display_name": f"Peer {p}"}
            out.append(
                PeerEvent(
                    SESSION, eid, f"peer-{p}", code, T0 + p * 1000 + k * 60_000, orjson.dumps(body).decode()
                )
            )
    return out


async def main(requests: int) -> None:
    if requests < 4:
        raise SystemExit("usage: python -m bench.api_cost [requests >= 4]")
    with start_kafka() as kafka, start_redis() as valkey:
        redis = aioredis.Redis.from_url(valkey.url)
        store = Store(redis, retention_ms=3_600_000)
        await store.load_scripts()
        await store.apply({SESSION: _events()})
        port = free_port()
        env = {
            "REDIS_URL": valkey.url,
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(port),
            "LOG_LEVEL": "WARNING",
        }
        api = ServiceProcess("api", env, Path(tempfile.mkdtemp(prefix="sessionpulse-api-cost-")) / "api.log")
        try:
            await wait_http(f"http://127.0.0.1:{port}/healthz", api)
            pool = HttpPool("127.0.0.1", port)
            path = f"/v1/sessions/{SESSION}/participants/peer-3?include_peer_events=true"
            status, body = await pool.get(path)
            if status != 200:
                raise SystemExit(f"GET {path}: {status} {body[:200]!r}")
            for _ in range(300):
                await pool.get(path)

            async def client(n: int) -> None:
                for _ in range(n):
                    await pool.get(path)

            cpu0, wall0 = cpu_seconds(api.pid), time.perf_counter()
            await asyncio.gather(*(client(requests // 4) for _ in range(4)))
            cpu, wall = cpu_seconds(api.pid) - cpu0, time.perf_counter() - wall0
        finally:
            api.stop()
            await redis.aclose()
    n = requests // 4 * 4
    print(
        f"{n:,} requests: API CPU {cpu / n * 1e6:,.0f} µs per request; elapsed {wall / n * 1e6:,.0f} µs per request"
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))
