"""The sizing functions count what real processes open: a started coordinator whose every pool
is taken to its limit holds exactly max_log_connections on its log, a ledger service under more
concurrent calls than its pool holds exactly max_service_connections on its database (counted
in pg_stat_activity), and the stack's servers run with the max_connections it computed."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.api import create_app as create_coordinator
from coordinator.settings import LOG_APPLICATION_NAME, Settings
from coordinator.sizing import ASYNCPG_POOLS, max_log_connections
from participants.ledger.app import LedgerSettings
from participants.ledger.app import create_app as create_ledger
from participants.sdk.sizing import max_service_connections
from tests.helpers import fetch, unique
from txn_devstack.postgres import SUPERUSER_RESERVED
from txn_devstack.stack import Stack

# How long a checkout may wait before the pool counts as exhausted.
EXHAUSTED_AFTER_S = 0.5


def database_of(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1].split("?", 1)[0]


def admin_dsn(dsn: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/postgres"


async def backends(dsn: str, where: str, *args: Any) -> int:
    """Server processes on ``dsn``'s database matching ``where`` (counted from another one)."""
    rows = await fetch(
        admin_dsn(dsn),
        f"SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND {where}",
        database_of(dsn),
        *args,
    )
    return int(rows[0]["n"])


async def drain_asyncpg(pool: asyncpg.Pool) -> list[Any]:
    """Every connection ``pool`` gives before a checkout has to wait."""
    held: list[Any] = []
    while True:
        try:
            held.append(await pool.acquire(timeout=EXHAUSTED_AFTER_S))
        except TimeoutError:
            return held


async def drain_engine(engine: AsyncEngine) -> list[AsyncConnection]:
    held: list[AsyncConnection] = []
    while True:
        try:
            held.append(await asyncio.wait_for(engine.connect(), EXHAUSTED_AFTER_S))
        except TimeoutError:
            return held


async def test_a_coordinator_opens_at_most_what_sizing_counts(log_dsn: str) -> None:
    """With a pool size whose eighth is above the floor of 2 (24: engine pool 3), taking every
    pool the coordinator's log store holds to its limit opens exactly the counted number of
    connections, and not one more: a further checkout from any of them waits."""
    settings = Settings(
        log_dsn=SecretStr(log_dsn),
        pool_size=24,
        instance_id=unique("sizing"),
        insecure_no_auth=True,
        insecure_unsigned=True,
        recovery=False,
        retention=timedelta(0),
    )
    app = create_coordinator(settings)
    async with app.router.lifespan_context(app):
        store = app.state.coordinator.store
        assert await store.get(unique("gid")) is None  # opens the asyncpg pools (lazily made)
        pools = [v for v in vars(store).values() if isinstance(v, asyncpg.Pool)]
        engines = [v for v in vars(store).values() if isinstance(v, AsyncEngine)]
        assert (len(pools), len(engines)) == (ASYNCPG_POOLS, 1)
        held_pooled = [await drain_asyncpg(pool) for pool in pools]
        held_engine = await drain_engine(engines[0])
        try:
            mine = f"{LOG_APPLICATION_NAME} {settings.instance_id}"
            opened = await backends(log_dsn, "application_name = $2", mine)
            assert opened == max_log_connections(settings) == 2 * 24 + 2 * 3
            assert sum(map(len, held_pooled)) + len(held_engine) == opened
        finally:
            for pool, held in zip(pools, held_pooled, strict=True):
                for conn in held:
                    await pool.release(conn)
            for conn in held_engine:
                await conn.close()


async def test_a_participant_service_opens_at_most_what_sizing_counts(ledger_dsn: str) -> None:
    """Ten account creations at once, each blocked on a row another transaction is inserting,
    against a ledger of pool size 2: it holds exactly the counted 4 connections, every one
    waiting on that lock, and opens no more while the other calls wait for one."""
    settings = LedgerSettings(
        dsn=SecretStr(ledger_dsn),
        pool_size=2,
        lock_timeout_ms=20_000,
        barrier_retention=timedelta(0),
        insecure_no_auth=True,
        insecure_unsigned=True,
    )
    expected = max_service_connections(settings)
    app = create_ledger(settings)
    blocker = await asyncpg.connect(ledger_dsn)
    others = "pid <> $2"
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("INSERT INTO accounts (id, balance) VALUES ('contended', 0)")
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://ledger", timeout=30
            ) as client,
        ):
            calls = [
                asyncio.create_task(
                    client.post("/accounts", json={"id": "contended", "balance": 1})
                )
                for _ in range(10)
            ]
            deadline = time.monotonic() + 10
            pid = blocker.get_server_pid()
            while await backends(ledger_dsn, others, pid) < expected:
                assert time.monotonic() < deadline, "the calls never took the whole pool"
                await asyncio.sleep(0.05)
            await asyncio.sleep(EXHAUSTED_AFTER_S)  # room for a connection too many
            assert await backends(ledger_dsn, others, pid) == expected == 4
            waiting = await backends(ledger_dsn, f"{others} AND wait_event_type = 'Lock'", pid)
            assert waiting == expected
            assert not any(call.done() for call in calls)
            await tx.rollback()
            replies = await asyncio.gather(*calls)
        assert sorted(r.status_code for r in replies) == [201] + [409] * 9
    finally:
        await blocker.close()


async def test_the_stack_s_servers_run_with_the_max_connections_it_computed(
    stack: Stack,
) -> None:
    """Each server of the session's stack runs with what its services need (as stack.json
    records), and with the superuser's reserve that count assumes."""
    needs = stack.connection_needs()
    recorded = {
        c["name"]: c["max_connections"]
        for c in json.loads((stack.state_dir / "stack.json").read_text())["clusters"]
    }
    assert set(needs) == set(stack.clusters) == set(recorded)
    for name, cluster in stack.clusters.items():
        shown = await fetch(
            cluster.dsn("postgres"),
            "SELECT current_setting('max_connections')::int AS most, "
            "current_setting('superuser_reserved_connections')::int AS reserved",
        )
        wanted = stack.max_connections(needs[name])
        assert (shown[0]["most"], shown[0]["reserved"]) == (wanted, SUPERUSER_RESERVED), name
        assert recorded[name] == wanted, name
