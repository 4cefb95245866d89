"""`python -m service dev --demo` (what `make run` runs): live sessions within 30 s, a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.embedded import free_port, spawn

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> set[int]:
    """Every descendant of a process, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_dev_demo_shows_live_sessions_and_stops_cleanly(stop_signal: int) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}
    env["HTTP_PORT"] = str(port)
    proc = spawn(
        [sys.executable, "-m", "service", "dev", "--demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    started = time.monotonic()
    live: list[dict] = []
    try:
        while time.monotonic() - started < 30 and not live:
            time.sleep(0.5)
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/sessions", params={"status": "LIVE"}, timeout=2)
            except httpx.HTTPError:
                continue
            live = r.json()["data"]["sessions"]
        assert live, "no live demo session within 30 s"
        assert all(s["status"] == "LIVE" and s["id"] for s in live)
        descendants = _children(proc.pid)
        assert len(descendants) >= 4, descendants  # broker, Redis, worker, API
    finally:
        proc.send_signal(stop_signal)
        try:
            code = proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert code == 0, output[-3000:]
    assert "/v1/sessions" in output  # the banner says what runs where
    time.sleep(0.5)
    assert [p for p in descendants if _alive(p)] == [], "processes left behind"
