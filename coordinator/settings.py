"""Coordinator settings: one pydantic-settings object, every variable prefixed ``TXN_``."""

from __future__ import annotations

import os
import re
import socket
from datetime import timedelta
from functools import lru_cache
from typing import Annotated, Any, Literal

import orjson
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from participants.sdk.settings import SECRETS_DIR
from participants.sdk.tokens import Token, parse_tokens, tokens_setting
from txn_client.http11 import Origin

# The log connections' application_name prefix (pg_stat_activity; the fault tools find them).
LOG_APPLICATION_NAME = "txn-coordinator"
PARTICIPANT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Settings(BaseSettings):
    """Everything the coordinator reads from its environment (prefix ``TXN_``)."""

    model_config = SettingsConfigDict(
        env_prefix="TXN_",
        extra="ignore",
        secrets_dir=SECRETS_DIR if os.path.isdir(SECRETS_DIR) else None,
    )

    log_dsn: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/txn_log"),
        description="Postgres DSN of the durable transaction log (never printed).",
    )
    participants: dict[str, str] = Field(
        default_factory=dict,
        description='Participant registry as JSON: {"name": "http://host:port"}.',
    )
    instance_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}",
        description="Stable id of this instance; a restart with the same id reclaims its work.",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    participant_secrets: Annotated[dict[str, list[SecretStr]], NoDecode] = Field(
        default_factory=dict,
        description='Each participant\'s secret, as JSON {"name": "secret"} or {"name": '
        '["signing secret", "also accepted"]} during a rotation: calls are signed with it and '
        "its signed answers checked with it.",
    )
    insecure_unsigned: bool = Field(
        False,
        description="Call participants that have no secret unsigned (a trusted test network "
        "only); otherwise the coordinator refuses to start without a secret for each.",
    )
    api_tokens: Annotated[list[dict[str, Any]], NoDecode] = Field(
        default_factory=list,
        description='API bearer tokens as hashes: JSON list of {"name", "sha256", "scopes"} '
        "(scopes submit, read, admin, metrics; `txn token` makes one).",
    )
    insecure_no_auth: bool = Field(
        False, description="Serve the API without tokens (a trusted test network only)."
    )
    open_metrics: bool = Field(
        False, description="Serve /metrics and /readyz without a token (scope metrics)."
    )
    open_docs: bool = Field(
        False, description="Serve /docs and /openapi.json without a token (scope read)."
    )
    max_in_flight: int = Field(
        1000,
        gt=0,
        description="Most transactions this instance drives at once; a submission beyond it is "
        "answered 429 with Retry-After and not logged.",
    )
    production: bool = Field(
        False, description="Refuse to start with any insecure or test-only setting."
    )
    lease_s: float = Field(3.0, gt=0, description="Lease a driver holds on a transaction.")
    renew_interval_s: float = Field(
        1.0, gt=0, description="How often one statement renews every lease this instance holds."
    )
    claim_interval_s: float = Field(1.0, gt=0, description="How often recovery claims due work.")
    claim_batch: int = Field(100, gt=0, description="Most transactions claimed per statement.")
    max_recovering: int = Field(
        500, gt=0, description="Most transactions this instance drives at once from recovery."
    )
    call_timeout_s: float = Field(10.0, gt=0, description="Timeout of one participant call.")
    default_timeout_s: float = Field(30.0, gt=0, description="Default 2PC prepare deadline.")
    retry_initial_s: float = Field(0.05, gt=0, description="First retry backoff within a burst.")
    retry_max_s: float = Field(1.0, gt=0, description="Backoff cap within a burst.")
    burst_attempts: int = Field(4, gt=0, description="Attempts per burst before rescheduling.")
    reschedule_initial_s: float = Field(0.5, gt=0, description="First durable backoff.")
    reschedule_max_s: float = Field(30.0, gt=0, description="Cap of the durable backoff.")
    stuck_attempts: int = Field(
        5, gt=0, description="Reschedules after which a live transaction counts as stuck."
    )
    pool_size: int = Field(
        32, gt=0, description="Log connections for the statements every transaction makes."
    )
    crash_at: str = Field("", description="Crash point name (tests only); empty: none.")
    crash_marker: str = Field(
        "", description="If set, crash only while this file does not exist, then create it."
    )
    recovery: bool = Field(True, description="Run the recovery loop.")
    retention: timedelta = Field(
        timedelta(days=7),
        description="Finished transactions whose last write is older than this are deleted "
        "from the log (seconds, or ISO 8601 like P7D); 0 keeps them for ever.",
    )
    retention_batch: int = Field(
        1000, gt=0, description="Most finished transactions deleted per statement."
    )
    retention_interval_s: float = Field(
        60.0, gt=0, description="How often a coordinator runs a retention round."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as readable text or one JSON object per line."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="The lowest level logged."
    )
    tracing: Literal["off", "otlp", "console"] = Field(
        "off",
        description="OpenTelemetry traces (the tracing extra): otlp exports over HTTP to "
        "OTEL_EXPORTER_OTLP_ENDPOINT, console prints spans; off costs nothing.",
    )
    metrics_interval_s: float = Field(
        5.0,
        gt=0,
        description="How often the log-wide gauges of /metrics are read from the log.",
    )
    console: bool = Field(
        True, description="Serve the operator console at /console (sign-in with an API token)."
    )
    console_secret: SecretStr = Field(
        SecretStr(""),
        description="Key that signs console session cookies; empty: a random one per process "
        "(sessions then do not carry across instances or restarts). Never printed.",
    )
    forwarded_allow_ips: str = Field(
        "",
        description="Addresses of the reverse proxies whose X-Forwarded-Proto and "
        "X-Forwarded-For are trusted (comma-separated); empty: none.",
    )
    console_session_s: float = Field(
        8 * 3600.0, gt=0, description="How long a console sign-in lasts."
    )
    attention_age_s: float = Field(
        60.0,
        gt=0,
        description="The console lists a live transaction older than this as needing attention.",
    )

    @field_validator("participants")
    @classmethod
    def _check_registry(cls, value: dict[str, str]) -> dict[str, str]:
        for name, url in value.items():
            if not PARTICIPANT_NAME.match(name):
                raise ValueError(f"participant name {name!r} must match {PARTICIPANT_NAME.pattern}")
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"participant {name!r}: base URL {url!r} must be http(s)")
            try:
                Origin.of(url)
            except ValueError as e:
                raise ValueError(f"participant {name!r}: {e}") from e
        return {name: url.rstrip("/") for name, url in value.items()}

    @field_validator("retention", mode="before")
    @classmethod
    def _retention_seconds(cls, value: Any) -> Any:
        # An environment variable is text: "604800" means seconds, as "P7D" means 7 days.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
        return value

    @field_validator("participant_secrets", mode="before")
    @classmethod
    def _secrets_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = orjson.loads(value) if value.strip() else {}
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str | SecretStr) else v for k, v in value.items()}
        return value

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _tokens_json(cls, value: Any) -> Any:
        return tokens_setting(value)

    def tokens(self) -> dict[str, Token]:
        return parse_tokens(self.api_tokens)

    def secrets_of(self, participant: str) -> list[bytes]:
        """The participant's secrets: the first signs, any verifies."""
        found = [
            s.get_secret_value().encode() for s in self.participant_secrets.get(participant, [])
        ]
        return [s for s in found if s]

    def unsigned_participants(self) -> list[str]:
        return sorted(name for name in self.participants if not self.secrets_of(name))

    @model_validator(mode="after")
    def _check_production(self) -> Settings:
        if self.renew_interval_s >= self.lease_s:
            raise ValueError(
                f"TXN_RENEW_INTERVAL_S ({self.renew_interval_s}) must be shorter than "
                f"TXN_LEASE_S ({self.lease_s}), or leases lapse between renewals"
            )
        if self.production:
            for name, on in (
                ("TXN_INSECURE_NO_AUTH", self.insecure_no_auth),
                ("TXN_INSECURE_UNSIGNED", self.insecure_unsigned),
                ("TXN_CRASH_AT", bool(self.crash_at)),
            ):
                if on:
                    raise ValueError(f"{name} must not be set when TXN_PRODUCTION is true")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
