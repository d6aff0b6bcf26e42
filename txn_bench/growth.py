"""``txn bench --growth``: does the hot path slow down as the log grows, and does the
coordinator's memory stay flat under load?

1. Throughput with the log as it is (fresh: nearly empty), then with ``rows`` finished
   transactions added (3 branches and 3 events in each row, like real ones; ANALYZE after),
   then with them deleted again. The ratio is full / median(the two emptier runs), so drift of the
   machine during the run does not pass for growth.
2. The coordinator's resident memory (VmRSS), sampled every few seconds over a long run at
   high concurrency: the first minute's median against the last minute's.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import asyncpg

from txn_bench.load import RunStats, run_product

HISTORY_PREFIX = "growth-history-"

_FILL = """
INSERT INTO transactions (gid, mode, status, request, request_hash, deadline_at,
                          next_attempt_at, owner, lease_until, epoch, created_at, updated_at,
                          branches, timeline)
SELECT $1 || i, '2pc', 'committed',
       jsonb_build_object('mode', '2pc', 'n', i), md5(i::text),
       now() - make_interval(secs => i), now() - make_interval(secs => i), 'coord1',
       now() - make_interval(secs => i), 1, now() - make_interval(secs => i + 60),
       now() - make_interval(secs => i),
       (SELECT jsonb_agg(jsonb_build_object(
            'participant', 'ledger' || (k + 1), 'action', '/accounts/adjust',
            'compensation', NULL, 'payload', jsonb_build_object('account', 'history', 'delta', k),
            'status', 'committed', 'attempts', 2, 'last_error', NULL, 'updated_at', now()))
        FROM generate_series(0, 2) AS k),
       (SELECT jsonb_agg(jsonb_build_object(
            'id', n, 'at', now(), 'kind', kind, 'branch', NULL,
            'detail', jsonb_build_object('status', 'committed')))
        FROM unnest(ARRAY['submitted', 'decided', 'finished']) WITH ORDINALITY AS e(kind, n))
FROM generate_series(1, $2) AS i
"""


async def _execute(dsn: str, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def fill(log_dsn: str, rows: int, prefix: str = HISTORY_PREFIX) -> None:
    await _execute(log_dsn, _FILL, prefix, rows)
    await _execute(log_dsn, "ANALYZE transactions")


async def unfill(log_dsn: str, prefix: str = HISTORY_PREFIX) -> None:
    like = prefix + "%"
    await _execute(log_dsn, "DELETE FROM transactions WHERE gid LIKE $1", like)
    await _execute(log_dsn, "VACUUM ANALYZE transactions")


async def log_size(log_dsn: str) -> int:
    conn = await asyncpg.connect(log_dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM transactions"))
    finally:
        await conn.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def growth(
    coordinator_url: str,
    ledgers: list[str],
    log_dsn: str,
    rows: int,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    say: Any,
) -> dict[str, Any]:
    async def measure(label: str) -> RunStats:
        gids = f"growth-{label}-{int(time.time())}"
        stats = await run_product(
            coordinator_url, ledgers, "2pc", concurrency, warmup_s, duration_s, gids
        )
        size = await log_size(log_dsn)
        say(f"  {label:<8} log {size:>7} rows: {stats.tps:7.1f} txn/s, p50 {stats.p50_ms} ms")
        return stats

    before = await measure("before")
    say(f"  adding {rows} finished transactions to the log...")
    await fill(log_dsn, rows)
    full = await measure("full")
    await unfill(log_dsn)
    after = await measure("after")
    base = statistics.median([before.tps, after.tps])
    return {
        "rows_added": rows,
        "concurrency": concurrency,
        "tps": {"before": before.tps, "full": full.tps, "after": after.tps},
        "p50_ms": {"before": before.p50_ms, "full": full.p50_ms, "after": after.p50_ms},
        "ratio_full_to_empty": round(full.tps / base, 3) if base else None,
    }


async def memory(
    coordinator_url: str,
    ledgers: list[str],
    pid: int,
    concurrency: int,
    duration_s: float,
    every_s: float,
    say: Any,
) -> dict[str, Any]:
    samples: list[tuple[float, int]] = []
    started = time.monotonic()

    async def sample() -> None:
        while True:
            samples.append((round(time.monotonic() - started, 1), rss_kib(pid)))
            await asyncio.sleep(every_s)

    sampler = asyncio.create_task(sample())
    try:
        stats = await run_product(
            coordinator_url, ledgers, "2pc", concurrency, 0.0, duration_s, f"rss-{int(started)}"
        )
    finally:
        sampler.cancel()
    window = min(60.0, duration_s / 4)
    first = [kib for at, kib in samples if at <= window]
    last = [kib for at, kib in samples if at >= duration_s - window]
    first_mib, last_mib = statistics.median(first) / 1024, statistics.median(last) / 1024
    drift = (last_mib - first_mib) / first_mib
    say(
        f"  RSS: first {window:.0f}s median {first_mib:.1f} MiB, last {window:.0f}s median "
        f"{last_mib:.1f} MiB ({100 * drift:+.1f}%), {stats.tps:.1f} txn/s, {stats.errors} errors"
    )
    return {
        "concurrency": concurrency,
        "duration_s": duration_s,
        "tps": stats.tps,
        "errors": stats.errors,
        "rss_mib_first": round(first_mib, 1),
        "rss_mib_last": round(last_mib, 1),
        "drift": round(drift, 4),
        "samples_kib": samples,
    }
