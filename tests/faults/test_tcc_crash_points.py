"""TCC through the coordinator's crash points: the process exits after the tries, after the
decision, mid-confirm and mid-cancel; the stack's restart policy brings it back and recovery
finishes the transaction as 2PC's rules say (presumed abort before the decision, the decision
kept after it). Every ledger's database must then agree: balances moved by exactly the
confirmed deltas, nothing left frozen, no prepared transaction, the log terminal. And a ledger
that confirms and dies before answering gets the confirm again, answered as the first."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import api_client, barrier_rows, fetch, prepared_xacts, unique, wait_terminal
from txn_devstack.stack import Stack

TRY, CONFIRM, CANCEL = "/tcc/adjust", "/tcc/adjust/confirm", "/tcc/adjust/cancel"
OPENING = 100
MOVES = {"ledger1": -30, "ledger2": 20, "ledger3": 10}
# ledger3 cannot freeze 500: its try is refused and every branch is cancelled.
REFUSED = {"ledger1": -30, "ledger2": 20, "ledger3": -500}


def tcc_transfer(gid: str, account: str, moves: dict[str, int]) -> dict[str, Any]:
    return {
        "gid": gid,
        "mode": "tcc",
        "branches": [
            {
                "participant": ledger,
                "try": TRY,
                "confirm": CONFIRM,
                "cancel": CANCEL,
                "payload": {"account": account, "delta": delta},
            }
            for ledger, delta in moves.items()
        ],
    }


async def open_everywhere(client: httpx.AsyncClient, stack: Stack, account: str) -> None:
    for p in stack.participants:
        opened = await client.post(f"{p.url}/accounts", json={"id": account, "balance": OPENING})
        assert opened.status_code == 201, opened.text


async def assert_consistent(
    stack: Stack, account: str, gid: str, moves: dict[str, int], committed: bool
) -> None:
    """Counted from each ledger's database: the balance is the opening plus the delta when
    committed, nothing is frozen, nothing is prepared; confirms only when committed."""
    for p in stack.participants:
        assert p.dsn is not None
        rows = await fetch(p.dsn, "SELECT balance, frozen FROM accounts WHERE id = $1", account)
        want = OPENING + moves[p.name] if committed else OPENING
        assert (rows[0]["balance"], rows[0]["frozen"]) == (want, 0), p.name
        assert await prepared_xacts(p.dsn) == []
        ops = {op: outcome for _, op, outcome in await barrier_rows(p.dsn, gid)}
        if committed:
            assert ops == {"try": "done", "confirm": "done"}, (p.name, ops)
        else:
            assert ops.get("cancel") == "done" and "confirm" not in ops, (p.name, ops)


@pytest.mark.parametrize(
    ("point", "moves", "expected"),
    [
        ("after_prepare", MOVES, "aborted"),  # after the tries, before the decision
        ("after_decision", MOVES, "committed"),
        ("mid_commit", MOVES, "committed"),  # mid-confirm
        ("mid_rollback", REFUSED, "aborted"),  # mid-cancel
    ],
)
async def test_coordinator_exits_at_tcc_crash_point_and_recovers(
    fault_stack: Stack, tmp_path: Path, point: str, moves: dict[str, int], expected: str
) -> None:
    coord = fault_stack.coordinators[0]
    marker = tmp_path / "crashed"
    fault_stack.restart(coord.name, env={"TXN_CRASH_AT": point, "TXN_CRASH_MARKER": str(marker)})
    restarts = coord.restarts
    account, gid = unique("tcc-acct"), unique(f"tcc-crash-{point}")
    try:
        async with api_client(timeout=10) as client:
            await open_everywhere(client, fault_stack, account)
            with contextlib.suppress(httpx.TransportError):
                await client.post(
                    f"{coord.url}/v1/transactions", json=tcc_transfer(gid, account, moves)
                )
            fault_stack.wait_restarted(coord.name, restarts + 1)
            assert marker.exists(), f"the coordinator never reached {point}"
            assert coord.exits[-1] == 70
            txn = await wait_terminal(client, coord.url, gid, timeout_s=60)
        assert txn["status"] == expected, txn
        done = "committed" if expected == "committed" else "rolled_back"
        assert [b["status"] for b in txn["branches"]] == [done] * 3
        kinds = [e["kind"] for e in txn["events"]]
        assert "claimed" in kinds, kinds  # recovery, not the crashed driver, finished it
        await assert_consistent(fault_stack, account, gid, moves, expected == "committed")
    finally:
        fault_stack.restart(coord.name, env={"TXN_CRASH_AT": "", "TXN_CRASH_MARKER": ""})


async def test_a_confirm_lost_with_its_ledger_is_retried_until_it_succeeds(
    fault_stack: Stack, tmp_path: Path
) -> None:
    """ledger2 confirms and exits before answering (a transient failure for the coordinator);
    the restart policy brings it back, the confirm is sent again and answered as the first:
    the transfer commits, the confirm applied once."""
    coord = fault_stack.coordinators[0]
    target = fault_stack.service("ledger2")
    marker = tmp_path / "crashed"
    fault_stack.restart(
        "ledger2",
        env={"TXNP_CRASH_AT": "after_confirm_before_reply", "TXNP_CRASH_MARKER": str(marker)},
    )
    restarts = target.restarts
    account, gid = unique("tcc-acct"), unique("tcc-confirm-lost")
    try:
        async with api_client(timeout=10) as client:
            await open_everywhere(client, fault_stack, account)
            await client.post(
                f"{coord.url}/v1/transactions", json=tcc_transfer(gid, account, MOVES)
            )
            txn = await wait_terminal(client, coord.url, gid, timeout_s=60)
        fault_stack.wait_restarted("ledger2", restarts + 1)
        assert marker.exists() and target.exits[-1] == 70
        assert txn["status"] == "committed", txn
        assert txn["branches"][1]["attempts"] > 2, txn  # its try, then confirm more than once
        await assert_consistent(fault_stack, account, gid, MOVES, True)
    finally:
        fault_stack.restart("ledger2", env={"TXNP_CRASH_AT": "", "TXNP_CRASH_MARKER": ""})
