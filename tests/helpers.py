"""Small helpers shared by the integration and fault tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import httpx

TERMINAL = ("committed", "aborted")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def prepared_xacts(dsn: str) -> list[str]:
    rows = await fetch(dsn, "SELECT gid FROM pg_prepared_xacts")
    return [r["gid"] for r in rows]


async def wait_terminal(
    client: httpx.AsyncClient, base_url: str, gid: str, timeout_s: float = 30.0
) -> dict[str, Any]:
    """Poll GET /v1/transactions/{gid} until terminal; connection errors (a coordinator being
    restarted) are expected and retried until the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            reply = await client.get(f"{base_url}/v1/transactions/{gid}")
            last = reply.json() if reply.status_code == 200 else reply.status_code
            if reply.status_code == 200 and reply.json()["status"] in TERMINAL:
                result: dict[str, Any] = reply.json()
                return result
        except httpx.TransportError as e:
            last = repr(e)
        await asyncio.sleep(0.1)
    raise AssertionError(f"{gid} not terminal after {timeout_s}s; last seen: {last}")
