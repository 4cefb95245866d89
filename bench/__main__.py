"""`python -m bench` (`make bench`): issue 5's benchmark, on an embedded broker and Redis.

1. Generate a deterministic log (N events, 5,000 sessions of 2-50 peers, ~10% session
   messages, ~2% duplicates, shuffled within sessions) and produce it, keyed by session
   with the murmur2 partitioner, to a fresh tansu broker.
2. Drain it three times, each with its own consumer group: (a) the ceiling, a bare
   aiokafka consumer with orjson; (b) the baseline, a FastStream per-message handler with
   individual Redis awaits (time budget); (c) `python -m service worker`.
3. Check the worker's Redis state and published summaries against the CONTRACT rules
   applied in memory to the same log. A mismatch fails the run (exit status 1).
4. Latency: 5,000 events/s offered to the caught-up worker, produce -> visible in the read
   API and in Redis.
5. Memory: 10,000 sessions of 10 peers, bytes per ended and per live session.

Prints a table, writes bench/results/<time>.json and the generated part of docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from service.constants import Topics
from service.embedded import ensure_topics, free_port, start_kafka, start_redis, topic_layout

from . import report
from .kafka_io import produce
from .latency import run_latency
from .logmix import backlog, memory_set
from .memory import measure
from .phases import baseline, ceiling, drain_worker, start_worker
from .procs import ROOT, CpuWindow, ServiceProcess, cpu_seconds, status_kib, wait_http
from .profiling import Profiler, describe, summarise
from .verify import Check, compare_state, compare_summaries, reference

OUTBOUND_PARTITIONS = 3
BASELINE_SAMPLE = 300


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--events", type=int, default=300_000, help="events in the log (default 300000)")
    p.add_argument("--seed", type=int, default=5, help="seed of every generated log (default 5)")
    p.add_argument("--sessions", type=int, default=5000, help="concurrent sessions in the log (default 5000)")
    p.add_argument("--partitions", type=int, default=6, help="partitions per inbound topic (default 6)")
    p.add_argument("--baseline-seconds", type=float, default=20.0, help="time budget of (b) (default 20)")
    p.add_argument("--latency-rate", type=float, default=5000.0, help="events/s offered (default 5000)")
    p.add_argument("--latency-seconds", type=float, default=20.0, help="how long it is offered (default 20)")
    p.add_argument("--memory-sessions", type=int, default=10_000, help="sessions of the memory set")
    p.add_argument("--memory-peers", type=int, default=10, help="peers per session of the memory set")
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["baseline", "latency", "memory"],
        help="leave a phase out (repeatable)",
    )
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the worker processes, e.g. BATCH_MAX_RECORDS=10000 (repeatable)",
    )
    p.add_argument(
        "--worker-command",
        metavar="COMMAND",
        help="run this instead of `python -m service worker` (e.g. an instrumented wrapper); not for results",
    )
    p.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/performance.md")
    p.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: print the table of a results file and rewrite docs/performance.md from it",
    )
    p.add_argument(
        "--profile", action="store_true", help="sample the worker with py-spy during (c) (slows it)"
    )
    return p.parse_args(argv)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def flush(redis: aioredis.Redis) -> None:
    """FLUSHDB SYNC on the bench's own valkey: freed now, not lazily while the next phase runs."""
    await redis.execute_command("FLUSHDB", "SYNC")  # type: ignore[no-untyped-call]


async def run(args: argparse.Namespace) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    logs = args.results_dir / "logs" / stamp
    logs.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    as_make = argv in ("", f"--events {args.events}")
    command = f"make bench N={args.events}" if as_make else f"python -m bench {argv}"
    r: dict[str, Any] = {
        "timestamp": stamp,
        "command": command,
        "machine": report.machine(),
        "versions": report.versions(),
        "git": report.git_revision(),
        "params": {
            "events": args.events,
            "seed": args.seed,
            "sessions": args.sessions,
            "partitions": args.partitions,
            "outbound_partitions": OUTBOUND_PARTITIONS,
            "baseline_seconds": args.baseline_seconds,
            "latency_rate": args.latency_rate,
            "latency_seconds": args.latency_seconds,
            "latency_seed": args.seed + 1,
            "memory_sessions": args.memory_sessions,
            "memory_peers": args.memory_peers,
            "memory_seed": args.seed + 2,
            "skipped": args.skip,
            "worker_command": args.worker_command,
            "profiled": args.profile,
        },
        "phases": {},
        "ratios": {},
        "warnings": [],
        "logs": str(logs.relative_to(ROOT)) if logs.is_relative_to(ROOT) else str(logs),
    }
    checks: dict[str, Check] = {}
    extra_env = dict(kv.split("=", 1) for kv in args.worker_env)
    r["params"]["worker_env_overrides"] = extra_env

    say(f"generating {args.events:,} events (seed {args.seed})")
    log = backlog(args.seed, args.events, args.sessions)
    r["log"] = log.stats()
    say(f"log: {orjson.dumps(r['log']).decode()}")
    say("reference: the CONTRACT rules applied in memory to the log")
    expected = reference(log.items)
    expected_ended = sum(1 for ref in expected.values() if ref.ended_ms is not None)

    with start_kafka() as kafka, start_redis() as redis_server:
        redis = aioredis.Redis.from_url(redis_server.url)
        info = await redis.info("server")
        r["valkey_version"] = info.get("valkey_version") or info.get("redis_version")
        pids = {"tansu": kafka.pid, "valkey": redis_server.pid, "bench": os.getpid()}
        topics = Topics("bench.")
        await ensure_topics(
            kafka.bootstrap, topic_layout(topics, inbound=args.partitions, outbound=OUTBOUND_PARTITIONS)
        )
        t = time.monotonic()
        ends = await asyncio.to_thread(produce, kafka.bootstrap, topics, log.items)
        produced = sum(ends.values())
        say(f"produced {produced:,} events in {time.monotonic() - t:.1f} s to {len(ends)} partitions")
        if produced != len(log.items):
            raise RuntimeError(f"{produced} offsets for {len(log.items)} messages")

        # (a) the ceiling
        say("a. ceiling: bare aiokafka consumer + orjson")
        cpu = CpuWindow(pids).start()
        a = await ceiling(kafka.bootstrap, topics, "bench-ceiling", produced, timeout_s=300)
        a.extra["cpu_seconds"] = cpu.read()
        r["phases"]["ceiling"] = a.as_dict()
        say(
            f"   {a.rate:,.0f} events/s ({a.events:,} in {a.seconds:.2f} s after {a.startup_seconds:.2f} s join)"
        )

        # (b) the baseline
        b = None
        if "baseline" not in args.skip:
            say(f"b. baseline: FastStream per-message handler, {args.baseline_seconds:g} s budget")
            cpu = CpuWindow(pids).start()
            b, applied = await baseline(
                kafka.bootstrap, topics, "bench-baseline", redis_server.url, produced, args.baseline_seconds
            )
            b.extra["cpu_seconds"] = cpu.read()
            r["phases"]["baseline"] = b.as_dict()
            say(f"   {b.rate:,.0f} events/s ({b.events:,} in {b.seconds:.2f} s)")
            ref_b = reference(applied)
            sample = sorted(ref_b)
            sample = random.Random(args.seed).sample(sample, min(BASELINE_SAMPLE, len(sample)))
            checks["baseline_state"] = await compare_state(redis, ref_b, sample, name="baseline_state")
            say(
                f"   baseline state vs the rules applied to the {len(applied):,} events it applied:"
                f" {len(sample)} sessions, {checks['baseline_state'].failures} failures"
            )
            await flush(redis)

        # (c) the worker
        say("c. sessionpulse worker: python -m service worker")
        group = "bench-worker"
        wr = await start_worker(
            kafka.bootstrap,
            redis_server.url,
            topics,
            group,
            logs / "worker.log",
            OUTBOUND_PARTITIONS,
            extra_env,
            shlex.split(args.worker_command) if args.worker_command else None,
        )
        profiler = Profiler(wr.proc.pid, logs / "worker-profile-drain.txt") if args.profile else None
        try:
            cpu = CpuWindow({**pids, "worker": wr.proc.pid}).start()
            c = await drain_worker(
                wr, redis, ends, expected_ended, timeout_s=max(300.0, produced / 1000), cpu=cpu
            )
            if profiler:
                profiler.stop()
                c.notes.append("PROFILED with py-spy: the rates are lower than unprofiled")
                r["profile"] = summarise(profiler.out)
                profiler = None
            r["phases"]["worker"] = c.as_dict()
            r["worker_env"] = {
                k: v for k, v in wr.env.items() if k not in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS")
            }
            say(
                f"   {c.rate:,.0f} events/s after the first commit, {c.rate_with_startup:,.0f} with start-up"
                f" ({c.startup_seconds:.2f} s); complete: {c.complete}"
            )
            if not c.complete:
                r["warnings"].append("the worker did not finish the drain in time")

            say("   checking every session against the reference")
            checks["worker_state"] = await compare_state(
                redis, expected, sorted(expected), name="worker_state"
            )
            await wr.summaries.quiet(idle_s=1.0)
            checks["summaries"] = compare_summaries(expected, wr.summaries.latest)
            await wr.summaries.stop()  # not needed any more: it would only take CPU from the latency phase
            for name in ("worker_state", "summaries"):
                say(f"   {name}: {checks[name].compared:,} compared, {checks[name].failures} failures")

            if "latency" not in args.skip:
                say(f"latency: {args.latency_rate:,.0f} events/s for {args.latency_seconds:g} s")
                port = free_port()
                api_env = {**wr.env, "HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(port), "LOG_LEVEL": "WARNING"}
                api = ServiceProcess("api", api_env, logs / "api.log")
                try:
                    await wait_http(f"http://127.0.0.1:{port}/healthz", api)
                    n_lat = int(args.latency_rate * args.latency_seconds)
                    lat_log = backlog(args.seed + 1, n_lat, max(1, n_lat // 60), id_prefix="lat")
                    cpu = CpuWindow({**pids, "worker": wr.proc.pid, "api": api.pid}).start()
                    if args.profile:
                        profiler = Profiler(wr.proc.pid, logs / "worker-profile-latency.txt")
                    lat = await run_latency(
                        bootstrap=kafka.bootstrap,
                        topics=topics,
                        redis_url=redis_server.url,
                        api_url=f"http://127.0.0.1:{port}",
                        log=lat_log,
                        rate=args.latency_rate,
                        committed=wr.committed,
                        ends=ends,
                    )
                    lat["cpu_seconds"] = cpu.read()
                    if profiler:
                        profiler.stop()
                        r["profile_latency"] = summarise(profiler.out)
                        profiler = None
                    lat["worker_cpu_share"] = round(
                        lat["cpu_seconds"]["worker"] / lat["cpu_seconds"]["wall"], 2
                    )
                    r["latency"] = lat
                    r["worker_peak_rss_mib_after_latency"] = round(
                        (status_kib(wr.proc.pid, "VmHWM") or 0) / 1024, 1
                    )
                    say(f"   read API: {lat['read_api']}")
                    say(f"   Redis:    {lat['redis']}")
                finally:
                    api.stop()
        finally:
            if profiler:
                profiler.stop()
            worker_cpu = cpu_seconds(wr.proc.pid)
            wr.proc.stop()
            await wr.committed.stop()
            await wr.summaries.stop()
        r["worker_cpu_seconds_total"] = round(worker_cpu, 2)

        if "memory" not in args.skip:
            say(f"memory: {args.memory_sessions:,} sessions of {args.memory_peers} peers")
            await flush(redis)
            used_before = int((await redis.info("memory"))["used_memory"])
            mtopics = Topics("bench-mem.")
            await ensure_topics(
                kafka.bootstrap, topic_layout(mtopics, inbound=args.partitions, outbound=OUTBOUND_PARTITIONS)
            )
            mlog = memory_set(args.seed + 2, args.memory_sessions, args.memory_peers)
            mends = await asyncio.to_thread(produce, kafka.bootstrap, mtopics, mlog.items)
            mw = await start_worker(
                kafka.bootstrap,
                redis_server.url,
                mtopics,
                "bench-mem-worker",
                logs / "worker-memory.log",
                OUTBOUND_PARTITIONS,
                extra_env,
            )
            try:
                cpu = CpuWindow({**pids, "worker": mw.proc.pid}).start()
                md = await drain_worker(mw, redis, mends, len(mlog.ended_ms), timeout_s=600, cpu=cpu)
                if not md.complete:
                    r["warnings"].append("the memory set was not fully applied in time")
                mem = await measure(redis, mlog.session_ids, used_before)
                mem["events"] = len(mlog.items)
                mem["drain"] = md.as_dict()
                r["memory"] = mem
                say(f"   {orjson.dumps(mem['by_status']).decode()}")
            finally:
                mw.proc.stop()
                await mw.committed.stop()
                await mw.summaries.stop()
        await redis.aclose()

    r["total_seconds"] = round(time.monotonic() - t_all, 1)
    a_rate = r["phases"]["ceiling"]["events_per_s"]
    w = r["phases"].get("worker", {})
    c_rate = w.get("events_per_s", 0)
    if a_rate:
        r["ratios"]["c_over_a"] = round(c_rate / a_rate, 3)
        ca = r["phases"]["ceiling"]["events_per_s_with_startup"]
        r["ratios"]["c_over_a_with_startup"] = (
            round(w.get("events_per_s_with_startup", 0) / ca, 3) if ca else None
        )
    if b is not None and b.rate:
        r["ratios"]["c_over_b"] = round(c_rate / b.rate, 2)
    lat = r.get("latency", {})
    r["targets"] = {
        "rate": c_rate,
        "rate_met": c_rate >= report.TARGET_RATE,
        "p99_ms": lat.get("read_api", {}).get("p99_ms"),
        "p99_met": bool(lat)
        and lat["read_api"].get("p99_ms") is not None
        and lat["read_api"]["p99_ms"] <= report.TARGET_P99_MS
        and lat["read_api"]["unresolved"] == 0,
    }
    complete = all(r["phases"][k]["complete"] for k in ("ceiling", "worker") if k in r["phases"])
    ok = complete and all(chk.ok for chk in checks.values())
    r["correctness"] = {"ok": ok, "checks": {name: chk.as_dict() for name, chk in checks.items()}}
    for name, cpu in [(k, p.get("cpu_seconds")) for k, p in r["phases"].items()] + [
        ("latency", r.get("latency", {}).get("cpu_seconds"))
    ]:
        if cpu and cpu["wall"] and cpu["other"] / cpu["wall"] > 0.1:
            top = ", ".join(f"{cmd} ({s} s)" for cmd, s in cpu["top_other_processes"])
            r["warnings"].append(
                f"{name}: {cpu['other'] / cpu['wall']:.2f} of a core went to other processes on this"
                f" {r['machine']['cores']}-core machine (largest still running: {top or 'none'});"
                " the figures are lower than on an idle machine"
            )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"{stamp}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_bytes(orjson.dumps(r, option=orjson.OPT_INDENT_2))
    tmp.replace(out)
    print()
    print(report.table(r))
    for key, what in (("profile", "the drain (c)"), ("profile_latency", "the latency phase")):
        if r.get(key):
            print("\n" + describe(r[key], what))
    rel = str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out)
    print(f"\nresults: {rel}   logs: {r['logs']}   ({r['total_seconds']:.0f} s in all)")
    if not args.no_docs:
        report.write_doc(r, rel)
        print(f"docs: {report.DOC.relative_to(ROOT)} (generated section rewritten)")
    return 0 if ok else 1


def render(path: Path, docs: bool) -> int:
    r = orjson.loads(path.read_bytes())
    print(report.table(r))
    if docs:
        rel = path.resolve()
        report.write_doc(r, str(rel.relative_to(ROOT)) if rel.is_relative_to(ROOT) else str(rel))
        print(f"docs: {report.DOC.relative_to(ROOT)} (generated section rewritten)")
    return 0 if r["correctness"]["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args.render, not args.no_docs)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
