"""Barrier retention against a real coordinator and ledgers over loopback HTTP: a ledger's rows
are deleted only for transactions the coordinator confirms ended at least two replay windows
ago (or no longer holds); a live transaction's rows and a just-ended one's stay however old
they are; and a late duplicate of a purged transaction's call is refused and changes nothing.
The replay window is 1 s here, so "long ago" is seconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from coordinator.api import create_app
from coordinator.settings import Settings
from participants.sdk import wire
from participants.sdk.ask import question_client
from participants.sdk.db import make_engine
from participants.sdk.metrics import ParticipantMetrics
from participants.sdk.retention import BarrierRetention
from tests.conftest import create_db
from tests.helpers import (
    TEST_SECRET,
    adjust_body,
    api_client,
    branch_headers,
    catalogues_read,
    fetch,
    ledger_app,
    secured,
    serving,
    token_entries,
    unique,
)

WINDOW_S = 1.0  # the ledgers' replay window
QUIET_S = 2 * WINDOW_S  # how long ago an outcome must be before its rows may go


@dataclass
class Shop:
    coordinator: str
    ledger1: str
    ledger1_dsn: str
    stop_ledger2: AsyncExitStack


@pytest.fixture
async def shop(log_dsn: str, pg: Any) -> AsyncIterator[Shop]:
    dsns = [await create_db(pg, "ledger") for _ in range(2)]
    async with AsyncExitStack() as stack:
        urls = {}
        ledger2 = AsyncExitStack()
        for n, dsn in enumerate(dsns, start=1):
            app = ledger_app(
                secured(
                    name=f"ledger{n}", dsn=dsn, replay_window_s=WINDOW_S, barrier_retention=QUIET_S
                )
            )
            into = stack if n == 1 else ledger2
            urls[f"ledger{n}"] = await into.enter_async_context(serving(app))
        stack.push_async_exit(ledger2)
        settings = Settings(
            log_dsn=log_dsn,
            participants=urls,
            participant_secrets={name: TEST_SECRET for name in urls},
            api_tokens=token_entries(),
            recovery=False,  # a transaction left running stays live
        )
        coordinator = await stack.enter_async_context(serving(create_app(settings)))
        async with api_client(timeout=30) as client:
            await catalogues_read(client, coordinator)
            for url in urls.values():
                reply = await client.post(f"{url}/accounts", json={"id": "acct", "balance": 10})
                assert reply.status_code == 201, reply.text
        yield Shop(coordinator, urls["ledger1"], dsns[0], ledger2)


async def submit(client: httpx.AsyncClient, base: str, body: dict[str, Any], wait: float) -> str:
    reply = await client.post(f"{base}/v1/transactions?wait={wait}", json=body)
    assert reply.status_code == 201, reply.text
    return str(reply.json()["status"])


async def gids_with_rows(dsn: str) -> set[str]:
    return {r["gid"] for r in await fetch(dsn, "SELECT gid FROM txn_barrier")}


async def test_only_transactions_that_ended_long_ago_lose_their_rows(shop: Shop) -> None:
    g_saga, g_2pc, g_live, g_recent = (unique(p) for p in ("saga", "2pc", "live", "recent"))
    g_unknown = unique("never-logged")
    move = {"account": "acct", "delta": 1}
    async with api_client(timeout=30) as client:
        sent_at = time.time()
        saga = adjust_body(g_saga, "saga", "acct", [("ledger1", 1)])
        assert await submit(client, shop.coordinator, saga, 20) == "committed"
        twopc = adjust_body(g_2pc, "2pc", "acct", [("ledger1", 1)])
        assert await submit(client, shop.coordinator, twopc, 20) == "committed"
        # A saga left running: its ledger1 step is done, ledger2 is down.
        await shop.stop_ledger2.aclose()
        live = adjust_body(g_live, "saga", "acct", [("ledger1", 1), ("ledger2", 1)])
        assert await submit(client, shop.coordinator, live, 0) == "running"
        for _ in range(100):
            if g_live in await gids_with_rows(shop.ledger1_dsn):
                break
            await asyncio.sleep(0.05)
        # Rows of a gid the log never held (as after the coordinator's own retention).
        await fetch(
            shop.ledger1_dsn,
            "INSERT INTO txn_barrier (gid, branch, op, outcome) VALUES ($1, 0, 'action', 'done')",
            g_unknown,
        )
        await asyncio.sleep(QUIET_S + 0.2)
        recent = adjust_body(g_recent, "saga", "acct", [("ledger1", 1)])
        assert await submit(client, shop.coordinator, recent, 20) == "committed"
    # Every row is older than the retention; what decides is the coordinator's answer.
    await fetch(shop.ledger1_dsn, "UPDATE txn_barrier SET created_at = now() - interval '1 day'")
    before = await gids_with_rows(shop.ledger1_dsn)
    assert before == {g_saga, g_2pc, g_live, g_unknown, g_recent}

    engine = make_engine(shop.ledger1_dsn, pool_size=2)
    metrics = ParticipantMetrics()
    retention = BarrierRetention(
        engine,
        [shop.coordinator],
        "ledger1",
        [TEST_SECRET.encode()],
        keep_s=QUIET_S,
        replay_window_s=WINDOW_S,
        batch=2,  # several batches in one round
        metrics=metrics,
    )
    try:
        async with AsyncExitStack() as exits:
            client = question_client()
            exits.push_async_callback(client.close)
            done = await retention.round(client)
            assert set(done.purged) == {g_saga, g_2pc, g_unknown}
            assert set(done.kept) == {g_live, g_recent}
            assert await gids_with_rows(shop.ledger1_dsn) == {g_live, g_recent}
            assert metrics.barrier_purged._value.get() == done.deleted_rows == 3

            # Late duplicates of the purged transactions' calls, as the coordinator sent them:
            # refused by their signature's age, before any barrier or business code.
            body = orjson.dumps(move)
            async with api_client(base_url=shop.ledger1) as ledger:
                for gid, op in ((g_saga, "action"), (g_2pc, "prepare")):
                    headers = branch_headers(
                        TEST_SECRET, "ledger1", "/accounts/adjust", gid, 0, op, body, sent_at
                    )
                    late = await ledger.post("/accounts/adjust", content=body, headers=headers)
                    assert late.status_code == 401, late.text
                    assert "Txn-Timestamp" in late.json()["detail"], late.text
            rows = await fetch(shop.ledger1_dsn, "SELECT balance FROM accounts WHERE id = 'acct'")
            assert rows[0]["balance"] == 14  # 10 and four +1: nothing ran twice
            assert await gids_with_rows(shop.ledger1_dsn) == {g_live, g_recent}
            assert await fetch(shop.ledger1_dsn, "SELECT gid FROM pg_prepared_xacts") == []

            # Once the recent one's outcome is old enough, it goes too; the live one stays.
            await asyncio.sleep(QUIET_S)
            again = await retention.round(client, pause=False)
            assert again.purged == [g_recent] and again.kept == [g_live]
            assert await gids_with_rows(shop.ledger1_dsn) == {g_live}
    finally:
        await engine.dispose()


async def test_the_ended_question_must_be_signed_and_well_formed(shop: Shop) -> None:
    path = wire.ENDED_PATH

    def signed(body: bytes, participant: str = "ledger1", secret: str = TEST_SECRET) -> Any:
        return {
            "Content-Type": "application/json",
            wire.H_PARTICIPANT: participant,
            **wire.signed_headers(secret.encode(), path, participant, "", None, "ended", body),
        }

    nonce = wire.new_nonce()
    async with httpx.AsyncClient(base_url=shop.coordinator) as client:  # no API token needed
        ok = orjson.dumps({"gids": ["never-logged-1"], "nonce": nonce})
        reply = await client.post(path, content=ok, headers=signed(ok))
        assert reply.status_code == 200, reply.text
        assert wire.check_reply(
            [TEST_SECRET.encode()], reply.content, reply.headers[wire.H_SIGNATURE]
        )
        answer = reply.json()
        assert answer["ended"] == {"never-logged-1": None} and answer["nonce"] == nonce
        assert answer["retention_s"] == 7 * 86400

        refusals = [
            (ok, {"Content-Type": "application/json", wire.H_PARTICIPANT: "ledger1"}, 401),
            (ok, signed(ok, secret="another-secret"), 401),
            (ok, signed(ok, participant="nobody"), 401),
        ]
        too_many = orjson.dumps({"gids": [f"g{i}" for i in range(1001)], "nonce": nonce})
        bad_gid = orjson.dumps({"gids": ["../x"], "nonce": nonce})
        empty = orjson.dumps({"gids": [], "nonce": nonce})
        for body in (too_many, bad_gid, empty, b"[]"):
            refusals.append((body, signed(body), 422))
        for body, headers, status in refusals:
            reply = await client.post(path, content=body, headers=headers)
            assert reply.status_code == status, (body[:60], reply.text)
            assert reply.json()["detail"]
