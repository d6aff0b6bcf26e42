"""The coordinator's API is authenticated in one place: the guard in front of the submission's
fast path and every FastAPI route. Every route is tried without a token, with a wrong one, and
with a token lacking its scope; submissions both valid (the fast path answers them) and
invalid (the route does). Bodies are limited while read, writes must be JSON, and a flood of
submissions beyond TXN_MAX_IN_FLIGHT is refused before anything is logged. In memory: MemLog
and scripted transports (the contract suite keeps MemLog honest)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from coordinator.api import create_app
from coordinator.memlog import MemLog
from coordinator.records import ListFilter
from coordinator.settings import Settings
from coordinator.transport import Kind, Reply
from participants.sdk import wire
from participants.sdk.tokens import new_token, token_entry
from tests.unit.test_submit_fastpath import YesTransport

TOKENS = {scope: new_token() for scope in ("admin", "submit", "read", "metrics")}
REGISTRY = {"a": "http://127.0.0.1:9", "b": "http://127.0.0.1:9"}


def settings(**over: Any) -> Settings:
    return Settings(
        **{
            "participants": REGISTRY,
            "participant_secrets": {"a": "sa", "b": "sb"},
            "api_tokens": [token_entry(s, t, [s]) for s, t in TOKENS.items()],
            "recovery": False,
            **over,
        }
    )


@contextlib.asynccontextmanager
async def client_of(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c") as c,
    ):
        yield c


def bearer(scope: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[scope]}"}


VALID = {"mode": "2pc", "branches": [{"participant": "a", "action": "/x"}]}
INVALID = {"mode": "2pc", "branches": []}


def routes(app: FastAPI) -> list[tuple[str, str, str]]:
    """(method, path, required scope) of every route of the app, from its OpenAPI document."""
    out = []
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            concrete = path.replace("{gid}", "g1").replace("{idx}", "0")
            scope = {"get": "read", "post": "submit"}[method]
            if path in ("/readyz", "/metrics"):
                scope = "metrics"
            if path.endswith(("/retry", "/abort", "/resolve")):
                scope = "admin"  # an operator's action
            out.append((method.upper(), concrete, scope))
    return out


async def test_every_route_refuses_a_missing_or_wrong_token_and_a_wrong_scope() -> None:
    app = create_app(settings(), MemLog(), YesTransport())
    async with client_of(app) as client:
        found = routes(app)
        assert {p for _, p, _ in found} >= {
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/transactions",
            "/v1/transactions/g1",
            "/v1/transactions/g1/retry",
            "/v1/transactions/g1/abort",
            "/v1/transactions/g1/branches/0/resolve",
            wire.RESOLVE_PATH,
            wire.ENDED_PATH,
        }
        for method, path, scope in found:
            body: dict[str, Any] = {"json": VALID} if method == "POST" else {}
            if scope == "admin":
                body = {"json": {"note": "checking the guard"}}
            bare = await client.request(method, path, **body)
            if path == "/healthz":
                assert bare.status_code == 200
                continue
            assert bare.status_code == 401, (method, path, bare.text)
            if path in (wire.RESOLVE_PATH, wire.ENDED_PATH):
                # Signed by a participant's secret, never a bearer token.
                assert "Txn-Participant" in bare.json()["detail"]
                continue
            assert bare.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer" in bare.json()["detail"]
            wrong = await client.request(
                method, path, headers={"Authorization": "Bearer txn_wrong"}, **body
            )
            assert wrong.status_code == 401 and wrong.json()["detail"] == "unknown or revoked token"
            basic = await client.request(
                method, path, headers={"Authorization": "Basic YTpi"}, **body
            )
            assert basic.status_code == 401
            other = "read" if scope != "read" else "submit"
            lacking = await client.request(method, path, headers=bearer(other), **body)
            assert lacking.status_code == 403, (method, path, lacking.text)
            assert f"lacks scope '{scope}'" in lacking.json()["detail"]
            allowed = await client.request(method, path, headers=bearer(scope), **body)
            assert allowed.status_code not in (401, 403), (method, path, allowed.text)
            admin = await client.request(method, path, headers=bearer("admin"), **body)
            assert admin.status_code not in (401, 403), (method, path, admin.text)


async def test_both_submission_paths_are_guarded_and_a_reader_cannot_submit() -> None:
    store = MemLog()
    app = create_app(settings(), store, YesTransport())
    async with client_of(app) as client:
        for body in (VALID, INVALID):  # the fast path answers the first, the route the second
            for headers in ({}, {"Authorization": "Bearer nope"}, bearer("read")):
                refused = await client.post("/v1/transactions", json=body, headers=headers)
                assert refused.status_code in (401, 403), refused.text
        assert (await store.page(ListFilter(), 10, None)).items == []
        ok = await client.post("/v1/transactions", json=VALID, headers=bearer("submit"))
        assert ok.status_code == 201, ok.text
        bad = await client.post("/v1/transactions", json=INVALID, headers=bearer("submit"))
        assert bad.status_code == 422


async def test_open_settings_open_only_what_they_name() -> None:
    app = create_app(settings(open_metrics=True, open_docs=True), MemLog(), YesTransport())
    async with client_of(app) as client:
        for path in ("/metrics", "/readyz", "/openapi.json", "/docs"):
            assert (await client.get(path)).status_code == 200, path
        assert (await client.get("/v1/transactions")).status_code == 401
        assert (await client.post("/v1/transactions", json=VALID)).status_code == 401


def test_the_openapi_document_declares_the_bearer_scheme() -> None:
    schema = create_app(settings(), MemLog(), YesTransport()).openapi()
    scheme = schema["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert schema["security"] == [{"bearerAuth": []}]
    assert schema["paths"]["/healthz"]["get"]["security"] == []
    assert schema["paths"][wire.RESOLVE_PATH]["post"]["security"] == []
    assert schema["paths"][wire.ENDED_PATH]["post"]["security"] == []
    assert "security" not in schema["paths"]["/v1/transactions"]["post"]  # the global one


def test_an_insecure_start_is_refused() -> None:
    with pytest.raises(ValueError, match="TXN_API_TOKENS"):
        create_app(settings(api_tokens=[]), MemLog(), YesTransport())
    with pytest.raises(ValueError, match="TXN_PARTICIPANT_SECRETS"):
        create_app(settings(participant_secrets={"a": "sa"}), MemLog(), YesTransport())
    create_app(settings(api_tokens=[], insecure_no_auth=True), MemLog(), YesTransport())


async def test_bodies_are_limited_while_read_and_writes_must_be_json() -> None:
    store = MemLog()
    app = create_app(settings(), store, YesTransport())
    chunks_sent = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        for _ in range(10 * 16):  # 10 MiB in 64 KiB chunks, no Content-Length
            chunks_sent += 1
            yield b" " * 65536

    async with client_of(app) as client:
        chunked = await client.post(
            "/v1/transactions",
            content=stream(),
            headers={**bearer("submit"), "content-type": "application/json"},
        )
        assert chunked.status_code == 413 and "over" in chunked.json()["detail"]
        assert chunks_sent < 10 * 16  # refused as soon as the limit passed, not after it all
        declared = await client.post(
            "/v1/transactions",
            content=b"{}",
            headers={
                **bearer("submit"),
                "content-type": "application/json",
                "content-length": str(64 * 1024 * 1024),
            },
        )
        assert declared.status_code == 413
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {**bearer("submit")}
            if content_type is not None:
                headers["content-type"] = content_type
            form = await client.post(
                "/v1/transactions", content=orjson.dumps(VALID), headers=headers
            )
            assert form.status_code == 415, (content_type, form.text)
            assert "application/json" in form.json()["detail"]
        charset = await client.post(
            "/v1/transactions",
            content=b'{"mode": "2pc", "branches": [{"participant": "a", "action": "/x"}]}',
            headers={**bearer("submit"), "content-type": "application/json; charset=utf-8"},
        )
        assert charset.status_code == 201, charset.text
    assert len((await store.page(ListFilter(), 10, None)).items) == 1


class HeldTransport(YesTransport):
    """Every participant call waits until the test lets it go: transactions stay in flight."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def call(self, *_args: Any) -> Reply:
        await self.release.wait()
        return Reply(Kind.OK, 200, "", {})


async def test_a_flood_beyond_max_in_flight_is_refused_with_retry_after_and_not_logged() -> None:
    store, transport = MemLog(), HeldTransport()
    app = create_app(settings(max_in_flight=3), store, transport)
    async with client_of(app) as client:
        bodies = [{**VALID, "gid": f"flood-{i}"} for i in range(12)]
        replies = await asyncio.gather(
            *(client.post("/v1/transactions", json=b, headers=bearer("submit")) for b in bodies)
        )
        statuses = sorted(r.status_code for r in replies)
        assert statuses == [201] * 3 + [429] * 9, statuses
        for refused in (r for r in replies if r.status_code == 429):
            assert refused.headers["retry-after"] == "1"
            assert "TXN_MAX_IN_FLIGHT" in refused.json()["detail"]
        logged = {t.gid for t in (await store.page(ListFilter(), 50, None)).items}
        accepted = {b["gid"] for b, r in zip(bodies, replies, strict=True) if r.status_code == 201}
        assert logged == accepted and len(logged) == 3
        transport.release.set()
