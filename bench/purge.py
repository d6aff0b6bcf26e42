"""``txn bench --purge N``: does a retention purge slow the hot path? Product throughput at the
largest concurrency with ``N`` finished transactions being deleted meanwhile (the coordinator's
own purge statement, batch after batch), against runs without, alternating in one run: before,
during, before, during. The ratio is median(during) / median(without)."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from bench import growth
from bench.load import run_product
from coordinator.pglog import PgLog

BATCH = 1000


async def _purge_all(log_dsn: str) -> tuple[int, float]:
    """Delete every finished transaction older than a second; (rows, seconds)."""
    store = PgLog.connect(log_dsn, pool_size=2)
    started, deleted = time.perf_counter(), 0
    try:
        while n := await store.purge(1.0, BATCH):
            deleted += n
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
) -> dict[str, Any]:
    without: list[float] = []
    during: list[float] = []
    purges: list[dict[str, float]] = []
    for round_ in range(2):
        label = f"purge{round_}-{int(time.time())}"
        stats = await run_product(
            coordinator_url, ledgers, "2pc", concurrency, warmup_s, duration_s, label + "-a"
        )
        without.append(stats.tps)
        say(f"  without a purge: {stats.tps:7.1f} txn/s, p50 {stats.p50_ms} ms")
        await growth.fill(log_dsn, rows, growth.HISTORY_PREFIX + f"{round_}-")
        load = asyncio.create_task(
            run_product(
                coordinator_url, ledgers, "2pc", concurrency, warmup_s, duration_s, label + "-b"
            )
        )
        await asyncio.sleep(warmup_s)
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
        "rows": rows,
        "concurrency": concurrency,
        "tps_without": without,
        "tps_during": during,
        "purges": purges,
        "ratio_during_to_without": round(statistics.median(during) / base, 3) if base else None,
    }
