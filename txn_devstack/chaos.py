"""``txn chaos``: the shop's order load in both modes while faults drawn at random (from a seed)
hit every process, database and link of a stack of its own; then a quiet period, then the
checks, read from the databases. Nothing accepted may be lost or half-done.

The seed fixes the order mix and the sequence of faults (kind, target, hold, gap); when each
fault lands relative to the orders depends on timing, which no seed can fix.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from participants.shop.catalogue import PRODUCTS
from txn_client.http11 import Client, HttpError
from txn_devstack.faults import KINDS, Injector
from txn_devstack.invariants import Rule, take_baseline
from txn_devstack.shop_demo import (
    BLOCKED,
    DESTINATIONS,
    ORDER_TIMEOUT_S,
    reason_kind,
    seed_shop,
    settled_check,
)
from txn_devstack.stack import Stack, StackConfig, auth_headers

# Deep stock and full wallets so a long run is not all "out of stock"; one scarce SKU and a few
# poor customers keep business refusals in the mix.
CHAOS_STOCK = {sku: 5_000_000 for sku in PRODUCTS} | {"SKU-7": 40}
CHAOS_CUSTOMERS = {f"customer{i:02d}": (10**12 if i % 8 else 2_000) for i in range(1, 41)}
LEASE_S = 3.0  # the coordinator's default lease: a paused coordinator is held past it


@dataclass
class ChaosConfig:
    state_dir: Path
    seed: int
    duration_s: float
    concurrency: int = 8
    # Faults in flight at once (each on its own target), and how long each is held.
    slots: int = 2
    max_hold_s: float = 3.0
    gap_s: tuple[float, float] = (0.5, 2.5)
    quiesce_limit_s: float = 300.0
    kinds: tuple[str, ...] = KINDS
    fsync: bool = False
    # The log on three nodes under Patroni: the faults then include killing its primary and
    # switching over (txn_devstack.faults.HA_KINDS).
    log_ha: bool = False


@dataclass
class ChaosResult:
    seed: int
    duration_s: float
    transactions: dict[str, int]  # "mode status" -> count, from the log
    orders: dict[str, int]  # "mode status" -> count, from the orders database
    reasons: dict[str, int]  # why orders were cancelled: "mode reason" -> count
    client_errors: int
    faults: dict[str, int]
    quiesce_s: float | None  # None: did not settle within the limit
    rules: list[Rule] = field(default_factory=list)

    @property
    def violations(self) -> int:
        return sum(len(r.violations) for r in self.rules)

    @property
    def ok(self) -> bool:
        return self.quiesce_s is not None and self.violations == 0

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "duration_s": self.duration_s,
            "transactions": self.transactions,
            "orders": self.orders,
            "cancelled_because": self.reasons,
            "client_errors": self.client_errors,
            "faults": self.faults,
            "quiesce_s": self.quiesce_s,
            "violations": {r.name: r.violations for r in self.rules if r.violations},
            "ok": self.ok,
        }


def _random_order(rng: random.Random, i: int) -> dict[str, Any]:
    skus = sorted(PRODUCTS)
    chosen = rng.sample(skus, rng.randint(1, 3))
    if rng.random() < 0.05:
        chosen = sorted({*chosen, "SKU-7"})
    return {
        "customer": rng.choice(sorted(CHAOS_CUSTOMERS)),
        "items": [{"sku": s, "qty": rng.randint(1, 3)} for s in sorted(chosen)],
        "destination": BLOCKED if rng.random() < 0.08 else rng.choice(DESTINATIONS[:-1]),
        "mode": "2pc" if i % 2 == 0 else "saga",
    }


async def _load(
    orders_url: str, token: str, config: ChaosConfig, stop: threading.Event
) -> Counter[str]:
    """Closed-loop clients placing orders until ``stop``; counts answers by kind."""
    answers: Counter[str] = Counter()
    http = Client(headers=auth_headers(token))

    async def client(n: int) -> None:
        rng = random.Random(config.seed * 1000 + n)
        i = n
        while not stop.is_set():
            order = _random_order(rng, i)
            i += config.concurrency
            try:
                reply = await http.call("POST", f"{orders_url}/orders", ORDER_TIMEOUT_S, json=order)
                answers[f"HTTP {reply.status}"] += 1
            except HttpError:
                # The orders service was killed or paused: the order may exist; its
                # reconciler settles it. Back off a little and go on.
                answers["no answer"] += 1
                await asyncio.sleep(0.2)

    try:
        await asyncio.gather(*(client(n) for n in range(config.concurrency)))
    finally:
        await http.close()
    return answers


def _faults(
    injector: Injector, config: ChaosConfig, slot: int, stop: threading.Event, log: list[str]
) -> None:
    """One fault slot: draws (kind, target, hold), injects, waits a gap; until ``stop``."""
    rng = random.Random(f"{config.seed}/faults/{slot}")
    while not stop.wait(rng.uniform(*config.gap_s)):
        kind = rng.choice(config.kinds)
        targets = injector.targets(kind)
        if not targets:
            continue
        target = rng.choice(targets)
        hold = rng.uniform(0.3, config.max_hold_s)
        if kind == "pause" and target.startswith("coord"):
            hold = rng.uniform(LEASE_S + 0.5, LEASE_S + 2.5)  # past its lease: fencing at work
        started = time.monotonic()
        try:
            done = injector.inject(kind, target, hold)
        except Exception as e:  # a fault tool failing is a finding, not a reason to stop
            log.append(f"{time.strftime('%H:%M:%S')} {kind} {target}: FAILED {e!r}")
            continue
        if done is not None:
            took = time.monotonic() - started
            log.append(f"{time.strftime('%H:%M:%S')} {kind} {target} {took:.1f}s {done.detail}")


async def _count(dsn: str, query: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {f"{r[0]} {r[1]}": int(r[2]) for r in await conn.fetch(query)}
    finally:
        await conn.close()


def run_chaos(config: ChaosConfig, progress: bool = True) -> ChaosResult:
    stack = Stack(
        StackConfig(
            state_dir=config.state_dir,
            coordinators=2,
            ledgers=0,
            shop=True,
            fault_proxies=True,
            fsync=config.fsync,
            participant_env={"TXNP_RECONCILE_INTERVAL_S": "1"},
            log_ha=config.log_ha,
        )
    )
    with stack:
        return _run(stack, config, progress)


def _run(stack: Stack, config: ChaosConfig, progress: bool) -> ChaosResult:
    state = stack.state()
    urls = {p.name: p.url for p in stack.participants}  # the services themselves, no proxy

    asyncio.run(seed_shop(stack.api_token, urls, CHAOS_STOCK, CHAOS_CUSTOMERS))
    baseline = asyncio.run(take_baseline(state))
    injector = Injector(stack)
    stop_load, stop_faults = threading.Event(), threading.Event()
    fault_log: list[str] = []
    answers: Counter[str] = Counter()

    def load() -> None:
        answers.update(asyncio.run(_load(urls["orders"], stack.api_token, config, stop_load)))

    loader = threading.Thread(target=load, name="chaos-load")
    slots = [
        threading.Thread(
            target=_faults, args=(injector, config, n, stop_faults, fault_log), name=f"chaos-{n}"
        )
        for n in range(config.slots)
    ]
    loader.start()
    for t in slots:
        t.start()
    deadline = time.monotonic() + config.duration_s
    shown = 0
    try:
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            if progress:
                for line in fault_log[shown:]:
                    print(f"  fault {line}", flush=True)
                shown = len(fault_log)
    finally:
        stop_faults.set()
        stop_load.set()
        for t in slots:
            t.join()
        injector.heal_all()
        loader.join()
    if progress:
        for line in fault_log[shown:]:
            print(f"  fault {line}", flush=True)
        print("faults stopped, load stopped; waiting for everything to settle...", flush=True)
    quiesce_s, rules = asyncio.run(settled_check(stack.state(), baseline, config.quiesce_limit_s))
    transactions = asyncio.run(
        _count(stack.log_dsn, "SELECT mode, status, count(*) FROM transactions GROUP BY 1, 2")
    )
    orders = asyncio.run(
        _count(
            stack.service("orders").dsn or "",
            "SELECT mode, status, count(*) FROM orders GROUP BY 1, 2",
        )
    )
    reasons = asyncio.run(
        _count(
            stack.service("orders").dsn or "",
            "SELECT mode, reason, count(*) FROM orders WHERE status = 'cancelled' GROUP BY 1, 2",
        )
    )
    kinds: Counter[str] = Counter()
    for key, n in reasons.items():
        mode, _, reason = key.partition(" ")
        kinds[f"{mode} {_reason_group(reason)}"] += n
    return ChaosResult(
        seed=config.seed,
        duration_s=config.duration_s,
        transactions=transactions,
        orders=orders,
        reasons=dict(kinds.most_common()),
        client_errors=answers["no answer"],
        faults=dict(sorted(injector.counts.items())),
        quiesce_s=quiesce_s,
        rules=rules,
    )


def _reason_group(reason: str) -> str:
    """A cancellation reason without what differs per order (ids, gids, amounts), so alike
    reasons count together."""
    generic = re.sub(r"order-[0-9a-f]+[\w:.-]*", "<order>", reason)
    generic = re.sub(r"\b\d+(\.\d+)?\b", "N", generic)
    kind = reason_kind(reason)
    return kind if kind != reason[:60] else generic[:80]


def report(result: ChaosResult) -> str:
    lines = [f"chaos run: seed {result.seed}, {result.duration_s:.0f} s of load and faults", ""]
    lines.append(f"  {'transactions (log)':<28} {'count':>7}")
    for key, n in sorted(result.transactions.items()):
        lines.append(f"  {key:<28} {n:>7}")
    lines.append(f"  {'total':<28} {sum(result.transactions.values()):>7}")
    lines.append("")
    lines.append(f"  {'orders (orders database)':<28} {'count':>7}")
    for key, n in sorted(result.orders.items()):
        lines.append(f"  {key:<28} {n:>7}")
    lines.append(f"  {'client requests unanswered':<28} {result.client_errors:>7}")
    lines.append("")
    lines.append(f"  {'cancelled because':<80} {'count':>7}")
    for key, n in result.reasons.items():
        lines.append(f"  {key[:80]:<80} {n:>7}")
    lines.append("")
    lines.append(f"  {'faults injected':<28} {'count':>7}")
    for kind, n in result.faults.items():
        lines.append(f"  {kind:<28} {n:>7}")
    lines.append(f"  {'total':<28} {sum(result.faults.values()):>7}")
    lines.append("")
    settled = f"{result.quiesce_s:.1f} s" if result.quiesce_s is not None else "DID NOT SETTLE"
    lines.append(f"  time to quiesce: {settled}")
    lines.append(f"  invariant violations: {result.violations}")
    for rule in result.rules:
        lines.append(f"    {'ok  ' if rule.ok else 'FAIL'} {rule.name}")
        lines.extend(f"           {v}" for v in rule.violations[:5])
    lines.append(f"  seed: {result.seed}")
    return "\n".join(lines)


def write_json(result: ChaosResult, path: Path) -> None:
    path.write_text(json.dumps(result.as_json(), indent=2) + "\n")
