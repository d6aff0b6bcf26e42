"""One contract for every LogStore: the same tests run against the in-memory fake and against
Postgres, so the fake cannot drift from the real log.

Time: on "mem" the fake clock is advanced; on "pg" leases and delays are short and the tests poll
the log's own clock (``now()``, read through a no-op insert) with a deadline until it has passed
the moment that matters, then check the store once.
"""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta

import pytest

from coordinator.cursor import encode_cursor
from coordinator.errors import OwnershipLost
from coordinator.logstore import LogStore
from coordinator.memlog import MemLog
from coordinator.pglog import PgLog
from coordinator.records import (
    BranchProgress,
    BranchSpec,
    Claim,
    Inserted,
    ListFilter,
    NewTxn,
    TxnRecord,
)

SHORT = 0.2  # a lease or delay that expires within a test
LONG = 60.0  # one that does not


def new_txn(
    gid: str, mode: str = "saga", n: int = 2, salt: str = "", timeout: float = 30.0
) -> NewTxn:
    branches = tuple(
        BranchSpec(f"svc{i}", f"do{i}", None if mode == "2pc" else f"undo{i}", {"i": i, "k": [i]})
        for i in range(n)
    )
    return NewTxn(gid, mode, {"gid": gid, "salt": salt}, f"hash:{gid}:{salt}", branches, timeout)


async def tick(store: LogStore) -> None:
    """Make the next write's ``now()`` strictly later (Postgres statements already differ)."""
    if isinstance(store, MemLog):
        store.advance(0.001)


async def wait_past(store: LogStore, at: datetime, gid: str) -> None:
    """Wait until the log's clock is past ``at``. On Postgres the clock is read by inserting a
    conflicting request for the existing ``gid``, which changes nothing and returns ``now()``."""
    if isinstance(store, MemLog):
        if store.now() <= at:
            store.advance((at - store.now()).total_seconds() + 0.001)
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while True:
        outcome, probe = await store.insert(new_txn(gid, salt="clock probe"), "probe", LONG)
        assert outcome is Inserted.CONFLICT
        left = (at - probe.db_now).total_seconds()
        if left < 0:
            return
        assert loop.time() < deadline, f"the log's clock never passed {at}"
        await asyncio.sleep(min(0.05, left + 0.001))


def lease_end(claim: Claim, lease_s: float) -> datetime:
    """When a lease taken in ``claim`` runs out (the record was written at ``claim.db_now``)."""
    return claim.db_now + timedelta(seconds=lease_s)


def gids(claims: list[Claim]) -> set[str]:
    return {c.record.gid for c in claims}


def progress(*items: tuple[str, int, str | None]) -> list[BranchProgress]:
    return [BranchProgress(*i) for i in items]


async def must_get(store: LogStore, gid: str) -> TxnRecord:
    record = await store.get(gid)
    assert record is not None
    return record


# --- insert / get ---------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "status"), [("2pc", "preparing"), ("saga", "running")])
async def test_insert_created_logs_txn_branches_and_event(
    store: LogStore, mode: str, status: str
) -> None:
    new = new_txn("g1", mode, n=3, timeout=30.0)
    outcome, claim = await store.insert(new, "a", LONG)
    assert outcome is Inserted.CREATED
    rec = claim.record
    assert (rec.gid, rec.mode, rec.status, rec.reason) == ("g1", mode, status, None)
    assert (rec.owner, rec.epoch, rec.attempts, rec.request_hash) == ("a", 1, 0, new.request_hash)
    assert rec.created_at == rec.updated_at == claim.db_now
    assert rec.deadline_at - rec.created_at == timedelta(seconds=30)
    assert claim.seconds_to_deadline == pytest.approx(30.0)
    # Rule 1: every branch is logged with the transaction, pending, before anything is called.
    assert [(b.idx, b.participant, b.action, b.compensation, b.payload) for b in rec.branches] == [
        (i, f"svc{i}", f"do{i}", s.compensation, {"i": i, "k": [i]})
        for i, s in enumerate(new.branches)
    ]
    assert all((b.status, b.attempts, b.last_error) == ("pending", 0, None) for b in rec.branches)
    assert await store.get("g1") == rec
    events = await store.events("g1")
    assert [(e.kind, e.gid, e.branch, e.detail) for e in events] == [
        ("submitted", "g1", None, {"owner": "a"})
    ]
    assert events[0].at == rec.created_at


async def test_insert_same_request_is_existing_and_changes_nothing(store: LogStore) -> None:
    _, first = await store.insert(new_txn("g1"), "a", LONG)
    outcome, again = await store.insert(new_txn("g1"), "b", LONG)
    assert outcome is Inserted.EXISTING
    assert again.record == first.record  # still a's, at epoch 1
    assert again.db_now >= first.db_now
    assert [e.kind for e in await store.events("g1")] == ["submitted"]


async def test_insert_different_request_is_conflict(store: LogStore) -> None:
    _, first = await store.insert(new_txn("g1"), "a", LONG)
    outcome, other = await store.insert(new_txn("g1", n=1, salt="x"), "b", LONG)
    assert outcome is Inserted.CONFLICT
    assert other.record == first.record
    assert len((await must_get(store, "g1")).branches) == 2


async def test_get_and_events_of_unknown_gid(store: LogStore) -> None:
    assert await store.get("nope") is None
    assert await store.events("nope") == []
    await store.ping()


async def test_returned_records_are_copies(store: LogStore) -> None:
    _, claim = await store.insert(new_txn("g1"), "a", LONG)
    claim.record.status = "mangled"
    claim.record.branches[0].payload["i"] = 99
    claim.record.branches.pop()
    got = await must_get(store, "g1")
    assert got.status == "running"
    assert [b.payload["i"] for b in got.branches] == [0, 1]
    got.branches[1].status = "mangled"
    (await store.events("g1"))[0].detail.clear()  # type: ignore[union-attr]
    assert (await must_get(store, "g1")).branches[1].status == "pending"
    assert (await store.events("g1"))[0].detail == {"owner": "a"}


# --- write_status ---------------------------------------------------------------------------


async def test_write_status_with_current_epoch_persists_everything(store: LogStore) -> None:
    _, claim = await store.insert(new_txn("g1"), "a", LONG)
    await tick(store)
    branches = progress(("done", 1, None), ("failed", 3, "boom"))
    await store.write_status("g1", 1, "compensating", "step 1 failed", branches, "status")
    rec = await must_get(store, "g1")
    assert (rec.status, rec.reason) == ("compensating", "step 1 failed")
    assert (rec.epoch, rec.owner) == (1, "a")
    assert rec.updated_at > claim.record.updated_at
    assert [(b.status, b.attempts, b.last_error) for b in rec.branches] == [
        ("done", 1, None),
        ("failed", 3, "boom"),
    ]
    assert all(b.updated_at == rec.updated_at for b in rec.branches)
    events = await store.events("g1")
    assert [e.kind for e in events] == ["submitted", "status"]
    assert events[1].detail == {"status": "compensating", "reason": "step 1 failed", "epoch": 1}
    assert events[1].id > events[0].id and events[1].at == rec.updated_at


async def test_write_status_updates_only_listed_branches(store: LogStore) -> None:
    await store.insert(new_txn("g1", n=3), "a", LONG)
    await store.write_status("g1", 1, "running", None, progress(("done", 1, None)), "step")
    rec = await must_get(store, "g1")
    assert [b.status for b in rec.branches] == ["done", "pending", "pending"]


async def test_write_status_with_stale_epoch_raises_and_changes_nothing(store: LogStore) -> None:
    await store.insert(new_txn("g1", "2pc"), "a", LONG)
    before, events_before = await must_get(store, "g1"), await store.events("g1")
    branches = progress(("prepared", 1, None), ("prepared", 1, None))
    for epoch in (0, 2):
        with pytest.raises(OwnershipLost):
            await store.write_status("g1", epoch, "committing", None, branches, "decided")
    with pytest.raises(OwnershipLost):
        await store.write_status("unknown", 1, "committing", None, branches, "decided")
    assert await must_get(store, "g1") == before
    assert await store.events("g1") == events_before


# --- reschedule -----------------------------------------------------------------------------


async def test_reschedule_backs_off_and_releases_the_lease(store: LogStore) -> None:
    await store.insert(new_txn("g1"), "a", LONG)
    branches = progress(("done", 1, None), ("pending", 2, "timeout"))
    delay = await store.reschedule("g1", 1, branches, 0.8, 10.0)
    assert 0.4 <= delay <= 0.8
    rec = await must_get(store, "g1")
    assert (rec.attempts, rec.epoch, rec.owner, rec.status) == (1, 1, "a", "running")
    assert [(b.status, b.attempts, b.last_error) for b in rec.branches] == [
        ("done", 1, None),
        ("pending", 2, "timeout"),
    ]
    events = await store.events("g1")
    assert events[-1].kind == "rescheduled"
    assert events[-1].detail == {"delay_s": pytest.approx(delay)}
    # Not due yet: nobody can claim it, though a's lease no longer holds it.
    assert await store.claim("b", 10, LONG) == []
    due_at = rec.updated_at + timedelta(seconds=delay)
    await wait_past(store, due_at - timedelta(seconds=delay / 2), "g1")
    assert await store.claim("b", 10, LONG) == []
    await wait_past(store, due_at, "g1")
    claims = await store.claim("b", 10, LONG)
    assert gids(claims) == {"g1"}
    assert claims[0].db_now >= due_at
    assert (claims[0].record.owner, claims[0].record.epoch) == ("b", 2)


async def test_reschedule_grows_exponentially_up_to_the_cap(store: LogStore) -> None:
    await store.insert(new_txn("g1"), "a", LONG)
    await store.insert(new_txn("g2"), "a", LONG)
    none: list[BranchProgress] = []
    first = await store.reschedule("g1", 1, none, 1.0, 100.0)
    second = await store.reschedule("g1", 1, none, 1.0, 100.0)
    third = await store.reschedule("g1", 1, none, 1.0, 100.0)
    assert (0.5 <= first <= 1.0) and (1.0 <= second <= 2.0) and (2.0 <= third <= 4.0)
    assert (await must_get(store, "g1")).attempts == 3
    for _ in range(4):
        capped = await store.reschedule("g2", 1, none, 1.0, 3.0)
    assert 1.5 <= capped <= 3.0


async def test_reschedule_with_stale_epoch_raises_and_changes_nothing(store: LogStore) -> None:
    await store.insert(new_txn("g1"), "a", LONG)
    before = await must_get(store, "g1")
    with pytest.raises(OwnershipLost):
        await store.reschedule("g1", 2, progress(("done", 1, None)), 0.1, 1.0)
    assert await must_get(store, "g1") == before
    assert [e.kind for e in await store.events("g1")] == ["submitted"]


# --- claim ----------------------------------------------------------------------------------


async def test_claim_takes_due_unleased_work_only_and_fences_the_old_epoch(
    store: LogStore,
) -> None:
    # Inserted in this order, so "done" and "leased" start their leases before "due" does.
    await store.insert(new_txn("done", "2pc"), "a", SHORT)
    await store.write_status("done", 1, "aborted", "test", [], "aborted")
    await store.insert(new_txn("leased"), "a", LONG)
    await tick(store)
    _, due = await store.insert(new_txn("due"), "a", SHORT)
    assert await store.claim("b", 10, LONG) == []  # every lease still holds

    await wait_past(store, lease_end(due, SHORT), "due")
    claims = await store.claim("b", 10, LONG)
    assert gids(claims) == {"due"}  # not the terminal one, not the leased one
    rec = claims[0].record
    assert (rec.owner, rec.epoch, rec.status) == ("b", 2, "running")
    assert [b.status for b in rec.branches] == ["pending", "pending"]
    events = await store.events("due")
    assert (events[-1].kind, events[-1].detail) == ("claimed", {"owner": "b", "epoch": 2})
    assert await store.claim("c", 10, LONG) == []  # b's lease holds it now

    # The old driver is fenced out; the new one writes.
    with pytest.raises(OwnershipLost):
        await store.write_status("due", 1, "compensating", "late", [], "status")
    with pytest.raises(OwnershipLost):
        await store.reschedule("due", 1, [], 0.1, 1.0)
    await store.write_status("due", 2, "compensating", "timeout", [], "status")
    assert (await must_get(store, "due")).status == "compensating"
    assert (await must_get(store, "done")).epoch == 1


async def test_a_claimed_lease_holds_until_it_runs_out(store: LogStore) -> None:
    _, first = await store.insert(new_txn("g1"), "a", SHORT)
    await wait_past(store, lease_end(first, SHORT), "g1")
    (claim,) = await store.claim("b", 10, 1.0)
    await wait_past(store, claim.db_now + timedelta(seconds=0.5), "g1")
    assert await store.claim("c", 10, LONG) == []
    await wait_past(store, lease_end(claim, 1.0), "g1")
    (again,) = await store.claim("c", 10, LONG)
    assert (again.record.gid, again.record.owner, again.record.epoch) == ("g1", "c", 3)
    with pytest.raises(OwnershipLost):
        await store.write_status("g1", 2, "compensating", None, [], "status")
    assert [e.kind for e in await store.events("g1")] == ["submitted", "claimed", "claimed"]


async def test_claim_respects_limit_oldest_due_first(store: LogStore) -> None:
    for gid in ("t1", "t2", "t3"):
        _, last = await store.insert(new_txn(gid), "a", SHORT)
        await tick(store)
    await wait_past(store, lease_end(last, SHORT), "t3")
    assert await store.claim("b", 0, LONG) == []
    first = await store.claim("b", 2, LONG)
    assert gids(first) == {"t1", "t2"}
    assert gids(await store.claim("b", 2, LONG)) == {"t3"}
    assert await store.claim("b", 2, LONG) == []


async def test_claim_own_takes_back_leased_work_at_once(store: LogStore) -> None:
    await store.insert(new_txn("mine1"), "a", LONG)
    await store.insert(new_txn("mine2", "2pc"), "a", LONG)
    await store.insert(new_txn("mine_done"), "a", LONG)
    await store.write_status("mine_done", 1, "committed", None, [], "committed")
    await store.insert(new_txn("theirs"), "b", LONG)
    assert await store.claim("a", 10, LONG) == []
    await tick(store)
    started = await store.clock()  # a's restart
    assert await store.claim("c", 10, LONG, own_before=started) == []  # c holds nothing

    claims = await store.claim("a", 10, LONG, own_before=started)
    assert gids(claims) == {"mine1", "mine2"}
    assert {(c.record.owner, c.record.epoch) for c in claims} == {("a", 2)}
    with pytest.raises(OwnershipLost):  # the instance's previous life is fenced out too
        await store.write_status("mine1", 1, "compensating", None, [], "status")
    assert (await must_get(store, "theirs")).epoch == 1
    await tick(store)
    restarted = await store.clock()  # and another: own ignores leases, limit still holds
    again = await store.claim("a", 1, LONG, own_before=restarted)
    assert len(again) == 1 and again[0].record.epoch == 3


# --- renew ----------------------------------------------------------------------------------


async def test_renew_extends_only_matching_owner_and_epoch(store: LogStore) -> None:
    await store.insert(new_txn("kept"), "a", SHORT)
    await store.insert(new_txn("wrong_epoch"), "a", SHORT)
    await store.insert(new_txn("done"), "a", SHORT)
    await store.write_status("done", 1, "committed", None, [], "committed")
    await store.insert(new_txn("theirs"), "b", SHORT)
    await tick(store)
    _, control = await store.insert(new_txn("control"), "a", SHORT)  # its lease runs out last

    held = {"kept": 1, "wrong_epoch": 2, "done": 1, "theirs": 1, "ghost": 1}
    assert await store.renew("a", held, LONG) == {"kept"}
    assert await store.renew("a", {}, LONG) == set()
    assert await store.renew("z", {"kept": 1}, LONG) == set()

    await wait_past(store, lease_end(control, SHORT), "control")
    claims = await store.claim("c", 10, LONG)
    assert gids(claims) == {"control", "wrong_epoch", "theirs"}  # "kept" was renewed
    assert await store.renew("a", {"control": 1}, LONG) == set()  # c owns it at epoch 2
    assert await store.renew("c", {"control": 2}, LONG) == {"control"}


async def test_renew_never_extends_a_lease_its_owner_released_or_that_lapsed(
    store: LogStore,
) -> None:
    """The race in the renew loop: it took its snapshot of the leases it holds, then a drive
    rescheduled its transaction (releasing the lease); the renewal arriving after that must not
    take the lease back, or recovery would wait a whole lease for nothing."""
    await store.insert(new_txn("released"), "a", LONG)
    await store.insert(new_txn("lapsed"), "a", SHORT)
    _, held = await store.insert(new_txn("held"), "a", LONG)
    await tick(store)
    await store.reschedule("released", 1, [BranchProgress("pending", 1, None)] * 2, 0.0, 0.0)
    await wait_past(store, lease_end(held, SHORT), "held")  # "lapsed" has lapsed
    snapshot = {"released": 1, "lapsed": 1, "held": 1}
    assert await store.renew("a", snapshot, LONG) == {"held"}
    claims = await store.claim("b", 10, LONG)
    assert gids(claims) == {"released", "lapsed"}  # due at once, not a lease later


async def test_lease_horizon_is_the_latest_live_lease_of_an_owner(store: LogStore) -> None:
    assert await store.lease_horizon("a") is None
    _, short = await store.insert(new_txn("short"), "a", SHORT)
    await store.insert(new_txn("long"), "a", LONG)
    await store.insert(new_txn("theirs"), "b", LONG * 2)
    await store.write_status("long", 1, "committed", None, [], "finished")  # no longer live
    assert await store.lease_horizon("a") == lease_end(short, SHORT)


# --- page -----------------------------------------------------------------------------------


async def seed_page(store: LogStore) -> list[TxnRecord]:
    for i in range(7):
        await store.insert(new_txn(f"p{i}", "2pc" if i % 2 else "saga"), "a", LONG)
        await tick(store)
    await store.write_status("p1", 1, "committed", None, [], "committed")
    await store.write_status("p2", 1, "compensating", None, [], "status")
    records = [await must_get(store, f"p{i}") for i in range(7)]
    return sorted(records, key=lambda r: (r.created_at, r.gid), reverse=True)


async def walk(store: LogStore, status: str | None, mode: str | None, limit: int) -> list[str]:
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(20):
        page = await store.page(ListFilter(status, mode), limit, cursor)
        assert len(page.items) <= limit
        assert all(len(r.branches) == 2 for r in page.items)
        seen += [r.gid for r in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return seen
    raise AssertionError("the cursor never ran out")


async def test_page_is_newest_first_and_the_cursor_walks_everything(store: LogStore) -> None:
    expected = await seed_page(store)
    first = await store.page(ListFilter(), 3, None)
    assert first.items == expected[:3]
    assert first.next_cursor is not None
    for limit in (1, 2, 3, 7, 50):
        gids_seen = await walk(store, None, None, limit)
        assert gids_seen == [r.gid for r in expected]
        assert len(set(gids_seen)) == 7
    assert (await store.page(ListFilter(), 7, None)).next_cursor is None


async def test_page_filters(store: LogStore) -> None:
    expected = await seed_page(store)
    pick = [r.gid for r in expected]
    assert await walk(store, "preparing", None, 2) == [g for g in pick if g in {"p3", "p5"}]
    assert await walk(store, None, "saga", 2) == [g for g in pick if g in {"p0", "p2", "p4", "p6"}]
    assert await walk(store, "running", "saga", 1) == [g for g in pick if g in {"p0", "p4", "p6"}]
    assert await walk(store, "committed", "2pc", 5) == ["p1"]
    assert await walk(store, "committed", "saga", 5) == []
    assert await walk(store, "nonsense", None, 5) == []


async def test_page_cursor_from_a_record_resumes_after_it(store: LogStore) -> None:
    expected = await seed_page(store)
    middle = expected[3]
    page = await store.page(ListFilter(), 50, encode_cursor(middle.created_at, middle.gid))
    assert [r.gid for r in page.items] == [r.gid for r in expected[4:]]
    assert page.next_cursor is None


@pytest.mark.parametrize("cursor", ["not a cursor!", "", "W10", "WzEsMl0", "WyJ4IiwiZyJd"])
async def test_page_bad_cursor_raises_value_error(store: LogStore, cursor: str) -> None:
    await store.insert(new_txn("g1"), "a", LONG)
    with pytest.raises(ValueError):
        await store.page(ListFilter(), 10, cursor)


# --- live summary (metrics) -------------------------------------------------------------


async def test_live_summary_counts_live_stuck_and_oldest(store: LogStore) -> None:
    assert await store.live_summary(2) == {}
    await store.insert(new_txn("g1", mode="2pc"), "a", LONG)
    await tick(store)
    await store.insert(new_txn("g2", mode="2pc"), "a", LONG)
    await store.insert(new_txn("g3", mode="2pc"), "a", LONG)
    await store.reschedule("g2", 1, [], 0.01, 0.01)
    await store.reschedule("g2", 1, [], 0.01, 0.01)
    await store.write_status("g3", 1, "committed", None, [], "finished")
    await tick(store)
    summary = await store.live_summary(2)
    assert set(summary) == {"preparing"}
    live = summary["preparing"]
    assert (live.count, live.stuck) == (2, 1)
    g1 = await must_get(store, "g1")
    _, probe = await store.insert(new_txn("g1", salt="clock probe"), "probe", LONG)
    assert 0 < live.oldest_age_s <= (probe.db_now - g1.created_at).total_seconds()


# --- saga progress ------------------------------------------------------------------------


async def test_write_progress_updates_one_branch_and_records_its_event(store: LogStore) -> None:
    await store.insert(new_txn("g1", n=3), "a", LONG)
    await store.write_progress(
        "g1", 1, 1, BranchProgress("succeeded", 2, "once 503"), "action:succeeded", {"ms": 3}
    )
    rec = await must_get(store, "g1")
    assert [(b.status, b.attempts, b.last_error) for b in rec.branches] == [
        ("pending", 0, None),
        ("succeeded", 2, "once 503"),
        ("pending", 0, None),
    ]
    assert rec.request == {"gid": "g1", "salt": ""}  # the normalized request comes back
    last = (await store.events("g1"))[-1]
    assert (last.kind, last.branch, last.detail) == ("action:succeeded", 1, {"ms": 3})
    with pytest.raises(OwnershipLost):
        await store.write_progress(
            "g1", 2, 0, BranchProgress("succeeded", 1, None), "action:succeeded", None
        )
    assert (await must_get(store, "g1")).branches[0].status == "pending"


async def test_concurrent_progress_writes_each_keep_their_own_fence_and_data(
    store: LogStore,
) -> None:
    """Many transactions' progress at once (on Postgres they travel together, several to a
    statement): each write lands on its own branch, and only the one with a stale epoch is
    refused, without failing the others."""
    for i in range(12):
        await store.insert(new_txn(f"c{i}", n=2), "a", LONG)
    writes = [
        store.write_progress(
            f"c{i}",
            1 if i != 5 else 2,
            i % 2,
            BranchProgress("succeeded", i, f"e{i}"),
            "action:succeeded",
            {"i": i},
        )
        for i in range(12)
    ]
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert [type(r) for r in results] == [
        OwnershipLost if i == 5 else type(None) for i in range(12)
    ]
    for i in range(12):
        rec = await must_get(store, f"c{i}")
        expected = ("pending", 0, None) if i == 5 else ("succeeded", i, f"e{i}")
        assert (
            rec.branches[i % 2].status,
            rec.branches[i % 2].attempts,
            rec.branches[i % 2].last_error,
        ) == expected
        last = (await store.events(f"c{i}"))[-1]
        assert (last.kind, last.detail) == (
            ("submitted", {"owner": "a"}) if i == 5 else ("action:succeeded", {"i": i})
        )
    if isinstance(store, PgLog):
        assert store.progress_writes.batches < store.progress_writes.writes


async def test_concurrent_redoable_outcomes_each_keep_their_own_fence_and_data(
    store: LogStore,
) -> None:
    """2PC outcomes at once (on Postgres, several to a statement): each transaction gets its
    own status, reason, branches and event, and its write's time; only the stale one is
    refused."""
    for i in range(10):
        await store.insert(new_txn(f"o{i}", mode="2pc", n=2), "a", LONG)
    outcomes = [
        store.write_status(
            f"o{i}",
            1 if i != 3 else 2,
            "committed" if i % 2 else "aborted",
            None if i % 2 else f"why {i}",
            progress(("committed", i, None), ("rolled_back", 1, f"e{i}")),
            "finished",
            redoable=True,
        )
        for i in range(10)
    ]
    results = await asyncio.gather(*outcomes, return_exceptions=True)
    assert [isinstance(r, OwnershipLost) for r in results] == [i == 3 for i in range(10)]
    for i in range(10):
        rec = await must_get(store, f"o{i}")
        if i == 3:
            assert rec.status == "preparing"
            continue
        assert (rec.status, rec.reason) == (
            "committed" if i % 2 else "aborted",
            None if i % 2 else f"why {i}",
        )
        assert [(b.status, b.attempts, b.last_error) for b in rec.branches] == [
            ("committed", i, None),
            ("rolled_back", 1, f"e{i}"),
        ]
        assert rec.updated_at == results[i]
        last = (await store.events(f"o{i}"))[-1]
        assert (last.kind, last.detail) == (
            "finished",
            {"status": rec.status, "reason": rec.reason, "epoch": 1},
        )
    if isinstance(store, PgLog):
        assert store.status_writes.batches < store.status_writes.writes


# --- doubt resolution -------------------------------------------------------------------


async def test_abort_orphan_only_when_preparing_and_the_lease_ran_out(store: LogStore) -> None:
    _, live = await store.insert(new_txn("g1", mode="2pc"), "a", LONG)
    assert await store.abort_orphan("g1", "b", LONG, "why") is None  # a live owner rules
    assert (await must_get(store, "g1")).status == "preparing"
    _, short = await store.insert(new_txn("g2", mode="2pc"), "a", 0.2)
    await wait_past(store, lease_end(short, 0.2), "g2")
    claim = await store.abort_orphan("g2", "b", LONG, "presumed abort")
    assert claim is not None
    rec = claim.record
    assert (rec.status, rec.reason, rec.owner, rec.epoch) == ("aborting", "presumed abort", "b", 2)
    assert len(rec.branches) == 2
    last = (await store.events("g2"))[-1]
    assert last.kind == "decided" and last.detail is not None
    assert last.detail["status"] == "aborting" and last.detail["epoch"] == 2
    # The old driver is fenced out; asking again changes nothing more.
    with pytest.raises(OwnershipLost):
        await store.write_status("g2", 1, "committing", None, [], "decided")
    assert await store.abort_orphan("g2", "c", LONG, "again") is None
    assert (await must_get(store, "g2")).status == "aborting"
    # Sagas are never aborted by a question.
    _, saga = await store.insert(new_txn("g3", mode="saga"), "a", 0.2)
    await wait_past(store, lease_end(saga, 0.2), "g3")
    assert await store.abort_orphan("g3", "b", LONG, "no") is None
    assert live.record.epoch == 1


async def test_claim_own_takes_only_rows_written_before_the_restart(store: LogStore) -> None:
    """A submission this incarnation inserted after it started is being driven here: taking it
    back would bump its epoch and fence out its own driver. Nor is a row it claimed retaken."""
    await store.insert(new_txn("earlier"), "a", LONG)
    await tick(store)
    started = await store.clock()
    await tick(store)
    await store.insert(new_txn("fresh"), "a", LONG)  # lands between the start and the claim
    claims = await store.claim("a", 10, LONG, own_before=started)
    assert gids(claims) == {"earlier"}
    assert (await must_get(store, "fresh")).epoch == 1  # its driver is not fenced out
    assert await store.claim("a", 10, LONG, own_before=started) == []  # "earlier" is ours now
    assert await store.claim("a", 10, LONG) == []  # and the own-claim needs a start time


DEADLOCK = "40P01"  # Postgres's SQLSTATE for a statement it failed to break a lock cycle


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE behind ``error``: asyncpg's own, or the one SQLAlchemy wraps (``orig``)."""
    seen: BaseException | None = error
    while seen is not None:
        state = getattr(seen, "sqlstate", None)
        if isinstance(state, str):
            return state
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


def leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


async def test_lease_renewal_and_coalesced_writes_never_deadlock(log_dsn: str) -> None:
    """Postgres only: the fake takes no row locks, so it cannot deadlock and this test could
    not fail on it. The lease renewal, the coalesced saga progress (WRITE_PROGRESS_MANY) and the
    coalesced 2PC outcome (finish: WRITE_STATUS_MANY, after each one-row decide) each lock many
    transactions rows in one statement. Here they run at once over the same rows, fed in opposite
    and shuffled orders: two renewals (gids ascending and descending), a round of progress
    writes and a round of outcomes at a time, and another instance claiming, in an order
    opposite to gid order, the rows whose lease ran out while the owner still renews them and
    writes to them (a takeover). They must all succeed (found by the bench: before the rows
    were locked in gid order, Postgres broke such cycles after deadlock_timeout by failing one
    statement, and leases lapsed). A deadlock (SQLSTATE 40P01) or a statement that never
    finishes fails the test; so does any error but the fencing of the rows taken over."""
    rounds, lease_gone = 6, 0.2
    base = [f"x{i:03}" for i in range(64)]  # one coalesced batch's worth (Coalescer.limit)
    taken = set(base[3::4])  # their lease runs out: "c" takes them over during the run
    sagas = [g for g in base if g not in taken]
    twopc = {r: [f"{g}.{r}" for g in base[::2]] for r in range(rounds)}  # between the sagas
    a = PgLog.connect(log_dsn, pool_size=4)
    c = PgLog.connect(log_dsn, pool_size=1)
    try:
        # Inserted in reverse gid order: the claim (oldest due first) locks them downwards.
        for gid in sorted(taken, reverse=True):
            _, last = await a.insert(new_txn(gid, n=2), "a", lease_gone)
        for gid in sagas:
            await a.insert(new_txn(gid, n=2), "a", LONG)
        for gids_of_round in twopc.values():
            for gid in gids_of_round:
                await a.insert(new_txn(gid, mode="2pc", n=2), "a", LONG)
        for i in range(300):  # history, so that the planner looks the rows up one by one
            await a.insert(new_txn(f"h{i:03}", n=1), "b", LONG)
        await wait_past(a, lease_end(last, lease_gone), sagas[0])
        every_2pc = {g for gids_of_round in twopc.values() for g in gids_of_round}
        held = sorted([*base, *every_2pc])

        def order(r: int, gids: list[str]) -> list[str]:
            """Round ``r``'s order: ascending, descending or shuffled."""
            if r % 3 == 0:
                return sorted(gids)
            if r % 3 == 1:
                return sorted(gids, reverse=True)
            return random.Random(r).sample(gids, len(gids))

        renewals: list[set[str]] = []
        claimed: list[str] = []

        async def renewing(gids: list[str]) -> None:
            while True:
                renewals.append(await a.renew("a", dict.fromkeys(gids, 1), LONG))
                if all(w.done() for w in writers):
                    return

        async def progressing() -> None:
            for r in range(rounds):
                writes = [
                    a.write_progress(
                        gid, 1, r % 2, BranchProgress("succeeded", r, None), "step", None
                    )
                    for gid in order(r, base)
                ]
                for gid, result in zip(
                    order(r, base),
                    await asyncio.gather(*writes, return_exceptions=True),
                    strict=True,
                ):
                    # Fenced (rule 5) once "c" has taken it over; nothing else may fail.
                    if result is not None and not (
                        isinstance(result, OwnershipLost) and gid in taken
                    ):
                        raise result

        async def deciding_and_finishing() -> None:
            prepared = progress(("prepared", 1, None), ("prepared", 1, None))
            committed = progress(("committed", 1, None), ("committed", 1, None))
            for r, gids_of_round in twopc.items():
                await asyncio.gather(
                    *(
                        a.write_status(gid, 1, "committing", None, prepared, "decided")
                        for gid in order(r + 1, gids_of_round)
                    )
                )
                await asyncio.gather(
                    *(
                        a.write_status(
                            gid, 1, "committed", None, committed, "finished", redoable=True
                        )
                        for gid in order(r + 2, gids_of_round)
                    )
                )

        async def claiming() -> None:
            while len(claimed) < len(taken):
                claimed.extend(claim.record.gid for claim in await c.claim("c", 3, LONG))
                await asyncio.sleep(0.02)

        try:
            async with asyncio.timeout(30), asyncio.TaskGroup() as tg:
                writers = [
                    tg.create_task(work())
                    for work in (progressing, deciding_and_finishing, claiming)
                ]
                tg.create_task(renewing(held))
                tg.create_task(renewing(held[::-1]))
        except TimeoutError:
            pytest.fail("the writes and renewals did not finish in 30 s: a statement is stuck")
        except BaseExceptionGroup as group:
            deadlocks = [e for e in leaves(group) if sqlstate(e) == DEADLOCK]
            if deadlocks:
                first = deadlocks[0]
                detail = getattr(first, "detail", None) or getattr(
                    getattr(first, "orig", None), "detail", ""
                )
                pytest.fail(f"deadlock (SQLSTATE {DEADLOCK}): {first!r} {detail or ''}")
            raise

        # Everything named was run, the coalesced writes several to a statement.
        assert a.progress_writes.batches < a.progress_writes.writes == rounds * len(base)
        assert a.status_writes.batches < a.status_writes.writes == len(every_2pc)
        assert len(renewals) >= 2
        for renewed in renewals:
            assert set(sagas) <= renewed <= set(sagas) | every_2pc  # never a lapsed lease
        assert sorted(claimed) == sorted(taken)  # each taken over once, by one claim
        for gid in sagas:
            rec = await must_get(a, gid)
            assert (rec.owner, rec.epoch) == ("a", 1)
            # Each round wrote one branch (alternately); the last two rounds' writes stand.
            assert [(b.status, b.attempts) for b in rec.branches] == [
                ("succeeded", rounds - 2),
                ("succeeded", rounds - 1),
            ]
        for gid in taken:
            rec = await must_get(a, gid)
            assert (rec.owner, rec.epoch) == ("c", 2)
        for gid in every_2pc:
            rec = await must_get(a, gid)
            assert (rec.status, rec.epoch, rec.owner) == ("committed", 1, "a")
            assert [b.status for b in rec.branches] == ["committed", "committed"]
    finally:
        await a.close()
        await c.close()


async def test_the_hot_statements_are_planned_once_per_connection(log_dsn: str) -> None:
    """Postgres only (the fake has no planner). Left to choose, Postgres re-planned the
    coalesced writes (array parameters) at every execution, which cost the log more than running
    them (docs/decisions.md); the log's hot and progress pools plan each statement once."""
    pg = PgLog.connect(log_dsn, pool_size=1)
    gids = [f"p{i}" for i in range(8)]
    try:
        for _ in range(3):  # the writes at once: the first alone, the others coalesced
            for gid in gids:
                await pg.insert(new_txn(gid, mode="2pc", n=2), "a", LONG)
            await asyncio.gather(
                *(
                    pg.write_progress(gid, 1, 0, BranchProgress("prepared", 1, None), "x", None)
                    for gid in gids
                )
            )
            outcome = progress(("committed", 1, None)) * 2
            await asyncio.gather(
                *(
                    pg.write_status(gid, 1, "committed", None, outcome, "done", redoable=True)
                    for gid in gids
                )
            )
            gids = [f"{gid}x" for gid in gids]
        assert pg.progress_writes.batches < pg.progress_writes.writes
        assert pg.status_writes.batches < pg.status_writes.writes
        hot, progress_pool = await pg._pools()
        for pool in (hot, progress_pool):
            async with pool.acquire() as conn:
                assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
                plans = await conn.fetch(
                    "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
                )
                many = [p for p in plans if "WITH i AS" in p["statement"]]
                assert many, "a coalesced write ran on this connection"
                assert all(p["custom_plans"] == 0 for p in plans), plans
    finally:
        await pg.close()
