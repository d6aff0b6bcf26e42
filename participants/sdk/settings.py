"""Settings every participant service reads (prefix ``TXNP_``)."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Annotated, Any, Literal

import orjson
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from participants.sdk.tokens import Token, parse_tokens, tokens_setting

# Docker and Kubernetes secrets: a file per setting (e.g. /run/secrets/txnp_secret).
SECRETS_DIR = "/run/secrets"


class ParticipantSettings(BaseSettings):
    """Everything the SDK reads from its environment (prefix ``TXNP_``)."""

    model_config = SettingsConfigDict(
        env_prefix="TXNP_",
        extra="ignore",
        secrets_dir=SECRETS_DIR if os.path.isdir(SECRETS_DIR) else None,
    )

    name: str = Field(
        "participant",
        description="The participant's name: as in the coordinator's registry (signatures "
        "cover it), and in logs.",
    )
    dsn: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/participant"),
        description="The service's own Postgres database (business tables and barrier; never "
        "printed).",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as readable text or one JSON object per line."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="The lowest level logged."
    )
    tracing: Literal["off", "otlp", "console"] = Field(
        "off",
        description="OpenTelemetry traces (the tracing extra): a span per branch call, "
        "continuing the coordinator's traceparent; otlp exports over HTTP to "
        "OTEL_EXPORTER_OTLP_ENDPOINT, console prints spans.",
    )
    host: str = "127.0.0.1"
    port: int = 8100
    secret: SecretStr = Field(
        SecretStr(""),
        description="This participant's own secret, shared with the coordinator only: branch "
        "calls must be signed with it, and the SDK signs its replies with it. Empty: every "
        "branch call is refused (unless TXNP_INSECURE_UNSIGNED).",
    )
    previous_secret: SecretStr = Field(
        SecretStr(""),
        description="A second secret also accepted on calls, during a rotation (docs/security.md).",
    )
    insecure_unsigned: bool = Field(
        False,
        description="Accept unsigned branch calls when no secret is set (a trusted test network "
        "only; logged loudly at start).",
    )
    replay_window_s: float = Field(
        300.0, gt=0, description="A signed call older or newer than this (seconds) is refused."
    )
    api_tokens: Annotated[list[dict[str, Any]], NoDecode] = Field(
        default_factory=list,
        description="Bearer tokens the service's own business endpoints accept, as hashes "
        '(JSON list of {"name", "sha256", "scopes"}; GET needs read, other methods submit).',
    )
    insecure_no_auth: bool = Field(
        False, description="Business endpoints without a token (a trusted test network only)."
    )
    pool_size: int = Field(
        32,
        gt=0,
        description=(
            "Database connection pool size (up to twice as many with overflow); the SDK keeps "
            "up to half of it checked out between its own calls. Below the number of calls in "
            "flight, connections are opened and closed per call."
        ),
    )
    lock_timeout_ms: int = Field(
        2000,
        gt=0,
        description=(
            "How long a statement on the SDK's connections waits for a row lock before giving "
            "up: a prepare then votes no, other calls answer 503."
        ),
    )
    coordinators: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Coordinator base URLs the doubt resolver asks (JSON list or comma-separated); "
        "empty: no resolver.",
    )
    orphan_safety_s: float = Field(
        30.0, ge=0, description="Age a prepared transaction must reach before the resolver asks."
    )
    resolver_interval_s: float = Field(5.0, gt=0, description="How often the resolver looks.")
    barrier_retention: timedelta = Field(
        timedelta(days=7),
        description="Barrier rows of a transaction whose newest row is older than this are "
        "deleted once a coordinator confirms, in a signed answer, that the transaction ended "
        "at least two replay windows ago (seconds, or ISO 8601 like P7D; at least two replay "
        "windows); 0 keeps them for ever. Needs TXNP_COORDINATORS and TXNP_SECRET.",
    )
    barrier_retention_batch: int = Field(
        500, gt=0, le=1000, description="Most transactions asked about and purged per batch."
    )
    barrier_retention_interval_s: float = Field(
        60.0, gt=0, description="How often barrier retention runs a round."
    )
    one_shot: bool = Field(
        True,
        description="Send a handler's declared one-statement form with the barrier row and "
        "PREPARE TRANSACTION (or COMMIT) as one round trip; off: always run the handler.",
    )
    crash_at: str = Field("", description="Crash point name (tests only); empty: none.")
    crash_marker: str = Field("", description="Crash only while this file does not exist.")
    pause_at: str = Field(
        "",
        description="Pause point name (tests only); empty: none. A call reaching it writes the "
        "file pause_file + '.reached', then waits until pause_file + '.release' exists; once "
        "it does, calls pass the point.",
    )
    pause_file: str = Field("", description="Base path of the pause point's two files.")

    @model_validator(mode="after")
    def _retention_outlives_replays(self) -> ParticipantSettings:
        keep = self.barrier_retention.total_seconds()
        if keep < 0 or 0 < keep < 2 * self.replay_window_s:
            raise ValueError(
                f"barrier_retention ({keep:g} s) must be 0 (keep for ever) or at least two "
                f"replay windows ({2 * self.replay_window_s:g} s)"
            )
        return self

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _tokens_json(cls, value: Any) -> Any:
        return tokens_setting(value)

    def tokens(self) -> dict[str, Token]:
        return parse_tokens(self.api_tokens)

    def secrets(self) -> list[bytes]:
        """The secrets calls are checked against; the first also signs replies."""
        out = [s.get_secret_value().encode() for s in (self.secret, self.previous_secret)]
        return [s for s in out if s]

    @field_validator("coordinators", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return orjson.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
