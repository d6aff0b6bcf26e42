"""The shop end to end: real services, real coordinator, real Postgres. Orders in both modes,
each failure a customer can meet, the demo's own run, and the invariant checker (including that
it does catch a broken invariant)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from participants.shop.catalogue import PRODUCTS
from tests.conftest import TEST_COORDINATOR_ENV
from tests.helpers import TEST_API_TOKEN, api_client, fetch, unique
from txn_devstack.invariants import check, take_baseline
from txn_devstack.shop_demo import run_against
from txn_devstack.stack import Stack, StackConfig


@pytest.fixture(scope="module")
def shop(state_root: Path) -> Iterator[Stack]:
    s = Stack(
        StackConfig(
            api_token=TEST_API_TOKEN,
            state_dir=state_root / "shop",
            ledgers=0,
            shop=True,
            fsync=False,
            coordinator_env=dict(TEST_COORDINATOR_ENV),
        )
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()


def url(stack: Stack, name: str) -> str:
    return stack.service(name).url


async def seed(
    client: httpx.AsyncClient, stack: Stack, sku_stock: dict[str, int], wallets: dict[str, int]
) -> None:
    for sku, qty in sku_stock.items():
        await client.post(f"{url(stack, 'inventory')}/stock", json={"sku": sku, "available": qty})
    for customer, balance in wallets.items():
        reply = await client.post(
            f"{url(stack, 'payments')}/wallets", json={"customer": customer, "balance": balance}
        )
        assert reply.status_code == 201, reply.text


async def order(client: httpx.AsyncClient, stack: Stack, **body: Any) -> dict[str, Any]:
    reply = await client.post(f"{url(stack, 'orders')}/orders", json=body)
    assert reply.status_code == 201, reply.text
    result: dict[str, Any] = reply.json()
    return result


@pytest.mark.parametrize("mode", ["2pc", "saga"])
async def test_orders_confirm_or_cancel_with_a_reason(shop: Stack, mode: str) -> None:
    rich, poor = unique("rich"), unique("poor")
    async with api_client(timeout=60) as client:
        await seed(client, shop, {"SKU-1": 1000, "SKU-3": 5}, {rich: 100_000, poor: 100})
        baseline = await take_baseline(shop.state())
        stock_before = await fetch(
            shop.service("inventory").dsn or "", "SELECT available FROM stock WHERE sku = 'SKU-3'"
        )
        ok = await order(
            client,
            shop,
            customer=rich,
            items=[{"sku": "SKU-1", "qty": 2}],
            destination="Oslo",
            mode=mode,
        )
        assert ok["status"] == "confirmed", ok
        assert ok["total"] == 4800
        broke = await order(
            client,
            shop,
            customer=poor,
            items=[{"sku": "SKU-1", "qty": 1}],
            destination="Oslo",
            mode=mode,
        )
        assert broke["status"] == "cancelled"
        assert f"insufficient funds: {poor} has 1.00, the order costs 24.00" in broke["reason"]
        available = int(stock_before[0]["available"]) if stock_before else 0
        greedy = await order(
            client,
            shop,
            customer=rich,
            items=[{"sku": "SKU-3", "qty": available + 1}],
            destination="Oslo",
            mode=mode,
        )
        assert greedy["status"] == "cancelled"
        assert f"only {available} left of SKU-3" in greedy["reason"]
        later = (await client.get(f"{url(shop, 'orders')}/orders/{ok['id']}")).json()
        assert later["status"] == "confirmed" and later["id"] == ok["id"]
    rules = await check(shop.state(), baseline)
    assert all(r.ok for r in rules), [r for r in rules if not r.ok]


async def test_saga_blocked_destination_is_compensated(shop: Stack) -> None:
    customer = unique("traveller")
    async with api_client(timeout=60) as client:
        await seed(client, shop, {"SKU-2": 1000}, {customer: 100_000})
        baseline = await take_baseline(shop.state())
        before = await fetch(
            shop.service("payments").dsn or "",
            f"SELECT balance FROM wallets WHERE customer = '{customer}'",
        )
        blocked = await order(
            client,
            shop,
            customer=customer,
            items=[{"sku": "SKU-2", "qty": 1}],
            destination="Atlantis",
            mode="saga",
        )
    assert blocked["status"] == "cancelled"
    assert "we do not ship to Atlantis" in blocked["reason"]
    after = await fetch(
        shop.service("payments").dsn or "",
        f"SELECT balance FROM wallets WHERE customer = '{customer}'",
    )
    assert after == before  # charged, then refunded
    refunds = await fetch(
        shop.service("payments").dsn or "",
        f"SELECT status FROM payments WHERE order_id = '{blocked['id']}'",
    )
    assert [r["status"] for r in refunds] == ["refunded"]
    rules = await check(shop.state(), baseline)
    assert all(r.ok for r in rules), [r for r in rules if not r.ok]


async def _held(stack: Stack, order_id: str) -> dict[str, Any]:
    """What the databases hold for an order: live reservations, captured payments, shipments."""
    inventory = stack.service("inventory").dsn or ""
    payments = stack.service("payments").dsn or ""
    shipping = stack.service("shipping").dsn or ""
    sql = "SELECT gid, sku, qty FROM reservations WHERE order_id = $1 AND status = 'reserved'"
    reserved = await fetch(inventory, sql, order_id)
    sql = "SELECT gid, amount FROM payments WHERE order_id = $1 AND status = 'captured'"
    captured = await fetch(payments, sql, order_id)
    sql = "SELECT status FROM shipments WHERE order_id = $1"
    shipped = await fetch(shipping, sql, order_id)
    return {
        "reserved": sorted((r["gid"], r["sku"], r["qty"]) for r in reserved),
        "captured": [(r["gid"], r["amount"]) for r in captured],
        "shipments": [r["status"] for r in shipped],
    }


async def test_a_saga_reusing_a_confirmed_order_id_leaves_that_order_intact(shop: Stack) -> None:
    """A ``place_order`` saga submitted with a confirmed order's id: its reserve of another SKU
    succeeds, its charge is refused (the order is paid), and its compensation releases only
    its own reservation, never the confirmed order's stock or payment."""
    customer = unique("reuser")
    async with api_client(timeout=60) as client:
        await seed(client, shop, {"SKU-1": 1000, "SKU-3": 1000}, {customer: 100_000})
        baseline = await take_baseline(shop.state())
        first = await order(
            client,
            shop,
            customer=customer,
            items=[{"sku": "SKU-1", "qty": 2}],
            destination="Oslo",
            mode="saga",
        )
        assert first["status"] == "confirmed", first
        intact = await _held(shop, first["id"])
        assert intact == {
            "reserved": [(first["gid"], "SKU-1", 2)],
            "captured": [(first["gid"], 4800)],
            "shipments": ["created"],
        }
        skus = "('SKU-1', 'SKU-3')"
        stock_sql = f"SELECT sku, available, reserved FROM stock WHERE sku IN {skus} ORDER BY sku"
        stock_before = await fetch(shop.service("inventory").dsn or "", stock_sql)
        reuse = unique("reuse")
        reply = await client.post(
            f"{shop.coordinator_url}/v1/transactions?wait=30",
            json={
                "gid": reuse,
                "saga": "place_order",
                "input": {
                    "order_id": first["id"],
                    "customer": customer,
                    "items": [{"sku": "SKU-3", "qty": 1}],
                    "destination": "Oslo",
                },
            },
        )
        assert reply.status_code in (200, 201), reply.text
        outcome = reply.json()
        assert outcome["status"] == "aborted", outcome
        assert f"order {first['id']} is already paid" in outcome["reason"]
    assert await _held(shop, first["id"]) == intact
    stock_after = await fetch(shop.service("inventory").dsn or "", stock_sql)
    assert [tuple(r) for r in stock_after] == [tuple(r) for r in stock_before]
    released = await fetch(
        shop.service("inventory").dsn or "",
        "SELECT sku, qty, status FROM reservations WHERE gid = $1",
        reuse,
    )
    assert [tuple(r) for r in released] == [("SKU-3", 1, "released")]
    rules = await check(shop.state(), baseline)
    assert all(r.ok for r in rules), [r for r in rules if not r.ok]


async def test_the_client_cannot_set_the_price(shop: Stack) -> None:
    """``place_order`` refuses an ``amount`` (422 naming the field, nothing logged); a raw branch
    carrying one is refused by payments; what is charged is the catalogue's price x qty."""
    customer = unique("haggler")
    payments = shop.service("payments").dsn or ""
    submit = f"{shop.coordinator_url}/v1/transactions?wait=30"
    items = [{"sku": "SKU-2", "qty": 2}, {"sku": "SKU-3", "qty": 1}]
    async with api_client(timeout=60) as client:
        await seed(client, shop, {"SKU-2": 1000, "SKU-3": 1000}, {customer: 100_000})
        baseline = await take_baseline(shop.state())
        cheap = unique("cheap")
        inp = {"order_id": cheap, "customer": customer, "items": items, "destination": "Oslo"}
        body = {"gid": cheap, "saga": "place_order", "input": {**inp, "amount": 1}}
        refused = await client.post(submit, json=body)
        assert refused.status_code == 422, refused.text
        assert [e["field"] for e in refused.json()["errors"]] == ["body.input.amount"]
        assert (
            await client.get(f"{shop.coordinator_url}/v1/transactions/{cheap}")
        ).status_code == 404

        raw = unique("raw")
        branch = {
            "participant": "payments",
            "action": "/payments/charge",
            "payload": {"order_id": raw, "customer": customer, "items": items, "amount": 1},
        }
        reply = await client.post(submit, json={"gid": raw, "mode": "2pc", "branches": [branch]})
        assert reply.status_code in (200, 201), reply.text
        assert reply.json()["status"] == "aborted"
        assert "amount: Extra inputs are not permitted" in reply.json()["reason"]

        # Without an amount, the saga is priced by payments (Atlantis: then refunded).
        far = unique("far")
        body = {"gid": far, "saga": "place_order", "input": {**inp, "order_id": far}}
        body["input"]["destination"] = "Atlantis"
        reply = await client.post(submit, json=body)
        assert reply.status_code in (200, 201), reply.text
        assert "we do not ship to Atlantis" in reply.json()["reason"]
        fair = await order(
            client, shop, customer=customer, items=items, destination="Oslo", mode="saga"
        )
        assert fair["status"] == "confirmed", fair
    price = 2 * PRODUCTS["SKU-2"].price + PRODUCTS["SKU-3"].price
    assert fair["total"] == price
    sql = "SELECT order_id, amount, status FROM payments WHERE customer = $1 ORDER BY status"
    paid = await fetch(payments, sql, customer)
    assert [tuple(r) for r in paid] == [(fair["id"], price, "captured"), (far, price, "refunded")]
    wallet = await fetch(payments, "SELECT balance FROM wallets WHERE customer = $1", customer)
    assert wallet[0]["balance"] == 100_000 - price
    rules = await check(shop.state(), baseline)
    assert all(r.ok for r in rules), [r for r in rules if not r.ok]


@pytest.mark.parametrize("mode", ["saga", "2pc"])
async def test_a_step_cannot_mint_money_through_the_wallets_endpoint(
    shop: Stack, mode: str
) -> None:
    """The review's mint: a branch naming payments' own ``POST /wallets``, an endpoint of the
    service but no declared branch operation, is refused before anything is logged or sent."""
    customer, gid = unique("mint"), unique("mint")
    branch = {
        "participant": "payments",
        "action": "/wallets",
        "payload": {"customer": customer, "balance": 10**18},
    }
    if mode == "saga":
        branch["compensation"] = "/payments/charge/undo"
    async with api_client(base_url=shop.coordinator_url, timeout=30) as client:
        body = {"gid": gid, "mode": mode, "branches": [branch]}
        reply = await client.post("/v1/transactions?wait=5", json=body)
        assert reply.status_code == 422, reply.text
        assert "payments: /wallets is not a" in reply.json()["errors"][0]["message"]
        assert (await client.get(f"/v1/transactions/{gid}")).status_code == 404
        wallets = (await client.get(f"{url(shop, 'payments')}/wallets")).json()
    assert customer not in {w["customer"] for w in wallets}


def test_the_demo_runs_and_its_invariants_hold(
    shop: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_against(shop.state(), n=40, concurrency=8, seed=3) == 0
    out = capsys.readouterr().out
    assert "transactions/s" in out and "FAIL" not in out
    assert "confirmed" in out and "cancelled" in out


async def test_the_checker_catches_a_broken_invariant(shop: Stack) -> None:
    state = shop.state()
    baseline = await take_baseline(state)
    inventory = shop.service("inventory").dsn or ""
    await fetch(inventory, "UPDATE stock SET available = available + 1 WHERE sku = 'SKU-1'")
    try:
        rules = await check(state, baseline)
        broken = [r for r in rules if not r.ok]
        assert [r.name.split(":")[0] for r in broken] == ["per SKU"]
        assert "SKU-1" in broken[0].violations[0]
    finally:
        await fetch(inventory, "UPDATE stock SET available = available - 1 WHERE sku = 'SKU-1'")
    assert all(r.ok for r in await check(state, baseline))


def test_txn_demo_against_a_running_stack(shop: Stack) -> None:
    """`txn demo --against stack.json`, as a user runs it against `txn dev`."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator.cli",
            "demo",
            "--against",
            str(shop.state_dir / "stack.json"),
            "--orders",
            "20",
            "--concurrency",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "20 orders in" in done.stdout
    assert "ok   every transaction in the log is terminal" in done.stdout
