"""Settings every participant service reads (prefix ``TXNP_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ParticipantSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TXNP_", extra="ignore")

    name: str = Field("participant", description="Service name, used in logs.")
    dsn: str = Field(
        "postgresql://postgres@127.0.0.1:5432/participant",
        description="The service's own Postgres database (business tables and barrier).",
    )
    host: str = "127.0.0.1"
    port: int = 8100
    hmac_secret: str = Field("", description="Shared secret checking Txn-Signature; empty: off.")
    pool_size: int = Field(10, gt=0)
    lock_timeout_ms: int = Field(
        2000, gt=0, description="How long a barrier write waits on a branch another call holds."
    )
    crash_at: str = Field("", description="Crash point name (tests only); empty: none.")
    crash_marker: str = Field("", description="Crash only while this file does not exist.")
