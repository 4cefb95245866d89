"""Quick drain figure: how fast one worker process applies a pre-filled backlog.

Only phase (c) of `python -m bench` (no ceiling, baseline, correctness check, latency or
memory): one events/s figure for the bench's realistic RealtimeKit mix, in well under a
minute. Run: .venv/bin/python -m bench.quick_drain [events] [--workers=N] [worker env NAME=VALUE ...]

`--workers=N` starts N worker processes in one consumer group (the issue's "several worker
processes on one host"): the figure is then the group's, not one process's.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import redis.asyncio as aioredis

from service.constants import Topics
from service.embedded import ensure_topics, free_port, start_kafka, start_redis, topic_layout

from .kafka_io import produce
from .logmix import backlog
from .phases import drain_worker, start_worker
from .procs import CpuWindow, ServiceProcess


def _applied_batches(port: int) -> int:
    """Batches the worker applied, from its /metrics (`sessionpulse_batch_size_count`)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("sessionpulse_batch_size_count"):
                return int(float(line.split()[-1]))
    return 0


async def main(target: int, extra_env: dict[str, str], workers: int = 1) -> None:
    log = backlog(1, target, max(1, min(5000, target // 60)))
    ended = len(log.ended_ms)
    with start_kafka() as kafka, start_redis() as redis_server:
        topics = Topics("bench.")
        await ensure_topics(kafka.bootstrap, topic_layout(topics, inbound=6, outbound=1))
        t0 = time.monotonic()
        ends = await asyncio.to_thread(produce, kafka.bootstrap, topics, log.items)
        print(f"produced {len(log.items):,} events in {time.monotonic() - t0:.1f}s")
        redis = aioredis.Redis.from_url(redis_server.url)
        log_path = Path(tempfile.gettempdir()) / "sp-quick-drain-worker.log"
        metrics_port = free_port()
        env = {"METRICS_PORT": str(metrics_port)} | extra_env
        w = await start_worker(kafka.bootstrap, redis_server.url, topics, "bench-quick", log_path, 1, env)
        # More workers in the same group, each with its own /metrics port.
        others = [
            ServiceProcess(
                "worker",
                w.env | {"METRICS_PORT": str(free_port())},
                log_path.with_name(f"{log_path.stem}-{k}.log"),
            )
            for k in range(2, workers + 1)
        ]
        try:
            pids = {"worker": w.proc.pid, "valkey": redis_server.pid, "tansu": kafka.pid}
            pids |= {f"worker{k}": o.pid for k, o in enumerate(others, 2)}
            cpu = CpuWindow(pids).start()
            d = await drain_worker(w, redis, ends, ended, timeout_s=600, cpu=cpu)
            stats = await redis.info("commandstats")
            batches = await asyncio.to_thread(_applied_batches, metrics_port)
        finally:
            for o in others:
                o.stop()
            w.proc.stop()
            await w.committed.stop()
            await w.summaries.stop()
            await redis.aclose()
    print(
        f"worker applied {d.events:,} events in {d.seconds:.2f}s after its first commit:"
        f" {d.rate:,.0f} events/s ({d.rate_with_startup:,.0f} with {d.startup_seconds:.1f}s start-up)"
    )
    print(
        f"all offsets committed {d.extra['all_committed_after_s']:.2f}s after the start;"
        f" every summary out {d.seconds_with_startup:.2f}s after it"
    )
    print(
        f"{batches} batches applied by the first worker (fetched batches merge while Redis is busy),"
        f" {d.events / max(batches, 1) / workers:,.0f} events each on average"
    )
    print(f"summaries published {d.extra['summaries_published']:,} for {ended:,} ended sessions")
    per_event = ", ".join(f"{k} {v}" for k, v in d.extra["cpu_us_per_event"].items())
    top = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:12]
    print("valkey time by command (usec per event: calls per event):")
    for name, st in top:
        print(
            f"  {name.removeprefix('cmdstat_'):<12} {st['usec'] / d.events:6.2f} us  {st['calls'] / d.events:6.2f} calls"
        )
    print(f"CPU per event after the first commit, µs: {per_event}; peak RSS {d.extra['peak_rss_mib']} MiB")


if __name__ == "__main__":
    args = sys.argv[1:]
    n = int(args.pop(0)) if args and not args[0].startswith("-") and "=" not in args[0] else 100_000
    workers = 1
    for a in [a for a in args if a.startswith("--workers=")]:
        workers = int(a.split("=", 1)[1])
        args.remove(a)
    env = dict(a.split("=", 1) for a in args)
    asyncio.run(main(n, env, workers))
