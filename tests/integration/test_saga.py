"""Sagas end to end over real HTTP and real Postgres: sequential and parallel steps, a refused
step compensating what ran in reverse order, named sagas from the catalogue, the timeline."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.helpers import api_client, balances, barrier_rows, open_accounts, saga_branch, unique
from txn_devstack.stack import Stack

OPENING = 100


@pytest.fixture
async def setup(stack: Stack) -> tuple[httpx.AsyncClient, str, dict[str, str]]:
    return api_client(timeout=30), unique("s"), {}


def urls(stack: Stack) -> dict[str, str]:
    return {p.name: p.url for p in stack.participants}


def dsns(stack: Stack) -> dict[str, str]:
    return {p.name: p.dsn for p in stack.participants if p.dsn}


async def submit(client: httpx.AsyncClient, stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    reply = await client.post(f"{stack.coordinator_url}/v1/transactions?wait=20", json=body)
    assert reply.status_code == 201, reply.text
    gid = reply.json()["gid"]
    full = await client.get(f"{stack.coordinator_url}/v1/transactions/{gid}")
    result: dict[str, Any] = full.json()
    return result


async def test_sequential_saga_commits(stack: Stack) -> None:
    account = unique("seq")
    async with api_client(timeout=30) as client:
        await open_accounts(client, urls(stack), account, OPENING)
        txn = await submit(
            client,
            stack,
            {
                "mode": "saga",
                "branches": [
                    saga_branch("ledger1", account, -30),
                    saga_branch("ledger2", account, 20),
                    saga_branch("ledger3", account, 10),
                ],
            },
        )
    assert txn["status"] == "committed", txn
    assert [b["status"] for b in txn["branches"]] == ["succeeded"] * 3
    assert [b["depends_on"] for b in txn["branches"]] == [[], [0], [1]]
    assert await balances(dsns(stack), account) == {"ledger1": 70, "ledger2": 120, "ledger3": 110}
    steps = [(e["kind"], e["branch"]) for e in txn["events"] if e["branch"] is not None]
    assert steps == [("action:succeeded", 0), ("action:succeeded", 1), ("action:succeeded", 2)]


async def test_refused_step_compensates_what_ran_in_reverse_order(stack: Stack) -> None:
    account = unique("rev")
    async with api_client(timeout=30) as client:
        await open_accounts(client, urls(stack), account, OPENING)
        txn = await submit(
            client,
            stack,
            {
                "mode": "saga",
                "branches": [
                    saga_branch("ledger1", account, 5),
                    saga_branch("ledger2", account, 7),
                    saga_branch("ledger3", account, -500),  # refused: would go negative
                    saga_branch("ledger1", account, 1),  # never attempted
                ],
            },
        )
    assert txn["status"] == "aborted", txn
    assert "ledger3" in txn["reason"] and "negative" in txn["reason"]
    assert [b["status"] for b in txn["branches"]] == [
        "compensated",
        "compensated",
        "compensated",
        "pending",
    ]
    assert await balances(dsns(stack), account) == {n: OPENING for n in urls(stack)}
    compensations = [e["branch"] for e in txn["events"] if e["kind"] == "compensation:done"]
    assert compensations == [2, 1, 0]
    failed = [e for e in txn["events"] if e["kind"] == "action:failed"]
    assert [e["branch"] for e in failed] == [2] and "negative" in failed[0]["detail"]["error"]
    assert not [e for e in txn["events"] if e["kind"] == "compensation:deferred"]
    # Each effect exactly once, by the participants' own records.
    ledger1 = dsns(stack)["ledger1"]
    assert await barrier_rows(ledger1, txn["gid"]) == [
        (0, "action", "done"),
        (0, "compensate", "done"),
    ]
    ledger3 = dsns(stack)["ledger3"]
    assert await barrier_rows(ledger3, txn["gid"]) == [
        (2, "action", "failed"),
        (2, "compensate", "done"),
    ]


async def test_parallel_steps_and_join(stack: Stack) -> None:
    account = unique("dag")
    async with api_client(timeout=30) as client:
        await open_accounts(client, urls(stack), account, OPENING)
        ok = await submit(
            client,
            stack,
            {
                "mode": "saga",
                "branches": [
                    saga_branch("ledger1", account, 1, depends_on=[]),
                    saga_branch("ledger2", account, 2, depends_on=[]),
                    saga_branch("ledger3", account, 3, depends_on=[0, 1]),
                ],
            },
        )
        assert ok["status"] == "committed", ok
        events = [(e["kind"], e["branch"]) for e in ok["events"] if e["branch"] is not None]
        assert events[-1] == ("action:succeeded", 2)  # the join ran after both roots
        failed = await submit(
            client,
            stack,
            {
                "mode": "saga",
                "branches": [
                    saga_branch("ledger1", account, 10, depends_on=[]),
                    saga_branch("ledger2", account, 10, depends_on=[]),
                    saga_branch("ledger3", account, -1000, depends_on=[0, 1]),
                ],
            },
        )
    assert failed["status"] == "aborted"
    done = [e["branch"] for e in failed["events"] if e["kind"] == "compensation:done"]
    assert done[0] == 2 and sorted(done[1:]) == [0, 1]  # the join first, then both roots
    assert await balances(dsns(stack), account) == {"ledger1": 101, "ledger2": 102, "ledger3": 103}


async def test_named_transfer_saga(stack: Stack) -> None:
    account = unique("named")
    async with api_client(timeout=30) as client:
        await open_accounts(client, urls(stack), account, OPENING)
        moved = await submit(
            client,
            stack,
            {
                "saga": "transfer",
                "input": {
                    "from_ledger": "ledger1",
                    "from_account": account,
                    "to_ledger": "ledger2",
                    "to_account": account,
                    "amount": 40,
                },
            },
        )
        assert moved["mode"] == "saga" and moved["status"] == "committed", moved
        assert [(b["participant"], b["action"], b["compensation"]) for b in moved["branches"]] == [
            ("ledger1", "/accounts/adjust", "/accounts/adjust/undo"),
            ("ledger2", "/accounts/adjust", "/accounts/adjust/undo"),
        ]
        too_much = await submit(
            client,
            stack,
            {
                "saga": "transfer",
                "input": {
                    "from_ledger": "ledger1",
                    "from_account": account,
                    "to_ledger": "ledger2",
                    "to_account": account,
                    "amount": 1000,
                },
            },
        )
    assert too_much["status"] == "aborted"
    assert await balances(dsns(stack), account) == {
        "ledger1": 60,
        "ledger2": 140,
        "ledger3": OPENING,
    }
