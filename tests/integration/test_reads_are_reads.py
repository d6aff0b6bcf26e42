"""Reads are reads: every GET route of the coordinator (the API and the console's pages), asked
about transactions in every state, including a 2PC transaction still `preparing` whose owner's
lease has run out (the one a question about doubt would abort), leaves the log exactly as it
was, row for row. Only the participants' signed POST /v1/resolve may decide on doubt."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.routing import Mount

from coordinator.api import create_app
from coordinator.pglog import PgLog
from tests.integration.test_console_pages import new, sign_in
from tests.unit.test_api_auth import TOKENS, settings
from tests.unit.test_intervention_api import Scripted


async def snapshot(dsn: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT * FROM transactions ORDER BY gid")
        return [tuple(r.values()) for r in rows]
    finally:
        await conn.close()


@pytest.fixture
async def coordinator(log_dsn: str) -> AsyncIterator[tuple[httpx.AsyncClient, Any, PgLog]]:
    store = PgLog.connect(log_dsn, pool_size=2)
    # No recovery: nothing but the requests themselves may write.
    app = create_app(settings(recovery=False), store, Scripted())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://c", timeout=30
        ) as client,
    ):
        yield client, app, store


def get_paths(routes: list[Any], prefix: str = "") -> list[str]:
    """Every GET route's path, included routers (the console's) too."""
    paths = []
    for route in routes:
        included = getattr(route, "original_router", None)  # a router included in the app
        if included is not None:
            paths += get_paths(included.routes, prefix + route.include_context.prefix)
            continue
        if isinstance(route, Mount) or "GET" not in (getattr(route, "methods", None) or ()):
            continue
        paths.append(prefix + re.sub(r"\{idx\}", "0", route.path))
    return paths


async def test_no_get_changes_the_log(
    coordinator: tuple[httpx.AsyncClient, Any, PgLog], log_dsn: str
) -> None:
    client, app, store = coordinator
    # One of each: an orphaned 2PC (lease already lapsed), a live saga, a finished one.
    await store.insert(new("orphan", "2pc"), "gone", 0.01)
    await store.insert(new("running", "saga"), "gone", 600.0)
    await store.insert(new("done", "saga"), "gone", 600.0)
    await store.write_status("done", 1, "committed", None, [], "finished")
    await asyncio.sleep(0.05)
    await sign_in(client, "admin")
    before = await snapshot(log_dsn)

    paths = get_paths(app.routes)
    assert "/v1/transactions/{gid}" in paths and "/console/transactions/{gid}" in paths
    asked = 0
    for path in paths:
        for gid in ("orphan", "running", "done"):
            url = path.replace("{gid}", gid).replace("{action}", "abort")
            reply = await client.get(url, headers={"Authorization": f"Bearer {TOKENS['admin']}"})
            assert reply.status_code < 500, (url, reply.status_code, reply.text[:200])
            asked += 1
            if "{gid}" not in path:
                break
    assert asked >= 10
    assert await snapshot(log_dsn) == before  # row for row, every column
    orphan = await store.get("orphan")
    assert orphan is not None and orphan.status == "preparing"
