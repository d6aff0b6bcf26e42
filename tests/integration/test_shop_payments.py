"""The shop's payments participant against a real Postgres: its handlers run through the SDK's
2PC and saga methods on fresh migrated databases, and the service once over HTTP. Every check
reads the real rows back: wallets and payments. A charge is priced from the catalogue, never
from its payload."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from participants.payments.app import PaymentsSettings, charge, refund
from participants.payments.app import create_app as payments_app
from participants.sdk import Participant, ParticipantSettings, wire
from participants.sdk.base import call_handler
from participants.sdk.db import make_engine
from participants.shop.catalogue import PRODUCTS
from tests.conftest import create_db
from tests.helpers import SECURE, Counting, api_client, branch_call, prepared_here, unique
from tests.helpers import fetch as sql
from txn_devstack.postgres import Cluster


@pytest.fixture
async def pay_dsn(pg: Cluster) -> str:
    return await create_db(pg, "payments")


@pytest.fixture
async def pay(pay_dsn: str) -> AsyncIterator[Participant]:
    engine = make_engine(pay_dsn, pool_size=10)
    try:
        yield Participant(ParticipantSettings(name="t", dsn=pay_dsn, lock_timeout_ms=5000), engine)
    finally:
        await engine.dispose()


def gid() -> str:
    return unique("shop")


async def seed_wallet(dsn: str, customer: str, balance: int) -> None:
    await sql(dsn, "INSERT INTO wallets (customer, balance) VALUES ($1, $2)", customer, balance)


async def wallets(dsn: str) -> dict[str, int]:
    rows = await sql(dsn, "SELECT customer, balance FROM wallets")
    return {r["customer"]: r["balance"] for r in rows}


async def payments(dsn: str) -> list[tuple[str, str, int, str]]:
    rows = await sql(dsn, "SELECT * FROM payments ORDER BY order_id")
    return [(r["order_id"], r["customer"], r["amount"], r["status"]) for r in rows]


def pay_for(order_id: str, customer: str, *items: tuple[str, int]) -> dict[str, Any]:
    """A charge's payload: the order's items, which payments prices from the catalogue."""
    return {
        "order_id": order_id,
        "customer": customer,
        "items": [{"sku": s, "qty": q} for s, q in items],
    }


async def test_charge_debits_the_wallet_and_records_the_payment(
    pay: Participant, pay_dsn: str
) -> None:
    await seed_wallet(pay_dsn, "alice", 5000)
    status, body = await pay.run_action(gid(), 0, pay_for("o1", "alice", ("SKU-3", 2)), charge)
    assert status == 200
    assert body["result"] == {
        "order_id": "o1",
        "customer": "alice",
        "amount": 3000,
        "balance": 2000,
    }
    assert await wallets(pay_dsn) == {"alice": 2000}
    assert await payments(pay_dsn) == [("o1", "alice", 3000, "captured")]
    # The same order is not charged twice, even under another transaction.
    again = await pay.run_action(gid(), 0, pay_for("o1", "alice", ("SKU-3", 2)), charge)
    assert again == (409, {"reason": "order o1 is already paid"})
    assert await wallets(pay_dsn) == {"alice": 2000}


async def test_charge_prices_the_items_and_refuses_an_amount_in_the_payload(
    pay: Participant, pay_dsn: str
) -> None:
    """The amount is the catalogue's price x qty, summed over lines; a payload naming its own
    amount (a client trying to set the price) is refused and charges nothing."""
    await seed_wallet(pay_dsn, "alice", 100_000)
    cheap = {**pay_for("o1", "alice", ("SKU-7", 2)), "amount": 1}
    refused = await pay.run_action(gid(), 0, cheap, charge)
    assert refused == (
        409,
        {"reason": "invalid charge payload: amount: Extra inputs are not permitted"},
    )
    assert await pay.prepare(gid(), 0, cheap, charge) == refused
    assert await payments(pay_dsn) == []
    lines = pay_for("o1", "alice", ("SKU-7", 2), ("SKU-1", 1), ("SKU-7", 1), ("SKU-8", 3))
    status, body = await pay.run_action(gid(), 0, lines, charge)
    assert status == 200, body
    expected = sum(
        PRODUCTS[sku].price * qty for sku, qty in [("SKU-7", 3), ("SKU-1", 1), ("SKU-8", 3)]
    )
    assert body["result"]["amount"] == expected
    assert await payments(pay_dsn) == [("o1", "alice", expected, "captured")]
    assert await wallets(pay_dsn) == {"alice": 100_000 - expected}


async def test_charge_refusals_change_nothing(pay: Participant, pay_dsn: str) -> None:
    await seed_wallet(pay_dsn, "alice", 1499)
    short = await pay.run_action(gid(), 0, pay_for("o1", "alice", ("SKU-3", 2)), charge)
    assert short == (409, {"reason": "insufficient funds: alice has 14.99, the order costs 30.00"})
    unknown = await pay.run_action(gid(), 0, pay_for("o2", "bob", ("SKU-11", 1)), charge)
    assert unknown == (409, {"reason": "unknown customer bob"})
    as_2pc = await pay.prepare(gid(), 0, pay_for("o3", "alice", ("SKU-3", 1)), charge)
    assert as_2pc == (
        409,
        {"reason": "insufficient funds: alice has 14.99, the order costs 15.00"},
    )
    no_such = await pay.run_action(gid(), 0, pay_for("o4", "alice", ("SKU-99", 1)), charge)
    assert no_such == (409, {"reason": "unknown SKU SKU-99"})
    for bad, why in [
        (pay_for("o4", "alice", ("SKU-1", 0)), "items.0.qty: Input should be greater than 0"),
        (
            {**pay_for("o4", "alice"), "items": [{"sku": "SKU-1", "qty": 1.5}]},
            "items.0.qty: Input should be a valid integer",
        ),
        (pay_for("o4", "alice"), "items: List should have at least 1 item after validation, not 0"),
        ({"order_id": "o4", "items": [{"sku": "SKU-1", "qty": 1}]}, "customer: Field required"),
    ]:
        refused = await pay.run_action(gid(), 0, bad, charge)
        assert refused == (409, {"reason": f"invalid charge payload: {why}"})
    assert await prepared_here(pay_dsn) == []
    assert await wallets(pay_dsn) == {"alice": 1499}
    assert await payments(pay_dsn) == []


async def test_refund_restores_the_wallet_once(pay: Participant, pay_dsn: str) -> None:
    await seed_wallet(pay_dsn, "alice", 5000)
    payload, g = pay_for("o1", "alice", ("SKU-3", 2)), gid()
    assert (await pay.run_action(g, 0, payload, charge))[0] == 200
    async with pay.engine.begin() as conn:  # the handler itself, as the charge's branch
        first = await call_handler(refund, conn, payload, g, 0)
    assert first == {"order_id": "o1", "customer": "alice", "refunded": 3000, "balance": 5000}
    async with pay.engine.begin() as conn:
        assert await call_handler(refund, conn, payload, g, 0) == {
            "order_id": "o1",
            "refunded": 0,
        }
    async with pay.engine.begin() as conn:  # never charged: nothing to do
        assert await call_handler(
            refund, conn, pay_for("ghost", "alice", ("SKU-11", 1)), gid(), 0
        ) == {
            "order_id": "ghost",
            "refunded": 0,
        }
    assert await wallets(pay_dsn) == {"alice": 5000}
    assert await payments(pay_dsn) == [("o1", "alice", 3000, "refunded")]
    # A refunded order may be charged again (retried under a new transaction): a new row.
    again = pay_for("o1", "alice", ("SKU-11", 2))
    assert (await pay.run_action(gid(), 0, again, charge))[0] == 200
    assert await wallets(pay_dsn) == {"alice": 4000}
    assert sorted(await payments(pay_dsn)) == [
        ("o1", "alice", 1000, "captured"),
        ("o1", "alice", 3000, "refunded"),
    ]


async def test_charge_2pc_commit_applies_once_rollback_leaves_wallet(
    pay: Participant, pay_dsn: str
) -> None:
    await seed_wallet(pay_dsn, "alice", 5000)
    g, payload = gid(), pay_for("o1", "alice", ("SKU-3", 1))
    assert (await pay.prepare(g, 0, payload, charge))[0] == 200
    assert await wallets(pay_dsn) == {"alice": 5000}
    assert (await pay.commit(g, 0))[0] == 200
    assert (await pay.prepare(g, 0, payload, charge))[0] == 200  # late duplicate: no effect
    assert await wallets(pay_dsn) == {"alice": 3500}
    g2, payload2 = gid(), pay_for("o2", "alice", ("SKU-11", 7))
    assert (await pay.prepare(g2, 0, payload2, charge))[0] == 200
    assert (await pay.rollback(g2, 0))[0] == 200
    assert await prepared_here(pay_dsn) == []
    assert await wallets(pay_dsn) == {"alice": 3500}
    assert await payments(pay_dsn) == [("o1", "alice", 1500, "captured")]


async def test_charge_saga_action_compensation_and_duplicates(
    pay: Participant, pay_dsn: str
) -> None:
    await seed_wallet(pay_dsn, "alice", 5000)
    g, action, undo = gid(), Counting(charge), Counting(refund)
    payload = pay_for("o1", "alice", ("SKU-1", 1), ("SKU-8", 2))
    assert (await pay.run_action(g, 1, payload, action))[0] == 200
    assert await pay.run_action(g, 1, payload, action) == (200, {"done": True, "repeat": True})
    assert await wallets(pay_dsn) == {"alice": 800}
    assert (await pay.run_compensation(g, 1, payload, undo))[0] == 200
    assert (await pay.run_compensation(g, 1, payload, undo))[1].get("repeat") is True
    assert (action.calls, undo.calls) == (1, 1)
    assert await wallets(pay_dsn) == {"alice": 5000}
    assert await payments(pay_dsn) == [("o1", "alice", 4200, "refunded")]


async def test_refund_undoes_only_its_own_branch(pay: Participant, pay_dsn: str) -> None:
    """Another transaction reusing a paid order's id is refused; neither its compensation nor a
    refund run as another branch's business code gives the first payment back."""
    await seed_wallet(pay_dsn, "alice", 5000)
    first, g1 = pay_for("o1", "alice", ("SKU-3", 2)), gid()
    assert (await pay.run_action(g1, 1, first, charge))[0] == 200
    g2 = gid()
    assert await pay.run_action(g2, 1, first, charge) == (
        409,
        {"reason": "order o1 is already paid"},
    )
    assert (await pay.run_compensation(g2, 1, first, refund))[1].get("nothing_to_undo")
    async with pay.engine.begin() as conn:
        assert await call_handler(refund, conn, first, g2, 1) == {"order_id": "o1", "refunded": 0}
    assert await wallets(pay_dsn) == {"alice": 2000}
    rows = await sql(pay_dsn, "SELECT gid, branch, order_id, amount, status FROM payments")
    assert [tuple(r) for r in rows] == [(g1, 1, "o1", 3000, "captured")]


async def test_concurrent_charges_never_overdraw(pay: Participant, pay_dsn: str) -> None:
    await seed_wallet(pay_dsn, "alice", 10000)
    charges = [pay_for(f"o{i}", "alice", ("SKU-3", 2)) for i in range(8)]
    answers = await asyncio.gather(*(pay.run_action(gid(), 0, p, charge) for p in charges))
    assert sorted(status for status, _ in answers) == [200] * 3 + [409] * 5
    assert {b["reason"] for s, b in answers if s == 409} == {
        "insufficient funds: alice has 10.00, the order costs 30.00"
    }
    assert await wallets(pay_dsn) == {"alice": 1000}
    assert len(await payments(pay_dsn)) == 3


async def test_payments_http_wallets_listing_and_a_2pc_branch(pay_dsn: str) -> None:
    app = payments_app(PaymentsSettings(dsn=pay_dsn, **SECURE))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with api_client(transport=transport, base_url="http://payments") as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            made = await client.post("/wallets", json={"customer": "alice", "balance": 5000})
            assert made.status_code == 201 and made.json() == {"customer": "alice", "balance": 5000}
            dup = await client.post("/wallets", json={"customer": "alice", "balance": 1})
            # Errors are problem details (RFC 9457), from the service's routes and the SDK alike.
            assert dup.status_code == 409
            assert dup.headers["content-type"] == "application/problem+json"
            assert dup.json() == {
                "type": "about:blank",
                "title": "Conflict",
                "status": 409,
                "detail": "alice already has a wallet",
            }
            neg = await client.post("/wallets", json={"customer": "bob", "balance": -1})
            assert neg.status_code == 422
            assert neg.headers["content-type"] == "application/problem+json"
            assert [e["field"] for e in neg.json()["errors"]] == ["body.balance"], neg.text
            g = gid()
            charge = pay_for("o1", "alice", ("SKU-5", 1))
            voted = await branch_call(
                client, "payments", "/payments/charge", "prepare", g, 0, charge
            )
            assert voted.status_code == 200 and voted.json()["vote"] == "yes", voted.text
            commit = await branch_call(client, "payments", wire.COMMIT_PATH, "commit", g, 0)
            assert commit.status_code == 200
            assert (await client.get("/wallets")).json() == [{"customer": "alice", "balance": 3100}]
            assert (await client.get("/payments")).json() == [
                {
                    "gid": g,
                    "branch": 0,
                    "order_id": "o1",
                    "customer": "alice",
                    "amount": 1900,
                    "status": "captured",
                }
            ]
            charge = pay_for("o2", "alice", ("SKU-6", 1))
            no = await branch_call(
                client, "payments", "/payments/charge", "prepare", gid(), 0, charge
            )
            assert no.status_code == 409
            assert no.headers["content-type"] == "application/problem+json"
            assert no.json() == {
                "type": "about:blank",
                "title": "Conflict",
                "status": 409,
                "detail": "insufficient funds: alice has 31.00, the order costs 39.00",
            }
    assert await wallets(pay_dsn) == {"alice": 3100}
