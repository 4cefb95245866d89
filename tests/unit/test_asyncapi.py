"""The committed AsyncAPI document is the one the worker's FastStream app generates."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from service.asyncapi import document
from service.config import Settings

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


def _resolve(doc: dict[str, object], ref: str) -> dict[str, object]:
    node: object = doc
    for part in ref.removeprefix("#/").split("/"):
        assert isinstance(node, dict)
        node = node[part]
    assert isinstance(node, dict)
    return node


def test_every_json_topic_has_its_payload_schema() -> None:
    """Each inbound topic names the model its decoder validates with; the outbound ones the
    models of service/messages.py (the dead letters are any inbound message, byte for byte)."""
    doc = document()
    payloads: dict[str, str] = {}
    for channel in doc["channels"].values():
        for ref in channel["messages"].values():
            message = _resolve(doc, ref["$ref"])
            payload = message["payload"]
            assert isinstance(payload, dict)
            payloads[channel["address"]] = str(payload["$ref"]).rsplit("/", 1)[1]
            schema = _resolve(doc, str(payload["$ref"]))
            if channel["address"] != "sessions.dead-letter":
                assert schema.get("properties") or schema.get("anyOf"), channel["address"]
    assert payloads == {
        "rtk.sessions": "RtkSessionIn",
        "rtk.peer-events": "RtkPeerEventIn",
        "rtk.peer-reports": "RtkPeerReportIn",
        "rtk.webhooks": "WebhookIn",
        "livepeer.sessions": "LivepeerSessionIn",
        "livepeer.webhooks": "LivepeerWebhookIn",
        "sessions.summaries": "SessionSummary",
        "sessions.transcript-ready": "TranscriptReady",
        "sessions.dead-letter": "sessions.dead-letter:Message:Payload",
    }
    summary = _resolve(doc, "#/components/schemas/SessionSummary")
    assert summary["anyOf"] == [
        {"$ref": "#/components/schemas/RealtimeKitSummary"},
        {"$ref": "#/components/schemas/LivepeerSummary"},
    ]


def test_a_topic_prefix_keeps_the_payload_schemas() -> None:
    """The API serves the document with the deployment's prefixed topic names."""
    doc = document(Settings(kafka_bootstrap_servers="kafka:9092", topic_prefix="staging."))
    refs = {
        channel["address"]: _resolve(doc, ref["$ref"])["payload"]
        for channel in doc["channels"].values()
        for ref in channel["messages"].values()
    }
    assert refs["staging.rtk.peer-events"] == {"$ref": "#/components/schemas/RtkPeerEventIn"}
    assert refs["staging.sessions.summaries"] == {"$ref": "#/components/schemas/SessionSummary"}


def test_every_reference_resolves_and_every_schema_is_used() -> None:
    doc = document()
    text = orjson.dumps(doc).decode()
    refs = set(re.findall(r'"\$ref":"([^"]+)"', text))
    for ref in refs:
        _resolve(doc, ref)
    unused = {f"#/components/schemas/{name}" for name in doc["components"]["schemas"]} - refs
    assert not unused
