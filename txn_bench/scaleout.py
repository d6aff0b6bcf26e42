"""``txn bench --scale-out``: throughput of one log with 1, 2 and 3 coordinators in front of it.

A stack of three coordinators sharing one log; the same closed-loop 2PC load at the largest
concurrency is spread over the first 1, 2 or 3 of them (client ``c`` talks to coordinator
``c % n``), in rotating order, ``repeat`` times. Figures are medians; the ratio is against one
coordinator. Where the line stops growing says what limits it: on a machine whose cores the
coordinators, ledgers and databases already share, more coordinators only add processes.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from txn_bench.load import run_product


async def scale_out(
    coordinator_urls: list[str],
    ledgers: list[str],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    repeat: int,
    say: Any,
) -> dict[str, Any]:
    counts = list(range(1, len(coordinator_urls) + 1))
    tps: dict[int, list[float]] = {n: [] for n in counts}
    p50: dict[int, list[float]] = {n: [] for n in counts}
    errors = 0
    for rep in range(repeat):
        order = counts[rep % len(counts) :] + counts[: rep % len(counts)]
        for n in order:
            label = f"scale{n}-{rep}-{int(time.time())}"
            stats = await run_product(
                coordinator_urls[:n], ledgers, "2pc", concurrency, warmup_s, duration_s, label
            )
            tps[n].append(stats.tps)
            if stats.p50_ms is not None:
                p50[n].append(stats.p50_ms)
            errors += stats.errors
            say(f"  {n} coordinator(s), rep {rep + 1}: {stats.tps:7.1f} txn/s, p50 {stats.p50_ms}")
    base = statistics.median(tps[1])
    rows = [
        {
            "coordinators": n,
            "tps": round(statistics.median(tps[n]), 1),
            "p50_ms": round(statistics.median(p50[n]), 2) if p50[n] else None,
            "ratio_to_one": round(statistics.median(tps[n]) / base, 3) if base else None,
            "runs": tps[n],
        }
        for n in counts
    ]
    for row in rows:
        say(
            f"{row['coordinators']} coordinator(s): {row['tps']:7.1f} txn/s "
            f"(x{row['ratio_to_one']}), p50 {row['p50_ms']} ms"
        )
    return {"concurrency": concurrency, "errors": errors, "results": rows}
