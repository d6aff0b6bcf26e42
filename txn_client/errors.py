"""The client's exceptions, made from the RFC 9457 problem bodies the coordinator answers
(``application/problem+json``: ``type``, ``title``, ``status``, ``detail`` and, for a request
that does not validate, ``errors: [{field, message, type}]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from txn_client.results import Transaction


@dataclass(frozen=True)
class FieldError:
    """One field at fault in a request that does not validate."""

    field: str  # dotted, e.g. "body.branches.0.participant" or "query.wait"
    message: str
    type: str  # e.g. "missing", "string_too_long"


class TxnError(Exception):
    """Every error this client raises. ``status`` is the HTTP status (0: no answer came);
    ``problem`` the problem body as the server sent it (empty when it sent none)."""

    def __init__(self, detail: str, status: int = 0, problem: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.problem: dict[str, Any] = dict(problem or {})

    @property
    def title(self) -> str:
        return str(self.problem.get("title", ""))

    @property
    def type(self) -> str:
        return str(self.problem.get("type", "about:blank"))


class Aborted(TxnError):
    """A submission waited for its outcome, and the transaction aborted: ``reason`` says why,
    ``transaction`` is the whole of it."""

    def __init__(self, transaction: Transaction) -> None:
        reason = transaction.reason or "aborted"
        super().__init__(f"transaction {transaction.gid} aborted: {reason}")
        self.reason = reason
        self.transaction = transaction


class Conflict(TxnError):
    """409: the same gid with another body, or a manual action the transaction's state refuses."""


class Invalid(TxnError):
    """400, 413, 415 or 422: the request is wrong; ``errors`` names each field at fault."""

    @property
    def errors(self) -> list[FieldError]:
        raw = self.problem.get("errors")
        if not isinstance(raw, list):
            return []
        return [
            FieldError(str(e.get("field", "")), str(e.get("message", "")), str(e.get("type", "")))
            for e in raw
            if isinstance(e, dict)
        ]

    @property
    def fields(self) -> list[str]:
        return [e.field for e in self.errors]


class Unauthorised(TxnError):
    """401 or 403: the token is missing, wrong, or lacks the scope."""


class NotFound(TxnError):
    """404: no such transaction (or branch)."""


class Unavailable(TxnError):
    """503 or 429, a 502/504 from a proxy, or no connection: still so after the retries.

    ``retry_after``: the seconds the server asked to wait, if it did. ``resendable``: whether
    sending the request again is safe (False once a non-idempotent request may have arrived).
    """

    def __init__(
        self,
        detail: str,
        status: int = 0,
        problem: dict[str, Any] | None = None,
        retry_after: float | None = None,
        resendable: bool = True,
    ) -> None:
        super().__init__(detail, status, problem)
        self.retry_after = retry_after
        self.resendable = resendable


_BY_STATUS: dict[int, type[TxnError]] = {
    400: Invalid,
    401: Unauthorised,
    403: Unauthorised,
    404: NotFound,
    409: Conflict,
    413: Invalid,
    415: Invalid,
    422: Invalid,
}
# Failing over to the next coordinator helps with these (a proxy's 502/504, a 503).
FAILOVER_STATUSES = frozenset({502, 503, 504})
RETRY_STATUSES = FAILOVER_STATUSES | {429}


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After in seconds (the coordinator's form); None when absent or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def error_for(status: int, problem: Any, retry_after: str | None = None) -> TxnError:
    """The exception for an error answer with the (parsed) body ``problem``."""
    body = problem if isinstance(problem, dict) else {}
    detail = body.get("detail")
    text = str(detail) if detail else f"HTTP {status} {body.get('title', '')}".strip()
    if status in RETRY_STATUSES:
        return Unavailable(text, status, body, retry_after_seconds(retry_after))
    return _BY_STATUS.get(status, TxnError)(text, status, body)
