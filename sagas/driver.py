"""The saga driver: runs the pure machine of ``sagas.machine`` against the log and transport.

Decisions (compensate, finish) are synchronous, fenced log writes awaited before anything
after them (rules 2, 3, 5); a step's progress is a fenced write committed asynchronously
(rule 4): if lost, recovery redoes the step and the participant's barrier answers as before.
"""

from __future__ import annotations

import asyncio
import logging

from coordinator.drivebase import Deps, Run
from coordinator.errors import OwnershipLost
from coordinator.records import BranchProgress, Claim, TxnRecord
from coordinator.retry import is_retriable
from coordinator.transport import Kind
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
        steps=tuple(m.Step(b.status) for b in record.branches),
        deps=deps,
        reason=record.reason,
    )


class _SagaRun(Run[m.Event]):
    def __init__(self, deps: Deps, claim: Claim) -> None:
        super().__init__(deps, claim)
        self.policy = RetryPolicy.model_validate(claim.record.request.get("retry") or {})

    async def run(self, state: m.State, first: m.Event) -> m.State:
        crash = self.d.crash
        state, commands = m.step(state, first)
        try:
            while True:
                for command in commands:
                    match command:
                        case m.SendAction(idx):
                            self.spawn(self._action(idx))
                        case m.SendCompensation(idx):
                            self.spawn(self._compensation(idx))
                        case m.Progress(idx, status):
                            await self._record(idx, status)
                            if status is m.Step.FAILED and m.Decide in map(type, commands):
                                crash.hit("after_step_failed")  # logged, not yet decided
                        case m.Decide(reason):
                            # Rules 2 and 5: the decision to compensate is durable, fenced,
                            # before any compensation is sent.
                            await self.decide(str(m.Status.COMPENSATING), reason, state.steps)
                        case m.Finish(status):
                            await self.finish(str(status), state.reason, state.steps)
                            return state
                        case m.Reschedule():
                            await self.reschedule(state.steps)
                            return state
                event = await self.next_event(state.status is m.Status.RUNNING, m.TimedOut)
                if isinstance(event, m.ActionDone):
                    crash.hit("after_step")
                if (
                    isinstance(event, m.CompensationDone)
                    and sum(
                        s in m.NEEDS_COMPENSATION or s is m.Step.COMPENSATING for s in state.steps
                    )
                    > 1
                ):
                    crash.hit("mid_compensate")
                state, commands = m.step(state, event)
        finally:
            self.cancel_all()

    async def _record(self, idx: int, status: m.Step) -> None:
        failed = status in (m.Step.FAILED, m.Step.COMPENSATING)
        with self.d.metrics.log_write("progress"), self.log_span("progress"):
            await self.d.store.write_progress(
                self.gid,
                self.epoch,
                idx,
                BranchProgress(str(status), self.attempts[idx], self.errors[idx]),
                _EVENT_OF[status],
                {"error": self.errors[idx]} if failed and self.errors[idx] else None,
            )

    async def _action(self, idx: int) -> None:
        branch = self.record.branches[idx]
        # The saga's own retry policy; a plain loop, as building tenacity's machinery for every
        # step showed in the profile and most steps succeed at once.
        reply = await self.call(idx, branch.action, "action", branch.payload)
        retries = 0
        while is_retriable(reply) and retries + 1 < self.policy.max_attempts:
            retries += 1
            await asyncio.sleep(self.policy.wait_s(retries))
            reply = await self.call(idx, branch.action, "action", branch.payload)
        if reply.kind is Kind.OK:
            self.events.put_nowait(m.ActionDone(idx))
        elif reply.kind is Kind.REFUSED:
            self.events.put_nowait(m.ActionFailed(idx, f"{branch.participant}: {reply.reason}"))
        else:
            reason = f"{branch.participant}: out of attempts ({self.policy.max_attempts}): "
            self.events.put_nowait(m.ActionFailed(idx, reason + reply.reason))

    async def _compensation(self, idx: int) -> None:
        branch = self.record.branches[idx]
        reply = await self.owed(idx, branch.compensation or "", "compensate", branch.payload)
        if reply.kind is Kind.OK:
            self.events.put_nowait(m.CompensationDone(idx))
        else:
            self.events.put_nowait(m.CompensationDeferred(idx, reply.reason))


class SagaDriver:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def drive(self, claim: Claim, fresh: bool) -> m.State | None:
        run = _SagaRun(self.deps, claim)
        first: m.Event = m.Start() if fresh else m.Resume(past_deadline=run.past_deadline)
        try:
            return await run.run(state_of(claim.record), first)
        except OwnershipLost as e:
            self.deps.metrics.fenced.inc()
            log.warning("stopping: %s", e, extra=run.extra)
            return None
