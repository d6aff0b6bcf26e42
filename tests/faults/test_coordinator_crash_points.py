"""The coordinator process exits at each named crash point of the 2PC protocol; the stack's
restart policy brings it back, and recovery must finish the transfer: aborted when the crash
came before the commit point, committed after it. Every ledger database must agree, and no
prepared transaction may remain on any cluster."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx
import pytest

from tests.helpers import api_client, fetch, prepared_xacts, twopc_transfer, unique, wait_terminal
from txn_devstack.stack import Stack

MOVES = {"ledger1": -30, "ledger2": 20, "ledger3": 10}
OPENING = 100


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        ("after_log_insert", "aborted"),
        ("after_prepare", "aborted"),
        ("after_decision", "committed"),
        ("mid_commit", "committed"),
        ("before_final", "committed"),
    ],
)
async def test_coordinator_exits_at_crash_point_and_recovers(
    fault_stack: Stack, tmp_path: Path, point: str, expected: str
) -> None:
    coord = fault_stack.coordinators[0]
    marker = tmp_path / "crashed"
    fault_stack.restart(coord.name, env={"TXN_CRASH_AT": point, "TXN_CRASH_MARKER": str(marker)})
    restarts = coord.restarts
    account = unique("acct")
    gid = unique(f"crash-{point}")
    try:
        async with api_client(timeout=10) as client:
            for p in fault_stack.participants:
                opened = await client.post(
                    f"{p.url}/accounts", json={"id": account, "balance": OPENING}
                )
                assert opened.status_code == 201, opened.text
            body = twopc_transfer(gid, account, MOVES)
            # after_log_insert kills the process inside this very request.
            with contextlib.suppress(httpx.TransportError):
                await client.post(f"{coord.url}/v1/transactions", json=body)
            # The process really died at the point (the marker proves where) and came back.
            fault_stack.wait_restarted(coord.name, restarts + 1)
            assert marker.exists(), f"the coordinator never reached {point}"
            assert coord.exits[-1] == 70
            txn = await wait_terminal(client, coord.url, gid)
        assert txn["status"] == expected, txn
        done = "committed" if expected == "committed" else "rolled_back"
        assert [b["status"] for b in txn["branches"]] == [done] * 3
        kinds = [e["kind"] for e in txn["events"]]
        assert "claimed" in kinds, kinds  # recovery, not the crashed driver, finished it
        for p in fault_stack.participants:
            assert p.dsn is not None
            rows = await fetch(p.dsn, "SELECT balance FROM accounts WHERE id = $1", account)
            want = OPENING + MOVES[p.name] if expected == "committed" else OPENING
            assert rows[0]["balance"] == want, (p.name, point)
            assert await prepared_xacts(p.dsn) == []
    finally:
        fault_stack.restart(coord.name, env={"TXN_CRASH_AT": "", "TXN_CRASH_MARKER": ""})


async def test_commit_is_rescheduled_durably_until_the_participant_returns(
    fault_stack: Stack,
) -> None:
    """ledger3 commits and dies before replying, and stays down: the coordinator keeps the
    transaction `committing`, reschedules its commit with growing attempts visible in the log,
    and completes it once ledger3 is back (whose repeated commit answers as the first)."""
    coord = fault_stack.coordinators[0]
    ledger3 = fault_stack.service("ledger3")
    ledger3.restart = False
    fault_stack.restart("ledger3", env={"TXNP_CRASH_AT": "after_commit_before_reply"})
    account = unique("acct")
    gid = unique("resched")
    try:
        async with api_client(timeout=10) as client:
            for p in fault_stack.participants:
                await client.post(f"{p.url}/accounts", json={"id": account, "balance": OPENING})
            body = twopc_transfer(gid, account, MOVES)
            reply = await client.post(f"{coord.url}/v1/transactions?wait=3", json=body)
            assert reply.status_code == 201
            assert reply.json()["status"] == "committing"  # decided, but owed to ledger3
            # Rescheduled bursts keep failing while ledger3 is down; each is logged.
            deadline = asyncio.get_running_loop().time() + 20
            while True:
                txn = (await client.get(f"{coord.url}/v1/transactions/{gid}")).json()
                if sum(e["kind"] == "rescheduled" for e in txn["events"]) >= 2:
                    break
                assert asyncio.get_running_loop().time() < deadline, txn
                await asyncio.sleep(0.2)
            assert txn["status"] == "committing"
            stuck = txn["branches"][2]
            assert stuck["status"] == "prepared"
            assert stuck["attempts"] > 2 and stuck["last_error"]
            assert [b["status"] for b in txn["branches"][:2]] == ["committed", "committed"]
            # ledger3 returns (without the crash point): recovery finishes the commit.
            ledger3.restart = True
            fault_stack.restart("ledger3", env={"TXNP_CRASH_AT": ""})
            txn = await wait_terminal(client, coord.url, gid)
        assert txn["status"] == "committed"
        for p in fault_stack.participants:
            assert p.dsn is not None
            rows = await fetch(p.dsn, "SELECT balance FROM accounts WHERE id = $1", account)
            assert rows[0]["balance"] == OPENING + MOVES[p.name]
            assert await prepared_xacts(p.dsn) == []
    finally:
        ledger3.restart = True
        if ledger3.pid is None or ledger3.env.get("TXNP_CRASH_AT"):
            fault_stack.restart("ledger3", env={"TXNP_CRASH_AT": ""})


async def test_log_database_crash_answers_503_then_recovers(fault_stack: Stack) -> None:
    """The log's Postgres crashes (immediate shutdown): the API says 503 with a retry hint and
    readiness fails; once it is back, the same submission goes through."""
    coord = fault_stack.coordinators[0]
    log_cluster = fault_stack.clusters["log"]
    account = unique("acct")
    body = {
        "gid": unique("logdown"),
        "mode": "2pc",
        "branches": [
            {
                "participant": "ledger1",
                "action": "/accounts/adjust",
                "payload": {"account": account, "delta": 1},
            }
        ],
    }
    async with api_client(timeout=10) as client:
        await client.post(
            f"{fault_stack.service('ledger1').url}/accounts", json={"id": account, "balance": 0}
        )
        log_cluster.crash()
        try:
            refused = await client.post(f"{coord.url}/v1/transactions", json=body)
            assert refused.status_code == 503
            assert "log is unavailable" in refused.json()["detail"]
            assert (await client.get(f"{coord.url}/readyz")).status_code == 503
        finally:
            log_cluster.start()
        deadline = asyncio.get_running_loop().time() + 20
        while (await client.get(f"{coord.url}/readyz")).status_code != 200:
            assert asyncio.get_running_loop().time() < deadline, "log never came back"
            await asyncio.sleep(0.2)
        accepted = await client.post(f"{coord.url}/v1/transactions?wait=10", json=body)
        assert accepted.status_code in (200, 201), accepted.text
        assert accepted.json()["status"] == "committed"


@pytest.mark.parametrize(
    ("ledger", "point"),
    [("ledger2", "after_prepare_before_reply"), ("ledger3", "after_commit_before_reply")],
)
async def test_participant_exits_before_replying_and_the_transfer_commits_once(
    fault_stack: Stack, tmp_path: Path, ledger: str, point: str
) -> None:
    """The participant did the work (prepared, or committed) and died before answering; the
    restart policy brings it back, the coordinator's retry gets the repeated answer, and the
    transfer commits with every effect applied exactly once."""
    coord = fault_stack.coordinators[0]
    target = fault_stack.service(ledger)
    marker = tmp_path / "crashed"
    # Prepares are retried within one burst: make it outlast a participant's restart, so the
    # outcome is commit (with a short burst it would be a clean abort instead).
    fault_stack.restart(coord.name, env={"TXN_BURST_ATTEMPTS": "12"})
    fault_stack.restart(ledger, env={"TXNP_CRASH_AT": point, "TXNP_CRASH_MARKER": str(marker)})
    restarts = target.restarts
    account, gid = unique("pcrash"), unique(f"pcrash-{point}")
    try:
        async with api_client(timeout=10) as client:
            for p in fault_stack.participants:
                opened = await client.post(
                    f"{p.url}/accounts", json={"id": account, "balance": OPENING}
                )
                assert opened.status_code == 201, opened.text
            body = twopc_transfer(gid, account, MOVES)
            await client.post(f"{coord.url}/v1/transactions", json=body)
            txn = await wait_terminal(client, coord.url, gid, timeout_s=60)
        fault_stack.wait_restarted(ledger, restarts + 1)
        assert target.exits[-1] == 70
        assert txn["status"] == "committed", txn
        for p in fault_stack.participants:
            assert p.dsn is not None
            rows = await fetch(p.dsn, "SELECT balance FROM accounts WHERE id = $1", account)
            assert rows[0]["balance"] == OPENING + MOVES[p.name], p.name
            assert await prepared_xacts(p.dsn) == []
    finally:
        fault_stack.restart(ledger, env={"TXNP_CRASH_AT": "", "TXNP_CRASH_MARKER": ""})
        fault_stack.restart(coord.name, env={"TXN_BURST_ATTEMPTS": "4"})
