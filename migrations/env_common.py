"""Shared body of every migration environment: async engine, one advisory lock so concurrent
upgrades (several coordinators starting at once) run one after the other."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection

from participants.sdk.db import make_engine

# Any fixed key works; it only has to be the same for every process migrating one database.
_MIGRATION_LOCK = 7_340_001


def run(metadata: MetaData) -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("sqlalchemy.url is not set")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    asyncio.run(_online(url, metadata))


def _migrate(conn: Connection, metadata: MetaData) -> None:
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
    context.configure(connection=conn, target_metadata=metadata, transaction_per_migration=False)
    context.run_migrations()


async def _online(url: str, metadata: MetaData) -> None:
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_migrate, metadata)
    finally:
        await engine.dispose()
