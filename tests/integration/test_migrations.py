"""Migrations: an empty database upgraded to head matches the metadata exactly (what
``alembic check`` verifies), for the log and for the ledger; concurrent upgrades are safe."""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData

from coordinator.db import make_engine
from coordinator.schema import metadata as log_metadata
from devstack.postgres import Cluster
from migrations import upgrade
from participants.ledger.schema import metadata as ledger_metadata
from tests.conftest import create_db
from tests.helpers import fetch


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


def _upgrade_in_thread(dsn: str, target: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            upgrade(dsn, target)
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
        ("coordinator", log_metadata, {"transactions", "branches", "events"}),
        ("ledger", ledger_metadata, {"accounts", "txn_barrier"}),
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
    assert [r["version_num"] for r in versions] == ["0001_log"]
    assert await _diff(dsn, log_metadata) == []
