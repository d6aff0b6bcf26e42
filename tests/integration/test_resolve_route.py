"""The coordinator's side of doubt resolution, and the gids that could misroute a question.

* A gid is a single, plain path segment: ``..``, ``.`` or ``-x`` are refused at submission
  (nothing logged) and ``GET /v1/transactions/..`` never answers a transaction.
* ``POST /v1/resolve`` answers only a question signed with the named participant's own secret,
  and signs its answer with it; it is the only place a question decides anything (a GET reads).

Against the session's real coordinator process, except the orphan, which needs a coordinator
with its recovery loop off: one in this process, on a fresh log database.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from fastapi import FastAPI

from coordinator.api import create_app
from coordinator.pglog import PgLog
from coordinator.records import BranchSpec, NewTxn
from coordinator.settings import Settings
from coordinator.transport import Kind, Reply
from participants.sdk import wire
from tests.helpers import (
    AUTH,
    LOG_EVENTS,
    api_client,
    fetch,
    open_accounts,
    token_entries,
    twopc_transfer,
    unique,
)
from txn_client._core import get_request
from txn_devstack.stack import Stack

BAD_GIDS = ["..", ".", "-x", ".hidden", "-", "_x"]


# -- helpers -------------------------------------------------------------------------------


async def logged(log_dsn: str, gid: str) -> int:
    rows = await fetch(
        log_dsn,
        "SELECT (SELECT count(*) FROM transactions WHERE gid = $1)"
        f" + (SELECT count(*) FROM {LOG_EVENTS} WHERE gid = $1) AS n",
        gid,
    )
    return int(rows[0]["n"])


async def raw_get(base_url: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (an HTTP client would normalise ``..`` away)."""
    url = urlsplit(base_url)
    assert url.hostname is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        head = (
            f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: {AUTH['Authorization']}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), body


def question(
    secret: str | None,
    participant: str,
    gid: str,
    nonce: str | None = None,
    body: bytes | None = None,
    signed_as: str | None = None,
    now: float | None = None,
) -> tuple[bytes, dict[str, str], str]:
    """A doubt question as a participant's resolver asks it: (body, headers, nonce). ``secret``
    None: unsigned; ``signed_as``: the name in the signature (default ``participant``)."""
    nonce = nonce or wire.new_nonce()
    body = orjson.dumps({"gid": gid, "nonce": nonce}) if body is None else body
    headers = {"Content-Type": "application/json", wire.H_PARTICIPANT: participant}
    if secret is not None:
        headers.update(
            wire.signed_headers(
                secret.encode(),
                wire.RESOLVE_PATH,
                signed_as or participant,
                gid,
                None,
                "resolve",
                body,
                now,
            )
        )
    return body, headers, nonce


async def ask(
    client: httpx.AsyncClient,
    secret: str | None,
    participant: str,
    gid: str,
    **kwargs: Any,
) -> tuple[httpx.Response, str]:
    body, headers, nonce = question(secret, participant, gid, **kwargs)
    reply = await client.post(wire.RESOLVE_PATH, content=body, headers=headers)
    return reply, nonce


def verified(reply: httpx.Response, secret: str) -> dict[str, Any]:
    """The answer's body, once its signature verifies with ``secret``."""
    assert reply.status_code == 200, reply.text
    signature = reply.headers.get(wire.H_SIGNATURE, "")
    assert wire.check_reply([secret.encode()], reply.content, signature), "badly signed"
    answer: dict[str, Any] = orjson.loads(reply.content)
    return answer


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(base_url=stack.coordinator_url, timeout=30) as client:
        yield client


@pytest.fixture
async def resolver_client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """As a participant's resolver calls: no API token, only its signature."""
    async with httpx.AsyncClient(base_url=stack.coordinator_url, timeout=30) as client:
        yield client


# -- gids that are not a plain path segment --------------------------------------------------


@pytest.mark.parametrize("gid", BAD_GIDS)
async def test_a_dot_or_dash_gid_is_refused_and_nothing_logged(
    stack: Stack, api: httpx.AsyncClient, gid: str
) -> None:
    body = twopc_transfer(gid, "nobody", {"ledger1": 1})
    r = await api.post("/v1/transactions", params={"wait": 1}, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "body.gid", r.text
    assert await logged(stack.log_dsn, gid) == 0


@pytest.mark.parametrize(
    "path",
    [
        "/v1/transactions/..",
        "/v1/transactions/.",
        "/v1/transactions/%2e%2e",
        "/v1/transactions/%2E",
        "/v1/transactions/-x",
        "/v1/transactions/%2Dx",
    ],
)
async def test_get_of_a_dot_segment_gid_never_answers_a_transaction(
    stack: Stack, path: str
) -> None:
    status, body = await raw_get(stack.coordinator_url, path)
    # The route's gid pattern refuses it: no read of the log, no transaction, no list.
    assert status == 422, (status, body)
    assert orjson.loads(body)["errors"][0]["field"] == "path.gid", body


async def test_an_http_client_normalises_dot_segments_away(api: httpx.AsyncClient) -> None:
    """Why the pattern matters, and why quoting a gid is not enough (``quote`` leaves dots
    alone): a URL built with ``..`` or ``.`` as the gid reaches another route (the list, or
    nothing), never a transaction."""
    for gid in ("..", "."):
        r = await api.get(f"/v1/transactions/{gid}")
        assert not (r.status_code == 200 and "gid" in r.json()), r.text


# -- POST /v1/resolve: who may ask -----------------------------------------------------------


async def test_an_unsigned_question_is_refused(
    stack: Stack, resolver_client: httpx.AsyncClient
) -> None:
    r, _ = await ask(resolver_client, None, "ledger1", unique("q"))
    assert r.status_code == 401, r.text
    assert wire.H_SIGNATURE not in r.headers


async def test_a_question_signed_with_another_participants_secret_is_refused(
    stack: Stack, resolver_client: httpx.AsyncClient
) -> None:
    other = stack.participant_secrets["ledger2"]
    r, _ = await ask(resolver_client, other, "ledger1", unique("q"))
    assert r.status_code == 401, r.text
    # Nor may ledger2 ask in its own name's signature while claiming to be ledger1.
    r, _ = await ask(resolver_client, other, "ledger1", unique("q"), signed_as="ledger2")
    assert r.status_code == 401, r.text
    assert wire.H_SIGNATURE not in r.headers


@pytest.mark.parametrize("name", ["ledger9", "", "http://127.0.0.1:9"])
async def test_a_question_from_an_unknown_participant_is_refused(
    stack: Stack, resolver_client: httpx.AsyncClient, name: str
) -> None:
    r, _ = await ask(resolver_client, stack.participant_secrets["ledger1"], name, unique("q"))
    assert r.status_code == 401, r.text


async def test_a_stale_question_is_refused(
    stack: Stack, resolver_client: httpx.AsyncClient
) -> None:
    secret = stack.participant_secrets["ledger1"]
    stale = time.time() - 2 * wire.REPLAY_WINDOW_S
    r, _ = await ask(resolver_client, secret, "ledger1", unique("q"), now=stale)
    assert r.status_code == 401, r.text


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'"gid"',
        b"{}",
        b'{"gid": "g-1"}',
        b'{"nonce": "0123456789abcdef"}',
        b'{"gid": "..", "nonce": "0123456789abcdef"}',
        b'{"gid": "-x", "nonce": "0123456789abcdef"}',
        b'{"gid": 7, "nonce": "0123456789abcdef"}',
        b'{"gid": "g-1", "nonce": "short"}',
        b'{"gid": "g-1", "nonce": 12345678901234567890}',
    ],
)
async def test_a_malformed_question_is_422(
    stack: Stack, resolver_client: httpx.AsyncClient, body: bytes
) -> None:
    # Signed correctly over whatever body it is: the body itself is what is refused.
    r, _ = await ask(
        resolver_client, stack.participant_secrets["ledger1"], "ledger1", "g-1", body=body
    )
    assert r.status_code == 422, r.text
    assert wire.H_SIGNATURE not in r.headers


# -- POST /v1/resolve: what it answers -------------------------------------------------------


async def test_a_committed_gid_is_answered_committed_signed_for_the_asker(
    stack: Stack, api: httpx.AsyncClient, resolver_client: httpx.AsyncClient
) -> None:
    account, gid = unique("acct"), unique("resolve")
    await open_accounts(api, {"ledger1": stack.service("ledger1").url}, account, 10)
    r = await api.post(
        "/v1/transactions",
        params={"wait": 20},
        json=twopc_transfer(gid, account, {"ledger1": 1}),
    )
    assert r.status_code == 201 and r.json()["status"] == "committed", r.text
    secret = stack.participant_secrets["ledger1"]
    reply, nonce = await ask(resolver_client, secret, "ledger1", gid)
    answer = verified(reply, secret)
    assert answer == {"gid": gid, "participant": "ledger1", "nonce": nonce, "status": "committed"}
    # Signed with the asker's secret only: no other participant could pass it off as its own.
    other = stack.participant_secrets["ledger2"]
    assert not wire.check_reply([other.encode()], reply.content, reply.headers[wire.H_SIGNATURE])


async def test_an_unknown_gid_is_answered_unknown_signed(
    stack: Stack, resolver_client: httpx.AsyncClient
) -> None:
    gid = unique("never")
    secret = stack.participant_secrets["ledger3"]
    reply, nonce = await ask(resolver_client, secret, "ledger3", gid)
    answer = verified(reply, secret)
    assert answer == {"gid": gid, "participant": "ledger3", "nonce": nonce, "status": "unknown"}
    assert await logged(stack.log_dsn, gid) == 0  # asking logs nothing


# -- only the question decides: an orphan stays preparing under a GET ------------------------

ORPHAN_SECRET = "orphan-test-secret"
ME = "coord-under-test"


class Yes:
    """Every participant call succeeds (the orphan's rollbacks) and serves the branch's path."""

    async def call(self, *_args: Any) -> Reply:
        return Reply(Kind.OK, 200, "")

    async def catalogue(self, _participant: str) -> list[dict[str, Any]]:
        return [{"path": "/accounts/adjust", "kind": "2pc"}]

    async def close(self) -> None:
        return None


def orphan(gid: str) -> NewTxn:
    branches = tuple(
        BranchSpec(p, "/accounts/adjust", None, {"account": "a", "delta": 1}) for p in ("p1", "p2")
    )
    return NewTxn(gid, "2pc", {"gid": gid}, f"hash:{gid}", branches, 30.0)


@pytest.fixture
async def lone_coordinator(log_dsn: str) -> AsyncIterator[tuple[FastAPI, PgLog]]:
    settings = Settings(
        log_dsn=log_dsn,
        participants={"p1": "http://127.0.0.1:9", "p2": "http://127.0.0.1:9"},
        participant_secrets={"p1": ORPHAN_SECRET, "p2": "p2-secret"},
        api_tokens=token_entries(),
        instance_id=ME,
        recovery=False,
    )
    store = PgLog.connect(log_dsn, pool_size=4)
    app = create_app(settings, store, Yes())
    async with app.router.lifespan_context(app):
        yield app, store


async def test_a_get_decides_nothing_only_the_question_aborts_an_orphan(
    lone_coordinator: tuple[FastAPI, PgLog],
) -> None:
    app, store = lone_coordinator
    gid = f"orphan-{uuid.uuid4().hex[:12]}"
    # Logged by a coordinator that then died: still preparing, its lease runs out.
    _, claim = await store.insert(orphan(gid), "dead-coordinator", 0.2)
    assert claim.record.status == "preparing"
    await asyncio.sleep(0.5)
    transport = httpx.ASGITransport(app=app)
    async with api_client(transport=transport, base_url="http://c") as client:
        for _ in range(3):
            r = await client.get(f"/v1/transactions/{gid}")
            assert r.status_code == 200 and r.json()["status"] == "preparing", r.text
        record = await store.get(gid)
        assert record is not None
        assert (record.status, record.owner, record.epoch) == ("preparing", "dead-coordinator", 1)
        kinds = [e.kind for e in await store.events(gid)]
        assert "decided" not in kinds, kinds
        # The participant's question is what decides: presumed abort, signed for it.
        reply, nonce = await ask(client, ORPHAN_SECRET, "p1", gid)
    answer = verified(reply, ORPHAN_SECRET)
    assert answer == {"gid": gid, "participant": "p1", "nonce": nonce, "status": "aborting"}
    record = await store.get(gid)
    assert record is not None and record.status in ("aborting", "aborted")
    decided = [e for e in await store.events(gid) if e.kind == "decided"]
    assert len(decided) == 1 and decided[0].detail is not None
    assert decided[0].detail["status"] == "aborting"


async def test_a_question_about_a_live_preparing_transaction_decides_nothing(
    lone_coordinator: tuple[FastAPI, PgLog],
) -> None:
    app, store = lone_coordinator
    gid = f"live-{uuid.uuid4().hex[:12]}"
    await store.insert(orphan(gid), "live-coordinator", 60.0)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
        reply, _ = await ask(client, ORPHAN_SECRET, "p1", gid)
    assert verified(reply, ORPHAN_SECRET)["status"] == "preparing"
    record = await store.get(gid)
    assert record is not None and (record.status, record.owner) == ("preparing", "live-coordinator")


# -- the one other place a gid goes into a URL -----------------------------------------------


@pytest.mark.parametrize(
    ("gid", "segment"),
    [
        ("order-0123abcd", "order-0123abcd"),
        ("a/b", "a%2Fb"),
        ("x?events=true#y", "x%3Fevents%3Dtrue%23y"),
        ("%2e%2e", "%252e%252e"),
    ],
)
def test_the_client_library_puts_a_gid_in_its_url_as_one_encoded_segment(
    gid: str, segment: str
) -> None:
    # txn_client, which the orders service asks the coordinator with.
    assert get_request(gid, False, 1.0).path == f"/v1/transactions/{segment}?events=false"
