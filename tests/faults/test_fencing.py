"""Fencing (DESIGN.md rules 5 and 6, "Recovery and high availability") with real processes.

coord1 starts a 2PC transfer whose third prepare hangs (ledger3 is frozen with SIGSTOP), then
coord1 itself is frozen past its lease. coord2 claims the transaction under a higher epoch,
presumes abort and finishes it once ledger3 is thawed. When coord1 wakes up it still believes it
drives the transaction under its old epoch: every write it attempts must be fenced out (zero
rows), it must stop, and nothing it does may change the outcome, the owner or the timeline.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from coordinator.errors import OwnershipLost
from coordinator.pglog import PgLog
from coordinator.records import BranchProgress
from devstack.services import Service
from devstack.stack import Stack, StackConfig
from participants.sdk import wire
from tests.conftest import TEST_COORDINATOR_ENV
from tests.helpers import (
    LOG_BRANCHES,
    LOG_EVENTS,
    TEST_API_TOKEN,
    api_client,
    balances,
    fetch,
    open_accounts,
    prepared_xacts,
    unique,
)

T = TypeVar("T")

LEASE_S = float(TEST_COORDINATOR_ENV["TXN_LEASE_S"])
MOVES = {"ledger1": -30, "ledger2": 20, "ledger3": 10}
OPENING = 100


@pytest.fixture(scope="module")
def fencing_stack(state_root: Path) -> Iterator[Stack]:
    s = Stack(
        StackConfig(
            api_token=TEST_API_TOKEN,
            state_dir=state_root / "fencing",
            coordinators=2,
            ledgers=3,
            fsync=False,
            coordinator_env=dict(TEST_COORDINATOR_ENV),
        )
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()


# -- helpers -----------------------------------------------------------------------------


async def until(
    probe: Callable[[], Awaitable[T | None]], what: str, timeout_s: float, seen: list[Any]
) -> T:
    """Poll ``probe`` every 0.1 s until it returns something other than None, or fail after
    ``timeout_s`` with ``what`` and the last thing seen (``probe`` appends to ``seen``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await probe()
        if value is not None:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"{what} within {timeout_s}s; last seen: {seen[-1:]!r}")
        await asyncio.sleep(0.1)


async def txn_row(log_dsn: str, gid: str) -> dict[str, Any]:
    rows = await fetch(
        log_dsn,
        "SELECT status, reason, owner, epoch, attempts, updated_at FROM transactions"
        " WHERE gid = $1",
        gid,
    )
    assert len(rows) == 1, gid
    return dict(rows[0])


async def branch_rows(log_dsn: str, gid: str) -> list[dict[str, Any]]:
    rows = await fetch(
        log_dsn,
        f"SELECT idx, status, attempts, last_error, updated_at FROM {LOG_BRANCHES}"
        " WHERE gid = $1 ORDER BY idx",
        gid,
    )
    return [dict(r) for r in rows]


async def txn_events(log_dsn: str, gid: str) -> list[dict[str, Any]]:
    rows = await fetch(
        log_dsn,
        f"SELECT id, kind, branch, detail FROM {LOG_EVENTS} WHERE gid = $1 ORDER BY id",
        gid,
    )
    out = []
    for r in rows:
        detail = r["detail"]
        if isinstance(detail, str):
            detail = json.loads(detail)
        out.append({"id": r["id"], "kind": r["kind"], "branch": r["branch"], "detail": detail})
    return out


def log_size(service: Service) -> int:
    try:
        return service.log_file.stat().st_size
    except FileNotFoundError:
        return 0


def log_since(service: Service, offset: int) -> str:
    with open(service.log_file, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


@dataclass
class Takeover:
    gid: str
    account: str
    old_epoch: int  # coord1's epoch when it was frozen
    opening: dict[str, int]
    events_at_abort: list[dict[str, Any]]  # the timeline when coord2 had finished
    row_at_abort: dict[str, Any]
    coord1_log: str  # what coord1 logged after it was thawed
    fenced_line: str  # the line showing coord1 dropped its write / its lease


# -- the scenario --------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def takeover(fencing_stack: Stack) -> AsyncIterator[Takeover]:
    stack = fencing_stack
    coord1 = stack.service("coord1")
    ledger3 = stack.service("ledger3")
    log_dsn = stack.log_dsn
    dsns = {p.name: p.dsn for p in stack.participants if p.dsn is not None}
    assert set(dsns) == set(MOVES)
    gid = unique("fence")
    account = unique("acct")
    seen: list[Any] = []

    async with api_client(timeout=10) as client:
        await open_accounts(client, {p.name: p.url for p in stack.participants}, account, OPENING)
        opening = await balances(dsns, account)
        assert opening == dict.fromkeys(MOVES, OPENING)
        body = {
            "gid": gid,
            "mode": "2pc",
            # Long enough that coord1's own prepare deadline never ends the transaction here.
            "timeout_s": 120,
            "branches": [
                {
                    "participant": name,
                    "action": "/accounts/adjust",
                    "payload": {"account": account, "delta": delta},
                }
                for name, delta in MOVES.items()
            ],
        }
        ledger3.signal(signal.SIGSTOP)
        try:
            reply = await client.post(f"{coord1.url}/v1/transactions", json=body)
            assert reply.status_code == 201, reply.text
            assert reply.json()["status"] == "preparing"
            row = await txn_row(log_dsn, gid)
            assert row["owner"] == "coord1", row
            old_epoch = int(row["epoch"])

            # coord1's driver is stuck on ledger3's prepare: ledger1 and ledger2 voted yes.
            async def prepared_elsewhere() -> bool | None:
                names = [
                    *await prepared_xacts(dsns["ledger1"]),
                    *await prepared_xacts(dsns["ledger2"]),
                ]
                seen.append(names)
                want = {wire.xid(gid, 0), wire.xid(gid, 1)}
                return True if want <= set(names) else None

            await until(prepared_elsewhere, "ledger1 and ledger2 never prepared", 15, seen)
            assert await prepared_xacts(dsns["ledger3"]) == []
            assert (await txn_row(log_dsn, gid))["status"] == "preparing"

            coord1.signal(signal.SIGSTOP)
            try:
                # The deliberate wait: coord1 cannot renew, so its lease runs out.
                await asyncio.sleep(LEASE_S + 1)

                async def claimed_by_coord2() -> int | None:
                    events = await txn_events(log_dsn, gid)
                    seen.append(events)
                    for e in events:
                        d = e["detail"] or {}
                        if e["kind"] == "claimed" and d.get("owner") == "coord2":
                            return int(d["epoch"])
                    return None

                new_epoch = await until(claimed_by_coord2, "coord2 never claimed", 15, seen)
                assert new_epoch > old_epoch

                async def decided_abort() -> bool | None:
                    events = await txn_events(log_dsn, gid)
                    seen.append(events)
                    kinds = [(e["kind"], (e["detail"] or {}).get("status")) for e in events]
                    return True if ("decided", "aborting") in kinds else None

                await until(decided_abort, "coord2 never decided abort", 15, seen)
                # ledger3 comes back: its queued prepare (from coord1) and rollback (from
                # coord2) run, and coord2 can finish.
                ledger3.signal(signal.SIGCONT)

                async def aborted() -> dict[str, Any] | None:
                    row = await txn_row(log_dsn, gid)
                    seen.append(row)
                    return row if row["status"] == "aborted" else None

                row_at_abort = await until(aborted, "coord2 never finished the abort", 30, seen)
                events_at_abort = await txn_events(log_dsn, gid)
                offset = log_size(coord1)
            finally:
                coord1.signal(signal.SIGCONT)
        finally:
            ledger3.signal(signal.SIGCONT)

    # coord1 wakes up still holding epoch old_epoch: its renewal or its next write is fenced.
    stale = f"transaction {gid}: epoch {old_epoch} is no longer current"

    async def coord1_fenced() -> str | None:
        text = log_since(coord1, offset)
        seen.append(text[-2000:])
        for line in text.splitlines():
            if stale in line or "lease lost" in line:
                return line
        return None

    fenced_line = await until(coord1_fenced, "coord1 never logged it was fenced out", 15, seen)
    yield Takeover(
        gid=gid,
        account=account,
        old_epoch=old_epoch,
        opening=opening,
        events_at_abort=events_at_abort,
        row_at_abort=row_at_abort,
        coord1_log=log_since(coord1, offset),
        fenced_line=fenced_line,
    )


# -- what must hold -------------------------------------------------------------------------


async def test_coord1_is_fenced_out_after_coord2_takes_over(
    fencing_stack: Stack, takeover: Takeover
) -> None:
    stack, t = fencing_stack, takeover
    log_dsn = stack.log_dsn
    # Give the thawed coord1 time to try anything else: the outcome must not move.
    loop = asyncio.get_running_loop()
    watch_until = loop.time() + 2.5
    while loop.time() < watch_until:
        row = await txn_row(log_dsn, t.gid)
        assert row["status"] == "aborted", row
        assert row["owner"] == "coord2", row
        await asyncio.sleep(0.2)

    row = await txn_row(log_dsn, t.gid)
    assert row == t.row_at_abort, (row, t.row_at_abort)
    events = await txn_events(log_dsn, t.gid)
    # coord1 added nothing to the timeline once thawed (neither did anyone else).
    assert events == t.events_at_abort, events

    claims = [e for e in events if e["kind"] == "claimed"]
    assert claims, events
    assert all(c["detail"]["owner"] == "coord2" for c in claims), claims
    coord2_epochs = {int(c["detail"]["epoch"]) for c in claims}
    assert min(coord2_epochs) > t.old_epoch, claims
    assert int(row["epoch"]) == max(coord2_epochs), (row, claims)
    first_claim = claims[0]["id"]
    # After coord2's claim, no event carries coord1's epoch.
    for e in events:
        if e["id"] > first_claim and e["detail"] and "epoch" in e["detail"]:
            assert int(e["detail"]["epoch"]) != t.old_epoch, e
    # Every decision and the final status were written by coord2, under a coord2 epoch.
    outcomes = [e for e in events if e["kind"] in ("decided", "finished")]
    assert [(e["kind"], e["detail"]["status"]) for e in outcomes] == [
        ("decided", "aborting"),
        ("finished", "aborted"),
    ], events
    for e in outcomes:
        assert e["id"] > first_claim, e
        assert int(e["detail"]["epoch"]) in coord2_epochs, (e, claims)
    assert [b["status"] for b in await branch_rows(log_dsn, t.gid)] == ["rolled_back"] * 3

    # No prepared transaction anywhere, and no money moved.
    dsns = {p.name: p.dsn for p in stack.participants if p.dsn is not None}
    for name, dsn in dsns.items():
        assert await prepared_xacts(dsn) == [], name
    assert await balances(dsns, t.account) == t.opening

    # What coord1 said when it woke up.
    assert t.fenced_line, t.coord1_log


async def test_a_write_under_the_old_epoch_affects_zero_rows(
    fencing_stack: Stack, takeover: Takeover
) -> None:
    """The log store itself, driven with coord1's stale epoch: each fenced statement matches
    no row, raises OwnershipLost (or renews nothing), and leaves the log exactly as it was."""
    t = takeover
    log_dsn = fencing_stack.log_dsn
    row_before = await txn_row(log_dsn, t.gid)
    branches_before = await branch_rows(log_dsn, t.gid)
    events_before = await txn_events(log_dsn, t.gid)
    assert row_before["epoch"] > t.old_epoch

    store = PgLog.connect(log_dsn, pool_size=2)
    try:
        progress = [BranchProgress("committed", 7, "stale writer")] * 3
        with pytest.raises(OwnershipLost, match="is no longer current"):
            await store.write_status(t.gid, t.old_epoch, "committing", "stale", progress, "decided")
        with pytest.raises(OwnershipLost, match="is no longer current"):
            await store.write_status(t.gid, t.old_epoch, "committed", "stale", progress, "finished")
        with pytest.raises(OwnershipLost, match="is no longer current"):
            await store.reschedule(t.gid, t.old_epoch, progress, 0.1, 1.0)
        with pytest.raises(OwnershipLost, match="is no longer current"):
            await store.write_progress(t.gid, t.old_epoch, 0, progress[0], "stale", {"x": 1})
        assert await store.renew("coord1", {t.gid: t.old_epoch}, LEASE_S) == set()
    finally:
        await store.close()

    assert await txn_row(log_dsn, t.gid) == row_before
    assert await branch_rows(log_dsn, t.gid) == branches_before
    assert await txn_events(log_dsn, t.gid) == events_before
