"""The saga driver: runs the pure machine of ``sagas.machine`` against the log and transport.

Decisions (compensate, finish) are synchronous, fenced log writes awaited before anything
after them (rules 2, 3, 5); a step's progress is a fenced write committed asynchronously
(rule 4): if lost, recovery redoes the step and the participant's barrier answers as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_after_attempt

from coordinator.crash import CrashPoints
from coordinator.errors import OwnershipLost
from coordinator.logstore import LogStore
from coordinator.metrics import Metrics
from coordinator.records import BranchProgress, Claim, TxnRecord
from coordinator.retry import call_in_burst, is_retriable
from coordinator.settings import Settings
from coordinator.transport import Kind, Reply, Transport
from sagas import machine as m
from sagas.policy import RetryPolicy

log = logging.getLogger(__name__)

_EVENT_OF = {
    m.Step.SUCCEEDED: "action:succeeded",
    m.Step.FAILED: "action:failed",
    m.Step.COMPENSATED: "compensation:done",
    m.Step.COMPENSATING: "compensation:deferred",
}


def state_of(record: TxnRecord) -> m.State:
    deps = tuple(frozenset(d) for d in record.request.get("deps", []))
    if len(deps) != len(record.branches):
        deps = m.sequential(len(record.branches))
    return m.State(
        status=m.Status(record.status),
        steps=tuple(
            m.Step(b.status) if b.status != "pending" else m.Step.PENDING for b in record.branches
        ),
        deps=deps,
        reason=record.reason,
    )


def _last_reply(state: RetryCallState) -> Reply:
    assert state.outcome is not None
    reply: Reply = state.outcome.result()
    return reply


class _SagaRun:
    def __init__(self, driver: SagaDriver, claim: Claim) -> None:
        self.d = driver
        self.record = claim.record
        self.gid, self.epoch = claim.record.gid, claim.record.epoch
        self.policy = RetryPolicy.model_validate(claim.record.request.get("retry") or {})
        self.attempts = [b.attempts for b in claim.record.branches]
        self.errors: list[str | None] = [b.last_error for b in claim.record.branches]
        self.events: asyncio.Queue[m.Event] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        # Rule 6: the deadline is the database's; only the span left at claim time counts here.
        self.deadline = asyncio.get_running_loop().time() + claim.seconds_to_deadline
        self.past_deadline = claim.seconds_to_deadline <= 0
        self.extra = {"gid": self.gid, "epoch": self.epoch}

    def progress(self, state: m.State) -> list[BranchProgress]:
        return [
            BranchProgress(str(s), self.attempts[i], self.errors[i])
            for i, s in enumerate(state.steps)
        ]

    async def run(self, state: m.State, first: m.Event) -> m.State:
        d = self.d
        state, commands = m.step(state, first)
        try:
            while True:
                for command in commands:
                    match command:
                        case m.SendAction(idx):
                            self._spawn(self._action(idx))
                        case m.SendCompensation(idx):
                            self._spawn(self._compensation(idx))
                        case m.Progress(idx, status):
                            await self._record(idx, status)
                        case m.Decide(reason):
                            # Rules 2 and 5: the decision to compensate is durable, fenced,
                            # before any compensation is sent.
                            await d.store.write_status(
                                self.gid,
                                self.epoch,
                                str(m.Status.COMPENSATING),
                                reason,
                                self.progress(state),
                                "decided",
                            )
                            log.info("compensating: %s", reason, extra=self.extra)
                            d.notify(self.gid)
                        case m.Finish(status):
                            # Rule 3: logged before anyone is told.
                            await d.store.write_status(
                                self.gid,
                                self.epoch,
                                str(status),
                                state.reason,
                                self.progress(state),
                                "finished",
                            )
                            log.info("finished %s", status, extra=self.extra)
                            d.metrics.inc("txn_finished_total", status=str(status))
                            d.notify(self.gid)
                            return state
                        case m.Reschedule():
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
                if isinstance(event, m.ActionDone):
                    d.crash.hit("after_step")
                if (
                    isinstance(event, m.CompensationDone)
                    and sum(
                        s in m.NEEDS_COMPENSATION or s is m.Step.COMPENSATING for s in state.steps
                    )
                    > 1
                ):
                    d.crash.hit("mid_compensate")
                state, commands = m.step(state, event)
        finally:
            for task in list(self.tasks):
                task.cancel()

    async def _record(self, idx: int, status: m.Step) -> None:
        failed = status in (m.Step.FAILED, m.Step.COMPENSATING)
        await self.d.store.write_progress(
            self.gid,
            self.epoch,
            idx,
            BranchProgress(str(status), self.attempts[idx], self.errors[idx]),
            _EVENT_OF[status],
            {"error": self.errors[idx]} if failed and self.errors[idx] else None,
        )

    async def _next_event(self, state: m.State) -> m.Event:
        if state.status is not m.Status.RUNNING:
            return await self.events.get()
        remaining = self.deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(self.events.get(), max(remaining, 0.0))
        except TimeoutError:
            return m.TimedOut()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _call(self, idx: int, path: str, op: str) -> Reply:
        self.attempts[idx] += 1
        branch = self.record.branches[idx]
        reply = await self.d.transport.call(
            branch.participant, path, op, self.gid, idx, branch.payload
        )
        self.d.metrics.inc(
            "txn_participant_calls_total", participant=branch.participant, op=op, result=reply.kind
        )
        if reply.kind is not Kind.OK:
            self.errors[idx] = reply.reason
        return reply

    async def _action(self, idx: int) -> None:
        branch = self.record.branches[idx]
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.policy.max_attempts),
            wait=self.policy.tenacity_wait,
            retry=retry_if_result(is_retriable),
            retry_error_callback=_last_reply,
        )
        reply: Reply = await retrying(self._call, idx, branch.action, "action")
        if reply.kind is Kind.OK:
            self.events.put_nowait(m.ActionDone(idx))
        elif reply.kind is Kind.REFUSED:
            self.events.put_nowait(m.ActionFailed(idx, f"{branch.participant}: {reply.reason}"))
        else:
            reason = f"{branch.participant}: out of attempts ({self.policy.max_attempts}): "
            self.events.put_nowait(m.ActionFailed(idx, reason + reply.reason))

    async def _compensation(self, idx: int) -> None:
        branch = self.record.branches[idx]
        path = branch.compensation or ""
        s = self.d.settings
        # Compensations never fail for good: a 409 is retried like any other failure.
        reply = await call_in_burst(
            lambda: self._call(idx, path, "compensate"),
            attempts=s.burst_attempts,
            initial_s=s.retry_initial_s,
            max_s=s.retry_max_s,
            on_attempt=lambda _r: None,
            retriable=lambda r: r.kind is not Kind.OK,
        )
        if reply.kind is Kind.OK:
            self.events.put_nowait(m.CompensationDone(idx))
        else:
            self.events.put_nowait(m.CompensationDeferred(idx, reply.reason))


class SagaDriver:
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

    async def drive(self, claim: Claim, fresh: bool) -> m.State | None:
        run = _SagaRun(self, claim)
        first: m.Event = m.Start() if fresh else m.Resume(past_deadline=run.past_deadline)
        try:
            return await run.run(state_of(claim.record), first)
        except OwnershipLost as e:
            log.warning("stopping: %s", e, extra=run.extra)
            return None
