"""What is retriable, said once, and the burst policy every participant call uses."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
)
from tenacity.stop import stop_base

from coordinator.transport import Kind, Reply


def is_retriable(reply: Reply) -> bool:
    """Connection errors, timeouts and any status other than 2xx/409 are transient."""
    return reply.kind is Kind.TRANSIENT


async def call_in_burst(
    call: Callable[[], Awaitable[Reply]],
    attempts: int,
    initial_s: float,
    max_s: float,
    budget_s: float | None = None,
    retriable: Callable[[Reply], bool] = is_retriable,
) -> Reply:
    """Retry ``call`` while its reply is transient: at most ``attempts`` times (and within
    ``budget_s``), capped exponential backoff with jitter. Every endpoint called this way is
    idempotent on the participant's side, so repeating it repeats no side effect."""
    stop: stop_base = stop_after_attempt(attempts)
    if budget_s is not None:
        stop = stop | stop_after_delay(max(budget_s, 0.0))

    def wait(state: RetryCallState) -> float:
        # Capped exponential backoff, jittered into [half, all] of the step: callers retrying
        # the same participant at once spread out instead of arriving together.
        step: float = min(max_s, initial_s * 2.0 ** (state.attempt_number - 1))
        return step * random.uniform(0.5, 1.0)

    retrying = AsyncRetrying(
        stop=stop,
        wait=wait,
        retry=retry_if_result(retriable),
        # Out of attempts: hand back the last (transient) reply instead of raising.
        retry_error_callback=last_reply,
    )

    async def attempt() -> Reply:  # tenacity needs a coroutine function to await the calls
        return await call()

    reply: Reply = await retrying(attempt)
    return reply


def last_reply(state: RetryCallState) -> Reply:
    """Out of attempts: the last reply, instead of tenacity's RetryError."""
    assert state.outcome is not None
    reply: Reply = state.outcome.result()
    return reply
