"""The worker's AsyncAPI document, generated from its FastStream app (committed as docs/asyncapi.json)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from faststream.specification import AsyncAPI
from pydantic import BaseModel, ValidationError

from . import constants as C
from .config import Settings, describe_invalid
from .livepeer import LivepeerSessionIn, LivepeerWebhookIn
from .runtime import build_runtime
from .webhooks import WebhookIn
from .wire import RtkPeerEventIn, RtkPeerReportIn, RtkSessionIn

DOCUMENT = Path("docs/asyncapi.json")

# The worker reads its six inbound topics with one subscriber whose handler takes the raw
# records (no per-message parsing by FastStream on the hot path), so FastStream cannot say
# what each topic carries: each inbound message gets the model its decoder validates with.
# The outbound ones get theirs from the publishers (`service/messages.py`).
INBOUND: dict[str, type[BaseModel]] = {
    C.RTK_SESSIONS: RtkSessionIn,
    C.RTK_PEER_EVENTS: RtkPeerEventIn,
    C.RTK_PEER_REPORTS: RtkPeerReportIn,
    C.RTK_WEBHOOKS: WebhookIn,
    C.LIVEPEER_SESSIONS: LivepeerSessionIn,
    C.LIVEPEER_WEBHOOKS: LivepeerWebhookIn,
}


_DOCUMENTED: dict[str, Any] = {
    "kafka_bootstrap_servers": "kafka:9092",
    "topic_prefix": "",
    "kafka_security_protocol": "PLAINTEXT",
    "kafka_sasl_mechanism": None,
    "kafka_sasl_username": None,
    "kafka_sasl_password": None,
    "kafka_ssl_cafile": None,
    "kafka_ssl_certfile": None,
    "kafka_ssl_keyfile": None,
    "kafka_ssl_check_hostname": True,
}


def document(settings: Settings | None = None) -> dict[str, Any]:
    """Channels, messages and operations of the worker; builds the app without connecting anything."""
    from .worker import build_app

    # The committed document names the contract's topics (no prefix) and a plain Kafka server,
    # whatever the environment says.
    rt = build_runtime(settings or Settings(_env_file=None, **_DOCUMENTED))
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
    _inbound_payloads(jsonable, {rt.topics.name(topic): model for topic, model in INBOUND.items()})
    _keys_and_headers(jsonable, {rt.topics.name(topic): headers for topic, headers in HEADERS.items()})
    _portable_names(jsonable)
    return jsonable


# What FastStream does not describe: every message's key (CONTRACT 2) and the headers the
# worker sets on what it publishes (section 2; the dead letters' in the README).
KEY = {
    "type": "string",
    "description": "The session id the message belongs to (a Livepeer webhook about a stream rather than"
    " a session: the stream id; a dead letter: the key of the message it holds).",
}


def _string_headers(required: dict[str, str], optional: dict[str, str] | None = None) -> dict[str, Any]:
    fields = required | (optional or {})
    return {
        "type": "object",
        "properties": {name: {"type": "string", "description": text} for name, text in fields.items()},
        "required": list(required),
    }


_DELIVERY = {
    "message_id": "The message's deterministic id, the same on every copy: `<session id>:summary` or"
    " `<session id>:transcript-ready` (also in the value).",
    "revision": "The revision, in decimal (also in the value); consumers keep the highest per message_id.",
}
_CORRELATION = {"correlation_id": "`<message_id>:<revision>`, the same on every copy (FastStream's header)."}
HEADERS: dict[str, dict[str, Any]] = {
    C.SUMMARIES: _string_headers(_DELIVERY, _CORRELATION),
    C.TRANSCRIPT_READY: _string_headers(_DELIVERY, _CORRELATION),
    C.DEAD_LETTER: _string_headers(
        {
            "x-error-type": "Why the message was refused, as a short name (e.g. `invalid_json`).",
            "x-error-message": "What is wrong with it, in words (at most 1,000 characters).",
            "x-source-topic": "The topic it was read from.",
            "x-source-partition": "Its partition there, in decimal.",
            "x-source-offset": "Its offset there, in decimal.",
        },
        {
            "x-value-omitted": "Set when the value did not fit with these headers: the value is empty; read it at the source."
        },
    ),
}


def _channel_messages(doc: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Each channel with each of its messages, as components.messages holds them."""
    messages = doc["components"]["messages"]
    for channel in doc["channels"].values():
        for ref in channel["messages"].values():
            yield channel, messages[ref["$ref"].rsplit("/", 1)[1]]


def _keys_and_headers(doc: dict[str, Any], headers: dict[str, dict[str, Any]]) -> None:
    """Give every message its Kafka key, and the outbound ones their headers (`headers`, by the
    topic's name as deployed)."""
    for channel, message in _channel_messages(doc):
        message["bindings"] = {"kafka": {"key": KEY, "bindingVersion": "0.4.0"}}
        if (wanted := headers.get(channel["address"])) is not None:
            message["headers"] = wanted


NAME = re.compile(r"^[a-zA-Z0-9.\-_]+$")


def _portable_names(doc: dict[str, Any]) -> None:
    """FastStream names channels, operations and components `<group>:<topic>:<kind>`; AsyncAPI
    3.0 allows only letters, digits, `.`, `-` and `_` there, and its JSON Schema silently skips
    an entry named otherwise. The `:` become `.`, in the names and in every `$ref`."""

    def portable(name: str) -> str:
        new = name.replace(":", ".")
        if not NAME.match(new):
            raise ValueError(f"{name!r} is no AsyncAPI 3.0 component name")
        return new

    def rename(mapping: dict[str, Any]) -> dict[str, Any]:
        renamed = {portable(name): value for name, value in mapping.items()}
        if len(renamed) != len(mapping):
            raise ValueError(f"two names become one: {sorted(mapping)}")
        return renamed

    doc["channels"] = rename(doc["channels"])
    for channel in doc["channels"].values():
        channel["messages"] = rename(channel["messages"])
    doc["operations"] = rename(doc["operations"])
    for kind in ("messages", "schemas"):
        doc["components"][kind] = rename(doc["components"][kind])

    def refs(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str) and value.startswith("#/"):
                    node[key] = "#/" + "/".join(portable(part) for part in value[2:].split("/"))
                else:
                    refs(value)
        elif isinstance(node, list):
            for item in node:
                refs(item)

    refs(doc)


def _inbound_payloads(doc: dict[str, Any], models: dict[str, type[BaseModel]]) -> None:
    """Point each inbound channel's message at its topic's model (`models`, by the topic's
    name as deployed, its prefix included), in components.schemas."""
    schemas = doc["components"]["schemas"]
    replaced = set()
    for channel, message in _channel_messages(doc):
        model = models.get(channel["address"])
        if model is None:
            continue
        replaced.add(message["payload"]["$ref"].rsplit("/", 1)[1])
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in [*schema.pop("$defs", {}).items(), (model.__name__, schema)]:
            if schemas.setdefault(name, sub) != sub:
                raise ValueError(f"two schemas named {name!r} in the AsyncAPI document")
        message["payload"] = {"$ref": f"#/components/schemas/{model.__name__}"}
    # The placeholder FastStream wrote for the raw records, unless a channel without a model
    # still points at it.
    text = orjson.dumps(doc).decode()
    for name in replaced:
        if f'"#/components/schemas/{name}"' not in text:
            del schemas[name]


def main(out: str | None) -> int:
    try:
        doc = document()
    except ValidationError as exc:
        print(f"sessionpulse asyncapi: invalid configuration: {describe_invalid(exc)}", file=sys.stderr)
        return 1
    text = orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    if out is None:
        print(text.decode(), end="")
    else:
        Path(out).write_bytes(text)
    return 0
