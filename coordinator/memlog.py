"""The in-memory log store: a fake of ``PgLog`` for unit tests, held to the same contract suite
(tests/contract). Every operation reads the clock once, as each Postgres statement sees one
``now()``; records handed out are copies, and JSON values round-trip as they would through jsonb.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from coordinator.cursor import decode_cursor, encode_cursor
from coordinator.errors import OwnershipLost
from coordinator.records import (
    BranchProgress,
    BranchRecord,
    Claim,
    EventRecord,
    Inserted,
    Intervention,
    ListFilter,
    LiveSummary,
    NewTxn,
    Page,
    TxnRecord,
    stored_request,
)
from coordinator.schema import NEXT_STATUS, TERMINAL, TIMELINE_HEAD, TIMELINE_MAX


# pragma: no mutate start (not the status guard)
def _utcnow() -> datetime:
    return datetime.now(UTC)


# pragma: no mutate end
def _refused(gid: str, epoch: int, status: str) -> str:
    return (
        f"transaction {gid}: epoch {epoch} is no longer current, or its logged status may not "
        f"move to {status!r}"
    )


# pragma: no mutate start (not the status guard)
def _json(value: Any) -> Any:
    """What Postgres would hand back for ``value`` stored as jsonb (and a deep copy)."""
    return orjson.loads(orjson.dumps(value))


def _matches(rec: TxnRecord, where: ListFilter, now: datetime) -> bool:
    age = (now - rec.created_at).total_seconds()
    return (
        (where.status is None or rec.status == where.status)
        and (where.mode is None or rec.mode == where.mode)
        and (
            where.participant is None
            or any(b.participant == where.participant for b in rec.branches)
        )
        and (not where.gid_prefix or rec.gid.startswith(where.gid_prefix))
        and (where.older_than_s is None or age >= where.older_than_s)
        and (where.newer_than_s is None or age <= where.newer_than_s)
    )


@dataclass
class _Row:
    """A ``transactions`` row: the record plus the columns ``TxnRecord`` does not carry."""

    rec: TxnRecord
    request: dict[str, Any]
    next_attempt_at: datetime
    lease_until: datetime | None


# pragma: no mutate end
class MemLog:
    """LogStore in memory. ``clock`` is the log's ``now()``; ``advance`` moves it forward."""

    # pragma: no mutate start (not the status guard)
    def __init__(
        self, clock: Callable[[], datetime] = _utcnow, rng: random.Random | None = None
    ) -> None:
        self._clock = clock
        self._offset = timedelta(0)
        self._rng = rng or random.Random()
        self._txns: dict[str, _Row] = {}
        self._events: dict[str, list[EventRecord]] = {}

    def now(self) -> datetime:
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the log's clock forward (fake time for tests)."""
        self._offset += timedelta(seconds=seconds)

    async def close(self) -> None:
        return None

    async def live_summary(self, stuck_attempts: int) -> dict[str, LiveSummary]:
        now = self.now()
        out: dict[str, LiveSummary] = {}
        for row in self._txns.values():
            rec = row.rec
            if rec.status in TERMINAL:
                continue
            seen = out.get(rec.status, LiveSummary(0, 0, 0.0))
            out[rec.status] = LiveSummary(
                seen.count + 1,
                seen.stuck + (rec.attempts >= stuck_attempts),
                max(seen.oldest_age_s, (now - rec.created_at).total_seconds()),
            )
        return out

    async def purge(self, older_than_s: float, limit: int, dry_run: bool = False) -> int:
        cutoff = self.now() - timedelta(seconds=older_than_s)
        old = sorted(
            (
                r.rec
                for r in self._txns.values()
                if r.rec.status in TERMINAL
                and r.rec.created_at < cutoff
                and r.rec.updated_at < cutoff
            ),
            key=lambda rec: rec.created_at,
        )
        if dry_run:
            return len(old)
        for rec in old[:limit]:
            del self._txns[rec.gid]
            self._events.pop(rec.gid, None)
        return len(old[:limit])

    async def ping(self) -> None:
        return None

    async def clock(self) -> datetime:
        return self.now()

    async def lease_horizon(self, owner: str) -> datetime | None:
        leases = [
            r.lease_until
            for r in self._txns.values()
            if r.rec.owner == owner and r.rec.status not in TERMINAL and r.lease_until is not None
        ]
        return max(leases, default=None)

    async def ended(self, gids: Sequence[str]) -> dict[str, float | None]:
        now = self.now()
        out: dict[str, float | None] = {}
        for gid in gids:
            row = self._txns.get(gid)
            if row is None:
                out[gid] = None
            elif row.rec.status in TERMINAL:
                out[gid] = max((now - row.rec.updated_at).total_seconds(), 0.0)
        return out

    def _event(self, gid: str, at: datetime, kind: str, detail: dict[str, Any]) -> None:
        self._append_event(gid, at, kind, None, _json(detail))

    def _append_event(
        self, gid: str, at: datetime, kind: str, branch: int | None, detail: Any
    ) -> None:
        # As the Postgres store keeps a row's timeline (coordinator/queries.py, ``capped``):
        # ids count per transaction; a long one keeps its first and latest events, and every
        # operator's action.
        events = self._events.setdefault(gid, [])
        if len(events) > TIMELINE_MAX:
            tail = TIMELINE_MAX - TIMELINE_HEAD
            kept = [e for e in events[TIMELINE_HEAD:-tail] if e.kind.startswith("operator:")]
            events[:] = events[:TIMELINE_HEAD] + kept + events[-tail:]
        events.append(
            EventRecord(events[-1].id + 1 if events else 1, gid, at, kind, branch, detail)
        )

    # pragma: no mutate end
    def _fenced(self, gid: str, epoch: int) -> _Row:
        row = self._txns.get(gid)
        if row is None or row.rec.epoch != epoch:
            raise OwnershipLost(f"transaction {gid}: epoch {epoch} is no longer current")
        return row

    # pragma: no mutate start (not the status guard)
    @staticmethod
    def _progress(row: _Row, progress: Sequence[BranchProgress], now: datetime) -> None:
        for branch in row.rec.branches:
            if branch.idx < len(progress):
                p = progress[branch.idx]
                branch.status, branch.attempts = p.status, p.attempts
                branch.last_error = p.last_error
                branch.updated_at = now

    async def insert(self, new: NewTxn, owner: str, lease_s: float) -> tuple[Inserted, Claim]:
        now = self.now()
        existing = self._txns.get(new.gid)
        if existing is not None:
            same = existing.rec.request_hash == new.request_hash
            outcome = Inserted.EXISTING if same else Inserted.CONFLICT
            return outcome, Claim(copy.deepcopy(existing.rec), now)
        lease_until = now + timedelta(seconds=lease_s)
        rec = TxnRecord(
            gid=new.gid,
            mode=new.mode,
            status="running" if new.mode == "saga" else "preparing",
            reason=None,
            created_at=now,
            updated_at=now,
            deadline_at=now + timedelta(seconds=new.timeout_s),
            attempts=0,
            owner=owner,
            epoch=1,
            request_hash=new.request_hash,
            request=_json(stored_request(new.request)),
            branches=[
                BranchRecord(
                    idx=i,
                    participant=b.participant,
                    action=b.action,
                    compensation=b.compensation,
                    payload=_json(b.payload),
                    status="pending",
                    attempts=0,
                    last_error=None,
                    updated_at=now,
                    confirm=b.confirm,
                )
                for i, b in enumerate(new.branches)
            ],
        )
        self._txns[new.gid] = _Row(rec, rec.request, lease_until, lease_until)
        self._event(new.gid, now, "submitted", {"owner": owner})
        return Inserted.CREATED, Claim(copy.deepcopy(rec), now)

    async def get(self, gid: str) -> TxnRecord | None:
        row = self._txns.get(gid)
        return None if row is None else copy.deepcopy(row.rec)

    async def events(self, gid: str) -> list[EventRecord]:
        return copy.deepcopy(self._events.get(gid, []))

    async def page(self, where: ListFilter, limit: int, cursor: str | None) -> Page:
        now = self.now()
        recs = [r.rec for r in self._txns.values() if _matches(r.rec, where, now)]
        if cursor is not None:
            at, gid = decode_cursor(cursor)
            at = at.astimezone(UTC)  # as asyncpg sends it: a naive time is local time
            recs = [r for r in recs if (r.created_at, r.gid) < (at, gid)]
        recs.sort(key=lambda r: (r.created_at, r.gid), reverse=True)
        items = copy.deepcopy(recs[:limit])
        more = len(recs) > limit
        next_cursor = encode_cursor(items[-1].created_at, items[-1].gid) if more else None
        return Page(items, next_cursor)

    # pragma: no mutate end
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
        now = self.now()
        row = self._fenced(gid, epoch)
        if status not in NEXT_STATUS.get(row.rec.status, {status}):
            raise OwnershipLost(_refused(gid, epoch, status))
        row.rec.status, row.rec.reason, row.rec.updated_at = status, reason, now
        self._progress(row, branches, now)
        self._event(gid, now, event, {"status": status, "reason": reason, "epoch": epoch})
        return now

    # pragma: no mutate block (not the status guard, to the end of the class)
    async def write_progress(
        self,
        gid: str,
        epoch: int,
        idx: int,
        progress: BranchProgress,
        event: str,
        detail: dict[str, Any] | None,
    ) -> None:
        now = self.now()
        row = self._fenced(gid, epoch)
        row.rec.updated_at = now
        for branch in row.rec.branches:
            if branch.idx == idx:
                branch.status, branch.attempts = progress.status, progress.attempts
                branch.last_error, branch.updated_at = progress.last_error, now
        self._append_event(gid, now, event, idx, _json(detail) if detail is not None else None)

    async def reschedule(
        self,
        gid: str,
        epoch: int,
        branches: Sequence[BranchProgress],
        initial_s: float,
        max_s: float,
    ) -> float:
        now = self.now()
        row = self._fenced(gid, epoch)
        base = min(float(max_s), float(initial_s) * 2.0 ** min(row.rec.attempts, 30))
        delay = base * self._rng.uniform(0.5, 1.0)
        row.rec.attempts += 1
        row.rec.updated_at = now
        row.lease_until = now
        row.next_attempt_at = now + timedelta(seconds=delay)
        self._progress(row, branches, now)
        self._event(gid, now, "rescheduled", {"delay_s": delay})
        return delay

    async def claim(
        self, owner: str, limit: int, lease_s: float, own_before: datetime | None = None
    ) -> list[Claim]:
        now = self.now()
        due = [
            r
            for r in self._txns.values()
            if r.rec.status not in TERMINAL
            and (
                (r.next_attempt_at <= now and (r.lease_until is None or r.lease_until < now))
                or (
                    own_before is not None
                    and r.rec.owner == owner
                    and r.rec.updated_at < own_before
                )
            )
        ]
        due.sort(key=lambda r: r.next_attempt_at)
        claims = []
        for row in due[:limit]:
            row.rec.owner = owner
            row.rec.epoch += 1
            row.rec.updated_at = now
            row.lease_until = now + timedelta(seconds=lease_s)
            self._event(row.rec.gid, now, "claimed", {"owner": owner, "epoch": row.rec.epoch})
            claims.append(Claim(copy.deepcopy(row.rec), now))
        return claims

    async def abort_orphan(self, gid: str, owner: str, lease_s: float, reason: str) -> Claim | None:
        now = self.now()
        row = self._txns.get(gid)
        if row is None or row.rec.mode != "2pc" or row.rec.status != "preparing":
            return None
        if row.lease_until is not None and not row.lease_until < now:
            return None
        rec = row.rec
        rec.status, rec.reason, rec.epoch, rec.owner = "aborting", reason, rec.epoch + 1, owner
        rec.updated_at = now
        row.lease_until = now + timedelta(seconds=lease_s)
        row.next_attempt_at = now
        detail = {"status": "aborting", "reason": reason, "epoch": rec.epoch, "owner": owner}
        self._event(gid, now, "decided", detail)
        return Claim(copy.deepcopy(rec), now)

    async def intervene(
        self, gid: str, act: Intervention, owner: str, lease_s: float
    ) -> Claim | None:
        now = self.now()
        row = self._txns.get(gid)
        if row is None or row.rec.epoch != act.epoch or row.rec.status != act.status:
            return None
        if act.unleased and row.lease_until is not None and not row.lease_until < now:
            return None
        rec = row.rec
        branch = rec.branches[act.branch] if act.branch is not None else None
        if branch is not None and branch.status != act.branch_status:
            return None
        rec.status, rec.epoch, rec.owner, rec.updated_at = act.new_status, rec.epoch + 1, owner, now
        if act.reason is not None:
            rec.reason = act.reason
        if act.reset_attempts:
            rec.attempts = 0
        if branch is not None and act.branch_new_status is not None:
            branch.status, branch.resolved_by = act.branch_new_status, act.by
            branch.updated_at = now
        row.lease_until = now + timedelta(seconds=lease_s)
        row.next_attempt_at = now
        detail = {"by": act.by, "note": act.note, "status": act.new_status, "epoch": rec.epoch}
        self._append_event(gid, now, f"operator:{act.kind}", act.branch, _json(detail))
        return Claim(copy.deepcopy(rec), now)

    async def renew(self, owner: str, held: Mapping[str, int], lease_s: float) -> set[str]:
        now = self.now()
        renewed = set()
        for gid, epoch in held.items():
            row = self._txns.get(gid)
            if (
                row is not None
                and row.rec.epoch == epoch
                and row.rec.owner == owner
                and row.rec.status not in TERMINAL
                and row.lease_until is not None
                and row.lease_until > now
            ):
                row.lease_until = now + timedelta(seconds=lease_s)
                renewed.add(gid)
        return renewed
