"""Helpers of the reliability tests: services as OS processes, bulk state checks, counts and figures."""

from __future__ import annotations

import ast
import datetime as dt
import json
import random
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis

from service import constants as C
from service.constants import RTK_PEER_EVENTS, RTK_SESSIONS, RTK_WEBHOOKS, Topics
from service.core import shapes
from service.core.model import ReferenceSession
from service.embedded import ensure_topics, free_port, topic_layout
from service.store import Store, events_by_peer, view_from_raw
from service.webhooks import decode_rtk_webhook
from service.wire import decode_peer_event, decode_session
from tests.integration.harness import (
    Item,
    Log,
    WorkerProcess,
    approx_floats,
    bad_items,
    consume_all,
    make_log,
    wait_for,
)

RESULTS = Path(__file__).parent / "results" / "last-run.json"
Counts = dict[str, dict[str, int]]  # what -> topic -> n, as the worker logs them when it stops


# --- figures of the last run (docs/reliability.md is generated from them) -----------------


def record_figures(name: str, figures: dict[str, Any]) -> None:
    """Merge one test's figures into results/last-run.json, stamped with the time of this run."""
    RESULTS.parent.mkdir(exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    data[name] = {"recorded_at": stamp, **figures}
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# --- services as OS processes --------------------------------------------------------------


def assigned_partitions(w: WorkerProcess) -> int:
    """How many partitions the worker's latest assignment holds (from FastStream's log line)."""
    found = re.findall(r"assigned to partitions: \((.*)\)", w.log_text())
    return found[-1].count("TopicPartition(") if found else 0


def worker_counts(log_text: str) -> Counts:
    """The counts a worker logs when it stops (`worker stopped; counts {...}`)."""
    found = re.findall(r"worker stopped; counts (\{.*\})\s*$", log_text, re.M)
    assert found, "the worker logged no counts (it did not stop cleanly)"
    counts: Counts = ast.literal_eval(found[-1])
    return counts


def count(counts: Counts, what: str, topic: str | None = None) -> int:
    per_topic = counts.get(what, {})
    return per_topic.get(topic, 0) if topic is not None else sum(per_topic.values())


class ApiProcess(WorkerProcess):
    """`python -m service api` on a free port, as its own OS process."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        super().__init__({**env, "HTTP_PORT": str(self.port)}, command="api")
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_serving(self, within: float = 30.0) -> None:
        async def up() -> bool:
            assert self.alive(), self.log_text()[-3000:]
            try:
                async with httpx.AsyncClient(timeout=2) as c:
                    return (await c.get(f"{self.url}/healthz")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(up, within, "the API to serve", every=0.1)

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        async with httpx.AsyncClient(timeout=5) as c:
            r = await c.get(f"{self.url}/readyz")
        return r.status_code, r.json()


async def own_topics(bootstrap: str, *, inbound: int, outbound: int = 1) -> Topics:
    """Fresh topics under a prefix of their own, with the partition counts a test needs."""
    names = Topics(prefix=f"f{secrets.token_hex(4)}.")
    await ensure_topics(bootstrap, topic_layout(names, inbound=inbound, outbound=outbound))
    return names


# --- logs and what the rules make of them ----------------------------------------------------


def sized_log(rng: random.Random, events: int, *, window: int = 400) -> Log:
    """Exactly `events` messages: make_log's sessions (duplicates, ENDED before the events it closes,
    facts after the end) shuffled again across neighbouring sessions, ending with every kind of bad input."""
    bad = bad_items("s-bad")
    log = Log()
    while len(log.items) < events - len(bad):
        more = make_log(rng, 200, with_bad=False, t0=make_log_t0(len(log.session_ids)))
        log.items += more.items
        log.session_ids += more.session_ids
    del log.items[events - len(bad) :]
    for start in range(0, len(log.items), window):
        part = log.items[start : start + window]
        rng.shuffle(part)
        log.items[start : start + window] = part
    present = {
        orjson.loads(i.value).get("id" if i.topic == RTK_SESSIONS else "session_id") for i in log.items
    }
    log.session_ids = [sid for sid in log.session_ids if sid in present]
    log.items += bad
    return log


def make_log_t0(sessions_so_far: int) -> int:
    """Start times that keep growing across make_log calls (7 s apart, as make_log spaces them)."""
    return 1_767_225_600_000 + sessions_so_far * 7_000


def reference_of(items: Iterable[Item]) -> dict[str, ReferenceSession]:
    """The rules applied in memory to `rtk.sessions`, `rtk.peer-events` and `rtk.webhooks` messages
    (harness.reference covers the first two only); sessions that only hold artifacts are left out."""
    out: dict[str, ReferenceSession] = {}
    for it in items:
        if it.bad or it.topic not in (RTK_SESSIONS, RTK_PEER_EVENTS, RTK_WEBHOOKS):
            continue
        if it.topic == RTK_WEBHOOKS:
            cmds: list[Any] = decode_rtk_webhook(it.value, it.key)
        elif it.topic == RTK_SESSIONS:
            cmds = [decode_session(it.value)]
        else:
            cmds = [decode_peer_event(it.value, it.key)]
        for cmd in cmds:
            out.setdefault(cmd.session_id, ReferenceSession(cmd.session_id)).apply(cmd)
    return {sid: ref for sid, ref in out.items() if ref.exists}


def expected_counts(items: Iterable[Item]) -> Counter[tuple[str, str]]:
    """(what, topic) -> n for one delivery of each message: applied, duplicate or dead_lettered.

    The first copy of a fact is applied whatever the order, so the applied count of any
    number of redeliveries, in any order, is this one.
    """
    out: Counter[tuple[str, str]] = Counter()
    sessions: dict[str, ReferenceSession] = {}
    for it in items:
        if it.bad:
            out[("dead_lettered", it.topic)] += 1
            continue
        cmd = decode_session(it.value) if it.topic == RTK_SESSIONS else decode_peer_event(it.value, it.key)
        outcome = sessions.setdefault(cmd.session_id, ReferenceSession(cmd.session_id)).apply(cmd)
        out[(outcome, it.topic)] += 1
    return out


# --- state checks in bulk ------------------------------------------------------------------------


async def assert_stored_state_matches(
    redis: aioredis.Redis, expected: dict[str, ReferenceSession], *, chunk: int = 500
) -> None:
    """What Redis holds for every session equals the rules applied in memory: the Session object, the
    participants with their applied events, and (ENDED) the summary, read as the API reads them.

    One pipelined read per `chunk` sessions, so a log of thousands of sessions is checked in seconds.
    """
    store = Store(redis, retention_ms=1)
    sids = sorted(expected)
    wrong: list[str] = []
    for start in range(0, len(sids), chunk):
        part = sids[start : start + chunk]
        raws = await store.read_many(part)
        now = int(time.time() * 1000)
        for sid, raw in zip(part, raws, strict=True):
            want = expected[sid].view()
            if raw is None:
                wrong.append(f"{sid}: missing")
                continue
            got = view_from_raw(sid, raw, events_by_peer(raw["events"]))
            if shapes.session_object(got, now) != approx_floats(shapes.session_object(want, now)):
                wrong.append(f"{sid}: session object")
            peers = [
                (p.peer_id, shapes.participant_object(p, now), p.events)
                for p in shapes.participants_in_order(got)
            ]
            want_peers = [
                (p.peer_id, shapes.participant_object(p, now), p.events)
                for p in shapes.participants_in_order(want)
            ]
            if peers != approx_floats(want_peers):
                wrong.append(f"{sid}: participants")
            if want.status == "ENDED" and shapes.session_summary(got, now) != shapes.session_summary(
                want, now
            ):
                wrong.append(f"{sid}: summary")
    assert not wrong, f"{len(wrong)} of {len(sids)} sessions differ from the rules: {wrong[:10]}"


def assert_summaries_match(
    bootstrap: str,
    topic: str,
    expected: dict[str, ReferenceSession],
    stored_revisions: dict[str, int],
    *,
    skip: int = 0,
) -> dict[str, int]:
    """The newest revision of every summary equals the rules, none is missing, and every copy of one
    (message_id, revision) is the same bytes; returns figures (messages, copies, revisions).

    `skip`: leave out the topic's first messages (those published before a rebuild, whose revisions
    count another Redis's history).
    """
    newest: dict[str, dict[str, Any]] = {}
    copies: dict[tuple[str, int], set[bytes]] = {}
    messages = consume_all(bootstrap, topic, idle_s=2.0, timeout_s=120.0)[skip:]
    for m in messages:
        s = orjson.loads(m.value())
        copies.setdefault((s["message_id"], s["revision"]), set()).add(m.value())
        assert dict(m.headers())["revision"] == str(s["revision"]).encode()
        if s["message_id"] not in newest or s["revision"] > newest[s["message_id"]]["revision"]:
            newest[s["message_id"]] = s
    ended = {sid for sid, ref in expected.items() if ref.view().status == "ENDED"}
    assert set(newest) == {shapes.summary_message_id(sid) for sid in ended}, "a summary is missing or extra"
    differ = [b for b in copies.values() if len(b) > 1]
    assert not differ, f"{len(differ)} revisions were published with different bytes"
    wrong = []
    for sid in ended:
        s = dict(newest[shapes.summary_message_id(sid)])
        revision = s.pop("revision")
        s.pop("message_id")
        if s != shapes.session_summary(expected[sid].view(), 0) or revision != stored_revisions.get(sid):
            wrong.append(sid)
    assert not wrong, f"{len(wrong)} newest summaries differ from the rules or from Redis: {wrong[:5]}"
    return {
        "summaries": len(newest),
        "summary_messages_published": len(messages),
        "highest_revision": max((rev for _, rev in copies), default=0),
    }


async def stored_summary_revisions(redis: aioredis.Redis, sids: Iterable[str]) -> dict[str, int]:
    """`summary_published` of each session: the revision the broker acknowledged last."""
    sids = list(sids)
    pipe = redis.pipeline(transaction=False)
    for sid in sids:
        pipe.hget(C.session_keys(sid)[0], "summary_published")
    got = await pipe.execute()
    return {sid: int(v) for sid, v in zip(sids, got, strict=True) if v is not None}


def probes(log: Log, n: int = 200) -> list[str]:
    """Session ids spread evenly over the log's order, to gauge how far a replay has come."""
    step = max(1, len(log.session_ids) // n)
    return log.session_ids[::step]


async def progress(redis: aioredis.Redis, probe_ids: Sequence[str]) -> float:
    """The share of the probe sessions the worker has indexed: where the replay stands, in one call."""
    scores = await redis.zmscore(C.IDX_SESSIONS, list(probe_ids))
    return sum(s is not None for s in scores) / len(probe_ids)


def retry_delays(log_text: str, pattern: str) -> list[float]:
    """The delays of the log lines matching `pattern` (a regex with one group: the seconds)."""
    return [float(x) for x in re.findall(pattern, log_text)]
