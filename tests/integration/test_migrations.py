"""Migrations: an empty database upgraded to head matches the metadata exactly (what
``alembic check`` verifies), for the log, the ledger and the shop's inventory and payments; the
shop's rows written before revision 0002 survive it; concurrent upgrades are safe."""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData

from coordinator.schema import metadata as log_metadata
from migrations import config, upgrade
from participants.inventory.schema import metadata as inventory_metadata
from participants.ledger.schema import metadata as ledger_metadata
from participants.payments.schema import metadata as payments_metadata
from participants.sdk.db import make_engine
from tests.conftest import create_db
from tests.helpers import fetch
from txn_devstack.postgres import Cluster


async def _diff(dsn: str, metadata: MetaData) -> list[Any]:
    engine = make_engine(dsn, pool_size=1)
    try:
        async with engine.connect() as conn:

            def compare(sync_conn: Any) -> list[Any]:
                context = MigrationContext.configure(sync_conn)
                return list(compare_metadata(context, metadata))

            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


def _upgrade_in_thread(dsn: str, target: str, revision: str = "head") -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            upgrade(dsn, target, revision)
        except BaseException as e:
            errors.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    if errors:
        raise errors[0]


@pytest.mark.parametrize(
    ("target", "metadata", "tables"),
    [
        ("coordinator", log_metadata, {"transactions"}),
        ("ledger", ledger_metadata, {"accounts", "txn_barrier"}),
        ("inventory", inventory_metadata, {"stock", "reservations", "txn_barrier"}),
        ("payments", payments_metadata, {"wallets", "payments", "txn_barrier"}),
    ],
)
async def test_empty_database_upgraded_to_head_matches_metadata(
    pg: Cluster, target: str, metadata: MetaData, tables: set[str]
) -> None:
    dsn = await create_db(pg, None)
    _upgrade_in_thread(dsn, target)
    assert await _diff(dsn, metadata) == []
    rows = await fetch(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert {r["tablename"] for r in rows} == tables | {"alembic_version"}
    # Upgrading again is a no-op.
    _upgrade_in_thread(dsn, target)
    assert await _diff(dsn, metadata) == []


def _downgrade_in_thread(dsn: str, target: str, revision: str) -> None:
    worker = threading.Thread(target=lambda: command.downgrade(config(dsn, target), revision))
    worker.start()
    worker.join()


async def test_a_log_from_before_0002_keeps_its_branches_and_events_in_one_row(
    pg: Cluster,
) -> None:
    """0002 moves each transaction's branches and events into its row, in order, and back down
    again; the store reads the moved row as it read the three tables."""
    from coordinator.pglog import PgLog

    dsn = await create_db(pg, None)
    _upgrade_in_thread(dsn, "coordinator", "0001_log")
    await fetch(
        dsn,
        "INSERT INTO transactions (gid, mode, status, request, request_hash, deadline_at, epoch) "
        "VALUES ('old-1', 'saga', 'running', '{}', 'h', now() + interval '1 hour', 3), "
        "('old-2', '2pc', 'committed', '{}', 'h', now(), 1)",
    )
    await fetch(
        dsn,
        "INSERT INTO branches (gid, idx, participant, action, compensation, payload, status, "
        "attempts, last_error) VALUES "
        "('old-1', 1, 'p2', '/b', '/b/undo', '{\"n\": 2}', 'failed', 2, 'no'), "
        "('old-1', 0, 'p1', '/a', '/a/undo', '{\"n\": 1}', 'succeeded', 1, NULL)",
    )
    await fetch(
        dsn,
        "INSERT INTO events (gid, kind, branch, detail) VALUES "
        "('old-1', 'submitted', NULL, '{\"owner\": \"c1\"}'), "
        "('old-2', 'submitted', NULL, NULL), ('old-1', 'action:failed', 1, NULL)",
    )
    _upgrade_in_thread(dsn, "coordinator", "head")
    assert await _diff(dsn, log_metadata) == []
    store = PgLog.connect(dsn, pool_size=2)
    try:
        record = await store.get("old-1")
        assert record is not None and record.epoch == 3
        assert [
            (b.idx, b.participant, b.payload, b.status, b.attempts, b.last_error)
            for b in record.branches
        ] == [
            (0, "p1", {"n": 1}, "succeeded", 1, None),
            (1, "p2", {"n": 2}, "failed", 2, "no"),
        ]
        events = await store.events("old-1")
        assert [(e.id, e.kind, e.branch, e.detail) for e in events] == [
            (1, "submitted", None, {"owner": "c1"}),
            (2, "action:failed", 1, None),
        ]
        assert [e.kind for e in await store.events("old-2")] == ["submitted"]
        live = await fetch(dsn, "SELECT gid FROM transactions WHERE live ORDER BY gid")
        assert [r["gid"] for r in live] == ["old-1"]
    finally:
        await store.close()
    _downgrade_in_thread(dsn, "coordinator", "0001_log")
    rows = await fetch(dsn, "SELECT gid, idx, participant, status FROM branches ORDER BY gid, idx")
    assert [tuple(r) for r in rows] == [
        ("old-1", 0, "p1", "succeeded"),
        ("old-1", 1, "p2", "failed"),
    ]
    kinds = await fetch(dsn, "SELECT gid, kind FROM events ORDER BY id")
    assert sorted(tuple(r) for r in kinds) == [
        ("old-1", "action:failed"),
        ("old-1", "submitted"),
        ("old-2", "submitted"),
    ]


async def test_shop_rows_from_before_0002_get_an_owner_no_branch_has(pg: Cluster) -> None:
    """Rows written before reservations and payments recorded their branch keep their business
    columns and get gid 'before-0002:<order>', branch -1: no compensation can match them."""
    inventory, payments = await create_db(pg, None), await create_db(pg, None)
    _upgrade_in_thread(inventory, "inventory", "0001_stock")
    _upgrade_in_thread(payments, "payments", "0001_wallets")
    await fetch(
        inventory,
        "INSERT INTO reservations (order_id, sku, qty, status) VALUES "
        "('o1', 'SKU-1', 2, 'reserved'), ('o2', 'SKU-1', 1, 'released')",
    )
    await fetch(
        payments,
        "INSERT INTO payments (order_id, customer, amount, status) VALUES "
        "('o1', 'alice', 4800, 'captured'), ('o2', 'bob', 2400, 'refunded')",
    )
    _upgrade_in_thread(inventory, "inventory", "head")
    _upgrade_in_thread(payments, "payments", "head")
    assert await _diff(inventory, inventory_metadata) == []
    assert await _diff(payments, payments_metadata) == []
    held = await fetch(
        inventory, "SELECT gid, branch, order_id, sku, qty, status FROM reservations"
    )
    assert sorted(tuple(r) for r in held) == [
        ("before-0002:o1", -1, "o1", "SKU-1", 2, "reserved"),
        ("before-0002:o2", -1, "o2", "SKU-1", 1, "released"),
    ]
    paid = await fetch(payments, "SELECT gid, branch, order_id, amount, status FROM payments")
    assert sorted(tuple(r) for r in paid) == [
        ("before-0002:o1", -1, "o1", 4800, "captured"),
        ("before-0002:o2", -1, "o2", 2400, "refunded"),
    ]
    # An order may be paid again after a refund (a new row) but never hold two captured.
    again = "INSERT INTO payments (gid, branch, order_id, customer, amount, status) VALUES "
    await fetch(payments, again + "('g', 1, 'o2', 'bob', 2400, 'captured')")
    with pytest.raises(asyncpg.UniqueViolationError):
        await fetch(payments, again + "('h', 1, 'o2', 'bob', 1, 'captured')")
    # And back down: the refunded history of o2 goes, its captured payment stays.
    _downgrade_in_thread(payments, "payments", "0001_wallets")
    paid = await fetch(payments, "SELECT order_id, amount, status FROM payments")
    assert sorted(tuple(r) for r in paid) == [("o1", 4800, "captured"), ("o2", 2400, "captured")]
    _downgrade_in_thread(inventory, "inventory", "0001_stock")
    held = await fetch(inventory, "SELECT order_id, sku, qty, status FROM reservations")
    assert sorted(tuple(r) for r in held) == [
        ("o1", "SKU-1", 2, "reserved"),
        ("o2", "SKU-1", 1, "released"),
    ]


async def test_the_diff_would_see_a_drifted_schema(pg: Cluster) -> None:
    """Guard against a comparison that cannot fail: drop an index and it must be reported."""
    dsn = await create_db(pg, None)
    _upgrade_in_thread(dsn, "coordinator")
    await fetch(dsn, "DROP INDEX transactions_due")
    diff = await _diff(dsn, log_metadata)
    assert any("transactions_due" in repr(d) for d in diff), diff


async def test_concurrent_upgrades_are_safe(pg: Cluster) -> None:
    """Several processes (coordinators starting together) upgrade one database at once: the
    advisory lock in the migration environment makes them take turns."""
    dsn = await create_db(pg, None)
    argv = [sys.executable, "-m", "coordinator.cli", "migrate", "--dsn", dsn]
    procs = [
        await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        for _ in range(3)
    ]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 120)
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    versions = await fetch(dsn, "SELECT version_num FROM alembic_version")
    assert [r["version_num"] for r in versions] == ["0002_one_row"]
    assert await _diff(dsn, log_metadata) == []
