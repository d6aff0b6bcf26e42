"""Faults on the links, through the dev stack's fault proxies (txn_devstack/faultproxy.py) in front
of every participant service: a black hole during prepare (aborted at the deadline), a black
hole during commit (committed once the link heals), and every operation delivered twice
(effects applied exactly once)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_COORDINATOR_ENV
from tests.helpers import (
    TEST_API_TOKEN,
    api_client,
    balances,
    barrier_rows,
    open_accounts,
    prepared_xacts,
    saga_branch,
    unique,
    wait_terminal,
)
from txn_devstack.stack import Stack, StackConfig

OPENING = 100


@pytest.fixture(scope="module")
def linked(state_root: Path) -> Iterator[Stack]:
    s = Stack(
        StackConfig(
            api_token=TEST_API_TOKEN,
            state_dir=state_root / "links",
            fsync=False,
            fault_proxies=True,
            coordinator_env=dict(TEST_COORDINATOR_ENV),
        )
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def stack(linked: Stack) -> Iterator[Stack]:
    try:
        yield linked
    finally:
        for proxy in linked.proxies.values():
            proxy.heal()


def dsns(stack: Stack) -> dict[str, str]:
    return {p.name: p.dsn for p in stack.participants if p.dsn}


def urls(stack: Stack) -> dict[str, str]:
    return {p.name: p.url for p in stack.participants}  # direct, for setup


def twopc(account: str, deltas: dict[str, int], **extra: Any) -> dict[str, Any]:
    branches = [
        {
            "participant": n,
            "action": "/accounts/adjust",
            "payload": {"account": account, "delta": d},
        }
        for n, d in deltas.items()
    ]
    return {"gid": unique("link"), "mode": "2pc", "branches": branches, **extra}


async def no_prepared(stack: Stack) -> None:
    for dsn in dsns(stack).values():
        assert await prepared_xacts(dsn) == []


async def test_black_hole_during_prepare_aborts_at_the_deadline(stack: Stack) -> None:
    coord = stack.coordinators[0]
    account = unique("bh")
    async with api_client(timeout=30) as client:
        await open_accounts(client, urls(stack), account, OPENING)
        stack.proxies["ledger3"].set(mode="blackhole")
        body = twopc(account, {"ledger1": -1, "ledger2": 1, "ledger3": 1}, timeout_s=2)
        reply = await client.post(f"{coord.url}/v1/transactions?wait=10", json=body)
        txn = reply.json()
        # Decided abort at the deadline; the rollback owed to ledger3 waits for the link.
        assert txn["status"] in ("aborting", "aborted"), txn
        assert "timed out" in txn["reason"]
        stack.proxies["ledger3"].heal()
        txn = await wait_terminal(client, coord.url, body["gid"], timeout_s=60)
    assert txn["status"] == "aborted"
    assert await balances(dsns(stack), account) == dict.fromkeys(urls(stack), OPENING)
    await no_prepared(stack)


async def test_black_hole_during_commit_commits_once_the_link_heals(stack: Stack) -> None:
    coord = stack.coordinators[0]
    account = unique("bhc")
    deltas = {"ledger1": -5, "ledger2": 3, "ledger3": 2}
    async with api_client(timeout=30) as client:
        await open_accounts(client, urls(stack), account, OPENING)
        stack.proxies["ledger3"].set(mode="blackhole", match="/txn/2pc/commit")
        body = twopc(account, deltas)
        reply = await client.post(f"{coord.url}/v1/transactions?wait=3", json=body)
        assert reply.json()["status"] == "committing"  # decided; ledger3's commit is owed
        await asyncio.sleep(2)
        txn = (await client.get(f"{coord.url}/v1/transactions/{body['gid']}")).json()
        assert txn["status"] == "committing"
        # ledger1 and ledger2 have committed; ledger3 still holds its prepared transaction.
        now = await balances(dsns(stack), account)
        assert (now["ledger1"], now["ledger2"], now["ledger3"]) == (95, 103, OPENING)
        assert await prepared_xacts(dsns(stack)["ledger1"]) == []
        assert await prepared_xacts(dsns(stack)["ledger3"]) == [f"txn:{body['gid']}:2"]
        stack.proxies["ledger3"].heal()
        txn = await wait_terminal(client, coord.url, body["gid"], timeout_s=60)
    assert txn["status"] == "committed"
    assert await balances(dsns(stack), account) == {n: OPENING + d for n, d in deltas.items()}
    await no_prepared(stack)


async def test_every_operation_delivered_twice_applies_once(stack: Stack) -> None:
    coord = stack.coordinators[0]
    account = unique("dup")
    for proxy in stack.proxies.values():
        proxy.set(duplicate=True)
    before = sum(p.counts["duplicated"] for p in stack.proxies.values())
    commit = {"ledger1": -4, "ledger2": 3, "ledger3": 1}
    refused = {"ledger1": 2, "ledger2": 2, "ledger3": -1000}
    bodies = [
        twopc(account, commit),
        twopc(account, refused),
        {
            "gid": unique("dupsaga"),
            "mode": "saga",
            "branches": [saga_branch(n, account, d) for n, d in commit.items()],
        },
        {
            "gid": unique("dupsaga"),
            "mode": "saga",
            "branches": [saga_branch(n, account, d) for n, d in refused.items()],
        },
    ]
    async with api_client(timeout=30) as client:
        await open_accounts(client, urls(stack), account, OPENING)
        outcomes = []
        for body in bodies:
            reply = await client.post(f"{coord.url}/v1/transactions?wait=20", json=body)
            outcomes.append(reply.json()["status"])
    assert outcomes == ["committed", "aborted", "committed", "aborted"]
    # Prepares, commits, rollbacks, actions and compensations all went twice...
    assert sum(p.counts["duplicated"] for p in stack.proxies.values()) - before >= 20
    # ...and each effect happened once: two committed transfers, nothing from the aborted ones.
    assert await balances(dsns(stack), account) == {n: OPENING + 2 * d for n, d in commit.items()}
    saga = bodies[3]["gid"]
    assert await barrier_rows(dsns(stack)["ledger1"], saga) == [
        (0, "action", "done"),
        (0, "compensate", "done"),
    ]
    await no_prepared(stack)
