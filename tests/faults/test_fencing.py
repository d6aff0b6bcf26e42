"""Fencing (DESIGN.md rules 5 and 6, "Recovery and high availability") with real processes.

coord1 starts a 2PC transfer whose third prepare hangs (ledger3 is frozen with SIGSTOP), then
coord1 itself is frozen past its lease. coord2 claims the transaction under a higher epoch and
presumes abort; its rollback to ledger3 hangs too, so the log says `aborting`. coord1 wakes up
still believing it drives the transaction under its old epoch, and nothing tells it otherwise
first: its lease renewal waits on a row lock the test holds (on a second transaction coord1
drives, whose row that statement locks first). Its prepare times out and it decides abort: a
write under the old epoch that the log must refuse (zero rows; the status alone would allow
it), after which its driver stops. Nothing it does may change the outcome, the owner or the
timeline; coord2 finishes the abort once ledger3 is thawed.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.errors import OwnershipLost
from coordinator.pglog import PgLog
from coordinator.records import BranchProgress
from participants.sdk import wire
from tests.conftest import TEST_COORDINATOR_ENV
from tests.helpers import (
    LOG_BRANCHES,
    LOG_EVENTS,
    TEST_API_TOKEN,
    api_client,
    balances,
    fetch,
    log_since,
    log_size,
    open_accounts,
    prepared_xacts,
    unique,
)
from txn_devstack.stack import Stack, StackConfig

T = TypeVar("T")

LEASE_S = float(TEST_COORDINATOR_ENV["TXN_LEASE_S"])
CALL_TIMEOUT_S = float(TEST_COORDINATOR_ENV["TXN_CALL_TIMEOUT_S"])
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


@dataclass
class Takeover:
    gid: str
    account: str
    old_epoch: int  # coord1's epoch when it lost the transaction
    opening: dict[str, int]
    fenced_line: str  # coord1's driver saying its write was refused ("" if it said nothing)
    fenced_writes: float  # how many writes coord1's drivers had refused meanwhile (metrics)
    log_at_decision: dict[str, Any]  # all the log held when coord2 had decided abort
    log_after_fence: dict[str, Any]  # all it held once coord1's stale write had been refused
    events_at_abort: list[dict[str, Any]]  # the timeline when coord2 had finished
    row_at_abort: dict[str, Any]


async def logged(log_dsn: str, gid: str) -> dict[str, Any]:
    """Everything the log holds about ``gid`` (its row with its branches and its timeline),
    read in one statement."""
    rows = await fetch(
        log_dsn,
        "SELECT status, reason, owner, epoch, attempts, updated_at, branches, timeline"
        " FROM transactions WHERE gid = $1",
        gid,
    )
    assert len(rows) == 1, gid
    return dict(rows[0])


async def fenced_writes(url: str) -> float:
    """The coordinator's txn_fenced_writes_total, from its /metrics."""
    async with api_client(timeout=10) as client:
        reply = await client.get(f"{url}/metrics")
    assert reply.status_code == 200, reply.text
    return sum(
        sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
        if sample.name == "txn_fenced_writes_total"
    )


@asynccontextmanager
async def row_locked(log_dsn: str, gid: str) -> AsyncIterator[None]:
    """Hold ``gid``'s row locked in the log (FOR UPDATE) until the block ends."""
    conn = await asyncpg.connect(log_dsn)
    try:
        async with conn.transaction():
            rows = await conn.fetch("SELECT gid FROM transactions WHERE gid = $1 FOR UPDATE", gid)
            assert len(rows) == 1, gid
            yield
    finally:
        await conn.close()


# -- the scenario --------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def takeover(fencing_stack: Stack) -> AsyncIterator[Takeover]:
    stack = fencing_stack
    coord1 = stack.service("coord1")
    ledger3 = stack.service("ledger3")
    log_dsn = stack.log_dsn
    dsns = {p.name: p.dsn for p in stack.participants if p.dsn is not None}
    assert set(dsns) == set(MOVES)
    # Two transactions on coord1: coord1 renews their leases in one statement that locks the
    # rows in gid order, so while `other`'s row is locked that statement waits, before it has
    # locked (or learnt anything about) `gid`'s.
    other = unique("fence-a")
    gid = unique("fence-b")
    assert other < gid
    account = unique("acct")
    other_account = unique("acct")  # its own rows: its prepared branches must not block ours
    seen: list[Any] = []

    def transfer(txn: str, account: str) -> dict[str, Any]:
        return {
            "gid": txn,
            "mode": "2pc",
            # Long enough that no prepare deadline ends the transaction here.
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

    async with api_client(timeout=10) as client:
        urls = {p.name: p.url for p in stack.participants}
        await open_accounts(client, urls, account, OPENING)
        await open_accounts(client, urls, other_account, OPENING)
        opening = await balances(dsns, account)
        assert opening == dict.fromkeys(MOVES, OPENING)
        fenced_before = await fenced_writes(coord1.url)
        ledger3.signal(signal.SIGSTOP)
        try:
            for txn, acct in ((other, other_account), (gid, account)):
                reply = await client.post(f"{coord1.url}/v1/transactions", json=transfer(txn, acct))
                assert reply.status_code == 201, reply.text
                assert reply.json()["status"] == "preparing"
            row = await txn_row(log_dsn, gid)
            assert row["owner"] == "coord1", row
            old_epoch = int(row["epoch"])

            # coord1's drivers are stuck on ledger3's prepares: ledger1 and ledger2 voted yes.
            async def prepared_elsewhere() -> bool | None:
                names = [
                    *await prepared_xacts(dsns["ledger1"]),
                    *await prepared_xacts(dsns["ledger2"]),
                ]
                seen.append(names)
                want = {wire.xid(t, i) for t in (other, gid) for i in (0, 1)}
                return True if want <= set(names) else None

            await until(prepared_elsewhere, "ledger1 and ledger2 never prepared", 15, seen)
            assert await prepared_xacts(dsns["ledger3"]) == []

            async with row_locked(log_dsn, other):
                # coord1 is frozen past its lease (so that coord2, not coord1's own recovery,
                # takes the transaction over); its next lease renewal waits on `other`'s row.
                coord1.signal(signal.SIGSTOP)
                try:

                    async def claimed_by_coord2() -> int | None:
                        events = await txn_events(log_dsn, gid)
                        seen.append(events)
                        for e in events:
                            d = e["detail"] or {}
                            if e["kind"] == "claimed" and d.get("owner") == "coord2":
                                return int(d["epoch"])
                        return None

                    new_epoch = await until(
                        claimed_by_coord2, "coord2 never claimed", LEASE_S + 10, seen
                    )
                    assert new_epoch > old_epoch

                    async def decided_abort() -> dict[str, Any] | None:
                        state = await logged(log_dsn, gid)
                        seen.append(state)
                        return state if state["status"] == "aborting" else None

                    at_decision = await until(decided_abort, "coord2 never decided abort", 15, seen)
                    offset = log_size(coord1)
                finally:
                    coord1.signal(signal.SIGCONT)
                # coord1 is awake and still believes it drives `gid` under old_epoch; its lease
                # renewal, stuck behind the lock, cannot tell it otherwise. Its prepare to the
                # frozen ledger3 times out (TXN_CALL_TIMEOUT_S), no retry is sent (its lease ran
                # out by its own clock), so it decides abort: a write under old_epoch, to a row
                # whose status (aborting, coord2's decision) would let that decision through. Only
                # the epoch refuses it.
                stale = f"stopping: transaction {gid}: epoch {old_epoch} is no longer current"

                async def coord1_wrote() -> tuple[str, dict[str, Any]] | None:
                    # Its driver says the log refused its write, or the log shows the write.
                    text = log_since(coord1, offset)
                    line = next((x for x in text.splitlines() if stale in x), None)
                    state = await logged(log_dsn, gid)
                    seen.append((text[-2000:], state))
                    return (line or "", state) if line or state != at_decision else None

                fenced_line, after_fence = await until(
                    coord1_wrote, "coord1's driver never wrote", CALL_TIMEOUT_S + 10, seen
                )
                fenced_writes_meanwhile = await fenced_writes(coord1.url) - fenced_before
            # ledger3 comes back: coord2's rollback is answered and it finishes the abort
            # (`other`, unlocked, is aborted by whichever coordinator gets to it).
            ledger3.signal(signal.SIGCONT)

            async def aborted(txn: str) -> dict[str, Any] | None:
                row = await txn_row(log_dsn, txn)
                seen.append(row)
                return row if row["status"] == "aborted" else None

            row_at_abort = await until(
                lambda: aborted(gid), "coord2 never finished the abort", 30, seen
            )
            events_at_abort = await txn_events(log_dsn, gid)
            await until(lambda: aborted(other), "the other transaction never aborted", 30, seen)
        finally:
            coord1.signal(signal.SIGCONT)
            ledger3.signal(signal.SIGCONT)

    yield Takeover(
        gid=gid,
        account=account,
        old_epoch=old_epoch,
        opening=opening,
        fenced_line=fenced_line,
        fenced_writes=fenced_writes_meanwhile,
        log_at_decision=at_decision,
        log_after_fence=after_fence,
        events_at_abort=events_at_abort,
        row_at_abort=row_at_abort,
    )


# -- what must hold -------------------------------------------------------------------------


async def test_coord1_is_fenced_out_after_coord2_takes_over(
    fencing_stack: Stack, takeover: Takeover
) -> None:
    stack, t = fencing_stack, takeover
    log_dsn = stack.log_dsn
    # coord1's stale decision reached the log and changed nothing there: not the status, the
    # reason, the branches, the owner, the epoch, nor the timeline.
    assert t.log_after_fence == t.log_at_decision, (t.log_after_fence, t.log_at_decision)
    # It was really attempted, and refused by the log (zero rows: OwnershipLost), as the
    # decision it was; coord1's driver stopped there, counting exactly that one fenced write.
    assert re.search(r"may not move to .*'aborting'", t.fenced_line), t.fenced_line
    assert t.fenced_writes == 1, t.fenced_writes

    row = await txn_row(log_dsn, t.gid)
    assert row == t.row_at_abort, (row, t.row_at_abort)
    assert row["status"] == "aborted" and row["owner"] == "coord2", row
    events = await txn_events(log_dsn, t.gid)
    # coord1 added nothing to the timeline (neither did anyone else once coord2 had finished).
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
