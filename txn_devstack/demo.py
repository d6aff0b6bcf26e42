"""``txn demo``: boot the embedded stack, run one committed and one aborted transfer across the
three ledgers, and show each database's balances before and after."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from txn_devstack.postgres import describe, find_bindir
from txn_devstack.stack import Stack, StackConfig, auth_headers

ACCOUNTS = {"ledger1": ("alice", 100), "ledger2": ("bob", 50), "ledger3": ("carol", 0)}


def call(stack: Stack, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **auth_headers(stack.api_token)}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def balances(stack: Stack) -> dict[str, dict[str, int]]:
    out = {}
    for p in stack.participants:
        _, rows = call(stack, "GET", f"{p.url}/accounts")
        out[p.name] = {r["id"]: r["balance"] for r in rows}
    return out


def transfer(stack: Stack, moves: dict[str, int]) -> dict[str, Any]:
    branches = [
        {
            "participant": ledger,
            "action": "/accounts/adjust",
            "payload": {"account": ACCOUNTS[ledger][0], "delta": delta},
        }
        for ledger, delta in moves.items()
    ]
    status, txn = call(
        stack,
        "POST",
        f"{stack.coordinator_url}/v1/transactions?wait=30",
        {"mode": "2pc", "branches": branches},
    )
    if status not in (200, 201):
        raise RuntimeError(f"submission refused ({status}): {txn}")
    result: dict[str, Any] = txn
    return result


def show(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> None:
    print(f"  {'database':<10} {'account':<8} {'before':>8} {'after':>8}")
    for ledger, accounts in before.items():
        for account, balance in accounts.items():
            print(f"  {ledger:<10} {account:<8} {balance:>8} {after[ledger][account]:>8}")


def run_demo(state_dir: Path) -> int:
    print("Booting the embedded stack (3 ledgers, each on its own Postgres; 1 coordinator)...")
    started = time.monotonic()
    with Stack(StackConfig(state_dir=state_dir)) as stack:
        print(f"  up in {time.monotonic() - started:.1f}s; coordinator at {stack.coordinator_url}")
        print(f"  {describe(find_bindir())}")
        for p in stack.participants:
            account, balance = ACCOUNTS[p.name]
            call(stack, "POST", f"{p.url}/accounts", {"id": account, "balance": balance})
        failures = 0
        scenarios = [
            (
                "1. Transfer 30: alice (ledger1) -30, bob (ledger2) +20, carol (ledger3) +10",
                {"ledger1": -30, "ledger2": 20, "ledger3": 10},
                "committed",
            ),
            (
                "2. Transfer 500: alice (ledger1) -500 (she has 70), bob +250, carol +250",
                {"ledger1": -500, "ledger2": 250, "ledger3": 250},
                "aborted",
            ),
        ]
        for title, moves, expected in scenarios:
            print()
            print(title)
            before = balances(stack)
            txn = transfer(stack, moves)
            after = balances(stack)
            show(before, after)
            print(
                f"  transaction {txn['gid']}: {txn['status'].upper()}"
                + (f" ({txn['reason']})" if txn.get("reason") else "")
            )
            for b in txn["branches"]:
                print(f"    branch {b['idx']} {b['participant']}: {b['status']}")
            changed = before != after
            ok = txn["status"] == expected and changed == (expected == "committed")
            if not ok:
                failures += 1
                print(
                    f"  UNEXPECTED: wanted {expected} with balances "
                    f"{'changed' if expected == 'committed' else 'unchanged'}"
                )
        print()
        print("Stopping the stack." if not failures else f"{failures} scenario(s) went wrong.")
    return 1 if failures else 0
