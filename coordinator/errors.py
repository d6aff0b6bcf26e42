"""One exception root for the coordinator; driver errors are translated at the boundary."""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import DBAPIError

# What a statement meets when the log fails: down, unreachable, failing over (the hot
# statements are asyncpg's, the rest SQLAlchemy's; a connection cut mid-exchange can leave
# asyncpg mid-protocol).
LOG_ERRORS: tuple[type[Exception], ...] = (
    DBAPIError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)


def briefly(e: BaseException) -> str:
    """An error in one line, for a log line that repeats while a dependency is down."""
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


class TxnError(Exception):
    """A transaction coordinator error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class OwnershipLost(TxnError):
    """Another coordinator took this transaction over (its epoch moved on); this driver stops."""


class LogConflict(TxnError):
    """A transaction with this gid already exists with a different request."""


class ParticipantUnavailable(TxnError):
    """A participant did not answer, or answered with a transient error."""


class ConfigError(TxnError):
    """The configuration is invalid."""
