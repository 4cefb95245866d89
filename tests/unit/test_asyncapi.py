"""The committed AsyncAPI document is the one the worker's FastStream app generates."""

from __future__ import annotations

from pathlib import Path

import orjson

from service.asyncapi import document

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_document_is_up_to_date() -> None:
    committed = orjson.loads((ROOT / "docs" / "asyncapi.json").read_bytes())
    assert committed == document(), "regenerate it: python -m service asyncapi --out docs/asyncapi.json"


def test_it_names_every_topic_of_the_contract() -> None:
    channels = {c["address"] for c in document()["channels"].values()}
    assert channels == {
        "rtk.sessions",
        "rtk.peer-events",
        "rtk.peer-reports",
        "rtk.webhooks",
        "livepeer.sessions",
        "livepeer.webhooks",
        "sessions.summaries",
        "sessions.transcript-ready",
        "sessions.dead-letter",
    }
