"""Where a drain's time goes, without Kafka: the worker's CPU path and valkey's script cost.

Replays the bench's backlog (same seed and mix as `make bench`) in batches the size the
worker takes, through the worker's own decoders and script-call builder, into a fresh
embedded valkey, and prints per event:

- the worker's CPU for decoding, building the calls and packing them (no I/O);
- valkey's CPU (from /proc) for applying them, and the wall time of the round trips.

Steadier than a drain (no broker, no event loop, nothing else competing for a core), so it
is the loop to iterate on `apply_rtk.lua` and the decoders with. Not part of `make bench`.
Run: .venv/bin/python -m bench.script_cost [events] [batch records]
"""

from __future__ import annotations

import gc
import socket
import sys
import time
from collections import defaultdict
from collections.abc import Iterable

import hiredis

from service.constants import RTK_PEER_EVENTS
from service.embedded import start_redis
from service.store import APPLY, SCRIPTS, Command, Store
from service.wire import decode_peer_event, decode_session

from .logmix import Item, backlog
from .procs import cpu_seconds


def _read_replies(sock: socket.socket, reader: hiredis.Reader, n: int) -> list[object]:
    out: list[object] = []
    while len(out) < n:
        got = reader.gets()
        if got is False:
            reader.feed(sock.recv(1 << 20))
            continue
        out.append(got)
    return out


def commands_by_session(items: Iterable[Item]) -> dict[str, list[Command]]:
    """The bench log's items decoded by the worker's decoders, grouped by session as a batch is."""
    by_session: dict[str, list[Command]] = defaultdict(list)
    for it in items:
        c: Command = (
            decode_peer_event(it.value, it.key) if it.topic == RTK_PEER_EVENTS else decode_session(it.value)
        )
        by_session[c.session_id].append(c)
    return by_session


def main(events: int, batch_records: int) -> None:
    log = backlog(5, events, 5000)
    items = log.items
    store = Store(None, retention_ms=7 * 24 * 3600 * 1000)  # type: ignore[arg-type]
    with start_redis() as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        reader = hiredis.Reader()
        for s in SCRIPTS:
            sock.sendall(hiredis.pack_command(("SCRIPT", "LOAD", s.source)))
            _read_replies(sock, reader, 1)
        gc.collect()
        gc.freeze()
        decode_s = build_s = pack_s = wall_s = 0.0
        calls_total = 0
        valkey_cpu0 = cpu_seconds(server.pid)
        for at in range(0, len(items), batch_records):
            chunk = items[at : at + batch_records]
            t0 = time.process_time()
            by_session = commands_by_session(chunk)
            t1 = time.process_time()
            calls = [store.apply_call(sid, cmds) for sid, cmds in by_session.items()]
            t2 = time.process_time()
            packed = b"".join(
                hiredis.pack_command(("EVALSHA", APPLY.sha, len(keys), *keys, *argv)) for keys, argv in calls
            )
            t3 = time.process_time()
            w0 = time.perf_counter()
            sock.sendall(packed)
            replies = _read_replies(sock, reader, len(calls))
            wall_s += time.perf_counter() - w0
            for r in replies:
                if isinstance(r, hiredis.ReplyError):
                    raise SystemExit(f"script error: {r}")
            decode_s, build_s, pack_s = decode_s + t1 - t0, build_s + t2 - t1, pack_s + t3 - t2
            calls_total += len(calls)
        valkey_s = cpu_seconds(server.pid) - valkey_cpu0
        sock.close()
    n = len(items)

    def us(s: float) -> str:
        return f"{s / n * 1e6:6.2f} µs"

    print(
        f"{n:,} events in batches of {batch_records:,}: {calls_total:,} script calls ({n / calls_total:.1f} events each)"
    )
    print(f"worker CPU per event: decode {us(decode_s)}, build calls {us(build_s)}, pack {us(pack_s)}")
    print(f"valkey CPU per event: {us(valkey_s)}; round-trip wall per event {us(wall_s)}")


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 300_000,
        int(sys.argv[2]) if len(sys.argv) > 2 else 20_000,
    )
