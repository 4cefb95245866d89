"""Configuration: one frozen settings object, read from the environment once at start-up."""

from __future__ import annotations

import json
from functools import cached_property
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigurationError


class Settings(BaseSettings):
    """Every variable the service reads; README's configuration table mirrors this class."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = "localhost:9092"
    redis_url: str = "redis://localhost:6379/0"
    redis_cluster: bool = False
    consumer_group: str = "sessions-worker"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=1, le=65535)
    idle_timeout_seconds: float = Field(default=600, gt=0)
    rtk_webhook_public_key: SecretStr | None = None
    livepeer_webhook_secret: SecretStr | None = None
    api_keys: SecretStr | None = None
    topic_prefix: str = ""

    # Beyond the contract's fixed names.
    retention_seconds: int = Field(default=7 * 24 * 3600, gt=0)
    kafka_enable_idempotence: bool = False
    kafka_client_id: str = "sessionpulse"
    batch_max_records: int = Field(default=20_000, ge=1)
    batch_timeout_ms: int = Field(default=10, ge=0)
    # Batches fetched while Redis applies an earlier one merge into one, up to this many records.
    batch_merge_max_records: int = Field(default=60_000, ge=1)
    # Short: a broker that holds a fetch for its whole wait (tansu does) adds it to the latency.
    kafka_fetch_max_wait_ms: int = Field(default=50, ge=0)
    kafka_max_partition_fetch_bytes: int = Field(default=8 * 1_048_576, ge=1024)
    kafka_session_timeout_ms: int = Field(default=10_000, ge=1000)
    kafka_heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    sweep_interval_seconds: float = Field(default=5.0, gt=0)
    outbox_interval_seconds: float = Field(default=0.5, gt=0)
    outbox_quiet_seconds: float = Field(default=1.0, ge=0)
    redis_retry_max_seconds: float = Field(default=30.0, gt=0)
    # Offsets are committed (and outbound messages published) only once this many replicas
    # have the writes; 0: once the primary has them. WAIT gives up after the timeout, which
    # stays below the client's 10 s socket timeout.
    redis_wait_replicas: int = Field(default=0, ge=0)
    redis_wait_timeout_ms: int = Field(default=1000, ge=1, le=9000)
    webhook_dedupe_ttl_seconds: int = Field(default=86_400, gt=0)
    metrics_port: int = Field(default=9464, ge=0, le=65535)  # the worker's /metrics; 0: none
    # Static group membership: a stable id per worker (e.g. a StatefulSet pod name) lets it
    # restart within the session timeout without a rebalance. Unset: dynamic membership.
    kafka_group_instance_id: str | None = None
    log_format: str = Field(default="text", pattern="^(text|json)$")
    log_level: str = "INFO"
    # Kafka security, for a secured or managed cluster: TLS, SASL, or both (every Kafka
    # connection of the service uses them). PLAINTEXT: neither.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None  # PEM CA certificates; unset: the system's trust store
    kafka_ssl_certfile: str | None = None  # PEM client certificate (mutual TLS)
    kafka_ssl_keyfile: str | None = None  # its private key, when not in the certificate file
    kafka_ssl_check_hostname: bool = True

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _names_in_upper_case(cls, v: object, info: ValidationInfo) -> object:
        # `ssl`, ` SASL_SSL`: the names Kafka's own clients take, in any case. Blank: the default.
        if not isinstance(v, str):
            return v
        v = v.strip().upper()
        if v:
            return v
        return "PLAINTEXT" if info.field_name == "kafka_security_protocol" else None

    @field_validator(
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        mode="before",
    )
    @classmethod
    def _blank_is_none(cls, v: object) -> object:
        # A variable set to nothing (a template's `KAFKA_SSL_CAFILE=`) means unset.
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _no_wait_on_a_cluster(self) -> Settings:
        if self.redis_wait_replicas and self.redis_cluster:
            raise ValueError(
                "REDIS_WAIT_REPLICAS is not supported with REDIS_CLUSTER (a WAIT per primary is not implemented)"
            )
        return self

    @model_validator(mode="after")
    def _kafka_security_is_whole(self) -> Settings:
        protocol = self.kafka_security_protocol
        sasl = {
            "KAFKA_SASL_MECHANISM": self.kafka_sasl_mechanism,
            "KAFKA_SASL_USERNAME": self.kafka_sasl_username,
            "KAFKA_SASL_PASSWORD": self.kafka_sasl_password,
        }
        if protocol.startswith("SASL_"):
            if missing := [name for name, value in sasl.items() if value is None]:
                raise ValueError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(missing)}")
        elif given := [name for name, value in sasl.items() if value is not None]:
            raise ValueError(
                f"{', '.join(given)} set, but KAFKA_SECURITY_PROTOCOL={protocol} uses no SASL"
                " (SASL_PLAINTEXT or SASL_SSL does)"
            )
        tls = {
            "KAFKA_SSL_CAFILE": self.kafka_ssl_cafile,
            "KAFKA_SSL_CERTFILE": self.kafka_ssl_certfile,
            "KAFKA_SSL_KEYFILE": self.kafka_ssl_keyfile,
            "KAFKA_SSL_CHECK_HOSTNAME": None if self.kafka_ssl_check_hostname else False,  # set: turned off
        }
        if not protocol.endswith("SSL") and (
            given := [name for name, value in tls.items() if value is not None]
        ):
            raise ValueError(
                f"{', '.join(given)} set, but KAFKA_SECURITY_PROTOCOL={protocol} uses no TLS (SSL or SASL_SSL does)"
            )
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            raise ValueError("KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE, the certificate it belongs to")
        return self

    @field_validator("kafka_group_instance_id")
    @classmethod
    def _blank_is_unset(cls, v: str | None) -> str | None:
        # An empty KAFKA_GROUP_INSTANCE_ID= would be static membership with an empty id.
        return v.strip() or None if v is not None else None

    @field_validator("topic_prefix")
    @classmethod
    def _no_spaces(cls, v: str) -> str:
        if any(ch.isspace() for ch in v):
            raise ValueError("TOPIC_PREFIX must not contain white space")
        return v

    @cached_property
    def api_key_scopes(self) -> dict[str, str] | None:
        """API_KEYS as {key: organization id or "*"}; None when unset (an open API)."""
        if self.api_keys is None:
            return None
        try:
            parsed = json.loads(self.api_keys.get_secret_value())
        except ValueError as exc:
            raise ValueError('API_KEYS must be a JSON object {"<key>": "<organization id or *>"}') from exc
        if not isinstance(parsed, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in parsed.items()
        ):
            raise ValueError('API_KEYS must map non-empty key strings to an organization id or "*"')
        return parsed

    @cached_property
    def bootstrap_list(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap_servers.split(",") if s.strip()]

    @property
    def idle_timeout_ms(self) -> int:
        return int(self.idle_timeout_seconds * 1000)

    @property
    def retention_ms(self) -> int:
        return self.retention_seconds * 1000


def describe_invalid(exc: ValidationError | ConfigurationError) -> str:
    """Why settings were refused, one `NAME: reason` per problem, without the values given:
    pydantic's own message repeats them, and they may be secrets (KAFKA_SASL_PASSWORD). A
    ConfigurationError names its setting already."""
    if isinstance(exc, ConfigurationError):
        return str(exc)
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        name = "_".join(str(part) for part in error["loc"]).upper()
        problems.append(f"{name}: {error['msg']}" if name else error["msg"])
    return "; ".join(problems)
