"""Coordinator settings: one pydantic-settings object, every variable prefixed ``TXN_``."""

from __future__ import annotations

import re
import socket
from functools import lru_cache

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from coordinator.http11 import Origin

PARTICIPANT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Settings(BaseSettings):
    """Everything the coordinator reads from its environment (prefix ``TXN_``)."""

    model_config = SettingsConfigDict(env_prefix="TXN_", extra="ignore")

    log_dsn: str = Field(
        "postgresql://postgres@127.0.0.1:5432/txn_log",
        description="Postgres DSN of the durable transaction log.",
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
    hmac_secret: str = Field("", description="Shared secret for Txn-Signature; empty: no signing.")
    production: bool = Field(False, description="Refuse to start without an HMAC secret.")
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

    @model_validator(mode="after")
    def _check_production(self) -> Settings:
        if self.renew_interval_s >= self.lease_s:
            raise ValueError(
                f"TXN_RENEW_INTERVAL_S ({self.renew_interval_s}) must be shorter than "
                f"TXN_LEASE_S ({self.lease_s}), or leases lapse between renewals"
            )
        if self.production and not self.hmac_secret:
            raise ValueError("TXN_HMAC_SECRET must be set when TXN_PRODUCTION is true")
        if self.production and self.crash_at:
            raise ValueError("TXN_CRASH_AT must not be set when TXN_PRODUCTION is true")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
