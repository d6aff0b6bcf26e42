"""The saga state machine, as pure functions: (state, event) -> (state, commands).

Forward: a step's action is sent once every step it depends on has succeeded (sequential
sagas depend on the previous step; parallel ones give a DAG). A refused action, one that
exhausted its retries, or the deadline ends the forward part: the decision to compensate is
logged, and every step that was (or may have been) attempted is compensated, a step only after
every step that depends on it is settled: reverse dependency order, which for a sequential saga
is the reverse of completion order. The saga ends aborted only when each compensation succeeded.

After a crash, what a previous driver sent is not known exactly: steps the log shows neither
succeeded nor settled become MAYBE (possibly attempted). Going forward, they are sent again (the
participant's barrier answers a duplicate as the first); compensating, they are compensated too
(a compensation of an action that never ran is a null compensation: no business effect, and it
refuses the late action).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class Status(StrEnum):
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMMITTED = "committed"
    ABORTED = "aborted"


class Step(StrEnum):
    PENDING = "pending"  # never sent: no compensation needed
    MAYBE = "maybe"  # a previous driver may have sent it
    RUNNING = "running"  # action in flight
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # refused (409) or out of attempts: compensated all the same
    COMPENSATING = "compensating"  # compensation in flight
    COMPENSATED = "compensated"


TERMINAL = frozenset({Status.COMMITTED, Status.ABORTED})
# Steps whose effect may exist and must be compensated once the saga compensates.
NEEDS_COMPENSATION = frozenset({Step.MAYBE, Step.RUNNING, Step.SUCCEEDED, Step.FAILED})


@dataclass(frozen=True)
class State:
    status: Status
    steps: tuple[Step, ...]
    deps: tuple[frozenset[int], ...]
    reason: str | None = None
    deferred: frozenset[int] = frozenset()

    @staticmethod
    def new(deps: tuple[frozenset[int], ...]) -> State:
        return State(Status.RUNNING, (Step.PENDING,) * len(deps), deps)


def sequential(n: int) -> tuple[frozenset[int], ...]:
    return tuple(frozenset({i - 1}) if i else frozenset() for i in range(n))


# Events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Logged; nothing sent yet."""


@dataclass(frozen=True)
class Resume:
    """Taken over from the log (restart, takeover, reschedule)."""

    past_deadline: bool = False


@dataclass(frozen=True)
class ActionDone:
    idx: int


@dataclass(frozen=True)
class ActionFailed:
    """Refused (409) or out of attempts."""

    idx: int
    reason: str


@dataclass(frozen=True)
class TimedOut:
    pass


@dataclass(frozen=True)
class CompensationDone:
    idx: int


@dataclass(frozen=True)
class CompensationDeferred:
    """A compensation burst gave up for now; it is owed again later."""

    idx: int
    error: str


Event = (
    Start | Resume | ActionDone | ActionFailed | TimedOut | CompensationDone | CompensationDeferred
)

# Commands ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendAction:
    idx: int


@dataclass(frozen=True)
class SendCompensation:
    idx: int


@dataclass(frozen=True)
class Progress:
    """Record how a step settled (redoable: may be written asynchronously, DESIGN rule 4):
    SUCCEEDED or FAILED (its action), COMPENSATED, or COMPENSATING (a deferred compensation)."""

    idx: int
    status: Step


@dataclass(frozen=True)
class Decide:
    """Durably log the decision to compensate, with every step's status."""

    reason: str


@dataclass(frozen=True)
class Finish:
    status: Status


@dataclass(frozen=True)
class Reschedule:
    pass


Command = SendAction | SendCompensation | Progress | Decide | Finish | Reschedule


def step(state: State, event: Event) -> tuple[State, list[Command]]:
    """Advance the saga by one event. Replies that no longer matter are ignored."""
    if state.status in TERMINAL:
        return state, []
    match event:
        case Start():
            return _advance(state)
        case Resume(past_deadline):
            # What a previous driver sent is not known: anything not settled may have been.
            steps = tuple(
                Step.MAYBE if s in (Step.PENDING, Step.RUNNING, Step.COMPENSATING) else s
                for s in state.steps
            )
            state = replace(state, steps=steps, deferred=frozenset())
            failed = [i for i, s in enumerate(steps) if s is Step.FAILED]
            if state.status is Status.RUNNING and failed:
                # The previous driver logged the failure but died before the decision: nothing
                # else would ever end the forward part before the deadline.
                return _compensate(
                    state, f"branch {failed[0]} failed before the compensation decision was logged"
                )
            if state.status is Status.RUNNING and past_deadline:
                return _compensate(state, "timed out before every step succeeded")
            return _advance(state)
        case ActionDone(idx):
            if state.steps[idx] is not Step.RUNNING:
                return state, []
            return _advance(_set(state, idx, Step.SUCCEEDED), idx)
        case ActionFailed(idx, reason):
            if state.steps[idx] is not Step.RUNNING:
                return state, []
            state = _set(state, idx, Step.FAILED)
            if state.status is Status.RUNNING:
                decided, commands = _compensate(state, reason)
                return decided, [Progress(idx, Step.FAILED), *commands]
            return _advance(state, idx)
        case TimedOut():
            if state.status is not Status.RUNNING:
                return state, []
            return _compensate(state, "timed out before every step succeeded")
        case CompensationDone(idx):
            if state.steps[idx] is not Step.COMPENSATING or idx in state.deferred:
                return state, []
            return _advance(_set(state, idx, Step.COMPENSATED), idx)
        case CompensationDeferred(idx, _error):
            if state.steps[idx] is not Step.COMPENSATING or idx in state.deferred:
                return state, []
            # Stays `compensating` (visible with its attempts and last error), owed later.
            return _advance(replace(state, deferred=state.deferred | {idx}), idx)
    raise AssertionError(f"unknown event {event!r}")  # pragma: no cover


def dependents(state: State) -> tuple[frozenset[int], ...]:
    return tuple(
        frozenset(j for j, deps in enumerate(state.deps) if i in deps)
        for i in range(len(state.deps))
    )


def _compensate(state: State, reason: str) -> tuple[State, list[Command]]:
    state = replace(state, status=Status.COMPENSATING, reason=reason)
    state, commands = _advance(state)
    # The decision (with every step's status) is logged before any compensation is sent.
    return state, [Decide(reason), *commands]


def _advance(state: State, progressed: int | None = None) -> tuple[State, list[Command]]:
    """Send what may be sent now; finish or reschedule when nothing is in flight."""
    # Every settled step gets its own progress record: the timeline shows each one.
    head: list[Command] = (
        [Progress(progressed, state.steps[progressed])] if progressed is not None else []
    )
    sends: list[Command] = []
    steps = list(state.steps)
    if state.status is Status.RUNNING:
        if all(s is Step.SUCCEEDED for s in steps):
            final = replace(state, status=Status.COMMITTED)
            return final, [*head, Finish(Status.COMMITTED)]
        for i, s in enumerate(steps):
            if s in (Step.PENDING, Step.MAYBE) and all(
                steps[d] is Step.SUCCEEDED for d in state.deps[i]
            ):
                steps[i] = Step.RUNNING
                sends.append(SendAction(i))
    else:
        after = dependents(state)
        for i, s in enumerate(steps):
            if s in (Step.MAYBE, Step.SUCCEEDED, Step.FAILED) and all(
                steps[j] in (Step.PENDING, Step.COMPENSATED) for j in after[i]
            ):
                steps[i] = Step.COMPENSATING
                sends.append(SendCompensation(i))
    state = replace(state, steps=tuple(steps))
    inflight = any(
        s is Step.RUNNING or (s is Step.COMPENSATING and i not in state.deferred)
        for i, s in enumerate(steps)
    )
    if state.status is Status.COMPENSATING and not inflight:
        if state.deferred:
            return state, [*head, Reschedule()]
        if all(s in (Step.PENDING, Step.COMPENSATED) for s in steps):
            return replace(state, status=Status.ABORTED), [*head, Finish(Status.ABORTED)]
    return state, [*head, *sends]


def _set(state: State, idx: int, value: Step) -> State:
    return replace(state, steps=(*state.steps[:idx], value, *state.steps[idx + 1 :]))
