"""Manual intervention on the real stack: an operator's abort racing the live driver (exactly
one of them wins, the ledgers agree with the outcome), and the saga the business will not undo:
a credit spent before its compensation leaves the saga compensating for ever, until the
operator resolves the branch by hand and it ends aborted. Outcomes are read from the ledgers'
own databases."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx

from tests.helpers import (
    api_client,
    balances,
    open_accounts,
    participant_dsns,
    participant_urls,
    prepared_xacts,
    saga_branch,
    twopc_transfer,
    unique,
    wait_terminal,
)
from txn_devstack.stack import Stack

OPENING = 100


async def race_one(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], delay_s: float
) -> tuple[int, str]:
    """Submit, and abort ``delay_s`` later; (the abort's status code, the outcome)."""
    gid = body["gid"]

    async def abort() -> int:
        await asyncio.sleep(delay_s)
        for _ in range(50):  # until the submission is logged
            reply = await client.post(f"{url}/v1/transactions/{gid}/abort", json={"note": "race"})
            if reply.status_code != 404:
                return reply.status_code
            await asyncio.sleep(0.002)
        raise AssertionError(f"{gid} was never logged")

    submitted, aborted = await asyncio.gather(
        client.post(f"{url}/v1/transactions", json=body), abort()
    )
    assert submitted.status_code == 201, submitted.text
    outcome = (await wait_terminal(client, url, gid, timeout_s=30))["status"]
    return aborted, outcome


async def test_an_abort_racing_the_driver_and_the_driver_never_both_win(stack: Stack) -> None:
    coord = stack.coordinators[0]
    account = unique("race")
    moves = {"ledger1": -1, "ledger2": 1, "ledger3": 0}
    async with api_client(timeout=30) as client:
        await open_accounts(client, participant_urls(stack), account, OPENING)
        results = []
        for i in range(12):
            body = twopc_transfer(unique(f"race{i}"), account, moves)
            results.append(await race_one(client, coord.url, body, (i % 6) * 0.006))
        for i in range(12):
            body = {
                "gid": unique(f"srace{i}"),
                "mode": "saga",
                "branches": [saga_branch(n, account, d, []) for n, d in moves.items()],
            }
            results.append(await race_one(client, coord.url, body, (i % 6) * 0.006))
    for aborted, outcome in results:
        # The abort won (200) and nothing happened, or the commit won and the abort was told.
        assert (aborted, outcome) in ((200, "aborted"), (409, "committed")), results
    committed = sum(outcome == "committed" for _, outcome in results)
    # Both sides won some: the delays spread the abort over the prepare phase and beyond.
    assert 0 < committed < len(results), results
    expected = {n: OPENING + committed * d for n, d in moves.items()}
    assert await balances(participant_dsns(stack), account) == expected, results
    for dsn in participant_dsns(stack).values():
        assert await prepared_xacts(dsn) == []


async def test_a_spent_credit_compensating_for_ever_is_resolved_by_hand(
    fault_stack: Stack,
) -> None:
    """Step 0 credits 100 on ledger1; step 1 waits on a frozen ledger2 past the deadline, so
    the saga compensates. The 100 was spent meanwhile: ledger1 refuses to undo the credit
    (the balance would go negative), so the saga stays compensating, attempt after attempt,
    until an operator resolves step 0 by hand."""
    coord = fault_stack.coordinators[0]
    ledger2 = fault_stack.service("ledger2")
    account = unique("spent")
    gid = unique("spent")
    async with api_client(timeout=15) as client:
        await open_accounts(client, participant_urls(fault_stack), account, 0)
        ledger2.signal(signal.SIGSTOP)
        try:
            body = {
                "gid": gid,
                "mode": "saga",
                "branches": [
                    saga_branch("ledger1", account, 100, []),
                    saga_branch("ledger2", account, 5, []),
                ],
                "timeout_s": 2,
                "retry": {"max_attempts": 1},
            }
            reply = await client.post(f"{coord.url}/v1/transactions", json=body)
            assert reply.status_code == 201, reply.text
            # The credit is spent by another transaction before the saga gives up.
            spend = {
                "gid": unique("spend"),
                "mode": "saga",
                "branches": [saga_branch("ledger1", account, -100)],
            }
            for _ in range(100):
                got = await client.get(f"{coord.url}/v1/transactions/{gid}")
                if got.json()["branches"][0]["status"] == "succeeded":
                    break
                await asyncio.sleep(0.02)
            spent = await client.post(f"{coord.url}/v1/transactions?wait=10", json=spend)
            assert spent.json()["status"] == "committed", spent.text
            for _ in range(200):  # past its deadline, the saga compensates
                got = await client.get(f"{coord.url}/v1/transactions/{gid}")
                if got.json()["status"] == "compensating":
                    break
                await asyncio.sleep(0.05)
            assert got.json()["status"] == "compensating", got.text
        finally:
            ledger2.signal(signal.SIGCONT)
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            txn = (await client.get(f"{coord.url}/v1/transactions/{gid}")).json()
            kinds = [e["kind"] for e in txn["events"]]
            stuck = txn["branches"][0]
            if (
                txn["status"] == "compensating"
                and kinds.count("rescheduled") >= 2
                and txn["branches"][1]["status"] == "compensated"
            ):
                break
            assert asyncio.get_running_loop().time() < deadline, txn
            await asyncio.sleep(0.2)
        assert stuck["status"] == "compensating" and stuck["last_error"], stuck
        assert await balances(participant_dsns(fault_stack), account) == {
            "ledger1": 0,
            "ledger2": 0,
            "ledger3": 0,
        }
        resolved = None
        for _ in range(200):  # between two attempts, when no driver holds it
            resolved = await client.post(
                f"{coord.url}/v1/transactions/{gid}/branches/0/resolve",
                json={"note": "credit spent; customer refunded by bank transfer (ticket 7)"},
            )
            if resolved.status_code == 200:
                break
            assert resolved.status_code == 409 and "driving" in resolved.json()["detail"]
            await asyncio.sleep(0.05)
        assert resolved is not None and resolved.status_code == 200, resolved.text
        txn = await wait_terminal(client, coord.url, gid, timeout_s=30)
    assert txn["status"] == "aborted", txn
    assert "compensated by hand" in txn["reason"]
    assert txn["branches"][0]["resolved_by"] == "dev-admin"
    event = next(e for e in txn["events"] if e["kind"] == "operator:resolve")
    assert event["branch"] == 0 and event["detail"]["by"] == "dev-admin"
    assert "ticket 7" in event["detail"]["note"]
    # Nothing moved by the resolution itself: the ledgers say what the business did.
    assert await balances(participant_dsns(fault_stack), account) == {
        "ledger1": 0,
        "ledger2": 0,
        "ledger3": 0,
    }
