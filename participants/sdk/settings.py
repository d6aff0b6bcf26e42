"""Settings every participant service reads (prefix ``TXNP_``)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ParticipantSettings(BaseSettings):
    """Everything the SDK reads from its environment (prefix ``TXNP_``)."""

    model_config = SettingsConfigDict(env_prefix="TXNP_", extra="ignore")

    name: str = Field("participant", description="Service name, used in logs.")
    dsn: str = Field(
        "postgresql://postgres@127.0.0.1:5432/participant",
        description="The service's own Postgres database (business tables and barrier).",
    )
    host: str = "127.0.0.1"
    port: int = 8100
    hmac_secret: str = Field("", description="Shared secret checking Txn-Signature; empty: off.")
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
    crash_at: str = Field("", description="Crash point name (tests only); empty: none.")
    crash_marker: str = Field("", description="Crash only while this file does not exist.")
    pause_at: str = Field(
        "",
        description="Pause point name (tests only); empty: none. A call reaching it writes the "
        "file pause_file + '.reached', then waits until pause_file + '.release' exists; once "
        "it does, calls pass the point.",
    )
    pause_file: str = Field("", description="Base path of the pause point's two files.")

    @field_validator("coordinators", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return orjson.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
