"""Database work per transaction, measured on the servers rather than assumed from the code (nor
read from the product's log tables, whose shape may change): around every run, the rows its side
wrote in each database (``pg_stat_user_tables``: inserted + updated + deleted, HOT updates
apart) and the WAL each cluster wrote (``pg_current_wal_lsn()`` before and after), divided by
the transactions the run committed, warm-up included, as the counters include it.

Rows are told apart by schema: each floor writes in a schema of its own, the product in the
others. That lets the product's counters be read late, and they must be: a backend publishes its
table statistics at the end of a transaction at most once a second, and an idle one only 10 s
later (PostgreSQL 15's ``PGSTAT_IDLE_INTERVAL``). The floors publish theirs at the end of each
run (``txn_bench.load.flush_stats``); the product's connections are not ours, so a product
run's rows are read ``SETTLE_S`` after it ended, just before the next product run (the floors run in
between) or at the end. WAL is written before a commit returns, so the LSN is read at once; it
is per cluster and counts whatever else ran there meanwhile (background work, autovacuum): with
the stack's one cluster per ledger, a ledger's WAL is its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import asyncpg

from txn_bench.load import RunStats

SETTLE_S = 11.0  # PGSTAT_IDLE_INTERVAL (10 s) and a margin

_WAL = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS at"
_ROWS = """
SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint AS rows,
       coalesce(sum(n_tup_hot_upd), 0)::bigint AS hot
FROM pg_stat_user_tables WHERE (schemaname = ANY($1::text[])) = $2
"""


@dataclass
class Work:
    """Database work: a run's, or several runs' pooled."""

    transactions: int = 0
    log_rows: int = 0
    log_hot_updates: int = 0
    log_wal_bytes: int = 0
    ledger_rows: int = 0
    ledger_wal_bytes: int = 0

    def __add__(self, other: Work) -> Work:
        mine, theirs = asdict(self).values(), asdict(other).values()
        return Work(*(a + b for a, b in zip(mine, theirs, strict=True)))

    def per_txn(self) -> dict[str, float | None]:
        n = self.transactions
        return {
            k: round(v / n, 2) if n else None
            for k, v in asdict(self).items()
            if k != "transactions"
        }

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "per_txn": self.per_txn()}


# (rows, HOT updates) per database, log first.
Rows = list[tuple[int, int]]


class Meter:
    """Reads the counters around runs; ``schema`` is a floor's, or None for the product."""

    def __init__(self, log_dsn: str, ledger_dsns: list[str], floor_schemas: list[str]) -> None:
        self.dsns = [log_dsn, *ledger_dsns]
        self.floor_schemas = floor_schemas
        # The product's last work (opening the accounts, before the meter), and its last run,
        # whose rows are still to read.
        self.product_ended = time.monotonic()
        self.pending: tuple[Work, Rows] | None = None

    async def _each(self, query: str, *args: object) -> list[asyncpg.Record]:
        async def one(dsn: str) -> asyncpg.Record:
            conn = await asyncpg.connect(dsn)
            try:
                return await conn.fetchrow(query, *args)
            finally:
                await conn.close()

        return list(await asyncio.gather(*(one(dsn) for dsn in self.dsns)))

    async def _rows(self, schema: str | None) -> Rows:
        schemas, inside = ([schema], True) if schema else (self.floor_schemas, False)
        return [(r["rows"], r["hot"]) for r in await self._each(_ROWS, schemas, inside)]

    async def _wal(self) -> list[int]:
        return [r["at"] for r in await self._each(_WAL)]

    async def _product_rows(self) -> Rows:
        """The product's counters once published, completing its last run's work."""
        await asyncio.sleep(max(0.0, self.product_ended + SETTLE_S - time.monotonic()))
        rows = await self._rows(None)
        if self.pending is not None:
            work, before = self.pending
            _count_rows(work, before, rows)
            self.pending = None
        return rows

    async def measure(
        self, schema: str | None, run: Callable[[], Awaitable[RunStats]]
    ) -> tuple[RunStats, Work]:
        """``run()`` between two readings. The product's work gets its rows later (``finish``
        or its next run): take the figures only after ``finish``."""
        rows = await (self._product_rows() if schema is None else self._rows(schema))
        wal = await self._wal()
        stats = await run()
        wal_after = await self._wal()
        diff = [b - a for a, b in zip(wal, wal_after, strict=True)]
        work = Work(stats.committed_total, log_wal_bytes=diff[0], ledger_wal_bytes=sum(diff[1:]))
        if schema is None:
            self.product_ended = time.monotonic()
            self.pending = (work, rows)
        else:
            _count_rows(work, rows, await self._rows(schema))
        return stats, work

    async def finish(self) -> None:
        if self.pending is not None:
            await self._product_rows()


def _count_rows(work: Work, before: Rows, after: Rows) -> None:
    diff = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(before, after, strict=True)]
    work.log_rows, work.log_hot_updates = diff[0]
    work.ledger_rows = sum(d[0] for d in diff[1:])
