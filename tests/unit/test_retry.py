"""The burst policy of participant calls: how many attempts, what ends a burst, the budget."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from coordinator.retry import call_in_burst
from coordinator.transport import Kind, Reply

OK = Reply(Kind.OK, 200, "")
REFUSED = Reply(Kind.REFUSED, 409, "no")


def scripted(*replies: Reply) -> tuple[list[int], Callable[[], Awaitable[Reply]]]:
    calls: list[int] = []

    async def call() -> Reply:
        calls.append(len(calls))
        return replies[min(len(calls) - 1, len(replies) - 1)]

    return calls, call


def transient(n: int) -> Reply:
    return Reply(Kind.TRANSIENT, 503, f"down {n}")


async def test_a_first_success_is_one_call() -> None:
    calls, call = scripted(OK)
    assert await call_in_burst(call, attempts=4, initial_s=0.001, max_s=0.002) == OK
    assert calls == [0]


async def test_a_refusal_is_not_retried() -> None:
    calls, call = scripted(REFUSED)
    assert await call_in_burst(call, 4, 0.001, 0.002) == REFUSED
    assert len(calls) == 1


async def test_transient_replies_are_retried_until_one_succeeds() -> None:
    calls, call = scripted(transient(1), transient(2), OK)
    assert await call_in_burst(call, 4, 0.001, 0.002) == OK
    assert len(calls) == 3


async def test_out_of_attempts_gives_back_the_last_reply() -> None:
    calls, call = scripted(transient(1), transient(2), transient(3), transient(4), OK)
    reply = await call_in_burst(call, 3, 0.001, 0.002)
    assert reply == transient(3) and len(calls) == 3


async def test_one_attempt_means_no_retry() -> None:
    calls, call = scripted(transient(1), OK)
    assert await call_in_burst(call, 1, 0.001, 0.002) == transient(1)
    assert len(calls) == 1


async def test_the_budget_bounds_the_burst() -> None:
    calls, call = scripted(transient(1))
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await call_in_burst(call, 100, 0.02, 0.05, budget_s=0.2)
    took = loop.time() - started
    assert reply == transient(1)
    assert 2 <= len(calls) < 20 and took < 0.5, (len(calls), took)
