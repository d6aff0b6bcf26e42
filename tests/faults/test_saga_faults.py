"""Sagas through crashes: the coordinator exits after a step or in the middle of compensating,
a participant exits after committing an action or a compensation but before replying. A
restarted process finishes every saga, and each step's business effect is applied exactly once,
counted in the participants' own databases (balances and barrier rows), not read from the log."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import (
    api_client,
    balances,
    barrier_rows,
    open_accounts,
    saga_branch,
    unique,
    wait_terminal,
)
from txn_devstack.stack import Stack

OPENING = 100


def urls(stack: Stack) -> dict[str, str]:
    return {p.name: p.url for p in stack.participants}


def dsns(stack: Stack) -> dict[str, str]:
    return {p.name: p.dsn for p in stack.participants if p.dsn}


def three_steps(account: str, last_delta: int) -> list[dict[str, Any]]:
    return [
        saga_branch("ledger1", account, -10),
        saga_branch("ledger2", account, 6),
        saga_branch("ledger3", account, last_delta),
    ]


async def run_saga(
    stack: Stack, client: httpx.AsyncClient, gid: str, branches: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    coord = stack.coordinators[0]
    # Patient enough for a participant's restart (a few seconds), as a real deployment would be.
    retry = {"max_attempts": 20, "initial_s": 0.2, "max_s": 1.0}
    body = {"gid": gid, "mode": "saga", "branches": branches, "retry": retry, **extra}
    # The coordinator may die while answering; the gid is ours, we poll it.
    with contextlib.suppress(httpx.TransportError):
        await client.post(f"{coord.url}/v1/transactions", json=body)
    return await wait_terminal(client, coord.url, gid, timeout_s=60)


@pytest.mark.parametrize(
    ("service", "point", "last_delta", "expected"),
    [
        ("coord1", "after_step", 4, "committed"),
        ("coord1", "mid_compensate", -1000, "aborted"),
        ("ledger2", "after_action_before_reply", 4, "committed"),
        ("ledger1", "after_compensate_before_reply", -1000, "aborted"),
    ],
)
async def test_saga_survives_crash_point_with_effects_applied_exactly_once(
    fault_stack: Stack, tmp_path: Path, service: str, point: str, last_delta: int, expected: str
) -> None:
    prefix = "TXN" if service.startswith("coord") else "TXNP"
    marker = tmp_path / "crashed"
    target = fault_stack.service(service)
    fault_stack.restart(
        service, env={f"{prefix}_CRASH_AT": point, f"{prefix}_CRASH_MARKER": str(marker)}
    )
    restarts = target.restarts
    account = unique("sagacrash")
    gid = unique(f"saga-{point}")
    try:
        async with api_client(timeout=10) as client:
            await open_accounts(client, urls(fault_stack), account, OPENING)
            txn = await run_saga(fault_stack, client, gid, three_steps(account, last_delta))
        assert marker.exists(), f"{service} never reached {point}"
        fault_stack.wait_restarted(service, restarts + 1)
        assert target.exits[-1] == 70
        assert txn["status"] == expected, txn
        got = await balances(dsns(fault_stack), account)
        rows = {name: await barrier_rows(dsn, gid) for name, dsn in dsns(fault_stack).items()}
        if expected == "committed":
            assert got == {"ledger1": 90, "ledger2": 106, "ledger3": 104}
            assert rows == {
                "ledger1": [(0, "action", "done")],
                "ledger2": [(1, "action", "done")],
                "ledger3": [(2, "action", "done")],
            }
        else:
            assert got == {name: OPENING for name in got}
            assert rows == {
                "ledger1": [(0, "action", "done"), (0, "compensate", "done")],
                "ledger2": [(1, "action", "done"), (1, "compensate", "done")],
                "ledger3": [(2, "action", "failed"), (2, "compensate", "done")],
            }
    finally:
        fault_stack.restart(service, env={f"{prefix}_CRASH_AT": "", f"{prefix}_CRASH_MARKER": ""})


async def test_exhausted_action_compensates_and_a_failing_compensation_stays_visible(
    fault_stack: Stack,
) -> None:
    """ledger3 is down: its action exhausts the saga's retry policy, so the saga compensates;
    ledger3's own compensation keeps failing, so the saga stays `compensating` with attempts
    and the last error visible, until ledger3 is back and it ends `aborted`."""
    coord = fault_stack.coordinators[0]
    ledger3 = fault_stack.service("ledger3")
    account = unique("exhaust")
    gid = unique("exhaust")
    async with api_client(timeout=10) as client:
        await open_accounts(client, urls(fault_stack), account, OPENING)
        ledger3.restart = False
        ledger3.stop()
        try:
            body = {
                "gid": gid,
                "mode": "saga",
                "branches": three_steps(account, 4),
                "retry": {"max_attempts": 3, "initial_s": 0.05, "max_s": 0.1},
            }
            reply = await client.post(f"{coord.url}/v1/transactions?wait=5", json=body)
            assert reply.status_code == 201
            deadline = asyncio.get_running_loop().time() + 20
            while True:
                txn = (await client.get(f"{coord.url}/v1/transactions/{gid}")).json()
                kinds = [e["kind"] for e in txn["events"]]
                if txn["status"] == "compensating" and kinds.count("rescheduled") >= 2:
                    break
                assert asyncio.get_running_loop().time() < deadline, txn
                await asyncio.sleep(0.2)
            assert "out of attempts (3)" in txn["reason"]
            stuck = txn["branches"][2]
            assert stuck["status"] == "compensating"
            assert stuck["attempts"] >= 3 + 4 and stuck["last_error"]
            # What could be undone already is: steps 0 and 1 wait for step 2 (reverse order).
            assert [b["status"] for b in txn["branches"][:2]] == ["succeeded", "succeeded"]
        finally:
            ledger3.restart = True
            fault_stack.restart("ledger3")
        txn = await wait_terminal(client, coord.url, gid, timeout_s=60)
    assert txn["status"] == "aborted"
    assert await balances(dsns(fault_stack), account) == {n: OPENING for n in urls(fault_stack)}
    # ledger3 never ran the action; its compensation was a null one, recorded as such.
    assert await barrier_rows(dsns(fault_stack)["ledger3"], gid) == [
        (2, "action", "null_compensated"),
        (2, "compensate", "done"),
    ]


async def test_timeout_compensates_an_unfinished_saga(fault_stack: Stack) -> None:
    """ledger2 is frozen (SIGSTOP) while the saga waits on it: past timeout_s the saga
    compensates; once ledger2 thaws, whatever it did is undone and the saga ends aborted."""
    coord = fault_stack.coordinators[0]
    ledger2 = fault_stack.service("ledger2")
    account = unique("sagatimeout")
    gid = unique("sagatimeout")
    async with api_client(timeout=10) as client:
        await open_accounts(client, urls(fault_stack), account, OPENING)
        ledger2.signal(signal.SIGSTOP)
        try:
            body = {
                "gid": gid,
                "mode": "saga",
                "branches": three_steps(account, 4),
                "timeout_s": 1,
                "retry": {"max_attempts": 1},
            }
            reply = await client.post(f"{coord.url}/v1/transactions?wait=3", json=body)
            assert reply.status_code == 201
            assert reply.json()["status"] == "compensating"
            assert "timed out" in reply.json()["reason"]
        finally:
            ledger2.signal(signal.SIGCONT)
        txn = await wait_terminal(client, coord.url, gid, timeout_s=60)
    assert txn["status"] == "aborted", txn
    assert await balances(dsns(fault_stack), account) == {n: OPENING for n in urls(fault_stack)}
    assert txn["branches"][2]["status"] == "pending"  # never attempted, never compensated


async def test_a_crash_between_a_logged_failure_and_the_decision_compensates_at_once(
    fault_stack: Stack, tmp_path: Path
) -> None:
    """ledger2 refuses step 1 (the debit would go negative); the coordinator logs the failure and
    exits before logging the decision to compensate. Restarted, it takes the saga back and
    compensates within seconds, not at its deadline ten minutes away."""
    coord = fault_stack.coordinators[0]
    marker = tmp_path / "crashed"
    fault_stack.restart(
        coord.name, env={"TXN_CRASH_AT": "after_step_failed", "TXN_CRASH_MARKER": str(marker)}
    )
    restarts = coord.restarts
    account, gid = unique("failcrash"), unique("failcrash")
    branches = [
        saga_branch("ledger1", account, -10),
        saga_branch("ledger2", account, -1000),
        saga_branch("ledger3", account, 4),
    ]
    body = {"gid": gid, "mode": "saga", "branches": branches, "timeout_s": 600}
    try:
        async with api_client(timeout=10) as client:
            await open_accounts(client, urls(fault_stack), account, OPENING)
            with contextlib.suppress(httpx.TransportError):
                await client.post(f"{coord.url}/v1/transactions", json=body)
            fault_stack.wait_restarted(coord.name, restarts + 1)
            assert marker.exists(), "the coordinator never reached after_step_failed"
            assert coord.exits[-1] == 70
            back = time.monotonic()
            # Recovery claims every 0.2 s here: a few intervals, not the 600 s deadline.
            while True:
                txn = (await client.get(f"{coord.url}/v1/transactions/{gid}")).json()
                if txn["status"] != "running":
                    break
                assert time.monotonic() - back < 10, txn
                await asyncio.sleep(0.1)
            txn = await wait_terminal(client, coord.url, gid, timeout_s=30)
    finally:
        fault_stack.restart(coord.name, env={"TXN_CRASH_AT": "", "TXN_CRASH_MARKER": ""})
    assert txn["status"] == "aborted", txn
    assert txn["reason"] == "branch 1 failed before the compensation decision was logged"
    kinds = [e["kind"] for e in txn["events"]]
    assert kinds.index("action:failed") < kinds.index("claimed") < kinds.index("decided"), kinds
    assert await balances(dsns(fault_stack), account) == {n: OPENING for n in urls(fault_stack)}
    rows = {name: await barrier_rows(dsn, gid) for name, dsn in dsns(fault_stack).items()}
    assert rows == {
        "ledger1": [(0, "action", "done"), (0, "compensate", "done")],
        "ledger2": [(1, "action", "failed"), (1, "compensate", "done")],
        # Never sent (it waits on step 1), but the log cannot tell: a null compensation.
        "ledger3": [(2, "action", "null_compensated"), (2, "compensate", "done")],
    }
