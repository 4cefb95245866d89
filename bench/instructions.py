"""Instructions per call of the worker's hot Python paths, counted by valgrind's callgrind.

Wall and CPU time on a shared machine move by 30% and more from one minute to the next, so
a 10% change cannot be told from noise in a drain. Instruction counts can: callgrind counts
the same total for the same code and input whatever else the machine runs. This prints, per
call, the instructions of:

- `orjson.loads` of a bench peer event, and `decode_peer_event` (the worker's whole decode of
  one record: JSON, the hand checks, the ISO-8601 time, the PeerEvent);
- a summary: the view of an ended session from its hashes as `read.lua` returns them, and
  its SessionSummary content (what the outbox builds per session; the Redis read is not
  counted).

Each figure is a run minus an empty run over the same inputs, divided by the calls, with a
fixed PYTHONHASHSEED (string hashing moves a count by a few percent otherwise). Needs
valgrind (Debian's package). Not part of `make bench`.
Run: .venv/bin/python -m bench.instructions
"""

from __future__ import annotations

import asyncio
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from service.constants import RTK_PEER_EVENTS
from service.core import shapes
from service.embedded import start_redis
from service.store import Store, events_by_peer, view_from_raw
from service.wire import decode_peer_event

from .logmix import backlog
from .script_cost import commands_by_session

ROOT = Path(__file__).resolve().parents[1]
EVENTS = 2000  # peer events decoded per run
SESSIONS = 200  # ended sessions summarised per run


async def _inputs() -> dict[str, Any]:
    """Peer event records and the stored hashes of ended sessions, from the bench's log."""
    log = backlog(5, 30_000, 500)
    events = [(it.value, it.key) for it in log.items if it.topic == RTK_PEER_EVENTS][:EVENTS]
    with start_redis() as server:
        redis = aioredis.Redis.from_url(server.url)
        try:
            store = Store(redis, retention_ms=7 * 24 * 3600 * 1000)
            await store.load_scripts()
            await store.apply(commands_by_session(log.items))
            sids = list(log.ended_ms)[:SESSIONS]
            raws = await store.read_many(sids)
        finally:
            await redis.aclose()
    return {"events": events, "sessions": [(s, r) for s, r in zip(sids, raws, strict=True) if r is not None]}


def _run(name: str, inputs: dict[str, Any]) -> None:
    """What one measured run does (inside valgrind). Every run, the empty one included, first
    calls each measured function once, so that no one-time setup is counted per call."""
    import orjson

    value, key = inputs["events"][0]
    orjson.loads(value)
    decode_peer_event(value, key)
    sid, raw = inputs["sessions"][0]
    shapes.session_summary(view_from_raw(sid, raw, events_by_peer(raw["events"])), now_ms=0)
    if name == "loads":
        for value, _ in inputs["events"]:
            orjson.loads(value)
    elif name == "decode":
        for value, key in inputs["events"]:
            decode_peer_event(value, key)
    elif name == "summary":
        for sid, raw in inputs["sessions"]:
            view = view_from_raw(sid, raw, events_by_peer(raw["events"]))
            shapes.session_summary(view, now_ms=view.ended_ms or 0)


def _instructions(name: str, path: Path) -> int:
    try:
        out = _valgrind(name, path)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"valgrind failed on {name!r}:\n{exc.stderr[-4000:]}") from exc
    for line in out.stderr.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1].strip())
    raise RuntimeError(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")


def _valgrind(name: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m", "bench.instructions",
         "--run", name, str(path)],
        cwd=ROOT, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict and set layouts every run
    )  # fmt: skip


def main() -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    inputs = asyncio.run(_inputs())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "inputs.pickle"
        path.write_bytes(pickle.dumps(inputs))
        empty = _instructions("none", path)
        for name, calls, what in (
            ("loads", len(inputs["events"]), "orjson.loads of a peer event"),
            ("decode", len(inputs["events"]), "decode_peer_event"),
            ("summary", len(inputs["sessions"]), "view + SessionSummary of an ended session"),
        ):
            per_call = (_instructions(name, path) - empty) / calls
            print(f"{what:<45} {per_call:>10,.0f} instructions per call ({calls} calls)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--run":
        _run(sys.argv[2], pickle.loads(Path(sys.argv[3]).read_bytes()))
    else:
        main()
