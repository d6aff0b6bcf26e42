"""What the coordinator answers, as typed values (its TxnOut and PageOut in /openapi.json).
Each keeps the JSON it came from in ``raw``, so members a newer server adds stay reachable."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from txn_client.errors import TxnError

TERMINAL = frozenset({"committed", "aborted"})


@dataclass(frozen=True)
class Branch:
    idx: int
    participant: str
    action: str  # TCC: the try
    compensation: str | None  # TCC: the cancel
    status: str
    attempts: int
    last_error: str | None
    depends_on: tuple[int, ...] | None = None
    resolved_by: str | None = None  # the operator who declared it compensated by hand
    confirm: str | None = None  # TCC: the confirm


@dataclass(frozen=True)
class Event:
    at: datetime
    kind: str
    branch: int | None
    detail: dict[str, Any] | None


@dataclass(frozen=True)
class Transaction:
    gid: str
    mode: str  # "2pc", "saga" or "tcc"
    status: str  # preparing, committing, committed, aborting, aborted, running, compensating
    reason: str | None  # why it aborted, when it did
    branches: tuple[Branch, ...]
    created_at: datetime
    updated_at: datetime
    events: tuple[Event, ...] | None = None  # the timeline, when asked for
    # True: this call created it (201); False: it existed with this gid and body (200).
    created: bool | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @staticmethod
    def of(body: Any, created: bool | None = None) -> Transaction:
        try:
            events = body.get("events")
            return Transaction(
                gid=str(body["gid"]),
                mode=str(body["mode"]),
                status=str(body["status"]),
                reason=body.get("reason"),
                branches=tuple(_branch(b) for b in body["branches"]),
                created_at=_when(body["created_at"]),
                updated_at=_when(body["updated_at"]),
                events=None if events is None else tuple(_event(e) for e in events),
                created=created,
                raw=body,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise TxnError(f"unexpected transaction in the answer: {e!r}") from e


@dataclass(frozen=True)
class Page:
    """One page of a listing; pass ``next_cursor`` back for the next (None: the last page)."""

    items: tuple[Transaction, ...]
    next_cursor: str | None

    @staticmethod
    def of(body: Any) -> Page:
        try:
            items = tuple(Transaction.of(item) for item in body["items"])
            cursor = body.get("next_cursor")
        except (KeyError, TypeError, AttributeError) as e:
            raise TxnError(f"unexpected page in the answer: {e!r}") from e
        return Page(items, None if cursor is None else str(cursor))


def _when(value: Any) -> datetime:
    return datetime.fromisoformat(str(value))


def _branch(b: dict[str, Any]) -> Branch:
    depends_on = b.get("depends_on")
    return Branch(
        idx=int(b["idx"]),
        participant=str(b["participant"]),
        action=str(b["action"]),
        compensation=b.get("compensation"),
        status=str(b["status"]),
        attempts=int(b["attempts"]),
        last_error=b.get("last_error"),
        depends_on=None if depends_on is None else tuple(int(i) for i in depends_on),
        resolved_by=b.get("resolved_by"),
        confirm=b.get("confirm"),
    )


def _event(e: dict[str, Any]) -> Event:
    branch = e.get("branch")
    return Event(
        at=_when(e["at"]),
        kind=str(e["kind"]),
        branch=None if branch is None else int(branch),
        detail=e.get("detail"),
    )
