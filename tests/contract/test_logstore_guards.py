"""The log's guards, on both stores: a status write cannot leave a decided or terminal status,
the own-claim after a restart takes only an earlier incarnation's rows, and (Postgres) the pools
that write decisions and outcomes commit synchronously whatever the server's default."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from coordinator.errors import OwnershipLost
from coordinator.logstore import LogStore
from coordinator.pglog import PgLog
from tests.contract.test_logstore_contract import LONG, must_get, new_txn, progress, tick

# --- synchronous commit -----------------------------------------------------------------


async def test_decision_pools_commit_synchronously_even_if_the_database_says_off(
    log_dsn: str,
) -> None:
    conn = await asyncpg.connect(log_dsn)
    try:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    finally:
        await conn.close()
    pg = PgLog.connect(log_dsn, pool_size=1)
    try:
        hot, progress_pool = await pg._pools()
        async with hot.acquire() as c:
            assert await c.fetchval("SHOW synchronous_commit") == "on"
        async with progress_pool.acquire() as c:
            assert await c.fetchval("SHOW synchronous_commit") == "off"  # rule 4: redoable
        async with pg.engine.connect() as c:
            assert (await c.exec_driver_sql("SHOW synchronous_commit")).scalar() == "on"
        plain = await asyncpg.connect(log_dsn)  # the database's own default, for contrast
        try:
            assert await plain.fetchval("SHOW synchronous_commit") == "off"
        finally:
            await plain.close()
    finally:
        await pg.close()


# --- a decision is never undone, an outcome never changed ---------------------------------

STATUSES = ("preparing", "running", "committing", "aborting", "compensating", "committed")
STATUSES += ("aborted",)
# How each guarded status is reached by the writes the drivers make, and where it may go next.
REACH = {
    "committing": ("2pc", ["committing"]),
    "aborting": ("2pc", ["aborting"]),
    "compensating": ("saga", ["compensating"]),
    "committed": ("2pc", ["committing", "committed"]),
    "aborted": ("saga", ["compensating", "aborted"]),
}
ALLOWED = {
    "committing": {"committing", "committed"},
    "aborting": {"aborting", "aborted"},
    "compensating": {"compensating", "aborted"},
    "committed": set(),
    "aborted": set(),
}


async def reach(store: LogStore, gid: str, status: str) -> None:
    mode, path = REACH[status]
    await store.insert(new_txn(gid, mode), "a", LONG)
    for step in path:
        await tick(store)
        await store.write_status(gid, 1, step, f"to {step}", progress(("x", 1, None)) * 2, step)


@pytest.mark.parametrize("redoable", [False, True])
async def test_a_decided_or_terminal_status_refuses_every_other_move(
    store: LogStore, redoable: bool
) -> None:
    for current, allowed in ALLOWED.items():
        for target in sorted(set(STATUSES) - allowed):
            gid = f"{current}-{target}"
            await reach(store, gid, current)
            before, events = await must_get(store, gid), await store.events(gid)
            await tick(store)
            with pytest.raises(OwnershipLost):
                await store.write_status(
                    gid, 1, target, "flip", progress(("y", 9, "e")) * 2, "flip", redoable=redoable
                )
            # Nothing written: not the status, not a branch, not an event.
            assert await must_get(store, gid) == before, (current, target)
            assert await store.events(gid) == events, (current, target)


@pytest.mark.parametrize("redoable", [False, True])
async def test_every_move_the_drivers_make_from_a_decision_passes(
    store: LogStore, redoable: bool
) -> None:
    for current, allowed in ALLOWED.items():
        for target in sorted(allowed):
            gid = f"{current}-{target}"
            await reach(store, gid, current)
            await store.write_status(gid, 1, target, None, [], "ok", redoable=redoable)
            assert (await must_get(store, gid)).status == target


async def test_a_refused_move_in_a_coalesced_write_leaves_the_others_written(
    store: LogStore,
) -> None:
    await reach(store, "done", "committed")
    await store.insert(new_txn("live", "2pc"), "a", LONG)
    results = await asyncio.gather(
        store.write_status("done", 1, "aborted", "flip", [], "flip", redoable=True),
        store.write_status("live", 1, "aborted", "no", [], "finished", redoable=True),
        return_exceptions=True,
    )
    assert isinstance(results[0], OwnershipLost) and not isinstance(results[1], Exception)
    assert [(await must_get(store, g)).status for g in ("done", "live")] == [
        "committed",
        "aborted",
    ]
