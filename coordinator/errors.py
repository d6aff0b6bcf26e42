"""One exception root for the coordinator; driver errors are translated at the boundary."""

from __future__ import annotations


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
