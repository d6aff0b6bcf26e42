"""The log's guards, on both stores: a status write cannot leave a decided or terminal status,
the own-claim after a restart takes only an earlier incarnation's rows, and (Postgres) the pools
that write decisions and outcomes commit synchronously whatever the server's default."""

from __future__ import annotations

import asyncpg
import pytest

from coordinator.errors import OwnershipLost
from coordinator.logstore import LogStore
from coordinator.pglog import PgLog
from tests.contract.test_logstore_contract import LONG, gids, must_get, new_txn, progress, tick

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
