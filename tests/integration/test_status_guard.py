"""The log's status guard, every (from, to) pair of statuses: which status may follow which
(``schema.NEXT_STATUS``), in the in-memory store (coordinator/memlog.py), in its SQL rendering
evaluated by Postgres (``queries.may_follow``) and through the Postgres store's status write
(coordinator/pglog.py, one statement and the coalesced batch). The expected table is written
out here on its own, so a change of NEXT_STATUS shows too. ``./run mutation`` judges the guard's
code with these tests, once per mutant: one database for the session (tests/shared_pg.py), a
gid per pair."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from coordinator.errors import OwnershipLost
from coordinator.memlog import MemLog
from coordinator.pglog import PgLog
from coordinator.queries import may_follow
from coordinator.records import BranchProgress
from coordinator.schema import NEXT_STATUS
from tests.contract.test_logstore_contract import LONG, new_txn
from tests.shared_pg import SharedDatabases, shared_dbs

__all__ = ["shared_dbs"]  # the fixture, imported so that pytest finds it here

STATUSES = (
    "preparing",
    "running",
    "committing",
    "committed",
    "aborting",
    "aborted",
    "compensating",
)
# A decision is never undone, an outcome never changed; the live statuses are not restricted.
MAY_FOLLOW = {
    "preparing": set(STATUSES),
    "running": set(STATUSES),
    "committing": {"committing", "committed"},
    "committed": set(),
    "aborting": {"aborting", "aborted"},
    "aborted": set(),
    "compensating": {"compensating", "aborted"},
}
PAIRS = list(itertools.product(STATUSES, STATUSES))


def allowed(current: str, new: str) -> bool:
    return new in MAY_FOLLOW[current]


def refused_message(gid: str, epoch: int, status: str) -> str:
    return (
        f"transaction {gid}: epoch {epoch} is no longer current, or its logged status may not "
        f"move to {status!r}"
    )


def test_the_table_is_the_one_written_here() -> None:
    assert {s: set(n) for s, n in NEXT_STATUS.items()} == {
        s: n for s, n in MAY_FOLLOW.items() if n != set(STATUSES)
    }


# --- the in-memory store -----------------------------------------------------------------------


async def test_memlog_every_pair() -> None:
    log = MemLog()
    for current, new in PAIRS:
        gid = f"{current}-{new}"
        await log.insert(new_txn(gid, "2pc"), "a", LONG)
        log._txns[gid].rec.status = current
        log.advance(1)
        progress = [BranchProgress("done", 3, "e"), BranchProgress("failed", 1, None)]
        if allowed(current, new):
            earliest = log.now()
            at = await log.write_status(gid, 1, new, "why", progress, "moved")
            rec = log._txns[gid].rec
            assert (rec.status, rec.reason, rec.updated_at) == (new, "why", at), (current, new)
            assert earliest <= at <= log.now()
            assert [(b.status, b.attempts, b.last_error, b.updated_at) for b in rec.branches] == [
                ("done", 3, "e", at),
                ("failed", 1, None, at),
            ]
            last = (await log.events(gid))[-1]
            assert (last.kind, last.at, last.detail) == (
                "moved",
                at,
                {"status": new, "reason": "why", "epoch": 1},
            )
        else:
            before, events = await log.get(gid), await log.events(gid)
            with pytest.raises(OwnershipLost) as refused:
                await log.write_status(gid, 1, new, "why", progress, "moved")
            assert str(refused.value) == refused_message(gid, 1, new), (current, new)
            assert await log.get(gid) == before and await log.events(gid) == events


async def test_memlog_fences_a_stale_epoch_and_an_unknown_gid() -> None:
    log = MemLog()
    await log.insert(new_txn("g", "2pc"), "a", LONG)
    for gid, epoch in (("g", 2), ("g", 0), ("nope", 1)):
        with pytest.raises(OwnershipLost) as fenced:
            await log.write_status(gid, epoch, "committing", None, [], "x")
        assert str(fenced.value) == f"transaction {gid}: epoch {epoch} is no longer current"
    assert (await log.get("g")).status == "preparing"  # type: ignore[union-attr]


# --- the SQL rendering, evaluated by Postgres ----------------------------------------------------


async def test_sql_rendering_every_pair(shared_dbs: SharedDatabases) -> None:
    values = ", ".join(f"('{c}', '{n}')" for c, n in PAIRS)
    query = f"SELECT c, n, {may_follow('c', 'n')} AS ok FROM (VALUES {values}) AS p(c, n)"
    conn = await asyncpg.connect(shared_dbs.log)
    try:
        got = {(r["c"], r["n"]): r["ok"] for r in await conn.fetch(query)}
    finally:
        await conn.close()
    assert got == {(c, n): allowed(c, n) for c, n in PAIRS}


# --- the Postgres store's status writes -------------------------------------------------------


@pytest.fixture
async def pglog(shared_dbs: SharedDatabases) -> AsyncIterator[PgLog]:
    store = PgLog.connect(shared_dbs.log, pool_size=2)
    try:
        yield store
    finally:
        await store.close()


async def at_status(store: PgLog, dsn: str, current: str) -> str:
    gid = f"guard-{current}-{uuid.uuid4().hex}"
    await store.insert(new_txn(gid, "2pc"), "a", LONG)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE transactions SET status = $2 WHERE gid = $1", gid, current)
    finally:
        await conn.close()
    return gid


@pytest.mark.parametrize("redoable", [False, True])
async def test_pglog_every_pair(pglog: PgLog, shared_dbs: SharedDatabases, redoable: bool) -> None:
    for current, new in PAIRS:
        gid = await at_status(pglog, shared_dbs.log, current)
        progress = [BranchProgress("done", 3, "e"), BranchProgress("failed", 1, None)]
        if allowed(current, new):
            at = await pglog.write_status(gid, 1, new, "why", progress, "moved", redoable=redoable)
            rec = await pglog.get(gid)
            assert rec is not None and (rec.status, rec.reason) == (new, "why"), (current, new)
            assert rec.updated_at == at
            assert [(b.status, b.attempts, b.last_error) for b in rec.branches] == [
                ("done", 3, "e"),
                ("failed", 1, None),
            ]
        else:
            before = await pglog.get(gid)
            with pytest.raises(OwnershipLost) as refused:
                await pglog.write_status(gid, 1, new, "why", progress, "moved", redoable=redoable)
            assert str(refused.value) == (
                f"transaction {gid}: epoch 1 is no longer current, or its logged status "
                f"may not move to '{new}'"
            ), (current, new)
            assert await pglog.get(gid) == before, (current, new)
    # A stale epoch is refused whatever the status.
    gid = await at_status(pglog, shared_dbs.log, "preparing")
    with pytest.raises(OwnershipLost):
        await pglog.write_status(gid, 2, "committing", None, [], "x", redoable=redoable)


async def test_pglog_a_write_recovery_would_not_redo_is_its_own_statement(
    pglog: PgLog, shared_dbs: SharedDatabases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only ``redoable`` writes (rule 4) are coalesced with other transactions': a decision is
    not, by default."""
    gid = await at_status(pglog, shared_dbs.log, "preparing")

    async def coalesced(*args: object) -> None:
        raise AssertionError("a write that recovery would not redo was coalesced")

    monkeypatch.setattr(pglog.status_writes, "write", coalesced)
    await pglog.write_status(gid, 1, "committing", None, [], "decided")
    assert (await pglog.get(gid)).status == "committing"  # type: ignore[union-attr]
