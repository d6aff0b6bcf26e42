"""The submission's ASGI fast path answers exactly as the FastAPI route does: the same requests,
valid and not, against an app with the fast path and one without it (in memory: MemLog and a
transport that always says yes; the contract suite keeps MemLog honest)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast
from unittest import mock

import httpx
import pytest
from fastapi import FastAPI

from coordinator import api
from coordinator.api import create_app
from coordinator.fastpath import SubmitFastPath
from coordinator.memlog import MemLog
from coordinator.settings import Settings
from coordinator.transport import Kind, Reply
from tests.helpers import api_client, token_entries

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


class YesTransport:
    async def call(self, *_args: Any) -> Reply:
        return Reply(Kind.OK, 200, "")

    async def catalogue(self, _participant: str) -> list[dict[str, Any]]:
        undo = {"path": "/undo", "kind": "compensation"}
        return [
            *({"path": p, "kind": "2pc"} for p in ("/x", "/y")),
            *({"path": p, "kind": "action", "compensation": "/undo"} for p in ("/x", "/y")),
            undo,
        ]

    async def close(self) -> None:
        return None


def app_with(fast_path: bool) -> FastAPI:
    settings = Settings(
        participants={"a": "http://127.0.0.1:9", "b": "http://127.0.0.1:9"},
        participant_secrets={"a": "sa", "b": "sb"},
        api_tokens=token_entries(),
        recovery=False,
    )
    # The stack is built here, where the patch holds (an app builds it when it first serves).
    without = mock.patch.object(api, "SubmitFastPath", lambda inner, _coordinator: inner)
    with without if not fast_path else contextlib.nullcontext():
        app = create_app(settings, MemLog(clock=lambda: NOW), YesTransport())
        app.middleware_stack = app.build_middleware_stack()
    # The fast path sits inside the guard and admission, outside the app's middleware stack.
    assert isinstance(cast(Any, app.middleware_stack).app.app, SubmitFastPath) is fast_path
    return app


@pytest.fixture
async def clients() -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    fast, route = app_with(True), app_with(False)
    async with (
        fast.router.lifespan_context(fast),
        route.router.lifespan_context(route),
        api_client(transport=httpx.ASGITransport(app=fast), base_url="http://c") as f,
        api_client(transport=httpx.ASGITransport(app=route), base_url="http://c") as r,
    ):
        yield f, r


def txn(gid: str, mode: str = "2pc", **extra: Any) -> dict[str, Any]:
    branches: list[dict[str, Any]] = [
        {"participant": "a", "action": "/x", "payload": {"n": 1}},
        {"participant": "b", "action": "/y"},
    ]
    if mode == "saga":
        for b in branches:
            b["compensation"] = "/undo"
    return {"gid": gid, "mode": mode, "branches": branches, **extra}


def raw(value: Any) -> bytes:
    return json.dumps(value).encode()


# (query string, body): in order, against both apps.
REQUESTS: list[tuple[str, bytes]] = [
    ("wait=5", raw(txn("g1"))),
    ("wait=5", raw(txn("g1"))),  # the same again: 200
    ("wait=5", raw(txn("g1", timeout_s=9))),  # same gid, other body: 409
    ("", raw(txn("g2", "saga"))),  # no wait: the answer as logged
    ("wait=2&wait=3", raw(txn("g3"))),
    ("wait=5&verbose=1", raw(txn("g4"))),  # a parameter the route ignores
    ("wait=-1", raw(txn("g5"))),
    ("wait=abc", raw(txn("g5"))),
    ("wait=nan", raw(txn("g5"))),
    ("wait=301", raw(txn("g5"))),
    ("", b"{not json"),
    ("", b"[]"),
    ("", raw({"mode": "2pc"})),
    ("", raw(txn("g6", "3pc"))),
    ("", raw({**txn("g7"), "branches": [{"participant": "nobody", "action": "/x"}]})),
    ("", raw(txn("bad gid"))),
    (
        "wait=5",
        raw(
            {
                **txn("g8"),
                "branches": [{"participant": "a", "action": "/x", "payload": {"big": 2**70}}],
            }
        ),
    ),
    ("wait=5", raw(txn("g9", "saga", retry={"max_attempts": 2}))),
    ("", b'{"gid": "g10", "gid": "g11", "mode": "2pc", "branches": []}'),
]


@pytest.mark.parametrize("query,body", REQUESTS)
async def test_the_fast_path_answers_as_the_route(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], query: str, body: bytes
) -> None:
    fast, route = clients
    headers = {"content-type": "application/json"}
    url = f"/v1/transactions?{query}" if query else "/v1/transactions"
    a = await fast.post(url, content=body, headers=headers)
    b = await route.post(url, content=body, headers=headers)
    assert (a.status_code, a.json()) == (b.status_code, b.json())


async def test_valid_submissions_do_not_reach_the_route(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    fast, _ = clients
    calls = mock.Mock(wraps=api.submit_txn)
    with mock.patch.object(api, "submit_txn", calls):
        ok = await fast.post("/v1/transactions?wait=5", json=txn("h1"))
        assert ok.status_code == 201 and ok.json()["status"] == "committed"
        assert calls.call_count == 0
        refused = await fast.post("/v1/transactions", json={"mode": "2pc"})
        assert refused.status_code == 422
        unknown = await fast.post(
            "/v1/transactions",
            json={**txn("h2"), "branches": [{"participant": "z", "action": "/x"}]},
        )
        assert unknown.status_code == 422
        # Both refusals are normalize()'s, so the route answered them.
        assert calls.call_count == 2
