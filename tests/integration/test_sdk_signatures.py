"""Participant calls are authenticated by default: a branch call must be signed with the
participant's own secret, for its name, that path, branch and body, within the replay window.
Every refusal is a 401 or 422 that says why, never a 500, and changes nothing. Run against the
ledger service in memory (real Postgres), through the SDK's fast path and its routes alike."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from participants.sdk import wire
from tests.helpers import (
    TEST_SECRET,
    api_client,
    branch_headers,
    fetch,
    ledger_app,
    prepared_here,
    secured,
)

BODY = b'{"account": "acct", "delta": 5}'
ADJUST = "/accounts/adjust"


def gid() -> str:
    return f"sig-{uuid.uuid4().hex}"


async def balance(dsn: str) -> int:
    return int((await fetch(dsn, "SELECT balance FROM accounts WHERE id = 'acct'"))[0]["balance"])


@pytest.fixture(params=[True, False], ids=["fast-path", "routes-only"])
async def ledger(
    request: pytest.FixtureRequest, ledger_dsn: str
) -> AsyncIterator[Callable[..., Any]]:
    """A factory: ``await ledger(**settings)`` -> an HTTP client of a ledger app so set up."""
    async with contextlib.AsyncExitStack() as running:

        async def make(**settings: Any) -> httpx.AsyncClient:
            app = ledger_app(secured(name="ledger1", dsn=ledger_dsn, **settings), request.param)
            await running.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            client = api_client(transport=transport, base_url="http://ledger")
            return await running.enter_async_context(client)

        await fetch(ledger_dsn, "INSERT INTO accounts (id, balance) VALUES ('acct', 10)")
        yield make


def signed(g: str, op: str = "prepare", **over: Any) -> dict[str, str]:
    fields: dict[str, Any] = {
        "secret": TEST_SECRET,
        "participant": "ledger1",
        "path": ADJUST,
        "gid": g,
        "branch": 0,
        "op": op,
        "body": BODY,
    }
    fields.update(over)
    return branch_headers(**fields)


async def test_every_forged_or_malformed_call_is_refused_and_changes_nothing(
    ledger: Callable[..., Any], ledger_dsn: str
) -> None:
    client = await ledger()
    g = gid()
    now = time.time()
    unsigned = {wire.H_GID: g, wire.H_BRANCH: "0", wire.H_OP: "prepare"}
    refusals: dict[str, tuple[dict[str, str], int]] = {
        "unsigned": (unsigned, 401),
        "wrong secret": (signed(g, secret="not-the-secret"), 401),
        "signed for another participant (replayed from ledger2)": (
            signed(g, participant="ledger2"),
            401,
        ),
        "signed for another path": (signed(g, path="/accounts/adjust/undo"), 401),
        "signed for another gid": ({**signed(gid()), wire.H_GID: g}, 401),
        "signed for another branch": ({**signed(g, branch=1), wire.H_BRANCH: "0"}, 401),
        "signed as another op": ({**signed(g, op="action"), wire.H_OP: "prepare"}, 401),
        "signed for another body": (signed(g, body=b'{"account": "acct", "delta": 500}'), 401),
        "signed as a reply over this body": (
            {**signed(g), wire.H_SIGNATURE: wire.sign_reply(TEST_SECRET.encode(), BODY)},
            401,
        ),
        "too old": (signed(g, now=now - 301), 401),
        "from the future": (signed(g, now=now + 301), 401),
        "non-ASCII signature": ({**signed(g), wire.H_SIGNATURE: "é" * 64}, 401),
        "short signature": ({**signed(g), wire.H_SIGNATURE: "abc"}, 401),
        "malformed timestamp": ({**signed(g), wire.H_TIMESTAMP: "yesterday"}, 401),
        "superscript branch": ({**signed(g), wire.H_BRANCH: "²"}, 422),
        "branch out of range": ({**signed(g), wire.H_BRANCH: "64"}, 422),
        "gid '..'": ({**signed(g), wire.H_GID: ".."}, 422),
    }
    for why, (headers, status) in refusals.items():
        encoded = {k: v.encode() for k, v in headers.items()}  # httpx refuses non-ASCII str
        reply = await client.post(ADJUST, content=BODY, headers=encoded)
        assert reply.status_code == status, (why, reply.status_code, reply.text)
        assert reply.json()["detail"], why
    assert await prepared_here(ledger_dsn) == []
    good = await client.post(ADJUST, content=BODY, headers=signed(g))
    assert good.status_code == 200, good.text
    assert good.json()["prepared"] == wire.xid(g, 0)
    # The same signed call replayed inside the window: the barrier answers as the first did.
    again = await client.post(ADJUST, content=BODY, headers=signed(g))
    assert again.status_code == 200 and again.json()["repeat"] is True


async def test_an_unauthenticated_rollback_cannot_undo_a_prepared_branch(
    ledger: Callable[..., Any], ledger_dsn: str
) -> None:
    client = await ledger()
    g = gid()
    assert (await client.post(ADJUST, content=BODY, headers=signed(g))).status_code == 200
    xid = wire.xid(g, 0)
    unsigned = {wire.H_GID: g, wire.H_BRANCH: "0"}

    def rollback(g: str, path: str = wire.ROLLBACK_PATH, **over: Any) -> dict[str, str]:
        return signed(g, "rollback", path=path, body=b"", **over)

    forged = {
        "unsigned": unsigned,
        "wrong secret": rollback(g, secret="guess"),
        # Signed as a rollback for another path: only the path tells the two phase-two calls
        # apart, so a scheme that left it out would take this for a rollback.
        "signed for the commit path": rollback(g, wire.COMMIT_PATH),
        "a commit's signature": signed(g, "commit", path=wire.COMMIT_PATH, body=b""),
        "signed for another gid": {**rollback(gid()), wire.H_GID: g},
        "signed for another branch": {**rollback(g, branch=1), wire.H_BRANCH: "0"},
    }
    for why, headers in forged.items():
        reply = await client.post(wire.ROLLBACK_PATH, headers=headers)
        assert reply.status_code == 401, (why, reply.text)
    assert xid in await prepared_here(ledger_dsn)
    commit = signed(g, op="commit", path=wire.COMMIT_PATH, body=b"")
    assert (await client.post(wire.COMMIT_PATH, headers=commit)).status_code == 200
    assert await balance(ledger_dsn) == 15


async def test_without_a_secret_every_branch_call_is_refused_unless_insecure(
    ledger: Callable[..., Any], ledger_dsn: str
) -> None:
    g = gid()
    unsigned = {wire.H_GID: g, wire.H_BRANCH: "0", wire.H_OP: "prepare"}
    strict = await ledger(secret="")
    refused = await strict.post(ADJUST, content=BODY, headers=unsigned)
    assert refused.status_code == 401 and "TXNP_SECRET" in refused.json()["detail"]
    assert await prepared_here(ledger_dsn) == []
    insecure = await ledger(secret="", insecure_unsigned=True)
    assert (await insecure.post(ADJUST, content=BODY, headers=unsigned)).status_code == 200


async def test_two_secrets_are_accepted_during_a_rotation(ledger: Callable[..., Any]) -> None:
    client = await ledger(secret="new-secret", previous_secret=TEST_SECRET)
    for secret in ("new-secret", TEST_SECRET):
        headers = signed(gid(), op="action", secret=secret)
        reply = await client.post(ADJUST, content=BODY, headers=headers)
        assert reply.status_code == 200, (secret, reply.text)
    stale = signed(gid(), op="action", secret="older")
    stale = await client.post(ADJUST, content=BODY, headers=stale)
    assert stale.status_code == 401


async def test_the_catalogue_is_signed_and_declares_each_operation(
    ledger: Callable[..., Any],
) -> None:
    client = await ledger()
    nonce = wire.new_nonce()
    body = orjson.dumps({"nonce": nonce})
    headers = wire.signed_headers(
        TEST_SECRET.encode(), wire.CATALOGUE_PATH, "ledger1", "", None, "catalogue", body
    )
    reply = await client.post(wire.CATALOGUE_PATH, content=body, headers=headers)
    assert reply.status_code == 200, reply.text
    assert wire.check_reply([TEST_SECRET.encode()], reply.content, reply.headers[wire.H_SIGNATURE])
    answer = reply.json()
    assert (answer["participant"], answer["nonce"]) == ("ledger1", nonce)
    assert sorted(answer["operations"], key=lambda o: (o["path"], o["kind"])) == [
        {"path": ADJUST, "kind": "2pc"},
        {"path": ADJUST, "kind": "action", "compensation": "/accounts/adjust/undo"},
        {"path": "/accounts/adjust/undo", "kind": "compensation"},
        {
            "path": "/tcc/adjust",
            "kind": "tcc_try",
            "confirm": "/tcc/adjust/confirm",
            "cancel": "/tcc/adjust/cancel",
        },
        {"path": "/tcc/adjust/cancel", "kind": "tcc_cancel"},
        {"path": "/tcc/adjust/confirm", "kind": "tcc_confirm"},
    ]
    # The signature covers the body: the same catalogue with one more operation does not verify.
    grown = orjson.dumps(
        {**answer, "operations": [*answer["operations"], {"path": "/x", "kind": "2pc"}]}
    )
    assert not wire.check_reply([TEST_SECRET.encode()], grown, reply.headers[wire.H_SIGNATURE])
    unsigned = await client.post(wire.CATALOGUE_PATH, content=body)
    assert unsigned.status_code == 401
    # Nor is it served for a request signed for another path or participant.
    for path, participant in ((ADJUST, "ledger1"), (wire.CATALOGUE_PATH, "ledger2")):
        headers = wire.signed_headers(
            TEST_SECRET.encode(), path, participant, "", None, "catalogue", body
        )
        refused = await client.post(wire.CATALOGUE_PATH, content=body, headers=headers)
        assert refused.status_code == 401, (path, participant, refused.text)
        assert wire.H_SIGNATURE not in refused.headers


async def test_business_endpoints_need_the_api_token(ledger: Callable[..., Any]) -> None:
    client = await ledger()
    assert (await client.get("/accounts")).status_code == 200
    anonymous = await client.get("/accounts", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    wrong = await client.get("/accounts", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "unknown or revoked token"
    assert (await client.get("/healthz", headers={"Authorization": ""})).status_code == 200
