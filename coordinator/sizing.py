"""How many log connections one coordinator process opens at most.

``PgLog.connect`` builds its pools from :func:`log_pools`, and the docs, ``txn dev`` and the
tests count with :func:`max_log_connections`: both read the same numbers, so what is said about
``max_connections`` is what the code opens (docs/configuration.md, ``TXN_POOL_SIZE``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coordinator.settings import Settings

# PgLog's asyncpg pools, each of TXN_POOL_SIZE: the hot statements, and saga progress
# (synchronous_commit off).
ASYNCPG_POOLS = 2


@dataclass(frozen=True)
class LogPools:
    """The pools one coordinator holds on its log."""

    asyncpg_size: int  # the most connections of each of the ASYNCPG_POOLS pools
    engine_size: int  # SQLAlchemy's pool: recovery, leases, listing, metrics
    engine_overflow: int  # opened beyond engine_size under load, closed when returned

    @property
    def most(self) -> int:
        return ASYNCPG_POOLS * self.asyncpg_size + self.engine_size + self.engine_overflow


def log_pools(pool_size: int) -> LogPools:
    """The pools for ``TXN_POOL_SIZE``: the engine's statements are few (a claim, a renewal per
    interval), so an eighth of it serves them (at least 2), with as much overflow."""
    engine = max(2, pool_size // 8)
    return LogPools(asyncpg_size=pool_size, engine_size=engine, engine_overflow=engine)


def max_log_connections(settings: Settings) -> int:
    """The most connections a coordinator with these settings opens on its log:
    2 * pool_size + 2 * max(2, pool_size // 8)."""
    return log_pools(settings.pool_size).most
