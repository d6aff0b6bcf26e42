"""The shop's invariants, checked from the databases themselves (never from the log's opinion).
One module for the tests, the demo and the fault suite.

    violations = await check(state, baseline)   # state: stack.json's content

``baseline`` is what the shop held before the run (stock per SKU, money in wallets and captured
payments); it is taken with ``take_baseline`` after seeding, so the checks hold across runs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

TERMINAL = ("committed", "aborted")


@dataclass(frozen=True)
class Baseline:
    stock: dict[str, int]  # per SKU: available + reserved
    money: int  # Σ wallets + Σ captured payments, in cents


def _dsns(state: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["dsn"] for p in state["participants"]}


async def _fetch(dsn: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


async def take_baseline(state: dict[str, Any]) -> Baseline:
    dsns = _dsns(state)
    stock = await _fetch(dsns["inventory"], "SELECT sku, available + reserved AS total FROM stock")
    wallets = await _fetch(dsns["payments"], "SELECT coalesce(sum(balance), 0) AS s FROM wallets")
    captured = await _fetch(
        dsns["payments"],
        "SELECT coalesce(sum(amount), 0) AS s FROM payments WHERE status = 'captured'",
    )
    return Baseline(
        {r["sku"]: int(r["total"]) for r in stock}, int(wallets[0]["s"]) + int(captured[0]["s"])
    )


@dataclass(frozen=True)
class Rule:
    name: str
    violations: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations


async def check(state: dict[str, Any], baseline: Baseline) -> list[Rule]:
    """Every rule with the violations found (an empty list: the rule holds)."""
    dsns = _dsns(state)
    stock = await _fetch(dsns["inventory"], "SELECT sku, available, reserved FROM stock")
    reservations = await _fetch(
        dsns["inventory"], "SELECT order_id, sku, qty, status FROM reservations"
    )
    wallets = await _fetch(dsns["payments"], "SELECT coalesce(sum(balance), 0) AS s FROM wallets")
    payments = await _fetch(dsns["payments"], "SELECT order_id, amount, status FROM payments")
    shipments = await _fetch(dsns["shipping"], "SELECT order_id, status FROM shipments")
    orders = await _fetch(dsns["orders"], "SELECT id, mode, status, items, total FROM orders")
    live = await _fetch(
        state["log_dsn"],
        "SELECT gid, status FROM transactions WHERE status NOT IN ('committed', 'aborted')",
    )
    prepared: list[str] = []
    for name, dsn in sorted(dsns.items()):
        rows = await _fetch(dsn, "SELECT gid FROM pg_prepared_xacts")
        prepared += [f"{name}: {r['gid']}" for r in rows]

    # Rows are per branch, (gid, branch): an order's live rows are summed, so a second live
    # reservation or payment of one order (which the schema forbids) would show as a mismatch.
    reserved_by_order: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in reservations:
        if r["status"] == "reserved":
            reserved_by_order[r["order_id"]][r["sku"]] += int(r["qty"])
    captured: dict[str, int] = defaultdict(int)
    for r in payments:
        if r["status"] == "captured":
            captured[r["order_id"]] += int(r["amount"])
    shipped = {r["order_id"] for r in shipments if r["status"] == "created"}

    stock_rule: list[str] = []
    sold: dict[str, int] = defaultdict(int)
    for o in orders:
        if o["status"] == "confirmed":
            for item in _items(o["items"]):
                sold[item["sku"]] += int(item["qty"])
    for r in stock:
        sku, total = r["sku"], int(r["available"]) + int(r["reserved"])
        if sku in baseline.stock and total != baseline.stock[sku]:
            stock_rule.append(f"{sku}: started with {baseline.stock[sku]}, now {total} in all")
        if int(r["reserved"]) != sold[sku]:
            stock_rule.append(
                f"{sku}: {r['reserved']} reserved but confirmed orders hold {sold[sku]}"
            )

    money = int(wallets[0]["s"]) + sum(captured.values())
    money_rule = (
        []
        if money == baseline.money
        else [f"wallets + captured payments = {money}, expected {baseline.money} (cents)"]
    )

    order_rule: list[str] = []
    for o in orders:
        oid, status = o["id"], o["status"]
        want = {i["sku"]: int(i["qty"]) for i in _items(o["items"])}
        if status == "confirmed":
            if dict(reserved_by_order.get(oid, {})) != want:
                order_rule.append(f"confirmed order {oid} lacks its stock")
            if captured.get(oid) != int(o["total"]):
                order_rule.append(f"confirmed order {oid} lacks its payment")
            if o["mode"] == "saga" and oid not in shipped:
                order_rule.append(f"confirmed saga order {oid} lacks its shipment")
        elif status == "cancelled":
            if reserved_by_order.get(oid):
                order_rule.append(f"cancelled order {oid} still holds stock")
            if oid in captured:
                order_rule.append(f"cancelled order {oid} still has a captured payment")
            if oid in shipped:
                order_rule.append(f"cancelled order {oid} still has a shipment")
        else:
            order_rule.append(f"order {oid} is still {status}")

    return [
        Rule(
            "per SKU: initial stock = available + reserved; reserved = sold to confirmed orders",
            stock_rule,
        ),
        Rule("money: wallets + captured payments = initial money", money_rule),
        Rule(
            "every confirmed order has its stock, payment (and shipment); cancelled ones none",
            order_rule,
        ),
        Rule("no prepared transaction remains", prepared),
        Rule(
            "every transaction in the log is terminal",
            [f"{r['gid']} is {r['status']}" for r in live],
        ),
    ]


def _items(raw: Any) -> list[dict[str, Any]]:
    value = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    return list(value)
