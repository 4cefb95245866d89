"""Service processes the bench starts, and what /proc says about them (CPU time, peak RSS)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from service.embedded import spawn

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


class ServiceProcess:
    """`python -m service <command>` as its own OS process, dying with the bench."""

    def __init__(
        self, command: str, env: dict[str, str], log_path: Path, argv: list[str] | None = None
    ) -> None:
        self.command = command
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.started = time.monotonic()
        self.proc = spawn(
            argv or [sys.executable, "-m", "service", command],
            env={**os.environ, **env},
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmHWM: peak RSS, VmRSS: RSS now)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _all_cpu() -> dict[int, tuple[str, float]]:
    """(command, CPU seconds) of every process on the machine."""
    out: dict[int, tuple[str, float]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        head, _, rest = stat.rpartition(")")
        fields = rest.split()
        name = cmdline or head.partition("(")[2]
        out[int(d.name)] = (name[:80], (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def system_cpu() -> tuple[float, float, float]:
    """Machine-wide CPU seconds, all cores (/proc/stat): (busy in processes, irq + softirq, steal)."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system) / CLK_TCK, (irq + softirq) / CLK_TCK, steal / CLK_TCK


@dataclass
class CpuWindow:
    """CPU seconds of named processes (and the whole machine) over one phase."""

    pids: dict[str, int]
    wall0: float = 0.0
    sys0: tuple[float, float, float] = (0.0, 0.0, 0.0)
    own0: dict[str, float] | None = None
    all0: dict[int, tuple[str, float]] | None = None

    def start(self) -> CpuWindow:
        self.wall0 = time.monotonic()
        self.sys0 = system_cpu()
        self.own0 = {n: cpu_seconds(p) for n, p in self.pids.items()}
        self.all0 = _all_cpu()
        return self

    def others(self, top: int = 3) -> list[tuple[str, float]]:
        """The processes other than ours that used the most CPU since `start` (command, CPU s)."""
        assert self.all0 is not None
        ours = set(self.pids.values())
        used: list[tuple[str, float]] = []
        for pid, (name, cpu) in _all_cpu().items():
            if pid in ours:
                continue
            before = self.all0.get(pid, (name, 0.0))[1]
            if cpu - before >= 0.05:
                used.append((name, round(cpu - before, 2)))
        return sorted(used, key=lambda x: -x[1])[:top]

    def read(self) -> dict[str, Any]:
        """CPU seconds since `start`: ours by process; `machine`, all processes on every core;
        `other`, the part of that which is not ours (other processes, including ones that came
        and went); `irq`, interrupt handling (our loopback traffic, mostly); `steal`, taken by
        the hypervisor; `wall`; and the other processes that used the most."""
        assert self.own0 is not None
        wall = time.monotonic() - self.wall0
        ours = {n: round(cpu_seconds(p) - self.own0[n], 2) for n, p in self.pids.items()}
        busy, irq, steal = (b - a for a, b in zip(self.sys0, system_cpu(), strict=True))
        return {
            **ours,
            "machine": round(busy, 2),
            "other": round(max(0.0, busy - sum(ours.values())), 2),
            "irq": round(irq, 2),
            "steal": round(steal, 2),
            "wall": round(wall, 2),
            "top_other_processes": self.others(),
        }


async def wait_http(url: str, proc: ServiceProcess, within_s: float = 30.0) -> None:
    """Until `url` answers 200; raises if `proc` exits first or `within_s` passes."""
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"the API exited:\n{proc.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the API did not answer {url} within {within_s:.0f} s")
