"""Small helpers shared by the integration and fault tests."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from unittest import mock

import asyncpg
import httpx
import orjson
import uvicorn
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection

from participants.ledger.app import create_app as create_ledger_app
from participants.sdk import Handler, ParticipantSettings, wire
from participants.sdk.asgi import BranchCalls
from participants.sdk.guard import Guard
from participants.sdk.tokens import token_entry
from txn_devstack.services import Service
from txn_devstack.stack import Stack

TERMINAL = ("committed", "aborted")


# The admin token of every stack the tests boot (StackConfig(api_token=...)).
TEST_API_TOKEN = "txn_test-admin-token-0123456789abcdefghijklmnopqrstuv"
AUTH = {"Authorization": f"Bearer {TEST_API_TOKEN}"}
# A token that may only look (scope read), accepted by the fault stack's coordinators.
VIEWER_TOKEN = "txn_test-viewer-token-0123456789abcdefghijklmnopqrstu"


def api_client(**kwargs: Any) -> httpx.AsyncClient:
    """An HTTP client for the stack's APIs (coordinator and services' business endpoints): every
    test builds its clients here, with the test stacks' admin token."""
    headers = {**AUTH, **kwargs.pop("headers", {})}
    return httpx.AsyncClient(headers=headers, **kwargs)


def token_entries(scopes: tuple[str, ...] = ("admin",)) -> list[dict[str, Any]]:
    """TXN_API_TOKENS / TXNP_API_TOKENS holding the test token with ``scopes``."""
    return [token_entry("test-admin", TEST_API_TOKEN, scopes)]


async def catalogues_read(client: httpx.AsyncClient, base_url: str, timeout_s: float = 30) -> None:
    """Wait until the coordinator at ``base_url`` has read every participant's catalogue (it
    refuses submissions naming one it has not: a test that stops a participant right after
    (re)starting a coordinator waits here first)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            reply = await client.get(f"{base_url}/readyz")
            if reply.status_code == 200 and all(reply.json().get("catalogues", {}).values()):
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{base_url} has not read every catalogue"
        await asyncio.sleep(0.1)


def branch_headers(
    secret: str,
    participant: str,
    path: str,
    gid: str,
    branch: int,
    op: str,
    body: bytes,
    now: float | None = None,
) -> dict[str, str]:
    """The headers of a branch call signed as the coordinator signs it."""
    return {
        wire.H_GID: gid,
        wire.H_BRANCH: str(branch),
        wire.H_OP: op,
        **wire.signed_headers(secret.encode(), path, participant, gid, branch, op, body, now),
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# The log's events and branches as the rows they were before they moved into the transaction's
# row (migration 0002): for tests that read the log with SQL.
LOG_EVENTS = (
    "(SELECT t.gid, CAST(e.value ->> 'id' AS bigint) AS id, "
    "CAST(e.value ->> 'at' AS timestamptz) AS at, e.value ->> 'kind' AS kind, "
    "CAST(e.value ->> 'branch' AS int) AS branch, e.value -> 'detail' AS detail "
    "FROM transactions AS t, jsonb_array_elements(t.timeline) AS e(value)) AS events"
)
LOG_BRANCHES = (
    "(SELECT t.gid, CAST(b.ord - 1 AS int) AS idx, b.value ->> 'status' AS status, "
    "CAST(b.value ->> 'attempts' AS int) AS attempts, b.value ->> 'last_error' AS last_error, "
    "CAST(b.value ->> 'updated_at' AS timestamptz) AS updated_at "
    "FROM transactions AS t, jsonb_array_elements(t.branches) WITH ORDINALITY AS b(value, ord))"
    " AS branches"
)


async def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def prepared_here(dsn: str) -> list[str]:
    """This database's prepared transactions (a test cluster holds other tests' databases)."""
    query = "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
    return [r["gid"] for r in await fetch(dsn, query)]


class Counting:
    """Wraps a handler and counts how often the business code ran."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls = 0

    async def __call__(self, conn: AsyncConnection, payload: dict[str, Any]) -> Any:
        self.calls += 1
        return await self.handler(conn, payload)


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


def saga_branch(
    ledger: str, account: str, delta: int, depends_on: list[int] | None = None
) -> dict[str, Any]:
    branch: dict[str, Any] = {
        "participant": ledger,
        "action": "/accounts/adjust",
        "compensation": "/accounts/adjust/undo",
        "payload": {"account": account, "delta": delta},
    }
    if depends_on is not None:
        branch["depends_on"] = depends_on
    return branch


async def open_accounts(
    client: httpx.AsyncClient, urls: dict[str, str], account: str, balance: int
) -> None:
    for url in urls.values():
        reply = await client.post(f"{url}/accounts", json={"id": account, "balance": balance})
        assert reply.status_code == 201, reply.text


async def balances(dsns: dict[str, str], account: str) -> dict[str, int]:
    out = {}
    for name, dsn in dsns.items():
        rows = await fetch(dsn, "SELECT balance FROM accounts WHERE id = $1", account)
        out[name] = int(rows[0]["balance"])
    return out


async def barrier_rows(dsn: str, gid: str) -> list[tuple[int, str, str]]:
    rows = await fetch(
        dsn, "SELECT branch, op, outcome FROM txn_barrier WHERE gid = $1 ORDER BY branch, op", gid
    )
    return [(r["branch"], r["op"], r["outcome"]) for r in rows]


def twopc_transfer(gid: str, account: str, moves: dict[str, int]) -> dict[str, Any]:
    """A 2PC submission adjusting ``account`` on each ledger of ``moves`` by its delta."""
    return {
        "gid": gid,
        "mode": "2pc",
        "branches": [
            {
                "participant": ledger,
                "action": "/accounts/adjust",
                "payload": {"account": account, "delta": delta},
            }
            for ledger, delta in moves.items()
        ],
    }


def adjust_body(gid: str, mode: str, account: str, moves: list[tuple[str, int]]) -> dict[str, Any]:
    """A submission adjusting ``account`` by each (ledger, delta), in either mode (a saga's
    branches are compensated by ``/accounts/adjust/undo``)."""
    branches: list[dict[str, Any]] = []
    for ledger, delta in moves:
        branch: dict[str, Any] = {
            "participant": ledger,
            "action": "/accounts/adjust",
            "payload": {"account": account, "delta": delta},
        }
        if mode == "saga":
            branch["compensation"] = "/accounts/adjust/undo"
        branches.append(branch)
    return {"gid": gid, "mode": mode, "branches": branches}


def ledger_app(settings: ParticipantSettings, fast_path: bool = True) -> FastAPI:
    """The ledger service's app; without ``fast_path``, its SDK calls go through the FastAPI
    routes only (as when the router is included without ``Participant.mount``). The SDK's
    guard is outermost either way."""
    if fast_path:
        app = create_ledger_app(settings)
    else:
        with mock.patch("participants.sdk.asgi.BranchCalls", lambda inner, _participant: inner):
            app = create_ledger_app(settings)
    outer = app.build_middleware_stack()
    assert isinstance(outer, Guard), outer
    installed = isinstance(outer.app, BranchCalls)
    assert installed is fast_path, f"fast path installed: {installed}"
    return app


TEST_SECRET = "test-participant-secret"
# What the dev stack gives every participant: its secret and the test token.
SECURE: dict[str, Any] = {"secret": TEST_SECRET, "api_tokens": token_entries()}


def secured(**settings: Any) -> ParticipantSettings:
    """Participant settings as the dev stack gives them."""
    return ParticipantSettings(**{**SECURE, **settings})


async def branch_call(
    client: httpx.AsyncClient,
    participant: str,
    path: str,
    op: str,
    gid: str,
    branch: int,
    payload: dict[str, Any] | None = None,
) -> httpx.Response:
    """POST a branch call signed with TEST_SECRET as ``participant`` (phase two: no payload)."""
    body = b"" if payload is None else orjson.dumps(payload)
    headers = branch_headers(TEST_SECRET, participant, path, gid, branch, op, body)
    return await client.post(path, content=body, headers=headers)


def participant_urls(stack: Stack) -> dict[str, str]:
    """Each participant service's base URL, by name."""
    return {p.name: p.url for p in stack.participants}


def participant_dsns(stack: Stack) -> dict[str, str]:
    """Each participant's own database, by name (those that have one)."""
    return {p.name: p.dsn for p in stack.participants if p.dsn}


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """``app`` on a loopback port of its own (lifespan included); yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "the server did not start"
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def log_size(service: Service) -> int:
    """How long ``service``'s log is now: read what it writes after with ``log_since``."""
    try:
        return service.log_file.stat().st_size
    except FileNotFoundError:
        return 0


def log_since(service: Service, offset: int) -> str:
    with open(service.log_file, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")
