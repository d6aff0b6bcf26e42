"""The 2PC driver: runs the pure state machine of ``twopc`` against the log and the transport.

Log writes happen in the order the state machine lists them, each awaited before anything after
it: the decision is durable before any commit is sent (rule 2), the final status is durable
before anyone is told (rule 3), and every write is fenced on the epoch this driver holds
(rule 5): when it loses the transaction, it stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from contextlib import suppress
from typing import Any

from coordinator import twopc
from coordinator.crash import CrashPoints
from coordinator.errors import OwnershipLost
from coordinator.logstore import LogStore
from coordinator.metrics import Metrics
from coordinator.records import BranchProgress, Claim, TxnRecord
from coordinator.retry import call_in_burst
from coordinator.settings import Settings
from coordinator.transport import Kind, Reply, Transport
from participants.sdk import wire

log = logging.getLogger(__name__)


def state_of(record: TxnRecord) -> twopc.State:
    return twopc.State(
        status=twopc.Status(record.status),
        branches=tuple(twopc.Branch(b.status) for b in record.branches),
        reason=record.reason,
    )


class _Run:
    """One drive of one transaction by one driver, under one epoch."""

    def __init__(self, driver: TwoPCDriver, claim: Claim) -> None:
        self.driver = driver
        self.record = claim.record
        self.gid = claim.record.gid
        self.epoch = claim.record.epoch
        self.attempts = [b.attempts for b in claim.record.branches]
        self.errors: list[str | None] = [b.last_error for b in claim.record.branches]
        self.events: asyncio.Queue[twopc.Event] = asyncio.Queue()
        self.prepares: set[asyncio.Task[None]] = set()
        self.others: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        # Rule 6: the deadline was computed by the database (now() + timeout_s); only the span
        # remaining at claim time, also from the database clock, is counted down here.
        self.deadline = loop.time() + claim.seconds_to_deadline
        self.extra = {"gid": self.gid, "epoch": self.epoch}

    def progress(self, state: twopc.State) -> list[BranchProgress]:
        return [
            BranchProgress(str(b), self.attempts[i], self.errors[i])
            for i, b in enumerate(state.branches)
        ]

    def note(self, idx: int, reply: Reply) -> None:
        if reply.kind is not Kind.OK:
            self.errors[idx] = reply.reason

    async def call(self, idx: int, path: str, op: str, payload: dict[str, Any] | None) -> Reply:
        # Counted when sent, so an attempt cut off by the deadline still shows.
        self.attempts[idx] += 1
        branch = self.record.branches[idx]
        reply = await self.driver.transport.call(
            branch.participant, path, op, self.gid, idx, payload
        )
        self.driver.metrics.inc(
            "txn_participant_calls_total", participant=branch.participant, op=op, result=reply.kind
        )
        return reply

    async def run(self, state: twopc.State, first: twopc.Event) -> twopc.State:
        d = self.driver
        resumed = isinstance(first, twopc.Resume)
        state, commands = twopc.step(state, first)
        try:
            while True:
                for command in commands:
                    match command:
                        case twopc.SendPrepare(idx):
                            self._spawn(self.prepares, self._prepare(idx))
                        case twopc.Decide(status, reason):
                            self._cancel(self.prepares)
                            if not resumed:
                                d.crash.hit("after_prepare")
                            # Rule 2: the decision (the commit point) is durable before the
                            # SendCommit commands that follow it run. Rule 5: fenced on epoch.
                            await d.store.write_status(
                                self.gid,
                                self.epoch,
                                status,
                                reason,
                                self.progress(state),
                                "decided",
                            )
                            log.info("decided %s", status, extra=self.extra)
                            d.notify(self.gid)
                            d.crash.hit("after_decision")
                        case twopc.SendCommit(idx):
                            self._spawn(self.others, self._phase_two(idx, "commit"))
                        case twopc.SendRollback(idx):
                            self._spawn(self.others, self._phase_two(idx, "rollback"))
                        case twopc.Finish(status):
                            d.crash.hit("before_final")
                            # Rule 3: the terminal status is logged before anyone is notified.
                            await d.store.write_status(
                                self.gid,
                                self.epoch,
                                status,
                                state.reason,
                                self.progress(state),
                                "finished",
                            )
                            log.info("finished %s", status, extra=self.extra)
                            d.metrics.inc("txn_finished_total", status=status)
                            d.notify(self.gid)
                            return state
                        case twopc.Reschedule():
                            delay = await d.store.reschedule(
                                self.gid,
                                self.epoch,
                                self.progress(state),
                                d.settings.reschedule_initial_s,
                                d.settings.reschedule_max_s,
                            )
                            log.warning("rescheduled in %.2fs", delay, extra=self.extra)
                            d.metrics.inc("txn_rescheduled_total")
                            d.notify(self.gid)
                            return state
                event = await self._next_event(state)
                if (
                    isinstance(event, twopc.Acked)
                    and state.status is twopc.Status.COMMITTING
                    and len(state.inflight) > 1
                ):
                    d.crash.hit("mid_commit")
                state, commands = twopc.step(state, event)
        finally:
            self._cancel(self.prepares)
            self._cancel(self.others)

    async def _next_event(self, state: twopc.State) -> twopc.Event:
        if state.status is not twopc.Status.PREPARING:
            return await self.events.get()
        remaining = self.deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(self.events.get(), max(remaining, 0.0))
        except TimeoutError:
            for i, b in enumerate(state.branches):
                if b is twopc.Branch.PENDING and self.errors[i] is None:
                    self.errors[i] = "no vote before the transaction's deadline (timeout_s)"
            return twopc.TimedOut()

    def _spawn(self, group: set[asyncio.Task[None]], coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        group.add(task)
        task.add_done_callback(group.discard)

    @staticmethod
    def _cancel(group: set[asyncio.Task[None]]) -> None:
        for task in list(group):
            task.cancel()

    async def _prepare(self, idx: int) -> None:
        d = self.driver
        branch = self.record.branches[idx]
        budget = self.deadline - asyncio.get_running_loop().time()
        reply = await call_in_burst(
            lambda: self.call(idx, branch.action, "prepare", branch.payload),
            attempts=d.settings.burst_attempts,
            initial_s=d.settings.retry_initial_s,
            max_s=d.settings.retry_max_s,
            on_attempt=lambda r: self.note(idx, r),
            budget_s=budget,
        )
        if reply.kind is Kind.OK:
            self.events.put_nowait(twopc.Voted(idx, True))
        elif reply.kind is Kind.REFUSED:
            self.events.put_nowait(twopc.Voted(idx, False, f"{branch.participant}: {reply.reason}"))
        else:
            self.events.put_nowait(
                twopc.PrepareFailed(idx, f"{branch.participant}: {reply.reason}")
            )

    async def _phase_two(self, idx: int, op: str) -> None:
        d = self.driver
        path = wire.COMMIT_PATH if op == "commit" else wire.ROLLBACK_PATH
        reply = await call_in_burst(
            lambda: self.call(idx, path, op, None),
            attempts=d.settings.burst_attempts,
            initial_s=d.settings.retry_initial_s,
            max_s=d.settings.retry_max_s,
            on_attempt=lambda r: self.note(idx, r),
        )
        if reply.kind is Kind.OK:
            self.events.put_nowait(twopc.Acked(idx))
        else:
            # Commit and rollback never fail for good: they are owed until acknowledged.
            self.events.put_nowait(twopc.Deferred(idx, reply.reason))


class TwoPCDriver:
    def __init__(
        self,
        store: LogStore,
        transport: Transport,
        settings: Settings,
        crash: CrashPoints,
        notify: Callable[[str], None],
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.transport = transport
        self.settings = settings
        self.crash = crash
        self.notify = notify
        self.metrics = metrics

    async def drive(self, claim: Claim, fresh: bool) -> twopc.State | None:
        """Drive a claimed transaction as far as it goes now. ``fresh``: just logged by this
        instance, nothing sent yet. Returns the state reached, or None if ownership was lost."""
        run = _Run(self, claim)
        first: twopc.Event = twopc.Start() if fresh else twopc.Resume()
        try:
            return await run.run(state_of(claim.record), first)
        except OwnershipLost as e:
            log.warning("stopping: %s", e, extra=run.extra)
            return None


async def cancel_and_wait(task: asyncio.Task[object]) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
