"""Retention of the log: finished transactions deleted in bounded batches, paced.

Each batch is one ``LogStore.purge`` statement. After a batch the caller waits
``PAUSE_FACTOR`` times as long as it took: deleting at full speed competes with the hot path
for the log's disk (right after a checkpoint every page a delete touches is written whole to
the WAL), and `txn bench --purge` measured the hot path at 0.78 of its speed while a backlog
of 10^5 rows went at full speed (docs/decisions.md, "Retention is paced").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from coordinator.logstore import LogStore

PAUSE_FACTOR = 3.0


async def purge_in_batches(
    store: LogStore,
    older_than_s: float,
    batch: int,
    max_batches: int | None = None,
    pause: bool = True,
    on_batch: Callable[[int, float], None] | None = None,
) -> int:
    """Purge batch after batch while batches come back full (at most ``max_batches``);
    ``on_batch(deleted, seconds)`` after each. Returns how many were deleted."""
    deleted, batches = 0, 0
    while max_batches is None or batches < max_batches:
        started = time.perf_counter()
        n = await store.purge(older_than_s, batch)
        took = time.perf_counter() - started
        deleted += n
        batches += 1
        if on_batch is not None:
            on_batch(n, took)
        if n < batch:
            break
        if pause:
            await asyncio.sleep(PAUSE_FACTOR * took)
    return deleted
