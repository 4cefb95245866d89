"""Configuration: one frozen settings object, read from the environment once at start-up."""

from __future__ import annotations

import json
from functools import cached_property

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    webhook_dedupe_ttl_seconds: int = Field(default=86_400, gt=0)
    metrics_port: int = Field(default=9464, ge=0, le=65535)  # the worker's /metrics; 0: none
    # Static group membership: a stable id per worker (e.g. a StatefulSet pod name) lets it
    # restart within the session timeout without a rebalance. Unset: dynamic membership.
    kafka_group_instance_id: str | None = None
    log_format: str = Field(default="text", pattern="^(text|json)$")
    log_level: str = "INFO"

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
