"""The committed AsyncAPI document is the one the worker's FastStream app generates."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import orjson

from service.asyncapi import KEY, document
from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
# The AsyncAPI 3.0.0 JSON Schema, vendored (deploy/schemas/README.md).
ASYNCAPI_SCHEMA = ROOT / "deploy" / "schemas" / "asyncapi" / "asyncapi-3.0.0.json"
# The schema's pattern for the names of channels, operations and components: it checks only
# the entries whose names match it and silently skips any other.
NAME = re.compile(r"^[\w\d.\-_]+$")


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
        "sessions.dead-letter": "sessions.dead-letter.Message.Payload",
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


def _named_entries(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every map of named entries the schema checks by name: channels, their messages,
    operations and each kind of component."""
    maps = {"channels": doc["channels"], "operations": doc["operations"]}
    maps |= {f"channels.{name}.messages": c["messages"] for name, c in doc["channels"].items()}
    maps |= {f"components.{kind}": entries for kind, entries in doc["components"].items()}
    return maps


def test_the_document_is_valid_asyncapi_3_with_nothing_left_unchecked() -> None:
    doc = document()
    validator = jsonschema.Draft7Validator(orjson.loads(ASYNCAPI_SCHEMA.read_bytes()))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors
    for where, entries in _named_entries(doc).items():
        unchecked = [name for name in entries if not NAME.match(name)]
        assert not unchecked, f"{where}: the schema would skip {unchecked}"
    # And it does check what is there: a message whose key binding is not a schema is refused.
    broken = copy.deepcopy(doc)
    message = broken["components"]["messages"]["sessions.summaries.Message"]
    message["bindings"]["kafka"]["key"] = 42
    assert list(validator.iter_errors(broken))


def test_every_message_has_its_key_and_the_outbound_ones_their_headers() -> None:
    """CONTRACT 2: every message is keyed by its session id; the worker's summaries and
    notices carry message_id and revision, its dead letters the reason and the source."""
    doc = document()
    headers: dict[str, set[str]] = {}
    for channel in doc["channels"].values():
        for ref in channel["messages"].values():
            message = _resolve(doc, ref["$ref"])
            assert message["bindings"] == {"kafka": {"key": KEY, "bindingVersion": "0.4.0"}}
            if "headers" in message:
                headers[channel["address"]] = set(message["headers"]["required"])
    delivery = {"message_id", "revision"}
    assert headers == {
        "sessions.summaries": delivery,
        "sessions.transcript-ready": delivery,
        "sessions.dead-letter": {
            "x-error-type", "x-error-message", "x-source-topic", "x-source-partition", "x-source-offset",
        },
    }  # fmt: skip
