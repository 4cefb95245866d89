"""In-process counters of what the worker consumed, applied, recognised as duplicate or dead-lettered."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Stats:
    """Counts by (what, topic); `produced = applied + duplicate + dead_lettered` per topic."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, what: str, topic: str, n: int = 1) -> None:
        if n:
            self.counts[(what, topic)] += n

    def merge(self, other: Stats) -> None:
        self.counts.update(other.counts)

    def total(self, what: str) -> int:
        return sum(n for (w, _), n in self.counts.items() if w == what)

    def snapshot(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (what, topic), n in sorted(self.counts.items()):
            out.setdefault(what, {})[topic] = n
        return out
