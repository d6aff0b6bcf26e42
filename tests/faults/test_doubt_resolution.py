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
from prometheus_client.parser import text_string_to_metric_families

from participants.sdk.crash import CRASH_EXIT_CODE
from tests.conftest import TEST_COORDINATOR_ENV
from tests.helpers import (
    LOG_EVENTS,
    TEST_API_TOKEN,
    api_client,
    balances,
    fetch,
    log_since,
    log_size,
    open_accounts,
    prepared_xacts,
    twopc_transfer,
    unique,
)
from txn_devstack.stack import Stack, StackConfig

OPENING = 100
MOVES = {"ledger1": -30, "ledger2": 20, "ledger3": 10}
RESOLVER_ENV = {"TXNP_ORPHAN_SAFETY_S": "1", "TXNP_RESOLVER_INTERVAL_S": "0.3"}
SAFETY_S = float(RESOLVER_ENV["TXNP_ORPHAN_SAFETY_S"])
RESOLVER_INTERVAL_S = float(RESOLVER_ENV["TXNP_RESOLVER_INTERVAL_S"])
# A resolver asks about a prepared branch at its first look after the branch is SAFETY_S old:
# within SAFETY_S + RESOLVER_INTERVAL_S of the prepare, and again RESOLVER_INTERVAL_S later
# (plus the time its questions take). Waits for that are bounded at five times as much.
RESOLVE_BOUND_S = 5 * (SAFETY_S + 2 * RESOLVER_INTERVAL_S)


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


async def resolver_actions(
    client: httpx.AsyncClient, stack: Stack, action: str
) -> dict[str, float]:
    """Each ledger's txnp_resolver_actions_total{action=...}, from its /metrics."""
    out = {}
    for name in MOVES:
        reply = await client.get(f"{stack.service(name).url}/metrics")
        assert reply.status_code == 200, reply.text
        out[name] = sum(
            sample.value
            for family in text_string_to_metric_families(reply.text)
            for sample in family.samples
            if sample.name == "txnp_resolver_actions_total" and sample.labels["action"] == action
        )
    return out


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
    offsets = {name: log_size(stack.service(name)) for name in MOVES}
    async with api_client(timeout=5) as client:
        committed_before = await resolver_actions(client, stack, "committed")
        account, gid = await transfer_until_crash(stack, client, "coord1", tmp_path / "crashed")
        xids = {name: f"txn:{gid}:{i}" for i, name in enumerate(MOVES)}
        # No coordinator answers: once its branch is past the safety interval, each resolver
        # asks, gets no answer from either coordinator and leaves it prepared. Two looks each.
        nobody = f"no usable answer about {gid} from {stack.service('coord1').url}:"

        async def each_resolver_asked_twice() -> bool:
            return all(
                log_since(stack.service(name), offsets[name]).count(nobody) >= 2 for name in MOVES
            )

        await wait_for(each_resolver_asked_twice, "each resolver to ask twice", RESOLVE_BOUND_S)
        # Blocking is right here: the decision was commit, a rollback would break atomicity.
        held = await all_prepared(stack)
        assert all(xid in held[name] for name, xid in xids.items()), held
        assert await balances(dsns(stack), account) == {n: OPENING for n in MOVES}
        assert await resolver_actions(client, stack, "committed") == committed_before
        # A coordinator comes back, its recovery loop off: it drives nothing, it only answers
        # the resolvers' questions ("committing"), and they commit their own branches.
        stack.service("coord1").restart = True
        stack.restart("coord1", env={**NORMAL, "TXN_RECOVERY": "false"})

        async def drained() -> bool:
            return not any(gid in x for xs in (await all_prepared(stack)).values() for x in xs)

        await wait_for(drained, "the resolvers to commit their branches", RESOLVE_BOUND_S)
        # Each ledger's resolver committed exactly its branch (its metric and its log say so).
        assert await resolver_actions(client, stack, "committed") == {
            n: c + 1 for n, c in committed_before.items()
        }
    for name, xid in xids.items():
        text = log_since(stack.service(name), offsets[name])
        assert f"resolved in-doubt transactions: committed ['{xid}']" in text, (name, text[-2000:])
    assert await balances(dsns(stack), account) == {n: OPENING + d for n, d in MOVES.items()}
    # Nobody drove phase two: coord1 died after the decision, came back without recovery, and
    # coord2 is down. The log still says committing; the commits were the participants'.
    assert await log_status(stack, gid) == "committing"


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
