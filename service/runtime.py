"""The composition root: builds the Redis client, the store, the broker and its publishers."""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import hiredis
import orjson
from faststream.kafka import KafkaBroker
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from pydantic import ValidationError
from redis.asyncio import Connection, Redis
from redis.asyncio.cluster import RedisCluster

from .config import Settings, describe_invalid
from .constants import Topics
from .errors import ConfigurationError
from .store import Store

# Context a log line may carry (`extra=`), kept as fields of the JSON line.
LOG_CONTEXT = ("session_id", "topic", "partition", "offset", "error_type")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the context fields it has."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in LOG_CONTEXT:
            if (value := getattr(record, name, None)) is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


JsonFormatter.converter = time.gmtime  # log times in UTC, as the Z says


def configure_logging(level: str, fmt: str = "text") -> None:
    """`text` for people, `json` (LOG_FORMAT=json) for log pipelines."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # aiokafka reports every retry of an unreachable broker at ERROR; our own lines say it once.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL if level.upper() != "DEBUG" else logging.DEBUG)


class _HiredisPacking:
    """Commands encoded by hiredis in C: redis-py's asyncio connections encode them in Python,
    which costs the worker about ten times more per script call with many arguments."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str | bytes) and b" " not in _as_bytes(args[0]):
            return [hiredis.pack_command(args)]
        # `CONFIG GET`-style names are split by redis-py's own packer.
        packed: list[bytes] = super().pack_command(*args)  # type: ignore[misc]
        return packed

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        # One buffer for the whole pipeline: Python 3.11's transport sends each piece of a
        # list with its own send() call, and a batch of script calls would be hundreds of them.
        return [b"".join(piece for c in commands for piece in self.pack_command(*c))]


class _PackedConnection(_HiredisPacking, Connection):
    pass


def _as_bytes(v: str | bytes) -> bytes:
    return v.encode() if isinstance(v, str) else v


def build_redis(settings: Settings) -> Redis:
    common: dict[str, Any] = {"socket_timeout": 10, "socket_connect_timeout": 5, "health_check_interval": 15}
    if settings.redis_cluster:
        # RedisCluster serves the same commands as Redis but is not a subclass of it.
        return RedisCluster.from_url(settings.redis_url, **common)  # type: ignore[return-value]
    if settings.redis_url.startswith("redis://"):
        return Redis.from_url(settings.redis_url, connection_class=_PackedConnection, **common)
    # rediss:// and unix:// URLs keep redis-py's own connection classes (TLS, a socket path):
    # an explicit connection_class would replace the one from_url picks for them.
    return Redis.from_url(settings.redis_url, **common)


# FastStream's broker and application lines, under the root handler `configure_logging` sets
# up, so that they follow LOG_LEVEL and LOG_FORMAT like the service's own.
FASTSTREAM_LOGGER = "service.faststream"


_SASL = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}


def kafka_security(settings: Settings) -> BaseSecurity | None:
    """TLS and SASL for the service's Kafka connections, from KAFKA_SECURITY_PROTOCOL and the
    settings that go with it (checked whole by Settings); None for PLAINTEXT.

    Raises ConfigurationError, naming the setting, when a certificate or key file cannot be
    loaded.
    """
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = _ssl_context(settings) if protocol.endswith("SSL") else None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context)
    assert settings.kafka_sasl_mechanism and settings.kafka_sasl_username and settings.kafka_sasl_password
    return _SASL[settings.kafka_sasl_mechanism](
        settings.kafka_sasl_username,
        settings.kafka_sasl_password.get_secret_value(),
        ssl_context=context,
        use_ssl=context is not None,
    )


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """The same security as keyword arguments of aiokafka's own clients (rebuild, dev, demo)."""
    return parse_security(kafka_security(settings))


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    """Server certificates verified against KAFKA_SSL_CAFILE (else the system's trust store),
    host names checked unless KAFKA_SSL_CHECK_HOSTNAME is false, and a client certificate for
    mutual TLS when KAFKA_SSL_CERTFILE is set."""
    try:
        context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"KAFKA_SSL_CAFILE {settings.kafka_ssl_cafile!r} cannot be loaded: {exc}"
        ) from exc
    context.check_hostname = settings.kafka_ssl_check_hostname
    if settings.kafka_ssl_certfile is not None:
        try:
            context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"KAFKA_SSL_CERTFILE {settings.kafka_ssl_certfile!r} / KAFKA_SSL_KEYFILE"
                f" {settings.kafka_ssl_keyfile!r} cannot be loaded: {exc}"
            ) from exc
    return context


def build_broker(settings: Settings) -> KafkaBroker:
    return KafkaBroker(
        settings.bootstrap_list,
        security=kafka_security(settings),
        client_id=settings.kafka_client_id,
        acks="all",
        # Real Kafka: on. The embedded tansu broker does not implement InitProducerId.
        enable_idempotence=settings.kafka_enable_idempotence,
        # Webhook bodies may be up to 1 MiB, plus the record's own overhead; the webhook topics
        # are created with a matching max.message.bytes (docker-compose.yml's topics job).
        max_request_size=2 * 1024 * 1024,
        # Batches of up to 512 KiB (below a topic's default max.message.bytes of 1 MiB): the
        # outbox hands over hundreds of summaries at once, and 16 KiB batches would make that
        # a hundred produce requests to one partition, one after the other.
        max_batch_size=512 * 1024,
        graceful_timeout=30.0,
        # The worker's one handler takes the batch's raw records as they are (its decoder
        # returns them), so FastStream's dependency injection has nothing to do: without it,
        # a batch no longer costs a hand-over to a thread pool and back (the KafkaMessage
        # parameter was solved there) nor a pydantic model of the call.
        apply_types=False,
        # Its "Received"/"Processed" pair per batch (a hundred a second at live rates) is
        # written at DEBUG; the worker logs what it did itself.
        logger=logging.getLogger(FASTSTREAM_LOGGER),
        log_level=logging.DEBUG,
    )


@dataclass
class Runtime:
    settings: Settings
    topics: Topics
    redis: Redis
    store: Store
    broker: KafkaBroker
    _connecting: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    async def connect_broker(self) -> None:
        """Connect the broker's producer once, whoever asks first (it returns at once when connected)."""
        async with self._connecting:
            await self.broker.connect()

    async def publish(
        self, body: bytes, *, topic: str, key: bytes | None, headers: dict[str, str], timeout_s: float
    ) -> None:
        """Publish from the API process and wait for the broker's ack, at most `timeout_s`.

        Connects first (a request may come before the readiness task connected the broker).
        Raises TimeoutError past the deadline, or the broker's error.
        """

        async def send() -> None:
            await self.connect_broker()
            await self.broker.publish(body, topic=topic, key=key, headers=headers)

        await asyncio.wait_for(send(), timeout=timeout_s)


def runtime_or_exit(command: str) -> Runtime:
    """build_runtime() for a command's entry point: settings that cannot be used end the
    process with a message naming them (exit code 1), not a traceback."""
    try:
        return build_runtime()
    except (ValidationError, ConfigurationError) as exc:
        raise SystemExit(f"sessionpulse {command}: invalid configuration: {describe_invalid(exc)}") from None


def build_runtime(settings: Settings | None = None) -> Runtime:
    settings = settings or Settings()
    redis = build_redis(settings)
    return Runtime(
        settings=settings,
        topics=Topics(settings.topic_prefix),
        redis=redis,
        store=Store(
            redis,
            retention_ms=settings.retention_ms,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
        ),
        broker=build_broker(settings),
    )
