"""Closed-loop load and its statistics, shared by the product load (REST clients of the
coordinator, here) and the floors (``txn_bench.floor``, ``txn_bench.minimal_floor``).

A closed loop: ``concurrency`` clients, each submitting its next transaction as soon as the
previous one answered. Completions during the warm-up are not counted; throughput is the
committed completions inside the measurement window over its length, latencies are theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg
import orjson

from txn_client.http11 import Client, Origin

WAIT_S = 30.0  # the coordinator's ?wait=: long enough for any outcome under load
ERROR_PAUSE_S = 0.01  # a failing client pauses this long, so a dead target is not a busy loop
MAX_EXAMPLES = 5
ACCOUNT_BALANCE = 10**12  # every transaction's deltas sum to zero: the balances never run out
# The bench's modes: 2PC, a saga whose steps run in parallel, a saga whose steps run in turn.
MODES = ("2pc", "saga", "saga-seq")

# One transaction of client ``client`` (0-based), its ``seq``-th; raises when it did not commit.
TxnFn = Callable[[int, int], Awaitable[None]]


class TxnFailed(Exception):
    """The transaction did not commit (refused, aborted, timed out, transport error)."""


@dataclass
class RunStats:
    """One measured run of one side (the product or a floor) at one concurrency."""

    concurrency: int
    duration_s: float
    committed: int
    tps: float
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    errors: int  # failures completing inside the measurement window
    errors_total: int  # including the warm-up
    attempted_total: int
    committed_total: int  # including the warm-up: what the database counters of a run cover
    error_examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None when empty."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


async def closed_loop(concurrency: int, warmup_s: float, duration_s: float, txn: TxnFn) -> RunStats:
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s
    latencies: list[float] = []
    counts = {"errors": 0, "errors_total": 0, "attempted": 0, "committed": 0}
    examples: list[str] = []

    async def client(c: int) -> None:
        seq = 0
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            counts["attempted"] += 1
            try:
                await txn(c, seq)
                failure = None
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as e:  # every failure is counted; the loop carries on
                failure = f"{type(e).__name__}: {e}"[:300]
            t1 = time.perf_counter()
            seq += 1
            in_window = measure_from <= t1 <= stop_at
            if failure is None:
                counts["committed"] += 1
                if in_window:
                    latencies.append(t1 - t0)
                continue
            counts["errors_total"] += 1
            counts["errors"] += int(in_window)
            if len(examples) < MAX_EXAMPLES:
                examples.append(failure)
            await asyncio.sleep(ERROR_PAUSE_S)

    await asyncio.gather(*(client(c) for c in range(concurrency)))
    latencies.sort()
    return RunStats(
        concurrency=concurrency,
        duration_s=duration_s,
        committed=len(latencies),
        tps=round(len(latencies) / duration_s, 2),
        p50_ms=_ms(percentile(latencies, 0.50)),
        p99_ms=_ms(percentile(latencies, 0.99)),
        mean_ms=_ms(sum(latencies) / len(latencies)) if latencies else None,
        errors=counts["errors"],
        errors_total=counts["errors_total"],
        attempted_total=counts["attempted"],
        committed_total=counts["committed"],
        error_examples=examples,
    )


# -- the workload both sides run ---------------------------------------------------------


def account(client: int) -> str:
    """Each client its own account on every ledger: no two clients contend for a row."""
    return f"bench-c{client}"


def deltas(n: int, seq: int) -> list[int]:
    """One delta per ledger, summing to zero; rotated by ``seq`` so that every account's
    balance comes back to where it started every ``n`` transactions."""
    base = [-(n - 1)] + [1] * (n - 1)
    k = seq % n
    return base[k:] + base[:k]


def protocol(mode: str) -> tuple[str, bool]:
    """A bench mode's protocol (the API's ``mode``) and whether its saga steps run in parallel."""
    if mode == "2pc":
        return "2pc", False
    return "saga", mode == "saga"


def branches(
    mode: str, ledgers: list[str], client: int, seq: int, parallel: bool = False
) -> list[dict[str, Any]]:
    """The body's branches; ``parallel`` saga steps say ``depends_on: []`` (no step waits)."""
    out: list[dict[str, Any]] = []
    for name, delta in zip(ledgers, deltas(len(ledgers), seq), strict=True):
        branch: dict[str, Any] = {
            "participant": name,
            "action": "/accounts/adjust",
            "payload": {"account": account(client), "delta": delta},
        }
        if mode == "saga":
            branch["compensation"] = "/accounts/adjust/undo"
            if parallel:
                branch["depends_on"] = []
        out.append(branch)
    return out


async def flush_stats(conn: asyncpg.Connection) -> None:
    """Publish this backend's pending table and WAL statistics before the reply (PostgreSQL 15+;
    otherwise a backend holds them up to 10 s once idle), so that counters read from another
    connection include its work (``txn_bench.dbwork``). Superuser by default: without the right,
    the counters are read as they are."""
    if conn.get_server_version().major >= 15:
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("SELECT pg_stat_force_next_flush()")


# -- the product: REST clients of the coordinator -----------------------------------------

# The Authorization header of every request the bench sends to the stack (set once from the
# stack's state: ``use_token``).
AUTH: dict[str, str] = {}


def use_token(token: str) -> None:
    AUTH.clear()
    if token:
        AUTH["Authorization"] = f"Bearer {token}"


async def ensure_accounts(client: Client, ledger_urls: list[str], clients: int) -> None:
    """Open every client's account on every ledger (already there from an earlier run: fine)."""
    for url in ledger_urls:
        for c in range(clients):
            body = {"id": account(c), "balance": ACCOUNT_BALANCE}
            reply = await client.call("POST", f"{url}/accounts", WAIT_S + 30, json=body)
            if reply.status not in (201, 409):
                text = reply.body.decode(errors="replace")
                raise RuntimeError(f"{url}: opening {account(c)}: HTTP {reply.status}: {text}")


class ProductLoad:
    """POST /v1/transactions?wait=…: one adjust per ledger; the reply is the logged outcome
    (the API waits until the status is terminal, rule 3), so a 201 ``committed`` is a commit.

    The clients speak through the product's lean HTTP/1.1 client (``txn_client.http11``,
    keep-alive, one connection per client): the load generator shares the machine with what
    it measures, and this client costs it half the CPU per request of the general-purpose one
    it replaced (``docs/decisions.md``, ``docs/performance.md``)."""

    def __init__(
        self,
        client: Client,
        coordinator_url: str | list[str],
        ledgers: list[str],
        mode: str,
        gid_prefix: str,
    ) -> None:
        """``coordinator_url``: one, or several (client ``c`` uses the ``c % n``-th)."""
        self.client = client
        urls = [coordinator_url] if isinstance(coordinator_url, str) else coordinator_url
        self.targets = [Origin.of(url) for url in urls]
        self.paths = [f"{base}/v1/transactions?wait={WAIT_S:g}" for _, base in self.targets]
        self.ledgers = ledgers
        self.mode, self.parallel = protocol(mode)
        self.prefix = gid_prefix
        self.headers = {"Content-Type": "application/json", **AUTH}

    async def __call__(self, client: int, seq: int) -> None:
        body = {
            "gid": f"{self.prefix}-{client}-{seq}",
            "mode": self.mode,
            "branches": branches(self.mode, self.ledgers, client, seq, self.parallel),
        }
        k = client % len(self.targets)
        status, raw = await self.client.post(
            self.targets[k][0], self.paths[k], self.headers, orjson.dumps(body), WAIT_S + 30
        )
        if status != 201:
            raise TxnFailed(f"HTTP {status}: {raw[:200]!r}")
        answer = orjson.loads(raw)
        if answer.get("status") != "committed":
            raise TxnFailed(f"{answer.get('status')}: {answer.get('reason')}")


@contextlib.asynccontextmanager
async def http_session(concurrency: int) -> AsyncIterator[Client]:
    """A client for the bench's own calls to the stack (seeding accounts): up to
    ``concurrency`` + 4 connections per origin, the stack's Authorization header on every call
    (each call's timeout is the caller's: ``WAIT_S + 30`` here); closed on leaving."""
    client = Client(limit=max(concurrency, 1) + 4, headers=AUTH)
    try:
        yield client
    finally:
        await client.close()


async def run_product(
    coordinator_url: str | list[str],
    ledgers: list[str],
    mode: str,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    gid_prefix: str,
) -> RunStats:
    client = Client(limit=max(concurrency, 1) + 4)
    try:
        load = ProductLoad(client, coordinator_url, ledgers, mode, gid_prefix)
        return await closed_loop(concurrency, warmup_s, duration_s, load)
    finally:
        await client.close()
