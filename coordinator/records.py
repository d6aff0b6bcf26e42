"""Plain records that cross the log-store interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


@dataclass(frozen=True)
class BranchSpec:
    participant: str
    action: str
    compensation: str | None
    payload: dict[str, Any]
    # TCC: the confirm path (``action`` holds the try, ``compensation`` the cancel).
    confirm: str | None = None


@dataclass(frozen=True)
class NewTxn:
    gid: str
    mode: str
    request: dict[str, Any]
    request_hash: str
    branches: tuple[BranchSpec, ...]
    timeout_s: float


@dataclass
class BranchRecord:
    idx: int
    participant: str
    action: str
    compensation: str | None
    payload: dict[str, Any]
    status: str
    attempts: int
    last_error: str | None
    updated_at: datetime
    # The operator who declared this branch finished by hand (coordinator/intervention.py).
    resolved_by: str | None = None
    # TCC: the confirm path (``action`` holds the try, ``compensation`` the cancel).
    confirm: str | None = None


@dataclass
class TxnRecord:
    gid: str
    mode: str
    status: str
    reason: str | None
    created_at: datetime
    updated_at: datetime
    deadline_at: datetime
    attempts: int
    owner: str | None
    epoch: int
    request_hash: str
    branches: list[BranchRecord] = field(default_factory=list)
    # The normalized request but its branches (the record's ``branches`` carry them): the saga's
    # dependencies and retry policy live here.
    request: dict[str, Any] = field(default_factory=dict)


def stored_request(request: dict[str, Any]) -> dict[str, Any]:
    """What a log store keeps of a normalized request: all but the branches, which it keeps as
    the transaction's branches (once is enough: the row is rewritten at every write)."""
    return {k: v for k, v in request.items() if k != "branches"}


@dataclass(frozen=True)
class Claim:
    """A transaction this driver now owns under ``record.epoch``; ``db_now`` is the log's clock."""

    record: TxnRecord
    db_now: datetime

    @property
    def seconds_to_deadline(self) -> float:
        return (self.record.deadline_at - self.db_now).total_seconds()


@dataclass(frozen=True)
class EventRecord:
    id: int
    gid: str
    at: datetime
    kind: str
    branch: int | None
    detail: dict[str, Any] | None


class Inserted(StrEnum):
    CREATED = "created"
    EXISTING = "existing"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class BranchProgress:
    """What a driver writes about one branch alongside a status change."""

    status: str
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class ListFilter:
    """What a listing keeps: every given field must match (None: any)."""

    status: str | None = None
    mode: str | None = None
    participant: str | None = None  # a branch of the transaction calls it
    gid_prefix: str | None = None
    older_than_s: float | None = None  # created at least this long ago (the log's clock)
    newer_than_s: float | None = None  # created at most this long ago


@dataclass(frozen=True)
class Intervention:
    """An operator's action as the log writes it: fenced on the ``epoch`` and ``status`` (and
    ``branch_status``) it was planned from, so a driver's write in between makes it fail. It
    takes the transaction over like a claim (the epoch moves on) for the acting instance."""

    kind: str  # retry, abort, resolve: the event is "operator:<kind>"
    epoch: int
    status: str
    new_status: str
    reason: str | None  # None: the logged reason stays
    by: str
    note: str
    unleased: bool  # only while no driver holds a live lease
    reset_attempts: bool = False
    branch: int | None = None
    branch_status: str | None = None  # the branch's status it was planned from
    branch_new_status: str | None = None


@dataclass(frozen=True)
class Page:
    items: list[TxnRecord]
    next_cursor: str | None


@dataclass(frozen=True)
class LiveSummary:
    """Live (non-terminal) transactions of one status, for metrics."""

    count: int
    stuck: int  # with at least the 'stuck' number of rescheduled attempts
    oldest_age_s: float
