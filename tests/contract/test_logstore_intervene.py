"""The operator's write (``LogStore.intervene``) on both stores: fenced on the epoch, status and
branch status it was planned from, and on the lease when asked; it takes the transaction over
(epoch bumped, the acting owner's lease, due now) and records who and why in the timeline."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.errors import OwnershipLost
from coordinator.intervention import Act, plan
from coordinator.logstore import LogStore
from coordinator.memlog import MemLog
from coordinator.records import Inserted, ListFilter
from coordinator.schema import TIMELINE_HEAD, TIMELINE_MAX
from tests.contract.test_logstore_contract import LONG, must_get, new_txn, progress, tick


async def test_abort_fences_the_live_driver_and_records_who_and_why(store: LogStore) -> None:
    await store.insert(new_txn("g1", "2pc"), "driver", LONG)
    write = plan(await must_get(store, "g1"), Act.ABORT, "alice", "customer called")
    claim = await store.intervene("g1", write, "ops", LONG)
    assert claim is not None
    rec = claim.record
    assert (rec.status, rec.epoch, rec.owner) == ("aborting", 2, "ops")
    assert rec.reason == "aborted by alice: customer called"
    # The driver that held epoch 1 can no longer decide anything.
    with pytest.raises(OwnershipLost):
        await store.write_status("g1", 1, "committing", None, [], "decided")
    assert (await must_get(store, "g1")).status == "aborting"
    last = (await store.events("g1"))[-1]
    assert last.kind == "operator:abort" and last.branch is None
    assert last.detail == {
        "by": "alice",
        "note": "customer called",
        "status": "aborting",
        "epoch": 2,
    }


async def test_a_decision_written_first_makes_the_abort_fail(store: LogStore) -> None:
    await store.insert(new_txn("g1", "2pc"), "driver", LONG)
    write = plan(await must_get(store, "g1"), Act.ABORT, "alice", "late")
    await store.write_status("g1", 1, "committing", None, [], "decided")
    assert await store.intervene("g1", write, "ops", LONG) is None
    rec = await must_get(store, "g1")
    assert (rec.status, rec.epoch, rec.owner) == ("committing", 1, "driver")
    assert [e.kind for e in await store.events("g1")] == ["submitted", "decided"]


async def test_the_abort_and_the_decision_race_and_exactly_one_wins(store: LogStore) -> None:
    for i in range(20):
        gid = f"race{i}"
        await store.insert(new_txn(gid, "2pc"), "driver", LONG)
        write = plan(await must_get(store, gid), Act.ABORT, "alice", "race")

        async def decide(gid: str = gid) -> bool:
            try:
                await store.write_status(gid, 1, "committing", None, [], "decided")
                return True
            except OwnershipLost:
                return False

        decided, claim = await asyncio.gather(decide(), store.intervene(gid, write, "ops", LONG))
        assert decided != (claim is not None), gid
        rec = await must_get(store, gid)
        assert rec.status == ("committing" if decided else "aborting")


async def test_retry_waits_for_the_lease_then_clears_the_backoff(store: LogStore) -> None:
    await store.insert(new_txn("g1"), "driver", LONG)
    write = plan(await must_get(store, "g1"), Act.RETRY, "bob", "ledger is back")
    assert await store.intervene("g1", write, "ops", LONG) is None  # the driver holds it
    for _ in range(3):
        await store.reschedule("g1", 1, progress(("running", 1, "down")), 3600.0, 7200.0)
    assert (await must_get(store, "g1")).attempts == 3
    await tick(store)
    claim = await store.intervene("g1", write, "ops", LONG)
    assert claim is not None
    rec = claim.record
    assert (rec.status, rec.epoch, rec.owner, rec.attempts) == ("running", 2, "ops", 0)
    # Due now, held by the acting instance: a claim elsewhere does not take it.
    assert await store.claim("other", 10, LONG) == []
    assert (await store.events("g1"))[-1].kind == "operator:retry"


async def test_resolve_marks_the_branch_compensated_by_whom(store: LogStore) -> None:
    await store.insert(new_txn("g1", n=3), "driver", LONG)
    steps = progress(
        ("succeeded", 1, None), ("compensating", 9, "would go negative"), ("pending", 0, None)
    )
    await store.write_status("g1", 1, "compensating", "step 2 refused", steps, "decided")
    await store.reschedule("g1", 1, steps, 0.01, 0.01)
    await tick(store)
    rec = await must_get(store, "g1")
    write = plan(rec, Act.RESOLVE, "carol", "refunded by hand", 1)
    await store.write_status("g1", 1, "compensating", "step 2 refused", steps, "still")
    claim = await store.intervene("g1", write, "ops", LONG)
    assert claim is not None
    b = claim.record.branches
    assert (b[1].status, b[1].resolved_by, b[1].attempts) == ("compensated", "carol", 9)
    assert (b[0].status, b[0].resolved_by) == ("succeeded", None)
    assert claim.record.reason == "step 2 refused; branch 1 compensated by hand by carol"
    event = (await store.events("g1"))[-1]
    assert (event.kind, event.branch) == ("operator:resolve", 1)
    # Planned before the epoch moved on: refused, nothing changed.
    again = plan(rec, Act.RESOLVE, "carol", "twice", 1)
    assert await store.intervene("g1", again, "ops", LONG) is None
    assert (await must_get(store, "g1")).epoch == 2


async def test_resolve_planned_from_another_branch_status_is_refused(store: LogStore) -> None:
    await store.insert(new_txn("g1"), "driver", LONG)
    steps = progress(("compensating", 4, "refused"), ("compensated", 1, None))
    await store.write_status("g1", 1, "compensating", "r", steps, "decided")
    await store.reschedule("g1", 1, steps, 0.01, 0.01)
    write = plan(await must_get(store, "g1"), Act.RESOLVE, "carol", "n", 0)
    # Recovery's driver compensated it meanwhile (same epoch here: the branch status differs).
    done = progress(("compensated", 5, None), ("compensated", 1, None))
    await store.write_status("g1", 1, "compensating", "r", done, "progress")
    assert await store.intervene("g1", write, "ops", LONG) is None
    assert (await must_get(store, "g1")).branches[0].resolved_by is None


async def test_listing_filters_by_participant_prefix_and_age(store: LogStore) -> None:
    await store.insert(new_txn("ab-1"), "a", LONG)
    await tick(store)
    outcome, _ = await store.insert(new_txn("ab-2", n=1), "a", LONG)
    assert outcome is Inserted.CREATED
    await tick(store)
    await store.insert(new_txn("cd-1", n=3), "a", LONG)

    async def listed(where: ListFilter) -> list[str]:
        return [r.gid for r in (await store.page(where, 50, None)).items]

    assert await listed(ListFilter(gid_prefix="ab-")) == ["ab-2", "ab-1"]
    assert await listed(ListFilter(gid_prefix="ab_")) == []  # no LIKE wildcard leaks through
    assert await listed(ListFilter(participant="svc2")) == ["cd-1"]
    assert await listed(ListFilter(participant="svc1", gid_prefix="ab")) == ["ab-1"]
    assert await listed(ListFilter(newer_than_s=3600)) == ["cd-1", "ab-2", "ab-1"]
    assert await listed(ListFilter(older_than_s=3600)) == []
    if isinstance(store, MemLog):
        store.advance(7200)
        assert await listed(ListFilter(older_than_s=3600)) == ["cd-1", "ab-2", "ab-1"]


async def test_a_long_timeline_keeps_its_head_its_tail_and_every_operator_action(
    store: LogStore,
) -> None:
    await store.insert(new_txn("g1"), "driver", LONG)
    await store.reschedule(
        "g1", 1, progress(("running", 1, "down"), ("pending", 0, None)), 0.01, 0.01
    )
    for i in range(20):
        await store.write_progress("g1", 1, 0, progress(("running", i, "x"))[0], f"early{i}", None)
    await tick(store)
    write = plan(await must_get(store, "g1"), Act.RETRY, "alice", "participant is back")
    claim = await store.intervene("g1", write, "ops", LONG)
    assert claim is not None
    for i in range(100):
        await store.write_progress("g1", 2, 0, progress(("running", i, "x"))[0], f"late{i}", None)
    kinds = [e.kind for e in await store.events("g1")]
    head = TIMELINE_HEAD
    tail = TIMELINE_MAX - TIMELINE_HEAD
    assert kinds[:2] == ["submitted", "rescheduled"] and kinds[2:head] == [
        f"early{i}" for i in range(head - 2)
    ]
    assert kinds[head] == "operator:retry"  # kept from the middle, dropped otherwise
    assert kinds[-tail:] == [f"late{i}" for i in range(100 - tail, 100)]
    # The head, the operator's action, the capped tail, and the write that followed the cap.
    assert len(kinds) == TIMELINE_MAX + 2
    ids = [e.id for e in await store.events("g1")]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
