"""Retention (``LogStore.purge``) on both stores: only finished transactions last written
before the cutoff go, oldest first, in bounded batches; a live one stays however old; a dry run
counts and deletes nothing. On Postgres one purger at a time: while another holds the
retention lock, a purge deletes nothing."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from coordinator import queries
from coordinator.logstore import LogStore
from coordinator.memlog import MemLog
from coordinator.pglog import PgLog
from tests.contract.test_logstore_contract import LONG, must_get, new_txn, tick, wait_past

AGE = 1.0  # the retention of these tests, in seconds


async def finished(store: LogStore, gid: str, status: str) -> None:
    await store.insert(new_txn(gid, "2pc"), "a", LONG)
    await tick(store)
    await store.write_status(gid, 1, status, None, [], "finished")
    await tick(store)


async def aged(store: LogStore) -> None:
    """A committed, then an aborted transaction, and a live one, all older than AGE; then a
    fresh committed one."""
    await finished(store, "old-1", "committed")
    await finished(store, "old-2", "aborted")
    await store.insert(new_txn("live"), "a", LONG)
    last = (await must_get(store, "live")).updated_at
    if isinstance(store, MemLog):
        store.advance(AGE + 0.5)
    else:
        await wait_past(store, last + timedelta(seconds=AGE + 0.2), "live")
    await finished(store, "fresh", "committed")


async def test_only_old_finished_transactions_go_oldest_first(store: LogStore) -> None:
    await aged(store)
    assert await store.purge(AGE, 100, dry_run=True) == 2
    assert await store.get("old-1") is not None  # a dry run deletes nothing
    assert await store.purge(AGE, 1) == 1
    assert await store.get("old-1") is None and await store.events("old-1") == []
    assert await store.get("old-2") is not None
    assert await store.purge(AGE, 1) == 1
    assert await store.purge(AGE, 100) == 0
    assert {g for g in ("old-2", "live", "fresh") if await store.get(g)} == {"live", "fresh"}
    live = await must_get(store, "live")
    assert live.status == "running"  # never touched, however old


async def test_one_purger_at_a_time_on_postgres(log_dsn: str) -> None:
    """The retention lock is Postgres' (an advisory lock): no in-memory counterpart."""
    store = PgLog.connect(log_dsn, pool_size=2)
    holder = await asyncpg.connect(log_dsn)
    try:
        await aged(store)
        await holder.execute("SELECT pg_advisory_lock($1)", queries.RETENTION_LOCK)
        assert await store.purge(AGE, 100) == 0  # another purger holds the lock
        await holder.execute("SELECT pg_advisory_unlock($1)", queries.RETENTION_LOCK)
        assert await store.purge(AGE, 100) == 2
    finally:
        await holder.close()
        await store.close()


async def test_ended_names_finished_ones_with_their_age_and_unknown_ones(
    store: LogStore,
) -> None:
    """What a participant's barrier retention is told (``LogStore.ended``)."""
    await aged(store)
    answer = await store.ended(["old-1", "old-2", "live", "fresh", "never-logged"])
    assert set(answer) == {"old-1", "old-2", "fresh", "never-logged"}  # a live one is left out
    assert answer["never-logged"] is None
    old_1, old_2, fresh = answer["old-1"], answer["old-2"], answer["fresh"]
    assert old_1 is not None and old_2 is not None and fresh is not None
    assert old_1 >= old_2 > AGE > fresh >= 0.0
    assert await store.ended([]) == {}
    assert await store.get("old-1") is not None  # a question changes nothing
