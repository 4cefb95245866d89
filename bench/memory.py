"""Redis memory per session: `MEMORY USAGE` of every key of every session, by status.

Run on a Redis that holds only the memory set (the bench FLUSHDBs its own valkey first),
after the worker has applied it and published every summary, so ended sessions carry
their summary bookkeeping too.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from redis.asyncio import Redis

from service import constants as C


def _kind(key: str) -> str:
    return key.rsplit(":", 1)[1]


async def measure(redis: Redis, session_ids: list[str], used_before: int, chunk: int = 500) -> dict[str, Any]:
    """Mean bytes per LIVE and per ENDED session (its own keys), the index share, and the used_memory delta."""
    totals: dict[str, list[int]] = defaultdict(list)  # status -> bytes per session
    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # status -> key kind -> bytes
    keys_per_session: dict[str, list[int]] = defaultdict(list)
    for at in range(0, len(session_ids), chunk):
        part = session_ids[at : at + chunk]
        pipe = redis.pipeline(transaction=False)
        for sid in part:
            keys = C.session_keys(sid)
            pipe.hget(keys[0], "status")
            for k in keys:
                pipe.memory_usage(k, samples=0)
        replies = await pipe.execute()
        width = 1 + len(C.session_keys("x"))
        for n, sid in enumerate(part):
            row = replies[n * width : (n + 1) * width]
            status = (row[0] or b"MISSING").decode()
            sizes = row[1:]
            totals[status].append(sum(s or 0 for s in sizes))
            keys_per_session[status].append(sum(1 for s in sizes if s))
            for k, s in zip(C.session_keys(sid), sizes, strict=True):
                by_kind[status][_kind(k)] += s or 0
    info = await redis.info("memory")
    used_after = int(info["used_memory"])
    n = len(session_ids)
    index_bytes = {}
    for k in (C.IDX_SESSIONS, C.IDX_LIVE, C.OUTBOX):
        index_bytes[k] = int(await redis.memory_usage(k, samples=0) or 0)
    per_status: dict[str, Any] = {}
    for status, sizes in sorted(totals.items()):
        count = len(sizes)
        per_status[status] = {
            "sessions": count,
            "bytes_per_session": round(sum(sizes) / count),
            "keys_per_session": round(sum(keys_per_session[status]) / count, 2),
            "by_key": {kind: round(b / count) for kind, b in sorted(by_kind[status].items())},
        }
    return {
        "sessions": n,
        "by_status": per_status,
        "index_bytes_per_session": round(sum(index_bytes.values()) / n) if n else 0,
        "index_bytes": index_bytes,
        "used_memory_before": used_before,
        "used_memory_after": used_after,
        "used_memory_delta_per_session": round((used_after - used_before) / n) if n else 0,
        "method": "MEMORY USAGE <key> SAMPLES 0 summed over each session's keys; index share ="
        " MEMORY USAGE of sp:idx:sessions + sp:idx:live + sp:outbox / sessions;"
        " used_memory delta from an empty database (after FLUSHDB) / sessions",
    }
