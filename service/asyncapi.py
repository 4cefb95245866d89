"""The worker's AsyncAPI document, generated from its FastStream app (committed as docs/asyncapi.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from faststream.specification import AsyncAPI

from .config import Settings
from .runtime import build_runtime

DOCUMENT = Path("docs/asyncapi.json")


def document(settings: Settings | None = None) -> dict[str, Any]:
    """Channels, messages and operations of the worker; builds the app without connecting anything."""
    from .worker import build_app

    # The committed document names the contract's topics: no prefix, whatever the environment says.
    rt = build_runtime(settings or Settings(kafka_bootstrap_servers="kafka:9092", topic_prefix=""))
    build_app(rt)
    spec = AsyncAPI(
        rt.broker,
        title="sessionpulse worker",
        version="0.1.0",
        description=(
            "Consumes RealtimeKit and Livepeer session facts, keeps live session state in Redis, and "
            "publishes SessionSummary and TranscriptReady messages and dead letters (CONTRACT sections 2 and 6)."
        ),
    ).to_specification()
    jsonable: dict[str, Any] = spec.to_jsonable()
    return jsonable


def main(out: str | None) -> int:
    text = orjson.dumps(document(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    if out is None:
        print(text.decode(), end="")
    else:
        Path(out).write_bytes(text)
    return 0
