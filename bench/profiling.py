"""Optional: sample the worker with py-spy during the drain and summarise where it spends time.

py-spy is not a dependency; `--profile` only works when it is installed
(`.venv/bin/pip install py-spy`). Sampling costs the worker some CPU, so a profiled run's
rates are not the ones to report.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, pid: int, out: Path, rate: int = 100, idle: bool = True) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.out = out
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--output", str(out)]
            + (["--idle"] if idle else []),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _frame(f: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file.py)`."""
    name, _, where = f.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{name} ({file})" if file else name


def _module(frame: str) -> str:
    """Where a frame's code lives: `service/<file>` for ours, else the top-level package."""
    where = frame.rpartition(" (")[2].rstrip(")").rsplit(":", 1)[0]
    parts = where.split("/")
    if parts[0] == "service":
        return "/".join(parts[:2])
    return parts[0] if len(parts) > 1 else where


ACTIVITIES = (
    ("Outbox.", "outbox (summaries)"),
    ("on_batch", "batch handler (decode, apply, indexes, commit)"),
    ("fetcher.py", "aiokafka fetcher"),
    ("sweep", "idle sweeper"),
    ("importlib", "imports (start-up)"),
)


def _activity(stack: str, *, idle: bool) -> str:
    if idle:
        return "idle: waiting in select"
    for marker, name in ACTIVITIES:
        if marker in stack:
            return name
    return "other (event loop, FastStream, timers)"


def summarise(raw: Path, top: int = 20) -> dict[str, Any]:
    """Self and inclusive sample shares by function of the main thread, from py-spy's collapsed
    stacks; `idle_share` is the event loop waiting in select (for Redis, Kafka or a timer)."""
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    by_module: Counter[str] = Counter()
    by_activity: Counter[str] = Counter()
    total = 0
    idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        if "_run_module_as_main" not in stack:
            continue  # only the main thread: the event loop (helper threads mostly wait)
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        leaf = frames[-1]
        waiting = leaf.split(" (")[0].rsplit(".", 1)[-1] in ("select", "poll", "epoll")
        if waiting:
            idle += n
            by_module["(idle: waiting in select)"] += n
        else:
            by_module[_module(stack.rsplit(";", 1)[-1])] += n
        by_activity[_activity(stack, idle=waiting)] += n
        self_t[leaf] += n
        for f in set(frames):
            incl[f] += n

    def share(c: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * n / total, 1)) for f, n in c.most_common(top)] if total else []

    return {"samples": total, "idle_share": round(100 * idle / total, 1) if total else 0,
            "by_activity_pct": share(by_activity),
            "self_pct_by_module": share(by_module),
            "self_pct": share(self_t), "inclusive_pct": share(incl)}  # fmt: skip


def describe(prof: dict[str, Any], what: str) -> str:
    """A summary as printed text."""
    out = [
        f"worker profile during {what}: {prof['samples']} samples of the main thread, {prof['idle_share']}% idle"
    ]
    for title, key in (
        ("by activity", "by_activity_pct"),
        ("self time by module", "self_pct_by_module"),
        ("self time by function", "self_pct"),
        ("inclusive", "inclusive_pct"),
    ):
        out.append(f"{title} (%):")
        out += [f"  {pct:5.1f}  {f}" for f, pct in prof[key]]
    return "\n".join(out)
