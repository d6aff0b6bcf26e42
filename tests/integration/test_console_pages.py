"""The console's pages over HTTP, served by a coordinator app on a fresh Postgres log: sign-in
and its refusals, what the overview says needs attention, the list's filters and keyset pages,
a confirmed action and a refused one, escaping of anything the log holds, and the switch."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from coordinator.api import create_app
from coordinator.pglog import PgLog
from coordinator.records import BranchProgress, BranchSpec, NewTxn
from tests.unit.test_api_auth import TOKENS, settings
from tests.unit.test_intervention_api import Scripted

LONG = 600.0


def new(gid: str, mode: str = "saga", participant: str = "a") -> NewTxn:
    undo = "/undo" if mode == "saga" else None
    return NewTxn(
        gid, mode, {"mode": mode}, f"h:{gid}", (BranchSpec(participant, "/x", undo, {}),), 30
    )


@pytest.fixture
async def console(log_dsn: str) -> AsyncIterator[tuple[httpx.AsyncClient, PgLog, str]]:
    store = PgLog.connect(log_dsn, pool_size=2)
    app = create_app(settings(), store, Scripted())
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://c", timeout=30) as client,
    ):
        yield client, store, log_dsn


async def sign_in(client: httpx.AsyncClient, scope: str = "admin") -> str:
    reply = await client.post("/console/login", data={"token": TOKENS[scope], "next": "/console"})
    assert reply.status_code == 303 and reply.headers["location"] == "/console", reply.text
    page = await client.get("/console/transactions")
    return csrf_of(page.text) if 'name="csrf"' in page.text else ""


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


async def sql(dsn: str, statement: str, *args: Any) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()


async def test_sign_in_refusals_and_the_way_back(console: Any) -> None:
    client, _, _ = console
    first = await client.get("/console/transactions?status=aborted")
    assert first.status_code == 303
    assert (
        first.headers["location"]
        == "/console/login?next=%2Fconsole%2Ftransactions%3Fstatus%3Daborted"
    )
    wrong = await client.post("/console/login", data={"token": "txn_nope"})
    assert wrong.status_code == 401 and "unknown or revoked token" in wrong.text
    metrics_only = await client.post("/console/login", data={"token": TOKENS["metrics"]})
    assert metrics_only.status_code == 403 and "lacks scope" in metrics_only.text
    cross = await client.post(
        "/console/login", data={"token": TOKENS["read"]}, headers={"Origin": "http://evil.example"}
    )
    assert cross.status_code == 403 and "set-cookie" not in cross.headers
    away = await client.post(
        "/console/login", data={"token": TOKENS["read"], "next": "https://evil.example/"}
    )
    assert away.status_code == 303 and away.headers["location"] == "/console"
    cookie = away.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert TOKENS["read"] not in cookie
    assert (await client.get("/console")).status_code == 200


async def test_the_overview_lists_what_needs_attention(console: Any) -> None:
    client, store, dsn = console
    for gid in ("fine", "old", "retried", "refusing"):
        await store.insert(new(gid), "elsewhere", LONG)
    await sql(
        dsn, "UPDATE transactions SET created_at = now() - interval '2 hours' WHERE gid = 'old'"
    )
    for _ in range(5):
        await store.reschedule("retried", 1, [BranchProgress("running", 4, "503")], 0.01, 0.01)
    refused = [BranchProgress("compensating", 2, "would go negative <b>!</b>")]
    await store.write_status("refusing", 1, "compensating", "step refused", refused, "decided")
    await sign_in(client, "read")
    page = (await client.get("/console")).text
    attention = page[page.index('id="attention"') :]
    listed = re.findall(r'href="/console/transactions/([^"]+)"', attention)
    assert listed == ["old", "retried", "refusing"]  # oldest first
    assert "fine" not in listed
    assert "compensation failing" in attention and "5 attempts" in attention
    assert "would go negative &lt;b&gt;!&lt;/b&gt;" in attention  # escaped, never markup
    assert "<b>!</b>" not in page


async def test_filters_and_keyset_pages(console: Any) -> None:
    client, store, _ = console
    for i in range(55):
        await store.insert(new(f"pg-{i:03d}", "2pc", "a"), "elsewhere", LONG)
    await store.insert(new("other-1", "saga", "b"), "elsewhere", LONG)
    await sign_in(client, "read")
    first = await client.get("/console/transactions?gid=pg-&refresh=0")
    gids = re.findall(r'class="gid" href="/console/transactions/([^"]+)"', first.text)
    assert len(gids) == 50 and gids[0] == "pg-054"
    older = re.search(r'id="next-page" href="\?([^"]+)"', first.text)
    assert older is not None
    rest = await client.get("/console/transactions?" + older.group(1).replace("&amp;", "&"))
    tail = re.findall(r'class="gid" href="/console/transactions/([^"]+)"', rest.text)
    assert tail == [f"pg-{i:03d}" for i in range(4, -1, -1)]
    assert 'id="next-page"' not in rest.text
    by_participant = await client.get("/console/transactions?participant=b")
    assert re.findall(r'class="gid" href="/console/transactions/([^"]+)"', by_participant.text) == [
        "other-1"
    ]
    assert 'http-equiv="refresh"' in by_participant.text  # auto-refresh on by default
    for bad in ("status=nope", "mode=xa", "participant=zz", "age=5y"):
        reply = await client.get(f"/console/transactions?{bad}")
        assert reply.status_code == 400 and 'class="error"' in reply.text, bad


async def test_a_confirmed_action_and_a_refused_one(console: Any) -> None:
    client, store, _ = console
    await store.insert(new("run-1"), "elsewhere", LONG)
    await store.insert(new("done-1", "2pc"), "elsewhere", LONG)
    await store.write_status(
        "done-1", 1, "committed", None, [BranchProgress("committed", 1, None)], "f"
    )
    csrf = await sign_in(client, "admin")
    confirm = await client.get("/console/transactions/run-1/abort")
    assert confirm.status_code == 200 and 'id="note"' in confirm.text
    empty = await client.post("/console/transactions/run-1/abort", data={"csrf": csrf, "note": " "})
    assert empty.status_code == 422 and "note is required" in empty.text
    note = "<script>alert(1)</script> customer cancelled"
    done = await client.post("/console/transactions/run-1/abort", data={"csrf": csrf, "note": note})
    assert done.status_code == 303
    assert done.headers["location"] == "/console/transactions/run-1?done=abort"
    page = (await client.get(done.headers["location"])).text
    assert "abort recorded" in page and "operator:abort" in page
    assert "<script>alert(1)" not in page and "&lt;script&gt;" in page
    record = await store.get("run-1")
    assert record is not None and record.status in ("compensating", "aborted")
    refused = await client.post(
        "/console/transactions/done-1/abort", data={"csrf": csrf, "note": "x"}
    )
    assert refused.status_code == 409 and "finished" in refused.text
    after = await store.get("done-1")
    assert after is not None and after.status == "committed" and after.epoch == 1
    assert (await client.get("/console/transactions/nope")).status_code == 404
    assert (await client.get("/console/transactions/run-1/explode")).status_code == 404


async def test_participants_page_and_the_console_switch(console: Any, log_dsn: str) -> None:
    client, _, _ = console
    await sign_in(client, "read")
    page = (await client.get("/console/participants")).text
    assert "http://127.0.0.1:9" in page and "2pc /x" in page and "action /y" in page
    off = create_app(settings(console=False), PgLog.connect(log_dsn, pool_size=1), Scripted())
    async with (
        off.router.lifespan_context(off),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=off), base_url="http://c") as c,
    ):
        assert (await c.get("/console")).status_code in (401, 404)


async def test_odd_input_gets_an_answer_not_a_crash(console: Any) -> None:
    client, store, _ = console
    await store.insert(new("odd-1"), "elsewhere", LONG)
    csrf = await sign_in(client, "admin")
    resolve = "/console/transactions/odd-1/resolve"
    for branch in ("²", "9" * 5000, "-1", ""):
        reply = await client.post(resolve, data={"csrf": csrf, "note": "n", "branch": branch})
        assert reply.status_code == 422 and "branch index" in reply.text, branch
    forged = await client.post(resolve, data={"csrf": "é", "note": "n", "branch": "0"})
    assert forged.status_code == 403
    out = await client.post("/console/logout", data={"csrf": "é"})
    assert out.status_code == 403
    spoof = await client.get("/console/transactions/odd-1?done=Your+account+is+closed")
    assert spoof.status_code == 200 and "Your account is closed" not in spoof.text
    nul = await client.get("/console/transactions?gid=a%00b")
    assert nul.status_code == 400 and "printable" in nul.text
    record = await store.get("odd-1")
    assert record is not None and record.epoch == 1  # nothing was done to it
