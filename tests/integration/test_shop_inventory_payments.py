"""The shop's inventory participant against a real Postgres: its handlers run through the SDK's
2PC and saga methods on fresh migrated databases, and the service once over HTTP. Every check
reads the real rows back: stock and reservations. (Payments: ``test_shop_payments.py``.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from participants.inventory.app import InventorySettings, release, reserve
from participants.inventory.app import create_app as inventory_app
from participants.sdk import Participant, ParticipantSettings
from participants.sdk.base import call_handler
from participants.sdk.db import make_engine
from tests.conftest import create_db
from tests.helpers import SECURE, Counting, api_client, branch_call, prepared_here
from txn_devstack.postgres import Cluster

# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
async def inv_dsn(pg: Cluster) -> str:
    return await create_db(pg, "inventory")


async def _participant(dsn: str) -> AsyncIterator[Participant]:
    engine = make_engine(dsn, pool_size=10)
    try:
        yield Participant(ParticipantSettings(name="t", dsn=dsn, lock_timeout_ms=5000), engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def inv(inv_dsn: str) -> AsyncIterator[Participant]:
    async for p in _participant(inv_dsn):
        yield p


async def sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def gid() -> str:
    return f"shop-{uuid.uuid4().hex}"


async def seed_stock(dsn: str, **skus: int) -> None:
    for sku, available in skus.items():
        await sql(
            dsn,
            "INSERT INTO stock (sku, available, reserved) VALUES ($1, $2, 0)",
            sku.replace("_", "-"),
            available,
        )


async def stock(dsn: str) -> dict[str, tuple[int, int]]:
    rows = await sql(dsn, "SELECT sku, available, reserved FROM stock")
    return {r["sku"]: (r["available"], r["reserved"]) for r in rows}


async def reservations(dsn: str) -> list[tuple[str, str, int, str]]:
    rows = await sql(dsn, "SELECT * FROM reservations ORDER BY order_id, sku")
    return [(r["order_id"], r["sku"], r["qty"], r["status"]) for r in rows]


def order(order_id: str, *items: tuple[str, int]) -> dict[str, Any]:
    return {"order_id": order_id, "items": [{"sku": s, "qty": q} for s, q in items]}


# -- inventory -------------------------------------------------------------------------------


async def test_reserve_moves_stock_and_records_reservations(inv: Participant, inv_dsn: str) -> None:
    await seed_stock(inv_dsn, SKU_1=10, SKU_2=5, SKU_3=1)
    payload = order("o1", ("SKU-2", 2), ("SKU-1", 3), ("SKU-1", 1))  # SKU-1 on two lines
    status, body = await inv.run_action(gid(), 0, payload, reserve)
    assert status == 200, body
    assert body["result"] == {
        "order_id": "o1",
        "reserved": [{"sku": "SKU-1", "qty": 4}, {"sku": "SKU-2", "qty": 2}],
    }
    assert await stock(inv_dsn) == {"SKU-1": (6, 4), "SKU-2": (3, 2), "SKU-3": (1, 0)}
    assert await reservations(inv_dsn) == [
        ("o1", "SKU-1", 4, "reserved"),
        ("o1", "SKU-2", 2, "reserved"),
    ]
    # The same order cannot hold a second reservation of a SKU it still holds.
    again = await inv.run_action(gid(), 0, order("o1", ("SKU-3", 1), ("SKU-2", 1)), reserve)
    assert again == (409, {"reason": "order o1 already holds a reservation of SKU-2"})
    assert await stock(inv_dsn) == {"SKU-1": (6, 4), "SKU-2": (3, 2), "SKU-3": (1, 0)}


async def test_short_stock_refuses_with_reason_and_changes_nothing(
    inv: Participant, inv_dsn: str
) -> None:
    await seed_stock(inv_dsn, SKU_1=10, SKU_7=2)
    payload = order("o1", ("SKU-1", 5), ("SKU-7", 3))  # SKU-1 is applied first, then undone
    g = gid()
    assert await inv.run_action(g, 0, payload, reserve) == (
        409,
        {"reason": "only 2 left of SKU-7"},
    )
    assert await stock(inv_dsn) == {"SKU-1": (10, 0), "SKU-7": (2, 0)}
    assert await reservations(inv_dsn) == []
    # As a 2PC prepare: votes no with the same reason, nothing left prepared.
    assert await inv.prepare(gid(), 0, payload, reserve) == (
        409,
        {"reason": "only 2 left of SKU-7"},
    )
    assert await prepared_here(inv_dsn) == []
    assert await stock(inv_dsn) == {"SKU-1": (10, 0), "SKU-7": (2, 0)}
    # Exactly what is left can be reserved.
    assert (await inv.run_action(gid(), 0, order("o2", ("SKU-7", 2)), reserve))[0] == 200
    assert await stock(inv_dsn) == {"SKU-1": (10, 0), "SKU-7": (0, 2)}


async def test_unknown_sku_and_malformed_payloads_are_refused(
    inv: Participant, inv_dsn: str
) -> None:
    await seed_stock(inv_dsn, SKU_1=10)
    unknown = await inv.run_action(gid(), 0, order("o1", ("SKU-1", 1), ("SKU-99", 1)), reserve)
    assert unknown == (409, {"reason": "unknown SKU SKU-99"})
    cases: list[tuple[dict[str, Any], str]] = [
        (order("o1", ("SKU-1", 0)), "items.0.qty: Input should be greater than 0"),
        (
            {"order_id": "o1", "items": []},
            "items: List should have at least 1 item after validation, not 0",
        ),
        ({"items": [{"sku": "SKU-1", "qty": 1}]}, "order_id: Field required"),
        (
            {"order_id": "o1", "items": [{"sku": "SKU-1", "qty": "2"}]},
            "items.0.qty: Input should be a valid integer",
        ),
    ]
    for payload, why in cases:
        status, body = await inv.run_action(gid(), 0, payload, reserve)
        assert (status, body) == (409, {"reason": f"invalid reservation payload: {why}"})
    assert await stock(inv_dsn) == {"SKU-1": (10, 0)}
    assert await reservations(inv_dsn) == []


async def test_release_restores_stock_and_is_idempotent(inv: Participant, inv_dsn: str) -> None:
    await seed_stock(inv_dsn, SKU_1=10, SKU_2=5)
    payload, g = order("o1", ("SKU-1", 3), ("SKU-2", 5)), gid()
    assert (await inv.run_action(g, 0, payload, reserve))[0] == 200
    assert (await inv.run_action(gid(), 0, order("o2", ("SKU-1", 2)), reserve))[0] == 200
    assert await stock(inv_dsn) == {"SKU-1": (5, 5), "SKU-2": (0, 5)}
    # The handler itself, outside any barrier (as the reserve's branch): a second release
    # changes nothing.
    async with inv.engine.begin() as conn:
        first = await call_handler(release, conn, payload, g, 0)
    assert first == {
        "order_id": "o1",
        "released": [{"sku": "SKU-1", "qty": 3}, {"sku": "SKU-2", "qty": 5}],
    }
    async with inv.engine.begin() as conn:
        again = await call_handler(release, conn, payload, g, 0)
    assert again == {"order_id": "o1", "released": []}
    assert await stock(inv_dsn) == {"SKU-1": (8, 2), "SKU-2": (5, 0)}  # o2 still holds 2
    assert await reservations(inv_dsn) == [
        ("o1", "SKU-1", 3, "released"),
        ("o1", "SKU-2", 5, "released"),
        ("o2", "SKU-1", 2, "reserved"),
    ]
    # An order never reserved: nothing to do, success.
    async with inv.engine.begin() as conn:
        assert await call_handler(release, conn, order("ghost", ("SKU-1", 1)), gid(), 0) == {
            "order_id": "ghost",
            "released": [],
        }
    assert await stock(inv_dsn) == {"SKU-1": (8, 2), "SKU-2": (5, 0)}
    # A released order may reserve again (retried under a new transaction).
    assert (await inv.run_action(gid(), 0, order("o1", ("SKU-2", 1)), reserve))[0] == 200
    assert await stock(inv_dsn) == {"SKU-1": (8, 2), "SKU-2": (4, 1)}
    assert ("o1", "SKU-2", 1, "reserved") in await reservations(inv_dsn)


async def test_reserve_2pc_commit_applies_once_rollback_leaves_stock(
    inv: Participant, inv_dsn: str
) -> None:
    await seed_stock(inv_dsn, SKU_1=10, SKU_2=4)
    payload = order("o1", ("SKU-1", 3), ("SKU-2", 4))
    g = gid()
    status, body = await inv.prepare(g, 0, payload, reserve)
    assert status == 200 and body["vote"] == "yes"
    assert await prepared_here(inv_dsn) == [f"txn:{g}:0"]
    assert await stock(inv_dsn) == {"SKU-1": (10, 0), "SKU-2": (4, 0)}  # invisible until commit
    assert (await inv.prepare(g, 0, payload, reserve))[1].get("repeat") is True
    assert (await inv.commit(g, 0))[0] == 200
    assert (await inv.commit(g, 0))[0] == 200
    assert (await inv.prepare(g, 0, payload, reserve))[0] == 200  # late duplicate: no effect
    assert await stock(inv_dsn) == {"SKU-1": (7, 3), "SKU-2": (0, 4)}
    assert await reservations(inv_dsn) == [
        ("o1", "SKU-1", 3, "reserved"),
        ("o1", "SKU-2", 4, "reserved"),
    ]
    # Prepare then rollback: nothing applied, and the late duplicate prepare is refused.
    await sql(inv_dsn, "UPDATE stock SET available = 10 WHERE sku = 'SKU-2'")
    g2, payload2 = gid(), order("o2", ("SKU-2", 6))
    assert (await inv.prepare(g2, 1, payload2, reserve))[0] == 200
    assert (await inv.rollback(g2, 1))[0] == 200
    assert (await inv.prepare(g2, 1, payload2, reserve))[0] == 409
    assert await prepared_here(inv_dsn) == []
    assert await stock(inv_dsn) == {"SKU-1": (7, 3), "SKU-2": (10, 4)}
    assert [r[0] for r in await reservations(inv_dsn)] == ["o1", "o1"]


async def test_reserve_saga_action_then_compensation_restores_everything(
    inv: Participant, inv_dsn: str
) -> None:
    await seed_stock(inv_dsn, SKU_1=10, SKU_2=5)
    payload = order("o1", ("SKU-1", 3), ("SKU-2", 5))
    g, undo = gid(), Counting(release)
    assert (await inv.run_action(g, 2, payload, reserve))[0] == 200
    assert await stock(inv_dsn) == {"SKU-1": (7, 3), "SKU-2": (0, 5)}
    first = await inv.run_compensation(g, 2, payload, undo)
    assert first[0] == 200 and first[1]["result"]["released"] == [
        {"sku": "SKU-1", "qty": 3},
        {"sku": "SKU-2", "qty": 5},
    ]
    again = await inv.run_compensation(g, 2, payload, undo)
    assert again == (200, {"compensated": True, "repeat": True})
    assert undo.calls == 1
    assert await stock(inv_dsn) == {"SKU-1": (10, 0), "SKU-2": (5, 0)}
    assert await reservations(inv_dsn) == [
        ("o1", "SKU-1", 3, "released"),
        ("o1", "SKU-2", 5, "released"),
    ]
    # A compensation of a refused action runs no business code.
    short = order("o2", ("SKU-2", 6))
    g2 = gid()
    assert (await inv.run_action(g2, 0, short, reserve))[0] == 409
    assert (await inv.run_compensation(g2, 0, short, undo))[1].get("nothing_to_undo") is True
    assert undo.calls == 1


async def test_release_undoes_only_its_own_branch(inv: Participant, inv_dsn: str) -> None:
    """Another transaction reusing an order's id (its reserve of a SKU the order does not hold
    succeeds, of one it holds is refused): compensating it frees only what it reserved."""
    await seed_stock(inv_dsn, SKU_1=10, SKU_2=5)
    first, g1 = order("o1", ("SKU-1", 3)), gid()
    assert (await inv.run_action(g1, 0, first, reserve))[0] == 200
    reused, g2 = order("o1", ("SKU-2", 1)), gid()
    assert (await inv.run_action(g2, 0, reused, reserve))[0] == 200
    refused, g3 = order("o1", ("SKU-1", 1)), gid()
    assert await inv.run_action(g3, 0, refused, reserve) == (
        409,
        {"reason": "order o1 already holds a reservation of SKU-1"},
    )
    undone = await inv.run_compensation(g2, 0, reused, release)
    assert undone[0] == 200 and undone[1]["result"]["released"] == [{"sku": "SKU-2", "qty": 1}]
    assert (await inv.run_compensation(g3, 0, refused, release))[1].get("nothing_to_undo")
    # Even run as business code, a release of another branch touches nothing of g1's.
    async with inv.engine.begin() as conn:
        assert (await call_handler(release, conn, first, gid(), 0))["released"] == []
    assert await stock(inv_dsn) == {"SKU-1": (7, 3), "SKU-2": (5, 0)}
    rows = await sql(inv_dsn, "SELECT gid, branch, sku, status FROM reservations ORDER BY sku")
    assert [tuple(r) for r in rows] == [(g1, 0, "SKU-1", "reserved"), (g2, 0, "SKU-2", "released")]


async def test_duplicate_reserve_action_runs_once(inv: Participant, inv_dsn: str) -> None:
    await seed_stock(inv_dsn, SKU_1=10)
    g, action = gid(), Counting(reserve)
    payload = order("o1", ("SKU-1", 4))
    assert (await inv.run_action(g, 0, payload, action))[0] == 200
    assert await inv.run_action(g, 0, payload, action) == (200, {"done": True, "repeat": True})
    assert action.calls == 1
    assert await stock(inv_dsn) == {"SKU-1": (6, 4)}


async def test_concurrent_reserves_never_oversell_nor_deadlock(
    inv: Participant, inv_dsn: str
) -> None:
    await seed_stock(inv_dsn, SKU_3=3, SKU_1=100, SKU_2=100)
    last = [order(f"last{i}", ("SKU-3", 1)) for i in range(8)]
    answers = await asyncio.gather(*(inv.run_action(gid(), 0, p, reserve) for p in last))
    assert sorted(status for status, _ in answers) == [200] * 3 + [409] * 5
    assert {b["reason"] for s, b in answers if s == 409} == {"only 0 left of SKU-3"}
    # Orders listing the same SKUs in opposite orders: locked in one order, no deadlock.
    crossed = [
        order(f"x{i}", *([("SKU-1", 1), ("SKU-2", 1)][:: 1 if i % 2 else -1])) for i in range(8)
    ]
    answers = await asyncio.gather(*(inv.run_action(gid(), 0, p, reserve) for p in crossed))
    assert [status for status, _ in answers] == [200] * 8
    assert await stock(inv_dsn) == {"SKU-1": (92, 8), "SKU-2": (92, 8), "SKU-3": (0, 3)}
    assert len(await reservations(inv_dsn)) == 3 + 16


async def test_inventory_http_seeding_listing_and_a_saga_step(inv_dsn: str) -> None:
    app = inventory_app(InventorySettings(dsn=inv_dsn, **SECURE))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with api_client(transport=transport, base_url="http://inventory") as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            seeded = await client.post("/stock", json={"sku": "SKU-7", "available": 2})
            assert seeded.status_code == 201, seeded.text
            assert (await client.post("/stock", json={"sku": "SKU-1", "available": 5})).is_success
            dup = await client.post("/stock", json={"sku": "SKU-7", "available": 9})
            assert dup.status_code == 409 and dup.json()["detail"] == "SKU-7 is already stocked"
            bad = await client.post("/stock", json={"sku": "SKU-99", "available": 1})
            assert bad.status_code == 422 and "not in the shop's catalogue" in bad.text
            assert (
                await client.post("/stock", json={"sku": "SKU-2", "available": -1})
            ).status_code == 422

            g = gid()

            async def step(path: str, op: str, payload: dict[str, Any]) -> httpx.Response:
                return await branch_call(client, "inventory", path, op, g, 0, payload)

            short = await step("/stock/reserve", "action", order("o1", ("SKU-7", 3)))
            assert short.status_code == 409
            assert short.json() == {
                "type": "about:blank",
                "title": "Conflict",
                "status": 409,
                "detail": "only 2 left of SKU-7",
            }
            g = gid()
            done = await step("/stock/reserve", "action", order("o2", ("SKU-7", 2), ("SKU-1", 1)))
            assert done.status_code == 200, done.text
            listed = (await client.get("/stock")).json()
            assert listed == [
                {
                    "sku": "SKU-1",
                    "name": "Espresso beans, 1 kg",
                    "price": 2400,
                    "available": 4,
                    "reserved": 1,
                },
                {
                    "sku": "SKU-7",
                    "name": "Limited-edition cup",
                    "price": 4500,
                    "available": 0,
                    "reserved": 2,
                },
            ]
            undone = await step("/stock/reserve/undo", "compensate", order("o2", ("SKU-7", 2)))
            assert undone.status_code == 200, undone.text
            held = (await client.get("/reservations")).json()
            assert {(r["sku"], r["status"]) for r in held} == {
                ("SKU-1", "released"),
                ("SKU-7", "released"),
            }
    assert await stock(inv_dsn) == {"SKU-1": (5, 0), "SKU-7": (2, 0)}
