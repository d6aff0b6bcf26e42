"""The 2PC driver: runs the pure state machine of ``twopc`` against the log and the transport.
It drives TCC transactions too (mode ``tcc``): the same machine one level up, where the prepare
is the branch's try, the commit its confirm and the rollback its cancel, each POSTed to the
branch's own path with ``Txn-Op`` try, confirm or cancel and the branch's payload (2PC's phase
two goes to the SDK's fixed ``/txn/2pc/commit`` and ``/txn/2pc/rollback``, without one).

Log writes happen in the order the state machine lists them, each awaited before anything after
it: the decision is durable before any commit is sent (rule 2), the final status is durable
before anyone is told (rule 3), and every write is fenced on the epoch this driver holds
(rule 5): when it loses the transaction, it stops.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from coordinator import twopc
from coordinator.drivebase import Deps, Run
from coordinator.errors import OwnershipLost
from coordinator.records import Claim, TxnRecord
from coordinator.retry import call_in_burst
from coordinator.transport import Kind
from participants.sdk import wire

log = logging.getLogger(__name__)

PREPARE, COMMIT, ROLLBACK = "prepare", "commit", "rollback"
# TCC's names for the same three calls.
TCC_OPS = {PREPARE: "try", COMMIT: "confirm", ROLLBACK: "cancel"}

NO_VOTE_IN_TIME = "no vote before the transaction's deadline (timeout_s)"


def state_of(record: TxnRecord) -> twopc.State:
    return twopc.State(
        status=twopc.Status(record.status),
        branches=tuple(twopc.Branch(b.status) for b in record.branches),
        reason=record.reason,
    )


class _TwoPCRun(Run[twopc.Event]):
    # A 2PC outcome follows what the log already holds: `committing` (the durable decision)
    # is finished by committing every branch again, `preparing` or `aborting` by rolling every
    # branch back, each answered as the first time. (A saga's is not: past its deadline, a
    # `running` saga is compensated.)
    redoable_outcome = True

    def __init__(self, deps: Deps, claim: Claim) -> None:
        super().__init__(deps, claim)
        self.prepares: set[asyncio.Task[None]] = set()
        self.prepare_index: dict[asyncio.Task[None], int] = {}
        self.tcc = claim.record.mode == "tcc"

    def op(self, name: str) -> str:
        """The ``Txn-Op`` of ``name`` (prepare, commit, rollback) in this transaction's mode."""
        return TCC_OPS[name] if self.tcc else name

    def target(self, idx: int, name: str) -> tuple[str, dict[str, Any] | None]:
        """Where the call ``name`` of branch ``idx`` goes, and its body: a TCC branch's own
        paths with its payload; 2PC's prepare at the action, its phase two at the SDK's fixed
        endpoints with none."""
        branch = self.record.branches[idx]
        if name == PREPARE:
            return branch.action, branch.payload
        if self.tcc:
            path = branch.confirm if name == COMMIT else branch.compensation
            return path or "", branch.payload
        return (wire.COMMIT_PATH if name == COMMIT else wire.ROLLBACK_PATH), None

    async def run(self, state: twopc.State, first: twopc.Event) -> twopc.State:
        crash = self.d.crash
        resumed = isinstance(first, twopc.Resume)
        state, commands = twopc.step(state, first)
        try:
            while True:
                for command in commands:
                    match command:
                        case twopc.SendPrepare(idx):
                            task = self.spawn(self._prepare(idx))
                            self.prepares.add(task)
                            self.prepare_index[task] = idx
                            task.add_done_callback(self.prepares.discard)
                        case twopc.Decide(status, reason):
                            for task in list(self.prepares):
                                task.cancel()  # late votes change nothing now
                            if not resumed:
                                crash.hit("after_prepare")
                            # Rule 2: the commit point, durable before any SendCommit below.
                            await self.decide(status, reason, state.branches)
                            crash.hit("after_decision")
                        case twopc.SendCommit(idx):
                            self.spawn(self._phase_two(idx, COMMIT))
                        case twopc.SendRollback(idx):
                            # Every branch, its prepare (try) sent or not: the rollback
                            # marker (a null cancel) refuses a prepare (try) arriving late.
                            self.spawn(self._phase_two(idx, ROLLBACK))
                        case twopc.Finish(status):
                            crash.hit("before_final")
                            await self.finish(status, state.reason, state.branches)
                            return state
                        case twopc.Reschedule():
                            await self.reschedule(state.branches)
                            return state
                preparing = state.status is twopc.Status.PREPARING
                event = await self.next_event(preparing, self._timed_out)
                if isinstance(event, twopc.Acked) and len(state.inflight) > 1:
                    if state.status is twopc.Status.COMMITTING:
                        crash.hit("mid_commit")
                    elif state.status is twopc.Status.ABORTING:
                        crash.hit("mid_rollback")
                state, commands = twopc.step(state, event)
        finally:
            self.cancel_all()

    def _timed_out(self) -> twopc.Event:
        for task in self.prepares:  # the branches still without a vote
            idx = self.prepare_index[task]
            if self.errors[idx] is None:
                self.errors[idx] = NO_VOTE_IN_TIME
        return twopc.TimedOut()

    async def _prepare(self, idx: int) -> None:
        s = self.d.settings
        branch = self.record.branches[idx]
        path, payload = self.target(idx, PREPARE)
        op = self.op(PREPARE)
        reply = await call_in_burst(
            lambda: self.call(idx, path, op, payload),
            attempts=s.burst_attempts,
            initial_s=s.retry_initial_s,
            max_s=s.retry_max_s,
            budget_s=self.deadline - asyncio.get_running_loop().time(),
        )
        why = f"{branch.participant}: {reply.reason}"
        if reply.kind is Kind.OK:
            self.events.put_nowait(twopc.Voted(idx, True))
        elif reply.kind is Kind.REFUSED:
            self.events.put_nowait(twopc.Voted(idx, False, why))
        else:
            self.events.put_nowait(twopc.PrepareFailed(idx, why))

    async def _phase_two(self, idx: int, name: str) -> None:
        path, payload = self.target(idx, name)
        reply = await self.owed(idx, path, self.op(name), payload)
        if reply.kind is Kind.OK:
            self.events.put_nowait(twopc.Acked(idx))
        else:
            # Commit and rollback never fail for good: they are owed until acknowledged.
            self.events.put_nowait(twopc.Deferred(idx, reply.reason))


class TwoPCDriver:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def drive(self, claim: Claim, fresh: bool) -> twopc.State | None:
        """Drive a claimed transaction as far as it goes now. ``fresh``: just logged by this
        instance, nothing sent yet. Returns the state reached, or None if ownership was lost."""
        run = _TwoPCRun(self.deps, claim)
        first: twopc.Event = twopc.Start() if fresh else twopc.Resume()
        try:
            return await run.run(state_of(claim.record), first)
        except OwnershipLost as e:
            self.deps.metrics.fenced.inc()
            log.warning("stopping: %s", e, extra=run.extra)
            return None
