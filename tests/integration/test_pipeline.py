"""Kafka -> worker -> Redis -> API and summaries, against a real broker, a real Redis and a worker process."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from service import constants as C
from service.constants import Topics
from service.core import shapes
from service.embedded import free_port
from service.messages import SessionSummary

from .harness import (
    Log,
    Offsets,
    WorkerProcess,
    assert_state_matches,
    consume_all,
    drained,
    group_lag,
    latest_summaries,
    make_log,
    produce,
    reference,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent


async def run_to_completion(
    kafka_bootstrap: str,
    redis_url: str,
    topics: Topics,
    log: Log,
    redis: aioredis.Redis,
    *,
    headers: list[tuple[str, bytes]] | None = None,
    script: str | None = None,
    **env: str,
) -> tuple[WorkerProcess, Offsets]:
    w = WorkerProcess(worker_env(kafka_bootstrap, redis_url, topics, **env), script=script)
    produced = produce(kafka_bootstrap, topics, log.items, headers)
    group = env.get("CONSUMER_GROUP", f"{topics.prefix}workers")
    try:
        await wait_for(
            lambda: drained(kafka_bootstrap, group, produced, redis), 90, "the worker to drain the log"
        )
    except BaseException:
        w.stop()
        print(w.log_text()[-5000:])
        raise
    return w, produced


async def test_end_to_end_matches_the_rules(
    kafka_bootstrap: str, redis_url: str, topics: Topics, redis_client: aioredis.Redis, api: httpx.AsyncClient
) -> None:
    log = make_log(random.Random(11), sessions=40)
    expected = reference(log)
    w, _ = await run_to_completion(kafka_bootstrap, redis_url, topics, log, redis_client)
    try:
        assert w.alive(), "bad input must not stop the worker"
        await assert_state_matches(api, expected)

        # One summary per ended session, equal to the rules; none for live ones.
        summaries = latest_summaries(kafka_bootstrap, topics.summaries)
        ended = {sid for sid, ref in expected.items() if ref.view().status == "ENDED"}
        assert set(summaries) == {shapes.summary_message_id(sid) for sid in ended}
        for sid in ended:
            s = summaries[shapes.summary_message_id(sid)]
            assert s.pop("revision") >= 1
            assert s.pop("message_id") == f"{sid}:summary"
            assert s == shapes.session_summary(expected[sid].view(), 0)

        # Every bad message is in the dead-letter topic, byte for byte, with its reason.
        dead = consume_all(kafka_bootstrap, topics.dead_letter)
        got = sorted((m.value(), dict(m.headers())["x-error-type"].decode()) for m in dead)
        assert got == sorted((i.value, i.bad) for i in log.bad)
        for m in dead:
            h = {k: v.decode() for k, v in m.headers()}
            assert h["x-source-topic"] in (topics.rtk_sessions, topics.rtk_peer_events)
            assert int(h["x-source-partition"]) >= 0 and int(h["x-source-offset"]) >= 0
            assert h["x-error-message"]

        # Listing: filters and paging over this test's sessions.
        r = await api.get("/v1/sessions", params={"status": "ENDED", "per_page": 100})
        listed = r.json()
        assert {s["id"] for s in listed["data"]["sessions"]} == ended
        assert listed["paging"]["total_count"] == len(ended)
        starts = [s["started_at"] for s in listed["data"]["sessions"]]
        assert starts == sorted(starts, reverse=True)
        r = await api.get("/v1/sessions", params={"organization_id": "org-b", "per_page": 5, "page_no": 2})
        orgb = sorted(
            (sid for sid, ref in expected.items() if ref.view().meta.get("organization_id") == "org-b"),
            key=lambda sid: expected[sid].view().started_ms,
            reverse=True,
        )
        assert [s["id"] for s in r.json()["data"]["sessions"]] == orgb[5:10]
        assert r.json()["paging"]["total_count"] == len(orgb)
    finally:
        assert w.stop() == 0, w.log_text()[-3000:]


async def test_bad_requests_get_clear_errors(api: httpx.AsyncClient, redis_client: aioredis.Redis) -> None:
    r = await api.get("/v1/sessions/no-such-session")
    assert r.status_code == 404
    assert r.json() == {"success": False, "error": {"code": "not_found", "message": "session not found"}}
    r = await api.get("/v1/sessions", params={"per_page": 1000})
    assert r.status_code == 400 and "per_page" in r.json()["error"]["message"]
    r = await api.get("/v1/sessions", params={"start_time": "not-a-time"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    assert (await api.get("/healthz")).json() == {"status": "ok"}


async def snapshot(redis: aioredis.Redis, session_ids: list[str]) -> dict[bytes, Any]:
    """Every per-session key, exactly (byte for byte), excluding nothing."""
    out: dict[bytes, Any] = {}
    for sid in session_ids:
        for key in C.session_keys(sid):
            kind = (await redis.type(key)).decode()
            if kind == "hash":
                out[key.encode()] = await redis.hgetall(key)
            elif kind == "set":
                out[key.encode()] = await redis.smembers(key)
    return out


async def test_sigkill_after_redis_write_before_commit_changes_nothing(
    kafka_bootstrap: str, redis_url: str, topics: Topics, redis_client: aioredis.Redis, api: httpx.AsyncClient
) -> None:
    log = make_log(random.Random(23), sessions=25)
    expected = reference(log)
    env = worker_env(kafka_bootstrap, redis_url, topics)
    produced = produce(kafka_bootstrap, topics, log.items)

    crashing = WorkerProcess(env, script=str(HERE / "crash_before_commit.py"))
    crashing.proc.wait(90)
    assert crashing.proc.returncode == -9, crashing.log_text()[-3000:]
    crashing.stop()
    # It died holding a batch that Redis has applied and Kafka has not committed.
    assert await redis_client.zcard(C.IDX_SESSIONS) > 0
    assert await group_lag(kafka_bootstrap, env["CONSUMER_GROUP"], produced) == len(log.items)

    w = WorkerProcess(env)
    try:
        await wait_for(
            lambda: drained(kafka_bootstrap, env["CONSUMER_GROUP"], produced, redis_client), 90, "recovery"
        )
        await assert_state_matches(api, expected)
        # Redelivered facts were duplicates: no summary was re-issued with a new revision.
        copies: dict[tuple[str, int], set[bytes]] = {}
        for m in consume_all(kafka_bootstrap, topics.summaries):
            s = orjson.loads(m.value())
            SessionSummary.model_validate(s)  # the shape docs/asyncapi.json gives
            copies.setdefault((s["message_id"], s["revision"]), set()).add(m.value())
        assert all(len(bodies) == 1 for bodies in copies.values()), "copies of one revision differ"
        assert {rev for _, rev in copies} == {1}
    finally:
        assert w.stop() == 0


async def test_batches_fetched_while_redis_applies_merge_and_still_follow_the_rules(
    kafka_bootstrap: str, redis_url: str, topics: Topics, redis_client: aioredis.Redis, api: httpx.AsyncClient
) -> None:
    # Fetches of at most 50 records: while one batch is in Redis, the next ones merge into one
    # (Worker.submit), so Redis gets batches larger than any single fetch.
    log = make_log(random.Random(41), sessions=120)
    expected = reference(log)
    port = free_port()
    w, _ = await run_to_completion(
        kafka_bootstrap, redis_url, topics, log, redis_client, BATCH_MAX_RECORDS="50", METRICS_PORT=str(port)
    )
    try:
        await assert_state_matches(api, expected)
        async with httpx.AsyncClient() as c:
            text = (await c.get(f"http://127.0.0.1:{port}/metrics")).text
        buckets = {
            line.split('le="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("sessionpulse_batch_size_bucket")
        }
        assert buckets["+Inf"] > buckets["50.0"], f"no batch larger than one fetch was applied: {buckets}"
    finally:
        assert w.stop() == 0


async def test_records_with_headers_that_are_not_utf8_are_applied(
    kafka_bootstrap: str, redis_url: str, topics: Topics, redis_client: aioredis.Redis, api: httpx.AsyncClient
) -> None:
    # The worker reads no headers; FastStream's parser would decode them, fail, and drop the
    # whole fetched batch before the handler saw it (service/worker.py _parse_first_only).
    log = make_log(random.Random(43), sessions=10, with_bad=False)
    expected = reference(log)
    headers = [("trace", b"\xff\xfe not utf-8")]
    w, _ = await run_to_completion(kafka_bootstrap, redis_url, topics, log, redis_client, headers=headers)
    try:
        await assert_state_matches(api, expected)
    finally:
        assert w.stop() == 0


async def test_a_batch_the_worker_fails_on_is_read_again_not_skipped(
    kafka_bootstrap: str, redis_url: str, topics: Topics, redis_client: aioredis.Redis, api: httpx.AsyncClient
) -> None:
    # Batches commit their own offsets: one that failed and was dropped would be covered by
    # the next batch's commit and lost. The worker must read it again instead.
    log = make_log(random.Random(29), sessions=15, with_bad=False)
    expected = reference(log)
    script = str(HERE / "flaky_submit.py")
    w, _ = await run_to_completion(kafka_bootstrap, redis_url, topics, log, redis_client, script=script)
    try:
        assert w.log_text().count("could not be submitted; it will be read again") == 2
        await assert_state_matches(api, expected)
    finally:
        assert w.stop() == 0


async def test_replay_changes_nothing_and_rebuilds_empty_redis(
    kafka_bootstrap: str, redis_url: str, topics: Topics, redis_client: aioredis.Redis, api: httpx.AsyncClient
) -> None:
    log = make_log(random.Random(5), sessions=20)
    expected = reference(log)
    w, produced = await run_to_completion(kafka_bootstrap, redis_url, topics, log, redis_client)
    assert w.stop() == 0
    before = await snapshot(redis_client, log.session_ids)
    first_summaries = {m.value() for m in consume_all(kafka_bootstrap, topics.summaries)}

    async def replay(group: str) -> None:
        """The whole log again, through a new consumer group (which starts at the earliest offset)."""
        env = worker_env(kafka_bootstrap, redis_url, topics, CONSUMER_GROUP=f"{topics.prefix}{group}")
        w = WorkerProcess(env)
        try:
            await wait_for(
                lambda: drained(kafka_bootstrap, env["CONSUMER_GROUP"], produced, redis_client), 90, group
            )
        finally:
            assert w.stop() == 0

    # Replay onto the existing state changes nothing, byte for byte.
    await replay("replay")
    assert await snapshot(redis_client, log.session_ids) == before

    # Replay onto an empty Redis rebuilds the same state.
    for sid in log.session_ids:
        await redis_client.delete(*C.session_keys(sid))
    await redis_client.delete(C.IDX_SESSIONS, C.IDX_LIVE, C.OUTBOX)
    await replay("rebuild")
    await assert_state_matches(api, expected)
    # The rebuilt summaries are the same bytes as the first ones (same message_id, revision, content).
    assert {m.value() for m in consume_all(kafka_bootstrap, topics.summaries)} == first_summaries


async def test_idle_rule_ends_quiet_sessions_and_explicit_end_wins(
    kafka_bootstrap: str, redis_url: str, topics: Topics, redis_client: aioredis.Redis, api: httpx.AsyncClient
) -> None:
    from service.core.timeutil import iso_ms

    from .harness import Item, peer_event, session_message

    now = int(time.time() * 1000)
    quiet, busy = f"quiet-{now}", f"busy-{now}"
    t = now - 30_000
    items = [
        Item(C.RTK_PEER_EVENTS, quiet.encode(), orjson.dumps(peer_event(quiet, "a", "PEER_JOINING", t))),
        Item(
            C.RTK_PEER_EVENTS, quiet.encode(), orjson.dumps(peer_event(quiet, "a", "PEER_LEAVING", t + 5000))
        ),
        Item(C.RTK_PEER_EVENTS, busy.encode(), orjson.dumps(peer_event(busy, "b", "PEER_JOINING", t))),
    ]
    env = worker_env(
        kafka_bootstrap, redis_url, topics, IDLE_TIMEOUT_SECONDS="10", SWEEP_INTERVAL_SECONDS="0.5"
    )
    w = WorkerProcess(env)
    try:
        produce(kafka_bootstrap, topics, items)

        async def quiet_ended() -> bool:
            r = await api.get(f"/v1/sessions/{quiet}")
            return r.status_code == 200 and r.json()["data"]["status"] == "ENDED"

        await wait_for(quiet_ended, 60, "the idle rule")
        data = (await api.get(f"/v1/sessions/{quiet}")).json()["data"]
        assert data["ended_at"] == iso_ms(t + 5000)  # its newest event time
        report = (await api.get(f"/v1/sessions/{quiet}/report")).json()["data"]
        assert report["end_reason"] == "idle_timeout"
        # A connected peer keeps a session live however quiet it is.
        assert (await api.get(f"/v1/sessions/{busy}")).json()["data"]["status"] == "LIVE"

        async def first_revision() -> bool:
            s = latest_summaries(kafka_bootstrap, topics.summaries).get(f"{quiet}:summary")
            return s is not None and s["revision"] == 1 and s["end_reason"] == "idle_timeout"

        await wait_for(first_revision, 60, "the idle end's summary")

        # An explicit end that arrives later wins: ended_at and end_reason replaced, summary re-issued.
        end = t + 8000
        msg = session_message(quiet, "ENDED", t, end + 1, end)
        produce(kafka_bootstrap, topics, [Item(C.RTK_SESSIONS, quiet.encode(), orjson.dumps(msg))])

        async def two_revisions() -> bool:
            s = latest_summaries(kafka_bootstrap, topics.summaries).get(f"{quiet}:summary")
            return s is not None and s["revision"] == 2

        await wait_for(two_revisions, 60, "the re-issued summary")
        s = latest_summaries(kafka_bootstrap, topics.summaries)[f"{quiet}:summary"]
        assert s["end_reason"] == "ended" and s["ended_at"] == iso_ms(end)
    finally:
        assert w.stop() == 0
