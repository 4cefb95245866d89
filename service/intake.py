"""Webhook intake (CONTRACT 5): verifies signed provider deliveries and publishes them to Kafka unchanged."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka.errors import MessageSizeTooLargeError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import SecretStr

from . import constants as C
from . import metrics
from .errors import SessionPulseError
from .runtime import Runtime

log = logging.getLogger("service.intake")

MAX_BODY_BYTES = 1_048_576
LIVEPEER_CLOCK_SKEW_MS = 300_000
# The provider waits on our answer; past this the delivery is refused with 503 and retried by the provider.
PUBLISH_TIMEOUT_S = 10.0
# The dedupe marks are an optimisation, so a slow Redis must not hold up the answer.
REDIS_TIMEOUT_S = 2.0

Headers = Mapping[str, str]
Verify = Callable[[Headers, bytes], None]
# (Kafka key, delivery id) of a parsed body.
Describe = Callable[[Headers, dict[str, Any]], tuple[str | None, str | None]]


class Refused(SessionPulseError):
    """A delivery answered with an error status; the message says exactly what is wrong."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Provider:
    name: str  # the route's last segment and the dedupe key's provider part
    variable: str  # the setting that holds the signing key
    topic: str
    verify: Verify | None  # None while `variable` is unset
    describe: Describe


def install_intake(app: FastAPI, rt: Runtime) -> None:
    """Adds POST /webhooks/realtimekit and /webhooks/livepeer; a bad RTK_WEBHOOK_PUBLIC_KEY fails here."""
    settings = rt.settings
    rtk_key = load_rtk_key(settings.rtk_webhook_public_key)
    secret = _value(settings.livepeer_webhook_secret)
    intake = Intake(
        rt,
        realtimekit=Provider(
            "realtimekit",
            "RTK_WEBHOOK_PUBLIC_KEY",
            rt.topics.rtk_webhooks,
            None if rtk_key is None else _rtk_verifier(rtk_key),
            _describe_rtk,
        ),
        livepeer=Provider(
            "livepeer",
            "LIVEPEER_WEBHOOK_SECRET",
            rt.topics.livepeer_webhooks,
            None if secret is None else _livepeer_verifier(secret.encode()),
            _describe_livepeer,
        ),
    )

    # Not behind API_KEYS: the provider has no API key, its signature is its authentication.
    @app.post("/webhooks/realtimekit", tags=["webhooks"], status_code=202)
    async def realtimekit_webhook(request: Request) -> Response:
        """A RealtimeKit delivery, signed with `rtk-signature` (or the older `dyte-signature`)."""
        return await intake.handle(request, intake.realtimekit)

    @app.post("/webhooks/livepeer", tags=["webhooks"], status_code=202)
    async def livepeer_webhook(request: Request) -> Response:
        """A Livepeer delivery, signed with `Livepeer-Signature: t=<ms>,v1=<hex>`."""
        return await intake.handle(request, intake.livepeer)


class Intake:
    def __init__(self, rt: Runtime, *, realtimekit: Provider, livepeer: Provider) -> None:
        self.rt, self.realtimekit, self.livepeer = rt, realtimekit, livepeer
        self.ttl = rt.settings.webhook_dedupe_ttl_seconds
        self._unset_logged: set[str] = set()

    async def handle(self, request: Request, p: Provider) -> Response:
        try:
            response = await self._handle(request, p)
        except Refused as r:
            log.info("%s webhook refused with %d: %s", p.name, r.status, r.message)
            body = {"success": False, "error": {"code": r.code, "message": r.message}}
            response = _json(body, r.status)
        metrics.WEBHOOKS.labels(p.name, str(response.status_code)).inc()
        return response

    async def _handle(self, request: Request, p: Provider) -> Response:
        if p.verify is None:
            if p.name not in self._unset_logged:
                self._unset_logged.add(p.name)
                log.error("%s is not set: %s webhooks are refused with 503 until it is", p.variable, p.name)
            # 503, not 4xx: the provider retries, so nothing is lost while the operator fixes it.
            raise Refused(503, "not_configured", f"{p.variable} is not set on this service")
        body = await _read_body(request)
        p.verify(request.headers, body)  # over the raw bytes, before anything parses them
        doc = _parse(body)
        event: str = doc["event"]
        key, delivery_id = p.describe(request.headers, doc)
        seen = None if delivery_id is None else f"{C.WEBHOOK_SEEN}:{p.name}:{delivery_id}"
        if seen is not None and await self._seen_before(seen):
            return _accepted("duplicate", event, delivery_id)
        headers = {"x-webhook-event": event}
        if delivery_id is not None:
            headers["x-delivery-id"] = delivery_id
        await self._publish(p, body, key, headers, delivery_id)
        if seen is not None:
            # Marked only after the broker's ack, so a failed publish is never taken for a seen one.
            # Two API processes racing on one delivery may both publish it; the worker deduplicates.
            await self._mark_seen(seen)
        return _accepted("accepted", event, delivery_id)

    async def _publish(
        self, p: Provider, body: bytes, key: str | None, headers: dict[str, str], delivery_id: str | None
    ) -> None:
        try:
            await self.rt.publish(
                body,
                topic=p.topic,
                key=None if key is None else key.encode(),
                headers=headers,
                timeout_s=PUBLISH_TIMEOUT_S,
            )
        except MessageSizeTooLargeError as exc:
            # Permanent, unlike an outage: a 5xx would have the provider retry it forever.
            raise Refused(
                413, "payload_too_large", f"body of {len(body)} bytes is more than the message broker accepts"
            ) from exc
        except Exception as exc:
            reason = (
                f"timed out after {PUBLISH_TIMEOUT_S:g} s" if isinstance(exc, TimeoutError) else repr(exc)
            )
            log.warning("%s webhook %s not published to %s: %s", p.name, delivery_id, p.topic, reason)
            raise Refused(
                503, "broker_unavailable", "the message broker did not acknowledge the delivery; retry later"
            ) from exc

    async def _seen_before(self, key: str) -> bool:
        try:
            return bool(await asyncio.wait_for(self.rt.redis.exists(key), timeout=REDIS_TIMEOUT_S))
        except Exception as exc:
            # Publishing again is harmless downstream; refusing would lose nothing either, but
            # would stall every delivery on a Redis outage.
            log.warning("webhook dedupe check failed, publishing anyway: %r", exc)
            return False

    async def _mark_seen(self, key: str) -> None:
        try:
            await asyncio.wait_for(self.rt.redis.set(key, b"1", ex=self.ttl), timeout=REDIS_TIMEOUT_S)
        except Exception as exc:
            log.warning("webhook published but not marked as seen (a retry publishes it again): %r", exc)


async def _read_body(request: Request) -> bytes:
    """The raw body, refused with 413 as soon as it is known to exceed MAX_BODY_BYTES."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise Refused(
            413, "payload_too_large", f"body is {int(declared)} bytes, the limit is {MAX_BODY_BYTES}"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise Refused(
                413,
                "payload_too_large",
                f"body is more than {MAX_BODY_BYTES} bytes, the limit is {MAX_BODY_BYTES}",
            )
    return bytes(body)


def _parse(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Refused(400, "invalid_json", f"body is not UTF-8 JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise Refused(422, "invalid_body", f"body must be a JSON object, not {type(doc).__name__}")
    if not isinstance(doc.get("event"), str):
        raise Refused(422, "invalid_body", 'body must have a string field "event"')
    return doc


def _accepted(status: str, event: str, delivery_id: str | None) -> Response:
    data = {"status": status, "event": event, "delivery_id": delivery_id}
    return _json({"success": True, "data": data}, 202)


def _json(content: Any, status: int) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


# --- RealtimeKit ---


def load_rtk_key(value: SecretStr | None) -> RSAPublicKey | None:
    """RTK_WEBHOOK_PUBLIC_KEY as PEM text or a PEM file's path; ValueError naming the setting if unusable."""
    text = _value(value)
    if text is None:
        return None
    if "-----BEGIN" in text:
        pem = text.replace("\\n", "\n").encode()  # tolerate a PEM pasted into .env on one line
    else:
        try:
            pem = Path(text).expanduser().read_bytes()
        except OSError as exc:
            raise ValueError(
                f"RTK_WEBHOOK_PUBLIC_KEY is neither PEM text nor a readable PEM file ({exc.strerror})"
            ) from None
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        raise ValueError("RTK_WEBHOOK_PUBLIC_KEY does not hold a PEM public key") from None
    if not isinstance(key, RSAPublicKey):
        raise ValueError("RTK_WEBHOOK_PUBLIC_KEY must be an RSA public key")
    return key


def _rtk_verifier(key: RSAPublicKey) -> Verify:
    def verify(headers: Headers, body: bytes) -> None:
        name = "rtk-signature" if headers.get("rtk-signature") else "dyte-signature"
        value = (headers.get(name) or "").strip()
        if not value:
            raise Refused(401, "invalid_signature", "rtk-signature header is missing")
        try:
            signature = base64.b64decode(value, validate=True)
        except ValueError:
            raise Refused(401, "invalid_signature", f"{name} is not base64") from None
        try:
            key.verify(signature, body, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise Refused(
                401, "invalid_signature", f"{name} does not verify against RTK_WEBHOOK_PUBLIC_KEY"
            ) from None

    return verify


def _describe_rtk(headers: Headers, doc: dict[str, Any]) -> tuple[str | None, str | None]:
    meeting = doc.get("meeting")
    # meeting.chatSynced is flat: its sessionId is top-level.
    session = meeting.get("sessionId") if isinstance(meeting, dict) else None
    if not _nonempty(session):
        session = doc.get("sessionId")
    return (session if _nonempty(session) else None), (headers.get("rtk-uuid", "").strip() or None)


# --- Livepeer ---


def _livepeer_verifier(secret: bytes) -> Verify:
    def verify(headers: Headers, body: bytes) -> None:
        value = headers.get("livepeer-signature")
        if not value:
            raise Refused(401, "invalid_signature", "Livepeer-Signature header is missing")
        sent_ms, signatures = _parse_livepeer_signature(value)
        skew_s = (time.time() * 1000 - sent_ms) / 1000
        if abs(skew_s) * 1000 > LIVEPEER_CLOCK_SKEW_MS:
            when = f"{skew_s:.0f} s in the past" if skew_s > 0 else f"{-skew_s:.0f} s in the future"
            raise Refused(
                401,
                "invalid_signature",
                f"Livepeer-Signature t is {when}; at most 300 s either way is accepted",
            )
        # Livepeer signs the body alone (not t): t only bounds how late a copy may come.
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
        if not any(hmac.compare_digest(expected, s.encode()) for s in signatures):
            raise Refused(
                401,
                "invalid_signature",
                "Livepeer-Signature v1 is not the HMAC-SHA256 of the body with LIVEPEER_WEBHOOK_SECRET",
            )

    return verify


def _parse_livepeer_signature(value: str) -> tuple[int, list[str]]:
    """`t=<ms>,v1=<hex>[,v1=<hex>...]` as (t, [v1...])."""
    fields = [part.strip().partition("=") for part in value.split(",")]
    ts = [v.strip() for k, _, v in fields if k.strip() == "t"]
    signatures = [v.strip().lower() for k, _, v in fields if k.strip() == "v1" and v.strip()]
    # At most 15 digits: epoch ms until the year 33658, and int() of it is cheap and safe.
    if len(ts) != 1 or not (ts[0].isascii() and ts[0].isdigit() and len(ts[0]) <= 15) or not signatures:
        raise Refused(401, "invalid_signature", "Livepeer-Signature must be t=<epoch ms>,v1=<hex HMAC>")
    return int(ts[0]), signatures


def _describe_livepeer(_: Headers, doc: dict[str, Any]) -> tuple[str | None, str | None]:
    # A recording event is about one session of the stream; other events only name the stream.
    key: Any = None
    payload = doc.get("payload")
    if isinstance(payload, dict) and isinstance(payload.get("session"), dict):
        key = payload["session"].get("id")
    if not _nonempty(key) and isinstance(doc.get("stream"), dict):
        key = doc["stream"].get("id")
    delivery_id = doc.get("id")
    return (key if _nonempty(key) else None), (delivery_id if _nonempty(delivery_id) else None)


def _nonempty(v: Any) -> bool:
    return isinstance(v, str) and bool(v)


def _value(secret: SecretStr | None) -> str | None:
    """A secret setting's value; blank counts as unset."""
    text = secret.get_secret_value().strip() if secret is not None else ""
    return text or None
