"""Redis faults: a 10 s outage with the data kept (AOF), and Redis back empty, rebuilt by
`python -m service rebuild` (issue 6.3)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from service import constants as C
from service.constants import RTK_SESSIONS, Topics
from service.core.model import ReferenceSession
from service.embedded import RedisServer, free_port, start_redis
from tests.integration.harness import (
    ROOT,
    Item,
    Log,
    WorkerProcess,
    committed_offsets,
    consume_all,
    drained,
    group_lag,
    produce,
    produce_records,
    reference,
    wait_for,
    worker_env,
)
from tests.integration.test_pipeline import snapshot

from .support import (
    assert_stored_state_matches,
    assert_summaries_match,
    assigned_partitions,
    count,
    own_topics,
    probes,
    progress,
    record_figures,
    retry_delays,
    sized_log,
    stored_summary_revisions,
    worker_counts,
)

pytestmark = pytest.mark.integration

OUTAGE_S = 10.0
RETRY = r"batch of \d+ not applied \(.*\); retrying in ([\d.]+)s"


def kill_redis(server: RedisServer) -> None:
    """SIGKILL, as a crash: with appendfsync always, every acknowledged write is in the AOF."""
    os.kill(server.pid, signal.SIGKILL)
    server.stop(keep_log=True)


@dataclass
class OutageRun:
    log: Log
    expected: dict[str, ReferenceSession]
    topics: Topics
    worker_log: str
    worker_rc: int
    counts: dict[str, dict[str, int]]
    alive_throughout: bool
    committed_at_1s: dict[tuple[str, int], int]
    committed_at_end: dict[tuple[str, int], int]
    committed_not_in_redis: list[str]
    committed_checked: int
    recovery_s: float
    drained_s: float
    figures: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
async def outage(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[OutageRun, aioredis.Redis]]:
    """One run: a worker applying a log while Redis is SIGKILLed for 10 s, then back with its AOF."""
    data_dir = str(tmp_path_factory.mktemp("redis-aof"))
    port = free_port()
    server = start_redis(port, appendonly=True, data_dir=data_dir)
    redis = aioredis.Redis.from_url(server.url)
    rng = random.Random(63)
    log = sized_log(rng, 30_000)
    expected = reference(log)
    topics = await own_topics(kafka_bootstrap, inbound=3)
    env = worker_env(kafka_bootstrap, server.url, topics)
    group = env["CONSUMER_GROUP"]
    gauge = probes(log)
    half = len(log.items) // 2
    w = WorkerProcess(env)
    pid = w.proc.pid
    try:
        where = produce_records(
            kafka_bootstrap, topics, [(i.topic, i.key, i.value) for i in log.items[:half]]
        )
        await wait_for(lambda: _at_least(redis, gauge, 0.15), 60, "the worker to apply part of the log")
        await redis.aclose()
        kill_redis(server)
        down = time.monotonic()
        # Messages keep arriving during the outage.
        where += produce_records(
            kafka_bootstrap, topics, [(i.topic, i.key, i.value) for i in log.items[half:]]
        )
        partitions = sorted({(t, p) for t, p, _ in where})
        await asyncio.sleep(1.0 - (time.monotonic() - down))
        committed_at_1s = await committed_offsets(kafka_bootstrap, group, partitions)
        alive = True
        while time.monotonic() - down < OUTAGE_S - 0.5:
            alive = alive and w.alive()
            await asyncio.sleep(0.25)
        committed_at_end = await committed_offsets(kafka_bootstrap, group, partitions)
        alive = alive and w.alive() and w.proc.pid == pid
        server = start_redis(port, appendonly=True, data_dir=data_dir)
        up = time.monotonic()
        redis = aioredis.Redis.from_url(server.url)
        # Whatever is committed now is in the Redis that came back (read the offsets first).
        committed_now = await committed_offsets(kafka_bootstrap, group, partitions)
        missing, checked = await _committed_but_not_applied(
            redis, log.items[: len(where)], where, committed_now
        )
        total_at_end = sum(committed_at_end.values())

        async def committing_again() -> bool:
            return sum((await committed_offsets(kafka_bootstrap, group, partitions)).values()) > total_at_end

        await wait_for(committing_again, 60, "the first commit after Redis came back", every=0.1)
        recovery_s = time.monotonic() - up
        produced = {}
        for t, p, o in where:
            produced[(t, p)] = max(produced.get((t, p), 0), o + 1)
        await wait_for(lambda: drained(kafka_bootstrap, group, produced, redis), 120, "the worker to drain")
        drained_s = time.monotonic() - up
        rc = w.stop()
        run = OutageRun(
            log=log,
            expected=expected,
            topics=topics,
            worker_log=w.log_text(),
            worker_rc=rc,
            counts=worker_counts(w.log_text()) if rc == 0 else {},
            alive_throughout=alive,
            committed_at_1s=committed_at_1s,
            committed_at_end=committed_at_end,
            committed_not_in_redis=missing,
            committed_checked=checked,
            recovery_s=recovery_s,
            drained_s=drained_s,
        )
        yield run, redis
    finally:
        w.stop()
        await redis.aclose()
        server.stop()


async def _committed_but_not_applied(
    redis: aioredis.Redis,
    items: list[Item],
    where: list[tuple[str, int, int]],
    committed: dict[tuple[str, int], int],
) -> tuple[list[str], int]:
    """Committed records (valid ones) whose fact is not in Redis: peer event ids and session digests."""
    below = [
        (it, t) for it, (t, p, o) in zip(items, where, strict=True) if not it.bad and o < committed[(t, p)]
    ]
    pipe = redis.pipeline(transaction=False)
    for it, _ in below:
        doc = orjson.loads(it.value)
        if it.topic == RTK_SESSIONS:
            member = "S:" + hashlib.sha1(it.value).hexdigest()
            sid = doc["id"]
        else:
            member, sid = doc["id"], doc["session_id"]
        pipe.sismember(C.session_keys(sid)[4], member)
    found = await pipe.execute() if below else []
    return [f"{t}: {it.value[:80]!r}" for (it, t), ok in zip(below, found, strict=True) if not ok], len(below)


async def _at_least(redis: aioredis.Redis, gauge: list[str], share: float) -> bool:
    return await progress(redis, gauge) >= share


@pytest.mark.faults
@pytest.mark.timeout(300)
async def test_a_10s_redis_outage_backs_off_commits_nothing_unapplied_and_ends_equal(
    outage: tuple[OutageRun, aioredis.Redis], kafka_bootstrap: str
) -> None:
    run, redis = outage
    assert run.worker_rc == 0, run.worker_log[-3000:]
    assert run.alive_throughout, "the worker exited or was restarted during the outage"
    assert run.worker_log.count("worker starting") == 1, "the worker started more than once"

    # Clear log lines, with a wait that doubles up to REDIS_RETRY_MAX_SECONDS (30 s by default) for
    # each batch retried (a later batch starts at 0.2 s again, e.g. on a pooled connection to the old server).
    runs: list[list[float]] = []
    for d in retry_delays(run.worker_log, RETRY):
        if d == 0.2 or not runs:
            runs.append([])
        runs[-1].append(d)
    assert runs, run.worker_log[-3000:]
    assert all(r[0] == 0.2 and all(b == min(2 * a, 30.0) for a, b in itertools.pairwise(r)) for r in runs)
    delays = max(runs, key=len)
    assert len(delays) >= 5, delays  # 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s < 10 s
    assert re.search(r"not applied \(Redis unavailable: .*Error 111 connecting to 127.0.0.1:", run.worker_log)

    # Nothing committed while Redis was down, and everything committed before is in the Redis that came back.
    assert run.committed_at_1s == run.committed_at_end
    assert run.committed_checked > 0
    assert run.committed_not_in_redis == []

    await assert_stored_state_matches(redis, run.expected)
    summaries = assert_summaries_match(
        kafka_bootstrap,
        run.topics.summaries,
        run.expected,
        await stored_summary_revisions(redis, run.expected),
    )
    record_figures(
        "redis_outage",
        {
            "test": "tests/faults/test_redis_outage.py::"
            "test_a_10s_redis_outage_backs_off_commits_nothing_unapplied_and_ends_equal",
            "events": len(run.log.items),
            "sessions": len(run.expected),
            "outage_s": OUTAGE_S,
            "retry_delays_logged_s": delays,
            "batches_retried": len(runs),
            "outage_warnings_logged": len(
                re.findall(r"not applied|outbox paused|idle sweep failed", run.worker_log)
            ),
            "records_committed_before_outage": sum(run.committed_at_end.values()),
            "committed_records_checked_in_restored_redis": run.committed_checked,
            "first_commit_after_redis_back_s": round(run.recovery_s, 1),
            "drained_after_redis_back_s": round(run.drained_s, 1),
            **summaries,
        },
    )


@pytest.mark.faults
async def test_the_counts_stay_exact_across_retries(outage: tuple[OutageRun, aioredis.Redis]) -> None:
    run, _ = outage
    assert run.counts, "the worker logged no counts"
    for topic in sorted({i.topic for i in run.log.items}):
        produced = sum(1 for i in run.log.items if i.topic == topic)
        handled = sum(count(run.counts, what, topic) for what in ("applied", "duplicate", "dead_lettered"))
        assert (count(run.counts, "consumed", topic), handled) == (produced, produced), topic


# --- Redis back empty: `python -m service rebuild` ----------------------------------------------


def rebuild(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "rebuild", *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


# Fields of the session hash that count this Redis's history rather than describe the session: a
# rebuild replays the facts in one pass, so it may store fewer revisions with the newest content
# (README, known limits); the summary's content is compared through `summary_hash` and the bodies
# below. `late_events` counts events that *arrived* after the end was known (docs/redis-keys.md),
# and the four inbound topics are read in parallel, so a replay may count another number.
HISTORY_FIELDS = {
    b"ver",
    b"summary_rev",
    b"summary_published",
    b"summary_body",
    b"summary_due",
    b"late_events",
}


async def session_snapshot(redis: aioredis.Redis, sids: list[str]) -> dict[bytes, Any]:
    """Every per-session key of these sessions, byte for byte, and the global indexes."""
    out = await snapshot(redis, sids)
    out[C.IDX_SESSIONS.encode()] = await redis.zrange(C.IDX_SESSIONS, 0, -1, withscores=True)
    out[C.IDX_LIVE.encode()] = await redis.zrange(C.IDX_LIVE, 0, -1, withscores=True)
    return out


def _changed_fields(now: Any, then: Any) -> set[Any]:
    if isinstance(now, dict) and isinstance(then, dict):
        return {f for f in now.keys() | then.keys() if now.get(f) != then.get(f)}
    return set() if now == then else {"<whole key>"}


def without_history(snapshot: dict[bytes, Any]) -> dict[bytes, Any]:
    return {
        k: {f: v for f, v in val.items() if f not in HISTORY_FIELDS} if isinstance(val, dict) else val
        for k, val in snapshot.items()
    }


@pytest.mark.faults
@pytest.mark.timeout(300)
async def test_redis_back_empty_is_rebuilt_by_the_rebuild_command(kafka_bootstrap: str) -> None:
    port = free_port()
    server = start_redis(port)
    redis = aioredis.Redis.from_url(server.url)
    rng = random.Random(64)
    log = sized_log(rng, 20_000)
    expected = reference(log)
    topics = await own_topics(kafka_bootstrap, inbound=3)
    env = worker_env(kafka_bootstrap, server.url, topics)
    group = env["CONSUMER_GROUP"]
    w = WorkerProcess(env)
    try:
        produced = produce(kafka_bootstrap, topics, log.items)
        await wait_for(lambda: drained(kafka_bootstrap, group, produced, redis), 120, "the first run")
        before = await session_snapshot(redis, sorted(expected))
        bodies_before = {sid: await redis.hget(C.session_keys(sid)[0], "summary_body") for sid in expected}

        # Redis comes back empty (no AOF) while the worker runs.
        await redis.aclose()
        server.stop()
        server = start_redis(port)
        redis = aioredis.Redis.from_url(server.url)
        assert await redis.dbsize() == 0

        refused = rebuild(env)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "Stop every worker" in refused.stderr and "nothing changed" in refused.stderr
        assert await group_lag(kafka_bootstrap, group, produced) == 0  # the offsets were left alone
        # The worker takes its partitions back. (Stopped in the middle of that rebalance, it would
        # wedge tansu's group: a member that dies mid-rebalance is never evicted there.)
        every = 6 * 3  # inbound topics x partitions

        async def whole_again(w: WorkerProcess = w) -> bool:
            return assigned_partitions(w) == every

        await wait_for(whole_again, 30, "the worker to get its partitions back")
        assert w.stop() == 0, w.log_text()[-3000:]

        # What was written since the loss goes with --clear-redis; other keys and the intake's marks stay.
        await redis.hset("sp:{ghost}:session", "status", "LIVE")
        await redis.set(f"{C.WEBHOOK_SEEN}:realtimekit:d-1", "1")
        await redis.set("other:app:key", "1")
        published_before = len(consume_all(kafka_bootstrap, topics.summaries, idle_s=1.0))
        t = time.monotonic()
        done = rebuild(env, "--clear-redis")
        rebuild_s = time.monotonic() - t
        assert done.returncode == 0, done.stdout + done.stderr
        assert await redis.exists("sp:{ghost}:session") == 0
        assert await redis.exists(f"{C.WEBHOOK_SEEN}:realtimekit:d-1", "other:app:key") == 2
        assert f"{topics.rtk_peer_events}: 3 partitions" in done.stdout
        assert f"replay {len(log.items)} records" in done.stdout
        assert await group_lag(kafka_bootstrap, group, produced) == len(log.items)

        t = time.monotonic()
        w = WorkerProcess(env)
        await wait_for(lambda: drained(kafka_bootstrap, group, produced, redis), 120, "the replay")
        replay_s = time.monotonic() - t
        assert w.stop() == 0, w.log_text()[-3000:]

        await assert_stored_state_matches(redis, expected)
        after = await session_snapshot(redis, sorted(expected))
        changed = {
            f
            for k, v in without_history(after).items()
            for f in _changed_fields(v, without_history(before).get(k))
        }
        assert changed == set(), f"fields that differ after the rebuild: {sorted(changed)}"
        # Every summary's content is the one published before the loss (its revision may be lower).
        for sid, body in bodies_before.items():
            now = await redis.hget(C.session_keys(sid)[0], "summary_body")
            assert (body is None) == (now is None), sid
            if body is not None and now is not None:
                old, new = orjson.loads(body), orjson.loads(now)
                old.pop("revision"), new.pop("revision")
                assert old == new, sid
        # The summaries published by the replay: their newest revisions equal the rules. Their revision
        # numbers restart with the empty Redis (README, known limits): that is what `reissued` counts.
        summaries = assert_summaries_match(
            kafka_bootstrap,
            topics.summaries,
            expected,
            await stored_summary_revisions(redis, expected),
            skip=published_before,
        )
        first_run: dict[tuple[str, int], bytes] = {}
        reissued = 0
        for n, m in enumerate(consume_all(kafka_bootstrap, topics.summaries, idle_s=1.0)):
            s = orjson.loads(m.value())
            if n < published_before:
                first_run[(s["message_id"], s["revision"])] = m.value()
            elif first_run.get((s["message_id"], s["revision"]), m.value()) != m.value():
                reissued += 1
    finally:
        w.stop()
        await redis.aclose()
        server.stop()

    record_figures(
        "rebuild",
        {
            "test": "tests/faults/test_redis_outage.py::test_redis_back_empty_is_rebuilt_by_the_rebuild_command",
            "events": len(log.items),
            "sessions": len(expected),
            "rebuild_command_s": round(rebuild_s, 1),
            "replay_s": round(replay_s, 1),
            "rebuild_output": done.stdout.strip().splitlines(),
            "refused_while_a_worker_ran": refused.stderr.strip(),
            "keys_compared": len(before),
            "summaries_published_before_the_loss": published_before,
            "revisions_reissued_with_other_content_after_the_rebuild": reissued,
            **{k: v for k, v in summaries.items() if k != "summary_messages_published"},
        },
    )


async def test_rebuild_without_a_broker_fails_clearly() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "CONSUMER_GROUP": "nobody"}
    out = await asyncio.to_thread(rebuild, env)
    assert out.returncode == 1
    assert "rebuild: Kafka at 127.0.0.1:" in out.stderr and "unreachable" in out.stderr
    assert "Traceback" not in out.stderr


def test_rebuild_is_documented_in_the_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "service", "rebuild", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "Redis lost its data" in text and "Stop every worker first" in text and "--clear-redis" in text
    assert "python -m service rebuild" in Path(ROOT / "docs" / "reliability.md").read_text()
