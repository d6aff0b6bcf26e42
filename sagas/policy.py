"""A saga's retry policy for actions (Temporal's vocabulary): how often and how patiently a
transiently failing action is retried before the saga gives up on it and compensates."""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field

from participants.sdk.strict import Integer


class RetryPolicy(BaseModel):
    # Strict: a number is a JSON number, not a string or a boolean (as the API documents it).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    max_attempts: Integer = Field(
        8, ge=1, le=100, description="Attempts of an action, first included."
    )
    initial_s: float = Field(0.2, gt=0, le=60, description="Wait before the first retry.")
    multiplier: float = Field(2.0, ge=1, le=10, description="Growth of the wait per retry.")
    max_s: float = Field(5.0, gt=0, le=300, description="Cap of the wait between retries.")
    jitter: float = Field(
        0.5, ge=0, le=1, description="Fraction of each wait drawn at random (0: none)."
    )

    def wait_s(self, retry_number: int, rng: random.Random | None = None) -> float:
        """The wait before retry ``retry_number`` (1 = the first retry)."""
        base = min(self.max_s, self.initial_s * self.multiplier ** (retry_number - 1))
        return base * (1 - self.jitter * (rng or random).random())
