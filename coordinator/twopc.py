"""The two-phase commit state machine, as pure functions: (state, event) -> (state, commands).

No I/O here. The driver executes the commands in order; a ``Decide`` or ``Finish`` command is a
durable log write and the driver completes it before it runs the commands after it, which is how
the commit point precedes every commit message (DESIGN.md rule 2).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class Status(StrEnum):
    PREPARING = "preparing"
    COMMITTING = "committing"
    COMMITTED = "committed"
    ABORTING = "aborting"
    ABORTED = "aborted"


class Branch(StrEnum):
    PENDING = "pending"
    PREPARED = "prepared"
    VOTED_NO = "voted_no"
    FAILED = "failed"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"


TERMINAL = frozenset({Status.COMMITTED, Status.ABORTED})


@dataclass(frozen=True)
class State:
    status: Status
    branches: tuple[Branch, ...]
    reason: str | None = None
    # Branches whose phase-two message is in flight or still owed in this drive.
    inflight: frozenset[int] = frozenset()
    # Branches whose phase-two burst gave up; they are retried after a durable reschedule.
    deferred: frozenset[int] = frozenset()

    @staticmethod
    def new(n_branches: int) -> State:
        return State(Status.PREPARING, (Branch.PENDING,) * n_branches)


# Events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """The transaction and its branches are logged; nothing was sent yet."""


@dataclass(frozen=True)
class Resume:
    """A driver took the transaction over from the log (restart, takeover or reschedule)."""


@dataclass(frozen=True)
class Voted:
    idx: int
    yes: bool
    reason: str | None = None


@dataclass(frozen=True)
class PrepareFailed:
    """A prepare still failed after its retries: treated as a no vote."""

    idx: int
    error: str


@dataclass(frozen=True)
class TimedOut:
    """The transaction's deadline passed before every branch voted."""


@dataclass(frozen=True)
class Acked:
    """A branch acknowledged its commit or rollback."""

    idx: int


@dataclass(frozen=True)
class Deferred:
    """A commit or rollback burst gave up for now; it is owed again later."""

    idx: int
    error: str


Event = Start | Resume | Voted | PrepareFailed | TimedOut | Acked | Deferred

# Commands ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendPrepare:
    idx: int


@dataclass(frozen=True)
class Decide:
    """Durably log the decision (COMMITTING is the commit point) and the branch votes."""

    status: Status
    reason: str | None


@dataclass(frozen=True)
class SendCommit:
    idx: int


@dataclass(frozen=True)
class SendRollback:
    idx: int


@dataclass(frozen=True)
class Finish:
    """Durably log the terminal status; only then may it be reported."""

    status: Status


@dataclass(frozen=True)
class Reschedule:
    """Some phase-two messages are still owed: log progress and retry later, durably."""


Command = SendPrepare | Decide | SendCommit | SendRollback | Finish | Reschedule

_DONE_IN_PHASE_TWO = {
    Status.COMMITTING: Branch.COMMITTED,
    Status.ABORTING: Branch.ROLLED_BACK,
}


def step(state: State, event: Event) -> tuple[State, list[Command]]:
    """Advance the protocol by one event. Events that no longer matter are ignored."""
    if state.status in TERMINAL:
        return state, []
    match event:
        case Start():
            if state.status is Status.PREPARING:
                return state, [SendPrepare(i) for i in range(len(state.branches))]
            return _phase_two(state)
        case Resume():
            if state.status is Status.PREPARING:
                # Presumed abort: no commit record, so the outcome is abort.
                return _abort(state, "coordinator recovered the transaction before its decision")
            return _phase_two(state)
        case Voted(idx, yes, reason):
            if state.status is not Status.PREPARING or state.branches[idx] is not Branch.PENDING:
                return state, []
            if not yes:
                branches = _set(state.branches, idx, Branch.VOTED_NO)
                return _abort(replace(state, branches=branches), reason or f"branch {idx} voted no")
            branches = _set(state.branches, idx, Branch.PREPARED)
            state = replace(state, branches=branches)
            if all(b is Branch.PREPARED for b in branches):
                state = replace(state, status=Status.COMMITTING)
                decided, sends = _phase_two(state)
                return decided, [Decide(Status.COMMITTING, None), *sends]
            return state, []
        case PrepareFailed(idx, error):
            if state.status is not Status.PREPARING or state.branches[idx] is not Branch.PENDING:
                return state, []
            branches = _set(state.branches, idx, Branch.FAILED)
            return _abort(replace(state, branches=branches), f"branch {idx} failed: {error}")
        case TimedOut():
            if state.status is not Status.PREPARING:
                return state, []
            return _abort(state, "timed out before every branch was prepared")
        case Acked(idx):
            done = _DONE_IN_PHASE_TWO.get(state.status)
            if done is None or idx not in state.inflight:
                return state, []
            state = replace(
                state,
                branches=_set(state.branches, idx, done),
                inflight=state.inflight - {idx},
            )
            return _after_phase_two_reply(state)
        case Deferred(idx, _error):
            if state.status not in _DONE_IN_PHASE_TWO or idx not in state.inflight:
                return state, []
            state = replace(state, inflight=state.inflight - {idx}, deferred=state.deferred | {idx})
            return _after_phase_two_reply(state)
    raise AssertionError(f"unknown event {event!r}")  # pragma: no cover


def _abort(state: State, reason: str) -> tuple[State, list[Command]]:
    state = replace(state, status=Status.ABORTING, reason=reason)
    aborted, sends = _phase_two(state)
    return aborted, [Decide(Status.ABORTING, reason), *sends]


def _phase_two(state: State) -> tuple[State, list[Command]]:
    """Send the decided outcome to every branch that has not acknowledged it yet.

    On abort every branch gets a rollback, prepared or not: a branch whose prepare is still in
    flight gets a rollback marker, so its late prepare is refused.
    """
    done = _DONE_IN_PHASE_TWO[state.status]
    owed = frozenset(i for i, b in enumerate(state.branches) if b is not done)
    state = replace(state, inflight=owed, deferred=frozenset())
    if not owed:
        final = _final(state.status)
        return replace(state, status=final), [Finish(final)]
    send = SendCommit if state.status is Status.COMMITTING else SendRollback
    return state, [send(i) for i in sorted(owed)]


def _after_phase_two_reply(state: State) -> tuple[State, list[Command]]:
    if state.inflight:
        return state, []
    if state.deferred:
        return state, [Reschedule()]
    final = _final(state.status)
    return replace(state, status=final), [Finish(final)]


def _final(status: Status) -> Status:
    return Status.COMMITTED if status is Status.COMMITTING else Status.ABORTED


def _set(branches: tuple[Branch, ...], idx: int, value: Branch) -> tuple[Branch, ...]:
    return (*branches[:idx], value, *branches[idx + 1 :])
