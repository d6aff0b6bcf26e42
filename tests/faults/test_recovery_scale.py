"""Recovery at scale, short form (the full 1,000-transaction run is txn_bench/recovery_at_scale.py):
transactions left in flight by a killed coordinator are all driven to a terminal status by the
restarted one, claimed in batches rather than one row at a time, and the money adds up.

The fault stack is shared: other tests' transactions may still be live in its log (the
restarted coordinator claims those too, and its counters count them) and other tests move
money on its ledgers. So everything here is this run's own: its transactions by the gid
prefixes it was given, its accounts by theirs, read from the log and the ledgers themselves."""

from __future__ import annotations

import json
from collections import Counter
from functools import partial
from typing import Any

import pytest

from tests.helpers import TERMINAL, fetch, participant_dsns, unique
from txn_bench.recovery_at_scale import run
from txn_devstack.stack import Stack, run_sync

N = 60


async def on_ledger(dsn: str, accounts: str, *gids: str) -> tuple[list[Any], list[Any]]:
    """The balances of the accounts starting with ``accounts``, and the transactions left
    prepared there for the gids starting with any of ``gids`` (their branches' xids)."""
    balances = await fetch(
        dsn, "SELECT id, balance FROM accounts WHERE starts_with(id, $1)", accounts
    )
    prepared = await fetch(
        dsn,
        "SELECT gid FROM pg_prepared_xacts "
        "WHERE EXISTS (SELECT FROM unnest(CAST($1 AS text[])) AS p(x) WHERE starts_with(gid, x))",
        [f"txn:{gid}" for gid in gids],
    )
    return balances, prepared


async def in_flight(stack: Stack, tag: str) -> list[str]:
    """The run's transactions still live: status, epoch, and how often they were claimed."""
    rows = await fetch(
        stack.log_dsn,
        "SELECT gid, status, epoch, CAST(timeline AS text) AS timeline FROM transactions "
        "WHERE live AND strpos(gid, $1) > 0 ORDER BY gid",
        f"-{tag}-",
    )
    return [
        f"{r['gid']} {r['status']} at epoch {r['epoch']}, claimed "
        f"{sum(e['kind'] == 'claimed' for e in json.loads(r['timeline']))} times"
        for r in rows
    ]


def test_killed_under_load_then_everything_recovered_in_batches(fault_stack: Stack) -> None:
    coord = fault_stack.coordinators[0]
    tag = unique("rscale")  # the run's gids are base-<tag>-<i> and crash-<tag>-<i>
    fault_stack.restart(coord.name, env={"TXN_CLAIM_BATCH": "20"})
    try:
        result = run(fault_stack, n=N, concurrency=8, timeout_s=120, tag=tag)
    except TimeoutError as e:  # some of ours never ended: say which, and how far they got
        pytest.fail(f"{e}; left in flight: {run_sync(lambda: in_flight(fault_stack, tag))}")
    finally:
        fault_stack.restart(coord.name, env={"TXN_CLAIM_BATCH": "100"})
    base, crash = result["base_prefix"], result["crash_prefix"]
    rows = run_sync(
        lambda: fetch(
            fault_stack.log_dsn,
            "SELECT gid, status, epoch, CAST(branches AS text) AS branches, "
            "CAST(timeline AS text) AS timeline FROM transactions "
            "WHERE starts_with(gid, $1) OR starts_with(gid, $2)",
            base,
            crash,
        )
    )
    ours: dict[str, Any] = {r["gid"]: r for r in rows}
    crashed = {gid: r for gid, r in ours.items() if gid.startswith(crash)}
    assert (len(ours), len(crashed)) == (2 * N, N)
    assert {gid: r["status"] for gid, r in ours.items() if r["status"] not in TERMINAL} == {}

    # Every one left in flight was recovered: claimed by the restarted coordinator, and driven
    # to its end by such a claim (its last epoch is one a claim gave: not a participant's
    # question deciding a presumed abort, nor an operator).
    statements: set[str] = set()  # a claim statement's rows share its now()
    claims = 0
    lost: dict[str, list[Any]] = {}
    for gid, r in sorted(crashed.items()):
        timeline = json.loads(r["timeline"])
        mine = [
            e for e in timeline if e["kind"] == "claimed" and e["detail"]["owner"] == coord.name
        ]
        statements |= {e["at"] for e in mine}
        claims += len(mine)
        if not mine or mine[-1]["detail"]["epoch"] != r["epoch"]:
            lost[gid] = [(e["kind"], e.get("detail")) for e in timeline]
    assert lost == {}, f"{len(lost)} of {N} not recovered by the restarted coordinator"
    assert 3 <= len(statements) <= 10, statements  # batches of 20, not 60 single rows
    # The restarted coordinator's counters began at its start, after the crash: all they count
    # is this run's recovery, ours and whatever other live work the shared log held.
    assert result["recovered"] >= claims, result
    assert result["claim_statements"] >= len(statements), result

    # The money: each of the run's accounts on each ledger holds exactly what the committed
    # transactions of the run moved there (aborted ones moved nothing), and nothing of the run
    # is left prepared on any ledger.
    expected: Counter[tuple[str, str]] = Counter()
    ledgers: set[str] = set()
    committed = 0
    for r in ours.values():
        branches = json.loads(r["branches"])
        ledgers |= {b["participant"] for b in branches}
        if r["status"] == "committed":
            committed += 1
            for b in branches:
                expected[(b["participant"], b["payload"]["account"])] += b["payload"]["delta"]
    assert committed >= N, "the baseline's transactions all commit"
    dsns = participant_dsns(fault_stack)
    balances: dict[tuple[str, str], int] = {}
    for ledger in sorted(ledgers):
        look = partial(on_ledger, dsns[ledger], result["account_prefix"], base, crash)
        accounts, prepared = run_sync(look)
        assert len(accounts) == 8, accounts  # one per client, opened at 0
        balances |= {(ledger, a["id"]): int(a["balance"]) for a in accounts}
        assert [p["gid"] for p in prepared] == [], f"left prepared on {ledger}"
    assert balances == {key: expected[key] for key in balances}
    assert sum(balances.values()) == sum(expected.values()) == len(ledgers) * committed
