"""What the 2PC and saga drivers share: their dependencies, and one drive's bookkeeping (the
epoch it holds, attempts and last errors per branch, the events its calls produce, the
deadline) with the participant calls every protocol makes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from coordinator.logstore import LogStore
from coordinator.metrics import Metrics
from coordinator.records import BranchProgress, Claim, TxnRecord
from coordinator.retry import call_in_burst
from coordinator.settings import Settings
from coordinator.transport import Kind, Reply, Transport
from participants.sdk.crash import CrashPoints
from participants.sdk.tracing import TRACEPARENT, Tracing

log = logging.getLogger(__name__)

LEASE_LAPSED = "this instance's lease lapsed: no call sent (another instance may own it now)"

E = TypeVar("E")


def logged(
    record: TxnRecord,
    status: str,
    reason: str | None,
    progress: Sequence[BranchProgress],
    at: datetime,
) -> TxnRecord:
    """``record`` after a status write of ``status``, ``reason`` and ``progress`` at the log's
    time ``at``: field for field what reading the transaction back would return."""
    branches = [
        replace(b, status=p.status, attempts=p.attempts, last_error=p.last_error, updated_at=at)
        for b, p in zip(record.branches, progress, strict=True)
    ]
    return replace(record, status=status, reason=reason, updated_at=at, branches=branches)


@dataclass(frozen=True)
class Deps:
    store: LogStore
    transport: Transport
    settings: Settings
    crash: CrashPoints
    notify: Callable[[str, TxnRecord | None], None]
    metrics: Metrics
    tracing: Tracing | None = None
    # Whether this instance still holds the transaction's lease by its own clock; a call is
    # never signed and sent after it lapsed (a process frozen past its lease must not call
    # participants again before a fenced write tells it it lost the transaction).
    lease_held: Callable[[str], bool] = lambda _gid: True


class Run(Generic[E]):
    """One drive of one transaction under one epoch. ``E``: the protocol's event type."""

    # Whether recovery would redo the outcome write from what the log held before it (rule 4:
    # then the log may carry it in one statement with other transactions' outcomes).
    redoable_outcome: ClassVar[bool] = False

    def __init__(self, deps: Deps, claim: Claim) -> None:
        self.d = deps
        self.record = claim.record
        self.gid, self.epoch = claim.record.gid, claim.record.epoch
        self.attempts = [b.attempts for b in claim.record.branches]
        self.errors: list[str | None] = [b.last_error for b in claim.record.branches]
        self.events: asyncio.Queue[E] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        # Rule 6: the deadline was computed by the database (now() + timeout_s); only the span
        # remaining at claim time, also by the database clock, is counted down here.
        self.deadline = asyncio.get_running_loop().time() + claim.seconds_to_deadline
        self.past_deadline = claim.seconds_to_deadline <= 0
        self.extra = {"gid": self.gid, "epoch": self.epoch}
        # (branch, operation) sent in this drive: a second send is a retry.
        self.sent: set[tuple[int, str]] = set()
        self.main = asyncio.current_task()

    def progress(self, statuses: Sequence[object]) -> list[BranchProgress]:
        return [
            BranchProgress(str(s), self.attempts[i], self.errors[i]) for i, s in enumerate(statuses)
        ]

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._settled)
        return task

    def _settled(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        # A call that crashed would leave the drive waiting for its reply for ever: stop the
        # drive instead; its lease lapses and recovery resumes the transaction from the log.
        log.error(
            "a participant call failed unexpectedly", exc_info=task.exception(), extra=self.extra
        )
        if self.main is not None:
            self.main.cancel()

    def cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    async def next_event(self, until_deadline: bool, timed_out: Callable[[], E]) -> E:
        """The next reply; with ``until_deadline``, ``timed_out()`` once the deadline passes."""
        if not until_deadline:
            return await self.events.get()
        remaining = self.deadline - asyncio.get_running_loop().time()
        try:
            # asyncio.timeout, not wait_for: no task made around every wait for a reply.
            async with asyncio.timeout(max(remaining, 0.0)):
                return await self.events.get()
        except TimeoutError:
            return timed_out()

    async def call(self, idx: int, path: str, op: str, payload: dict[str, Any] | None) -> Reply:
        if not self.d.lease_held(self.gid):
            self.errors[idx] = LEASE_LAPSED
            return Reply(Kind.TRANSIENT, None, LEASE_LAPSED)
        # Counted when sent, so an attempt cut off by a deadline still shows.
        self.attempts[idx] += 1
        branch = self.record.branches[idx]
        m = self.d.metrics
        if (idx, op) in self.sent:
            m.call_retried(branch.participant, op)
        self.sent.add((idx, op))
        started = time.perf_counter()
        if self.d.tracing is None:
            reply = await self.d.transport.call(
                branch.participant, path, op, self.gid, idx, payload
            )
        else:
            reply = await self._traced_call(self.d.tracing, idx, path, op, payload)
        m.call_done(branch.participant, op, reply.kind.value, time.perf_counter() - started)
        if reply.kind is not Kind.OK:
            self.errors[idx] = reply.reason
        return reply

    async def _traced_call(
        self, tracing: Tracing, idx: int, path: str, op: str, payload: dict[str, Any] | None
    ) -> Reply:
        participant = self.record.branches[idx].participant
        attributes = {
            "txn.gid": self.gid,
            "txn.branch": idx,
            "txn.participant": participant,
            "txn.operation": op,
            "txn.attempt": self.attempts[idx],
            "url.path": path,
        }
        with tracing.client(f"{op} {participant}", attributes) as (span, traceparent):
            reply = await self.d.transport.call(
                participant, path, op, self.gid, idx, payload, {TRACEPARENT: traceparent}
            )
            if reply.status is not None:
                span.set_attribute("http.response.status_code", reply.status)
            if reply.kind is not Kind.OK:
                tracing.failed(span, f"{reply.kind.value}: {reply.reason}")
        return reply

    async def owed(self, idx: int, path: str, op: str, payload: dict[str, Any] | None) -> Reply:
        """A call that never fails for good (commit, rollback, compensation): retried in one
        burst, a 409 like any failure; a non-OK reply means "owed again later"."""
        s = self.d.settings
        return await call_in_burst(
            lambda: self.call(idx, path, op, payload),
            attempts=s.burst_attempts,
            initial_s=s.retry_initial_s,
            max_s=s.retry_max_s,
            retriable=lambda r: r.kind is not Kind.OK,
        )

    def log_span(self, statement: str) -> AbstractContextManager[object]:
        """A span around one log write (nothing when tracing is off)."""
        if self.d.tracing is None:
            return nullcontext()
        return self.d.tracing.internal(f"log {statement}", {"txn.gid": self.gid})

    # -- the log writes every protocol makes (each fenced on the epoch: rule 5) --------------

    async def decide(self, status: str, reason: str | None, statuses: Sequence[object]) -> None:
        """Rule 2: the decision is durable before anything listed after it is sent."""
        with self.d.metrics.log_write("decide"), self.log_span("decide"):
            await self.d.store.write_status(
                self.gid, self.epoch, status, reason, self.progress(statuses), "decided"
            )
        log.debug("decided %s", status, extra=self.extra)  # the timeline has it too

    async def finish(self, status: str, reason: str | None, statuses: Sequence[object]) -> None:
        """Rule 3: the outcome is logged before anyone is told."""
        progress = self.progress(statuses)
        m = self.d.metrics
        with m.log_write("finish"), self.log_span("finish"):
            at = await self.d.store.write_status(
                self.gid,
                self.epoch,
                status,
                reason,
                progress,
                "finished",
                redoable=self.redoable_outcome,
            )
        # DEBUG: a line per transaction would sit between the outcome and the answer (the
        # row's timeline and txn_finished_total have it).
        log.debug("finished %s", status, extra=self.extra)
        m.finished_one(self.record.mode, status, (at - self.record.created_at).total_seconds())
        # Waiters get the record as it now stands in the log, so they need not read it back.
        self.d.notify(self.gid, logged(self.record, status, reason, progress, at))

    async def reschedule(self, statuses: Sequence[object]) -> None:
        """Calls are still owed: record progress, release the lease, retry when due."""
        s = self.d.settings
        with self.d.metrics.log_write("reschedule"), self.log_span("reschedule"):
            delay = await self.d.store.reschedule(
                self.gid,
                self.epoch,
                self.progress(statuses),
                s.reschedule_initial_s,
                s.reschedule_max_s,
            )
        log.warning("rescheduled in %.2fs", delay, extra=self.extra)
        self.d.metrics.rescheduled.inc()
        self.d.notify(self.gid, None)
