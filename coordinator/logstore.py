"""The log-store interface. All log access goes through it; ``pglog`` is the Postgres store and
``memlog`` the in-memory fake, and one contract test suite runs against both."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from coordinator.records import (
    BranchProgress,
    Claim,
    EventRecord,
    Inserted,
    Intervention,
    ListFilter,
    LiveSummary,
    NewTxn,
    Page,
    TxnRecord,
)


class LogStore(Protocol):
    async def insert(self, new: NewTxn, owner: str, lease_s: float) -> tuple[Inserted, Claim]:
        """Log a transaction and its branches (rule 1: before any participant is called).

        CREATED: owned by ``owner`` at epoch 1. EXISTING: the gid exists with the same request
        hash. CONFLICT: the gid exists with a different request. The claim carries the stored
        record either way.
        """
        ...

    async def get(self, gid: str) -> TxnRecord | None: ...

    async def events(self, gid: str) -> list[EventRecord]: ...

    async def page(self, where: ListFilter, limit: int, cursor: str | None) -> Page:
        """Newest first, keyset-paged by (created_at, gid); ``cursor`` from a previous page."""
        ...

    async def write_status(
        self,
        gid: str,
        epoch: int,
        status: str,
        reason: str | None,
        branches: Sequence[BranchProgress],
        event: str,
        *,
        redoable: bool = False,
    ) -> datetime:
        """Fenced write of a status and every branch's progress (rule 5); raises OwnershipLost.
        Returns the log's time of the write (the record's new ``updated_at``). ``redoable``: the
        caller states that recovery would redo this write (rule 4), so the store may carry it
        in one statement with others'; it is as durable as any status write when this returns."""
        ...

    async def write_progress(
        self,
        gid: str,
        epoch: int,
        idx: int,
        progress: BranchProgress,
        event: str,
        detail: dict[str, Any] | None,
    ) -> None:
        """Fenced write of one branch's progress and its event (branch ``idx``). Redoable, so
        it may be committed asynchronously (rule 4); raises OwnershipLost."""
        ...

    async def reschedule(
        self,
        gid: str,
        epoch: int,
        branches: Sequence[BranchProgress],
        initial_s: float,
        max_s: float,
    ) -> float:
        """Fenced: count an attempt, set ``next_attempt_at`` by capped exponential backoff with
        jitter, and release the lease so any instance can claim it when due. Returns the delay."""
        ...

    async def claim(
        self, owner: str, limit: int, lease_s: float, own_before: datetime | None = None
    ) -> list[Claim]:
        """Claim due, unleased live transactions in one statement, bumping each epoch. With
        ``own_before`` (the log's time when this incarnation of ``owner`` started), also every
        live transaction ``owner`` holds that was last written before then, lease or not: an
        earlier incarnation's, never one this incarnation inserted or claimed."""
        ...

    async def abort_orphan(self, gid: str, owner: str, lease_s: float, reason: str) -> Claim | None:
        """If ``gid`` is a 2PC transaction still ``preparing`` whose lease has run out, decide
        abort (presumed abort), bump the epoch and hand it to ``owner``; else None."""
        ...

    async def intervene(
        self, gid: str, act: Intervention, owner: str, lease_s: float
    ) -> Claim | None:
        """An operator's action: if the transaction is still at ``act.epoch`` and
        ``act.status`` (its branch at ``act.branch_status``; with ``act.unleased``, no live
        lease), write it, bump the epoch and hand the transaction to ``owner``, due now, with
        an ``operator:<kind>`` event naming ``act.by`` and the note; else None."""
        ...

    async def renew(self, owner: str, held: Mapping[str, int], lease_s: float) -> set[str]:
        """Extend the leases ``owner`` still holds at the given epochs, in one statement; returns
        the renewed gids."""
        ...

    async def purge(self, older_than_s: float, limit: int, dry_run: bool = False) -> int:
        """Delete up to ``limit`` finished transactions last written more than
        ``older_than_s`` ago, oldest first; returns how many. One purger at a time: another
        one's concurrent call deletes nothing. ``dry_run``: count every such transaction,
        delete nothing. A live transaction is never deleted."""
        ...

    async def ended(self, gids: Sequence[str]) -> dict[str, float | None]:
        """Of ``gids``: each finished one with the seconds since its last write (the log's
        clock), and each the log does not hold with None; live ones are left out. Reads only."""
        ...

    async def live_summary(self, stuck_attempts: int) -> dict[str, LiveSummary]:
        """Per live status: how many, how many stuck, the oldest one's age (database clock)."""
        ...

    async def ping(self) -> None: ...

    async def clock(self) -> datetime:
        """The log's ``now()`` (rule 6)."""
        ...

    async def lease_horizon(self, owner: str) -> datetime | None:
        """The latest ``lease_until`` among live transactions ``owner`` holds (None: none)."""
        ...

    async def close(self) -> None: ...
