"""Participants resolve their own doubt (DESIGN.md): each ledger's resolver asks a coordinator
about its old prepared transactions and acts only on an answer. Real processes throughout:
coordinators exit at crash points and stay down, or run with their recovery loop off, so the
participants' resolvers are what ends the doubt."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.crash import CRASH_EXIT_CODE
from devstack.stack import Stack, StackConfig
from tests.conftest import TEST_COORDINATOR_ENV
from tests.helpers import (
    LOG_EVENTS,
    TEST_API_TOKEN,
    api_client,
    balances,
    fetch,
    open_accounts,
    prepared_xacts,
    twopc_transfer,
    unique,
)

OPENING = 100
MOVES = {"ledger1": -30, "ledger2": 20, "ledger3": 10}
RESOLVER_ENV = {"TXNP_ORPHAN_SAFETY_S": "1", "TXNP_RESOLVER_INTERVAL_S": "0.3"}


@pytest.fixture(scope="module")
def ha_stack(state_root: Path) -> Iterator[Stack]:
    s = Stack(
        StackConfig(
            api_token=TEST_API_TOKEN,
            state_dir=state_root / "doubt",
            coordinators=2,
            fsync=False,
            coordinator_env=dict(TEST_COORDINATOR_ENV),
            participant_env=dict(RESOLVER_ENV),
        )
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()


NORMAL = {"TXN_CRASH_AT": "", "TXN_CRASH_MARKER": "", "TXN_RECOVERY": "true"}


@pytest.fixture
def coordinators(ha_stack: Stack) -> Iterator[Stack]:
    """Each test arranges the coordinators its way; afterwards both run normally again."""
    try:
        yield ha_stack
    finally:
        for name in ("coord1", "coord2"):
            ha_stack.service(name).restart = True
            ha_stack.restart(name, env=dict(NORMAL))


def dsns(stack: Stack) -> dict[str, str]:
    return {p.name: p.dsn for p in stack.participants if p.dsn}


async def all_prepared(stack: Stack) -> dict[str, list[str]]:
    return {name: await prepared_xacts(dsn) for name, dsn in dsns(stack).items()}


async def wait_for(check: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting: {what}"
        await asyncio.sleep(0.2)


async def log_status(stack: Stack, gid: str) -> str:
    rows = await fetch(stack.log_dsn, "SELECT status FROM transactions WHERE gid = $1", gid)
    return str(rows[0]["status"])


def crash_once(stack: Stack, name: str, point: str, marker: Path) -> None:
    """Arm a crash point and keep the process down once it fires (no restart policy)."""
    stack.service(name).restart = False
    stack.restart(name, env={"TXN_CRASH_AT": point, "TXN_CRASH_MARKER": str(marker)})


async def transfer_until_crash(
    stack: Stack, client: httpx.AsyncClient, via: str, marker: Path
) -> tuple[str, str]:
    account, gid = unique("doubt"), unique("doubt")
    await open_accounts(client, {p.name: p.url for p in stack.participants}, account, OPENING)
    body = twopc_transfer(gid, account, MOVES)
    with contextlib.suppress(httpx.TransportError):
        await client.post(f"{stack.service(via).url}/v1/transactions", json=body)

    async def crashed() -> bool:
        return stack.service(via).exited() == CRASH_EXIT_CODE

    await wait_for(crashed, f"{via} to exit at its crash point")  # exit code 70: the point
    return account, gid


async def test_a_alone_after_decision_participants_block_then_commit(
    coordinators: Stack, tmp_path: Path
) -> None:
    stack = coordinators
    stack.service("coord2").restart = False
    stack.service("coord2").stop()
    crash_once(stack, "coord1", "after_decision", tmp_path / "crashed")
    async with api_client(timeout=5) as client:
        account, gid = await transfer_until_crash(stack, client, "coord1", tmp_path / "crashed")
        # Well past the safety interval, with no coordinator answering: still prepared.
        # Blocking is right here: the decision was commit, a rollback would break atomicity.
        await asyncio.sleep(3.0)
        held = await all_prepared(stack)
        assert all(f"txn:{gid}:{i}" in held[name] for i, name in enumerate(MOVES)), held
        assert await balances(dsns(stack), account) == {n: OPENING for n in MOVES}
        # A coordinator comes back: the participants commit.
        stack.service("coord1").restart = True
        stack.restart("coord1", env=dict(NORMAL))

        async def drained() -> bool:
            return not any(gid in x for xs in (await all_prepared(stack)).values() for x in xs)

        await wait_for(drained, "the prepared transactions to commit")
    assert await balances(dsns(stack), account) == {n: OPENING + d for n, d in MOVES.items()}

    async def committed() -> bool:
        return await log_status(stack, gid) == "committed"

    await wait_for(committed, "the log to say committed")


async def test_b_preparing_orphan_is_aborted_by_the_question(
    coordinators: Stack, tmp_path: Path
) -> None:
    stack = coordinators
    stack.restart("coord2", env={"TXN_RECOVERY": "false"})
    crash_once(stack, "coord1", "after_prepare", tmp_path / "crashed")
    async with api_client(timeout=5) as client:
        account, gid = await transfer_until_crash(stack, client, "coord1", tmp_path / "crashed")
        assert await log_status(stack, gid) == "preparing"

        async def drained() -> bool:
            return not any(gid in x for xs in (await all_prepared(stack)).values() for x in xs)

        await wait_for(drained, "the resolvers' question to end the doubt")
    assert await balances(dsns(stack), account) == {n: OPENING for n in MOVES}
    assert await log_status(stack, gid) in ("aborting", "aborted")
    rows = await fetch(
        stack.log_dsn,
        f"SELECT detail FROM {LOG_EVENTS} WHERE gid = $1 AND kind = 'decided' ORDER BY id",
        gid,
    )
    details = [r["detail"] for r in rows]
    assert len(details) == 1, details  # one decision, and it is coord2's abort
    assert '"owner": "coord2"' in details[0] and '"aborting"' in details[0]


async def test_c_participants_learn_commit_through_the_other_coordinator(
    coordinators: Stack, tmp_path: Path
) -> None:
    stack = coordinators
    stack.restart("coord2", env={"TXN_RECOVERY": "false"})
    crash_once(stack, "coord1", "after_decision", tmp_path / "crashed")
    async with api_client(timeout=5) as client:
        account, gid = await transfer_until_crash(stack, client, "coord1", tmp_path / "crashed")

        async def drained() -> bool:
            return not any(gid in x for xs in (await all_prepared(stack)).values() for x in xs)

        await wait_for(drained, "the resolvers to commit through coord2")
    assert await balances(dsns(stack), account) == {n: OPENING + d for n, d in MOVES.items()}
    # Nobody drove it: coord1 is down and coord2 recovers nothing. The participants did it.
    assert await log_status(stack, gid) == "committing"
    # With its recovery loop back on, coord2 finishes the log (the commits answer "repeat").
    stack.restart("coord2", env={"TXN_RECOVERY": "true"})

    async def committed() -> bool:
        return await log_status(stack, gid) == "committed"

    await wait_for(committed, "the log to say committed")
