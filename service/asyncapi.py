"""The worker's AsyncAPI document, generated from its FastStream app (committed as docs/asyncapi.json)."""

from __future__ import annotations

import sys
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
    return jsonable


def _inbound_payloads(doc: dict[str, Any], models: dict[str, type[BaseModel]]) -> None:
    """Point each inbound channel's message at its topic's model (`models`, by the topic's
    name as deployed, its prefix included), in components.schemas."""
    schemas = doc["components"]["schemas"]
    messages = doc["components"]["messages"]
    replaced = set()
    for channel in doc["channels"].values():
        model = models.get(channel["address"])
        if model is None:
            continue
        for ref in channel["messages"].values():
            message = messages[ref["$ref"].rsplit("/", 1)[1]]
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
