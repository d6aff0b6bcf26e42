"""``txn demo``: the shop. Boots the embedded stack (or uses a running one), seeds products and
customers, places a few hundred orders concurrently in both modes with a realistic mix of
failures, shows progress, then prints what happened and checks the invariants."""

from __future__ import annotations

import asyncio
import json
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg

from participants.shop.catalogue import PRODUCTS, money
from txn_client.http11 import Client, HttpError
from txn_devstack.invariants import Baseline, Rule, check, take_baseline
from txn_devstack.postgres import describe, find_bindir
from txn_devstack.stack import Stack, StackConfig, auth_headers

# Plenty of most things, little of the limited edition: "out of stock" happens.
STOCK = {sku: 400 for sku in PRODUCTS} | {"SKU-7": 12, "SKU-10": 30}
# Most customers can pay; a few have almost nothing: "insufficient funds" happens.
CUSTOMERS = {f"customer{i:02d}": (200_000 if i % 8 else 1_500) for i in range(1, 41)}
DESTINATIONS = ["Lisbon", "Oslo", "Kyoto", "Lagos", "Lima", "Perth", "Atlantis"]
BLOCKED = "Atlantis"  # the shipping service's blocked list (its default)
SEED_TIMEOUT_S = 30.0
# An order's answer: the orders service waits for the outcome (a few seconds at most), a
# killed or paused one ends the call at this bound.
ORDER_TIMEOUT_S = 120.0
ORDER_REPLY_CAP = 1024 * 1024


def make_orders(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    skus = sorted(PRODUCTS)
    orders = []
    for i in range(n):
        chosen = rng.sample(skus, rng.randint(1, 3))
        if rng.random() < 0.15:
            chosen = sorted({*chosen, "SKU-7"})  # the scarce one
        destination = BLOCKED if rng.random() < 0.12 else rng.choice(DESTINATIONS[:-1])
        orders.append(
            {
                "customer": rng.choice(sorted(CUSTOMERS)),
                "items": [{"sku": s, "qty": rng.randint(1, 3)} for s in sorted(chosen)],
                "destination": destination,
                "mode": "2pc" if i % 2 == 0 else "saga",
            }
        )
    return orders


def reason_kind(reason: str | None) -> str:
    if not reason:
        return "-"
    for pattern, kind in (
        (r"only \d+ left of (SKU-\d+)", r"out of stock (\1)"),
        (r"insufficient funds", "insufficient funds"),
        (r"we do not ship to (\w+)", r"blocked destination (\1)"),
        (r"contention", "lock contention"),
        (r"timed out", "timed out"),
    ):
        found = re.search(pattern, reason)
        if found:
            return found.expand(kind)
    return reason[:60]


async def seed_shop(
    token: str,
    urls: dict[str, str],
    stock: dict[str, int] = STOCK,
    customers: dict[str, int] = CUSTOMERS,
) -> None:
    """Stock per SKU and a wallet per customer; 409 (already seeded by an earlier run) is fine,
    anything else is an error."""
    requests = [
        (f"{urls['inventory']}/stock", {"sku": k, "available": n}) for k, n in stock.items()
    ]
    requests += [
        (f"{urls['payments']}/wallets", {"customer": k, "balance": n}) for k, n in customers.items()
    ]
    client = Client(headers=auth_headers(token))
    try:
        for url, body in requests:
            reply = await client.call("POST", url, SEED_TIMEOUT_S, json=body)
            if reply.status >= 400 and reply.status != 409:
                raise RuntimeError(f"seeding {url}: HTTP {reply.status}: {reply.body[:200]!r}")
    finally:
        await client.close()


def _bar(done: int, total: int, started: float) -> None:
    tty = sys.stderr.isatty()
    if not tty and done != total and done % max(total // 10, 1):
        return  # a log, not a terminal: one line per tenth
    width = 40
    filled = width * done // total
    rate = done / max(time.monotonic() - started, 1e-6)
    line = f"  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} orders, {rate:5.1f}/s"
    sys.stderr.write(f"\r{line}" if tty else f"{line}\n")
    sys.stderr.flush()


async def place_all(
    orders_url: str, orders: list[dict[str, Any]], concurrency: int, token: str
) -> tuple[list[dict[str, Any]], float]:
    results: list[dict[str, Any]] = []
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for o in orders:
        queue.put_nowait(o)
    started = time.monotonic()
    client = Client(headers=auth_headers(token), cap=ORDER_REPLY_CAP)

    async def worker() -> None:
        while not queue.empty():
            order = queue.get_nowait()
            try:
                reply = await client.call(
                    "POST", f"{orders_url}/orders", ORDER_TIMEOUT_S, json=order
                )
                status, text = reply.status, reply.body.decode(errors="replace")
                body = reply.json() if status == 201 else None
            except HttpError as e:
                status, text, body = 0, repr(e), None
            if not isinstance(body, dict):
                body = {**order, "status": f"HTTP {status}", "reason": text[:200]}
            results.append(body)
            _bar(len(results), len(orders), started)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    return results, time.monotonic() - started


def report(results: list[dict[str, Any]], elapsed: float, rules: list[Rule]) -> bool:
    print()
    print(f"  {'mode':<6} {'outcome':<10} {'orders':>6}   reason")
    table = Counter((r["mode"], r["status"], reason_kind(r.get("reason"))) for r in results)
    for (mode, status, why), count in sorted(table.items()):
        print(f"  {mode:<6} {status:<10} {count:>6}   {why if status != 'confirmed' else ''}")
    confirmed = [r for r in results if r["status"] == "confirmed"]
    revenue = sum(int(r.get("total", 0)) for r in confirmed)
    print()
    print(
        f"  {len(results)} orders in {elapsed:.1f}s: {len(results) / elapsed:.1f} transactions/s;"
        f" {len(confirmed)} confirmed, revenue {money(revenue)}"
    )
    print()
    print("  Invariants (read from the databases):")
    for rule in rules:
        print(f"  {'ok  ' if rule.ok else 'FAIL'} {rule.name}")
        for violation in rule.violations[:5]:
            print(f"         {violation}")
    return all(rule.ok for rule in rules)


def run_against(state: dict[str, Any], n: int, concurrency: int, seed: int) -> int:
    urls = {p["name"]: p["url"] for p in state["participants"]}
    missing = {"orders", "inventory", "payments", "shipping"} - set(urls)
    if missing:
        print(f"the stack has no {', '.join(sorted(missing))} service: start it with `txn dev`")
        return 2

    async def prepare() -> Baseline:
        await seed_shop(state["api_token"], urls)
        return await take_baseline(state)

    baseline = asyncio.run(prepare())
    print(
        f"Seeded {len(STOCK)} products and {len(CUSTOMERS)} customers. "
        f"Placing {n} orders, {concurrency} at a time, half 2PC, half saga..."
    )
    results, elapsed = asyncio.run(
        place_all(urls["orders"], make_orders(n, seed), concurrency, state["api_token"])
    )
    _, rules = asyncio.run(settled_check(state, baseline))
    return 0 if report(results, elapsed, rules) else 1


async def settled_check(
    state: dict[str, Any], baseline: Baseline, limit_s: float = 60.0
) -> tuple[float | None, list[Rule]]:
    """The invariants once everything has settled (compensations and commits may still be
    finishing in the background right after the last answer), bounded in time: the seconds it
    took (None: still failing after ``limit_s``) and the rules as last checked."""
    started = time.monotonic()
    while True:
        try:
            rules = await check(state, baseline)
        except (OSError, asyncpg.PostgresError) as e:  # a database still coming back
            rules = [Rule("the databases can be read", [repr(e)])]
        elapsed = time.monotonic() - started
        if all(r.ok for r in rules):
            return elapsed, rules
        if elapsed > limit_s:
            return None, rules
        await asyncio.sleep(0.5)


def run_demo(
    state_dir: Path | None, against: Path | None, n: int, concurrency: int, seed: int
) -> int:
    if against is not None:
        return run_against(json.loads(against.read_text()), n, concurrency, seed)
    assert state_dir is not None
    print("Booting the embedded stack: Postgres for the log and for each of orders, inventory,")
    print("payments and shipping; the coordinator; the four services...")
    started = time.monotonic()
    config = StackConfig(state_dir=state_dir, ledgers=0, shop=True)
    with Stack(config) as stack:
        print(f"  up in {time.monotonic() - started:.1f}s; coordinator at {stack.coordinator_url}")
        print(f"  {describe(find_bindir())}")
        code = run_against(stack.state(), n, concurrency, seed)
        print()
        print("Stopping the stack.")
    return code
