"""valkey's instructions per `apply_rtk.lua` call, counted by valgrind's callgrind.

`bench.script_cost` reads valkey's CPU time, which moves by 20% and more between runs on a
shared machine; a script change worth a few percent cannot be seen there. This runs the
embedded valkey-server under callgrind and replays a log of the bench's generator (seed 5,
its realistic mix) with sessions of the latency phase's size (60 facts on average, so
`(warm + events) / 60` sessions) through the worker's decoders and call builder in batches
of `batch records`. It zeroes the counters after the first `warm` events (the sessions then
hold about half their state) and prints valkey's instructions per script call and per event
over the next `events`. The same code and inputs give the same count within half a percent;
valkey's own timers and network handling are counted too.

Batches of 20 records give about one event per call (the live case, where the per-call cost
bounds latency); batches of 2,000 about six (merged backlog batches carry more).
Needs valgrind (Debian's package); the run is about 50 times slower than without it.
Run: .venv/bin/python -m bench.script_instructions [warm] [events] [batch records]
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hiredis

from service.embedded import _valkey_binary, free_port
from service.store import APPLY, SCRIPTS, Store

from .logmix import backlog
from .script_cost import _read_replies, commands_by_session


def _connect(port: int, proc: subprocess.Popen[bytes]) -> socket.socket:
    deadline = time.monotonic() + 120  # valkey starts slowly under valgrind
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return socket.create_connection(("127.0.0.1", port))
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"valkey under valgrind did not answer on port {port} (exit code {proc.poll()})")


def _total_instructions(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no instruction total in {dump}")


def main(warm: int, events: int, batch_records: int) -> None:
    if warm < 0 or events <= 0 or batch_records <= 0:
        raise SystemExit(
            "usage: python -m bench.script_instructions [warm >= 0] [events > 0] [batch records > 0]"
        )
    # The latency phase's sessions: 60 facts each on average (bench/__main__.py).
    items = backlog(5, warm + events, max(1, (warm + events) // 60)).items
    store = Store(None, retention_ms=7 * 24 * 3600 * 1000)  # type: ignore[arg-type]
    workdir = Path(tempfile.mkdtemp(prefix="sessionpulse-callgrind-"))
    out = workdir / "callgrind.out"
    port = free_port()
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", _valkey_binary()]
    argv += ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sock = _connect(port, proc)
        reader = hiredis.Reader()
        for s in SCRIPTS:
            sock.sendall(hiredis.pack_command(("SCRIPT", "LOAD", s.source)))
            [loaded] = _read_replies(sock, reader, 1)
            if isinstance(loaded, hiredis.ReplyError):
                raise SystemExit(f"SCRIPT LOAD {s.name}: {loaded}")

        def replay(part: list) -> int:  # type: ignore[type-arg]
            calls_made = 0
            for at in range(0, len(part), batch_records):
                by_session = commands_by_session(part[at : at + batch_records])
                calls = [store.apply_call(sid, cmds) for sid, cmds in by_session.items()]
                sock.sendall(
                    b"".join(hiredis.pack_command(("EVALSHA", APPLY.sha, len(k), *k, *a)) for k, a in calls)
                )
                for r in _read_replies(sock, reader, len(calls)):
                    if isinstance(r, hiredis.ReplyError):
                        raise SystemExit(f"script error: {r}")
                calls_made += len(calls)
            return calls_made

        replay(items[:warm])
        subprocess.run(["callgrind_control", "--zero", str(proc.pid)], check=True, capture_output=True)
        calls = replay(items[warm:])
        subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True)
        sock.close()
        dumps = sorted(workdir.glob("callgrind.out.*"), key=os.path.getmtime)
        total = _total_instructions(dumps[-1])
    finally:
        proc.terminate()
        proc.wait()
    print(
        f"{events:,} events after {warm:,} in batches of {batch_records:,}: {calls:,} script calls"
        f" ({events / calls:.1f} events each)"
    )
    print(f"valkey instructions: {total / calls:,.0f} per script call, {total / events:,.0f} per event")
    print(f"callgrind dumps kept in {workdir} (callgrind_annotate shows where they go)")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]), *(6000, 6000, 20)[len(sys.argv[1:4]) :])
