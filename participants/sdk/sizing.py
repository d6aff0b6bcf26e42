"""How many database connections one participant service opens at most.

The SDK builds its engine from :func:`engine_pool`, and the docs, ``txn dev`` and the tests
count with :func:`max_service_connections`: both read the same numbers, so what is said about
``max_connections`` is what the code opens (docs/configuration.md, ``TXNP_POOL_SIZE``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from participants.sdk.settings import ParticipantSettings


@dataclass(frozen=True)
class EnginePool:
    """The SDK's one pool (its calls, its kept connections, the service's own endpoints, the
    doubt resolver and barrier retention all draw from it)."""

    size: int  # kept open once opened
    overflow: int  # opened beyond size under load, closed when returned

    @property
    def most(self) -> int:
        return self.size + self.overflow


def engine_pool(pool_size: int) -> EnginePool:
    """The pool for ``TXNP_POOL_SIZE``: as much overflow again, for bursts above it."""
    return EnginePool(size=pool_size, overflow=pool_size)


def max_service_connections(settings: ParticipantSettings) -> int:
    """The most connections a participant service with these settings opens on its database:
    2 * pool_size."""
    return engine_pool(settings.pool_size).most
