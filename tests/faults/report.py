"""Writes the figures of the last run (tests/faults/results/last-run.json) into docs/reliability.md.

Run by `make test-faults` after the tests, and by `make reliability-doc`. Only the block between
the two markers is rewritten; the rest of the page is prose kept by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .support import RESULTS

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"

SECTIONS = [
    ("crash", "1. Crash: ten SIGKILLs during a 200,000-event replay"),
    ("scale_out", "2. Scale-out: three workers, one stopped, one started"),
    ("redis_outage", "3a. Redis down for 10 s, back with its AOF"),
    ("rebuild", "3b. Redis back empty, rebuilt with `python -m service rebuild`"),
    ("broker_outage_api", "4a. Broker unreachable: the API"),
    ("broker_outage_worker", "4b. Broker gone for 10 s mid-run: the worker"),
    ("hostile_input", "5. Hostile input: fuzzed topics and webhook routes"),
    ("security_api_keys", "6a. API keys compared in constant time"),
    ("security_scoping", "6b. Organization scoping on every route"),
    ("security_signatures", "6c. Webhook signature bypass attempts"),
    ("security_limits", "6d. Header and body limits"),
    ("security_hostile_ids", "6e. Hostile ids"),
    ("security_logs", "6f. No secret in the logs"),
    ("shutdown", "7a. SIGTERM with a batch in flight"),
    ("shutdown_outbox", "7b. SIGTERM drains the outbox"),
]


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[dict[str, Any]]) -> list[str]:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    out = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    out += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return out


def render(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        START,
        "",
        "Generated from `tests/faults/results/last-run.json` by `python -m tests.faults.report`"
        " (`make test-faults` runs it). Each block carries the time its test last passed.",
    ]
    for key, title in SECTIONS:
        lines += ["", f"### {title}", ""]
        figures = dict(results.get(key, {}))
        if not figures:
            lines.append("Not recorded yet: run `make test-faults` (or `make test` for 6 and 7).")
            continue
        lines.append(f"`{figures.pop('test', '?')}`, recorded {figures.pop('recorded_at', '?')}.")
        lines.append("")
        nested = {k: v for k, v in figures.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
        by_topic = {
            k: v
            for k, v in figures.items()
            if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values())
        }
        lines += ["| figure | value |", "| --- | --- |"]
        for name, value in figures.items():
            if name not in nested and name not in by_topic:
                lines.append(f"| {name.replace('_', ' ')} | {_cell(value)} |")
        for name, rows in nested.items():
            lines += ["", f"{name.replace('_', ' ')}:", "", *_table(rows)]
        for name, table in by_topic.items():
            lines += ["", f"{name.replace('_', ' ')}:", "", *_table([{"": k, **v} for k, v in table.items()])]
    lines += ["", END]
    return "\n".join(lines)


def main() -> int:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    text = DOC.read_text()
    if START not in text or END not in text:
        print(f"{DOC}: the markers {START} and {END} are missing", file=sys.stderr)
        return 1
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    DOC.write_text(head + render(results) + tail)
    print(f"{DOC.relative_to(DOC.parents[1])}: figures of {len(results)} tests written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
