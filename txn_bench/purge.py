"""``txn bench --purge N``: does a retention purge slow the hot path? ``N`` finished
transactions are added to the log, then product throughput at the largest concurrency is
measured without a purge, then while the coordinator's own purge statement deletes them, batch
after batch; twice. The ratio is median(during) / median(without): the rows are there in both
runs, so only the deleting differs.

``txn bench --barrier-purge N``: the same for the participants' barrier retention. ``N``
finished transactions are added to the log, each with a barrier row 8 days old on one of the
ledgers; during the second run each ledger's ``BarrierRetention`` (the SDK's, run from here
with the ledger's secret and its default pause) asks the coordinator about them and deletes
them. Needs the embedded stack (the secrets are in its memory only).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from coordinator.pglog import PgLog
from coordinator.retention import purge_in_batches
from participants.sdk.ask import question_client
from participants.sdk.db import make_engine
from participants.sdk.metrics import ParticipantMetrics
from participants.sdk.retention import BarrierRetention
from txn_bench import growth
from txn_bench.load import run_product

BATCH = 1000


async def _purge_all(log_dsn: str) -> tuple[int, float]:
    """Delete every finished transaction older than a second, paced as a coordinator's
    retention round is; (rows, seconds)."""
    store = PgLog.connect(log_dsn, pool_size=2)
    started = time.perf_counter()
    try:
        deleted = await purge_in_batches(store, 1.0, BATCH)
    finally:
        await store.close()
    return deleted, time.perf_counter() - started


async def purge_under_load(
    coordinator_url: str,
    ledgers: list[str],
    log_dsn: str,
    rows: int,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    say: Any,
    barriers: list[Barrier] | None = None,
) -> dict[str, Any]:
    """``barriers``: measure the ledgers' barrier retention instead."""
    without: list[float] = []
    during: list[float] = []
    purges: list[dict[str, float]] = []
    for round_ in range(2):
        label = f"purge{round_}-{int(time.time())}"
        prefix = growth.HISTORY_PREFIX + f"{round_}-"
        await growth.fill(log_dsn, rows + 600 if barriers else rows, prefix)
        if barriers:
            await _fill_barriers([b.dsn for b in barriers], rows, prefix)
        # The fill's own aftermath (its WAL written out) before either run.
        await _on_each([log_dsn, *(b.dsn for b in barriers or [])], "CHECKPOINT")
        stats = await run_product(
            coordinator_url, ledgers, "2pc", concurrency, warmup_s, duration_s, label + "-a"
        )
        without.append(stats.tps)
        say(f"  without a purge: {stats.tps:7.1f} txn/s, p50 {stats.p50_ms} ms")
        load = asyncio.create_task(
            run_product(
                coordinator_url, ledgers, "2pc", concurrency, warmup_s, duration_s, label + "-b"
            )
        )
        await asyncio.sleep(warmup_s)
        if barriers:
            deleted, took = await _purge_barriers(coordinator_url, barriers)
        else:
            deleted, took = await _purge_all(log_dsn)
        stats = await load
        during.append(stats.tps)
        purges.append({"deleted": deleted, "seconds": round(took, 2)})
        say(
            f"  purging {deleted} rows ({took:.1f} s): {stats.tps:7.1f} txn/s, "
            f"p50 {stats.p50_ms} ms"
        )
    base = statistics.median(without)
    return {
        "purged": "barrier rows" if barriers else "log rows",
        "rows": rows,
        "concurrency": concurrency,
        "tps_without": without,
        "tps_during": during,
        "purges": purges,
        "ratio_during_to_without": round(statistics.median(during) / base, 3) if base else None,
    }


# Row i of ledger k (of n) is transaction 600 + k + i * n: the ledgers share ``rows`` out, each
# row a millisecond after the one before, 8 days ago.
_FILL_BARRIER = """
INSERT INTO txn_barrier (gid, branch, op, outcome, created_at)
SELECT $1::text || (600 + $3::int + i * $4::int), 0, '2pc', 'prepared',
       now() - interval '8 days' + make_interval(secs => i / 1000.0)
FROM generate_series(0, $2::int / $4::int - 1) AS i
"""


async def _on_each(dsns: list[str], sql: str, *args: Any) -> list[Any]:
    async def one(dsn: str) -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return list(await asyncio.gather(*(one(d) for d in dsns)))


async def _fill_barriers(dsns: list[str], rows: int, prefix: str) -> None:
    """``rows`` 8-day-old barrier rows in all, shared out among the ledgers, for finished
    transactions ``growth.fill`` added under ``prefix`` (past the first 600: transaction i
    there ended i seconds ago, and retention waits until an outcome is two replay windows, 600
    s, old)."""

    async def one(k: int, dsn: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(_FILL_BARRIER, prefix, rows, k, len(dsns))
            await conn.execute("ANALYZE txn_barrier")
        finally:
            await conn.close()

    await asyncio.gather(*(one(k, dsn) for k, dsn in enumerate(dsns)))


@dataclass(frozen=True)
class Barrier:
    """A ledger whose barrier rows the bench purges: its name, database and secret."""

    name: str
    dsn: str
    secret: str


def ledger_barriers(state: dict[str, Any], target: Any) -> list[Barrier]:
    secrets = state.get("participant_secrets")
    if not secrets:
        raise SystemExit("--barrier-purge needs the embedded stack (not --against)")
    return [Barrier(lg.name, lg.dsn, secrets[lg.name]) for lg in target.ledgers]


async def _purge_barriers(coordinator_url: str, barriers: list[Barrier]) -> tuple[int, float]:
    """Every ledger's barrier retention, one round each at once, until nothing is left to
    purge; (rows deleted, seconds)."""
    started = time.perf_counter()

    async def one(b: Barrier) -> int:
        engine = make_engine(b.dsn, pool_size=2)
        # Each ledger its own client, as a participant's retention has (``BarrierRetention.run``).
        client = question_client()
        retention = BarrierRetention(
            engine,
            [coordinator_url],
            b.name,
            [b.secret.encode()],
            keep_s=7 * 86400.0,
            replay_window_s=300.0,
            batch=500,
            metrics=ParticipantMetrics(),
        )
        deleted = 0
        try:
            while done := (await retention.round(client)).deleted_rows:
                deleted += done
        finally:
            await client.close()
            await engine.dispose()
        return deleted

    counts = await asyncio.gather(*(one(b) for b in barriers))
    return sum(counts), time.perf_counter() - started
