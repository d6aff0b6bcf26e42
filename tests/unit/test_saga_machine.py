"""The pure saga state machine under Hypothesis: arbitrary interleavings of action results,
compensation failures, timeouts, coordinator crashes and late deliveries of messages a crashed
driver had sent. Participants are modelled with the SDK's barrier (duplicates answered as the
first, null compensation, late actions refused)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sagas import machine as m
from sagas.machine import Status, Step


@dataclass
class Barrier:
    """One participant branch: what has really happened there."""

    applied: bool = False  # the action's business effect exists
    refused: bool = False  # the action was refused (no effect)
    null_compensated: bool = False
    compensated: bool = False
    compensations_run: int = 0


@dataclass
class World:
    deps: tuple[frozenset[int], ...]
    verdicts: list[str]  # per step: "ok" or "refuse"
    state: m.State
    branches: list[Barrier]
    logged: m.State
    durable: m.State  # what survives a crash of the log's database (Progress is asynchronous)
    network: list[tuple[int, str, int]] = field(default_factory=list)  # (generation, op, idx)
    generation: int = 0
    finished: Status | None = None
    decided: bool = False
    # Armed: the driver dies right after logging a step's failure, before the decision.
    crash_before_decide: bool = False

    def apply(self, event: m.Event) -> None:
        self.state, commands = m.step(self.state, event)
        for command in commands:
            match command:
                case m.SendAction(idx):
                    self.network.append((self.generation, "action", idx))
                case m.SendCompensation(idx):
                    assert self.decided, "compensation sent before the decision was logged"
                    self.network.append((self.generation, "compensate", idx))
                case m.Decide():
                    assert not self.decided or self.logged.status is Status.COMPENSATING
                    self.decided = True
                    self.logged = self.durable = self.state
                case m.Progress(idx, status):
                    # Only that step's row is written; the status changes with decisions only.
                    steps = (*self.logged.steps[:idx], status, *self.logged.steps[idx + 1 :])
                    self.logged = replace(self.logged, steps=steps)
                    if (
                        status is Step.FAILED
                        and self.crash_before_decide
                        and any(isinstance(c, m.Decide) for c in commands)
                    ):
                        self.crash_before_decide = False
                        self.crash()
                        return
                case m.Reschedule():
                    self.logged = self.durable = self.state
                    self.crash()
                    return
                case m.Finish(status):
                    self.logged = self.durable = self.state
                    self.finished = status

    def crash(self) -> None:
        """The driver dies. Messages already sent stay on the network (they may still arrive,
        late); their replies go nowhere. A new driver resumes from the log."""
        self.generation += 1
        self.state = m.State(self.logged.status, self.logged.steps, self.deps, self.logged.reason)
        if self.state.status not in m.TERMINAL:
            self.apply(m.Resume(past_deadline=False))

    def deliver(self, i: int, compensation_ok: bool) -> None:
        generation, op, idx = self.network.pop(i)
        b = self.branches[idx]
        if op == "action":
            if b.null_compensated or b.refused:
                reply: m.Event = m.ActionFailed(idx, "refused")
            elif b.applied:
                reply = m.ActionDone(idx)  # duplicate: answered as the first, no rerun
            elif self.verdicts[idx] == "ok":
                b.applied = True
                reply = m.ActionDone(idx)
            else:
                b.refused = True
                reply = m.ActionFailed(idx, "refused")
        else:
            if not compensation_ok:
                reply = m.CompensationDeferred(idx, "503")
            else:
                if b.applied and not b.compensated:
                    # Reverse dependency order: every dependent's effect is undone already.
                    for j, deps in enumerate(self.deps):
                        if idx in deps and self.branches[j].applied:
                            assert self.branches[j].compensated, f"{idx} undone before {j}"
                    b.compensated = True
                    b.compensations_run += 1
                elif not b.applied and not b.refused:
                    b.null_compensated = True
                reply = m.CompensationDone(idx)
        if generation == self.generation:
            self.apply(reply)


@st.composite
def dags(draw: st.DrawFn) -> tuple[frozenset[int], ...]:
    n = draw(st.integers(1, 5))
    if draw(st.booleans()):
        return m.sequential(n)
    return tuple(
        frozenset(draw(st.sets(st.integers(0, i - 1), max_size=i)) if i else ()) for i in range(n)
    )


@settings(max_examples=500, deadline=None)
@given(deps=dags(), data=st.data())
def test_saga_compensates_exactly_what_ran_in_order_and_reports_what_is_logged(
    deps: tuple[frozenset[int], ...], data: st.DataObject
) -> None:
    verdicts = data.draw(
        st.lists(st.sampled_from(["ok", "ok", "refuse"]), min_size=len(deps), max_size=len(deps))
    )
    start = m.State.new(deps)
    world = World(deps, verdicts, start, [Barrier() for _ in deps], start, start)
    world.apply(m.Start())
    for _ in range(data.draw(st.integers(0, 60), label="chaos steps")):
        if world.finished:
            break
        action = data.draw(
            st.sampled_from(
                ["deliver", "deliver", "fail", "timeout", "crash", "db crash", "crash on failure"]
            )
        )
        if action == "crash on failure":
            world.crash_before_decide = True
        elif action == "db crash":  # asynchronous progress writes since the last sync one are lost
            world.logged = world.durable
            world.crash()
        elif action == "timeout":
            world.apply(m.TimedOut())
        elif action == "crash":
            world.crash()
        elif world.network:
            i = data.draw(st.integers(0, len(world.network) - 1))
            world.deliver(i, compensation_ok=action == "deliver")
    for _ in range(2000):  # then everything answers, including late messages
        if world.finished and not world.network:
            break
        if world.network:
            world.deliver(0, compensation_ok=True)
        elif not world.finished:
            world.crash()  # a rescheduled saga is resumed by recovery
    assert world.finished in (Status.COMMITTED, Status.ABORTED)
    assert world.logged.status is world.finished  # the outcome reported is the one logged
    for b in world.branches:
        assert b.compensations_run <= 1, "a compensation ran twice"
    if world.finished is Status.COMMITTED:
        assert all(b.applied and not b.compensated for b in world.branches)
        assert all(v == "ok" for v in verdicts)
    else:
        # Nothing left half done: every effect that exists is undone, late actions included.
        for b in world.branches:
            assert b.applied == b.compensated, b
        assert all(s in (Step.PENDING, Step.COMPENSATED) for s in world.logged.steps)


def test_sequential_saga_compensates_in_reverse() -> None:
    state, commands = m.step(m.State.new(m.sequential(3)), m.Start())
    assert commands == [m.SendAction(0)]
    state, commands = m.step(state, m.ActionDone(0))
    assert commands == [m.Progress(0, Step.SUCCEEDED), m.SendAction(1)]
    state, commands = m.step(state, m.ActionDone(1))
    state, commands = m.step(state, m.ActionFailed(2, "blocked destination"))
    assert commands == [
        m.Progress(2, Step.FAILED),
        m.Decide("blocked destination"),
        m.SendCompensation(2),
    ]
    state, commands = m.step(state, m.CompensationDone(2))
    assert commands == [m.Progress(2, Step.COMPENSATED), m.SendCompensation(1)]
    state, commands = m.step(state, m.CompensationDone(1))
    assert commands == [m.Progress(1, Step.COMPENSATED), m.SendCompensation(0)]
    state, commands = m.step(state, m.CompensationDone(0))
    assert commands == [m.Progress(0, Step.COMPENSATED), m.Finish(Status.ABORTED)]
    assert state.reason == "blocked destination"


def test_parallel_steps_run_concurrently_and_a_join_waits_for_both() -> None:
    deps = (frozenset(), frozenset(), frozenset({0, 1}))
    state, commands = m.step(m.State.new(deps), m.Start())
    assert commands == [m.SendAction(0), m.SendAction(1)]
    state, commands = m.step(state, m.ActionDone(1))
    assert commands == [m.Progress(1, Step.SUCCEEDED)]
    state, commands = m.step(state, m.ActionDone(0))
    assert commands == [m.Progress(0, Step.SUCCEEDED), m.SendAction(2)]
    state, commands = m.step(state, m.ActionDone(2))
    assert commands == [m.Progress(2, Step.SUCCEEDED), m.Finish(Status.COMMITTED)]


def test_unattempted_steps_are_not_compensated() -> None:
    state, _ = m.step(m.State.new(m.sequential(3)), m.Start())
    state, commands = m.step(state, m.ActionFailed(0, "no stock"))
    assert commands == [m.Progress(0, Step.FAILED), m.Decide("no stock"), m.SendCompensation(0)]
    state, commands = m.step(state, m.CompensationDone(0))
    assert commands == [m.Progress(0, Step.COMPENSATED), m.Finish(Status.ABORTED)]
    assert state.steps == (Step.COMPENSATED, Step.PENDING, Step.PENDING)


def test_failing_compensation_stays_compensating_and_reschedules() -> None:
    state, _ = m.step(m.State.new(m.sequential(2)), m.Start())
    state, _ = m.step(state, m.ActionDone(0))
    state, _ = m.step(state, m.ActionFailed(1, "no"))
    state, commands = m.step(state, m.CompensationDeferred(1, "503"))
    assert commands == [m.Progress(1, Step.COMPENSATING), m.Reschedule()]
    assert state.status is Status.COMPENSATING and state.steps[1] is Step.COMPENSATING


def test_resume_past_deadline_compensates_whatever_may_have_run() -> None:
    logged = m.State(Status.RUNNING, (Step.SUCCEEDED, Step.PENDING), m.sequential(2))
    state, commands = m.step(logged, m.Resume(past_deadline=True))
    assert state.status is Status.COMPENSATING
    # Step 1 may have been sent by the crashed driver: it is compensated (first), then 0.
    assert commands == [m.Decide("timed out before every step succeeded"), m.SendCompensation(1)]


def test_resume_after_a_logged_failure_compensates_at_once() -> None:
    """The driver logged step 1's failure and died before the decision: the next one decides
    at once (not at the deadline, which may be a day away)."""
    logged = m.State(Status.RUNNING, (Step.SUCCEEDED, Step.FAILED, Step.PENDING), m.sequential(3))
    state, commands = m.step(logged, m.Resume(past_deadline=False))
    assert state.status is Status.COMPENSATING
    reason = "branch 1 failed before the compensation decision was logged"
    assert state.reason == reason
    # Step 2 depends on 1 so was never sent, but the log cannot tell: compensated first, then 1.
    assert commands == [m.Decide(reason), m.SendCompensation(2)]
    state, commands = m.step(state, m.CompensationDone(2))
    assert commands == [m.Progress(2, Step.COMPENSATED), m.SendCompensation(1)]


def test_resume_after_a_logged_failure_of_a_parallel_branch_compensates_every_branch() -> None:
    deps = (frozenset(), frozenset(), frozenset({0, 1}))
    logged = m.State(Status.RUNNING, (Step.PENDING, Step.FAILED, Step.PENDING), deps)
    state, commands = m.step(logged, m.Resume(past_deadline=False))
    assert state.status is Status.COMPENSATING
    assert commands == [
        m.Decide("branch 1 failed before the compensation decision was logged"),
        m.SendCompensation(2),
    ]
    assert state.steps == (Step.MAYBE, Step.FAILED, Step.COMPENSATING)


# Each guard and each recorded fact, pinned down one by one (found by ./run mutation: these are
# what the randomized test above cannot see, because its world never delivers a stale reply).

TIMED_OUT = "timed out before every step succeeded"


def test_new_sagas_start_running_every_step_pending() -> None:
    assert m.sequential(3) == (frozenset(), frozenset({0}), frozenset({1}))
    state = m.State.new(m.sequential(2))
    assert state.status is Status.RUNNING and state.steps == (Step.PENDING, Step.PENDING)
    assert state.deps == m.sequential(2) and state.reason is None
    assert state.deferred == frozenset()


def test_timeout_compensates_once_what_is_in_flight_settles() -> None:
    state, _ = m.step(m.State.new(m.sequential(2)), m.Start())
    state, _ = m.step(state, m.ActionDone(0))
    state, commands = m.step(state, m.TimedOut())
    # Step 1 is in flight: step 0 (which it depends on) waits for it to settle.
    assert commands == [m.Decide(TIMED_OUT)]
    assert state.status is Status.COMPENSATING and state.reason == TIMED_OUT
    same, commands = m.step(state, m.TimedOut())
    assert commands == [] and same == state
    state, commands = m.step(state, m.ActionDone(1))
    assert commands == [m.Progress(1, Step.SUCCEEDED), m.SendCompensation(1)]
    state, commands = m.step(state, m.CompensationDone(1))
    assert commands == [m.Progress(1, Step.COMPENSATED), m.SendCompensation(0)]
    state, commands = m.step(state, m.CompensationDone(0))
    assert commands == [m.Progress(0, Step.COMPENSATED), m.Finish(Status.ABORTED)]
    assert state.status is Status.ABORTED and state.reason == TIMED_OUT


def test_an_action_failing_while_compensating_is_recorded_and_compensated() -> None:
    state, _ = m.step(m.State.new((frozenset(), frozenset())), m.Start())
    decided, commands = m.step(state, m.ActionFailed(0, "no"))
    assert commands == [m.Progress(0, Step.FAILED), m.Decide("no"), m.SendCompensation(0)]
    # Step 1 was in flight: its failure does not decide again, its result is recorded.
    state, commands = m.step(decided, m.ActionFailed(1, "also no"))
    assert commands == [m.Progress(1, Step.FAILED), m.SendCompensation(1)]
    assert state.reason == "no" and state.steps == (Step.COMPENSATING, Step.COMPENSATING)
    state, commands = m.step(decided, m.ActionDone(1))
    assert commands == [m.Progress(1, Step.SUCCEEDED), m.SendCompensation(1)]


def test_a_deferred_compensation_waits_for_the_others_in_flight_before_rescheduling() -> None:
    state, _ = m.step(m.State.new((frozenset(), frozenset(), frozenset())), m.Start())
    state, _ = m.step(state, m.ActionDone(0))
    state, commands = m.step(state, m.ActionFailed(1, "no"))
    assert commands == [
        m.Progress(1, Step.FAILED),
        m.Decide("no"),
        m.SendCompensation(0),
        m.SendCompensation(1),
    ]
    state, commands = m.step(state, m.CompensationDeferred(0, "503"))
    assert commands == [m.Progress(0, Step.COMPENSATING)]  # 1 and 2 are still in flight
    state, commands = m.step(state, m.CompensationDone(1))
    assert commands == [m.Progress(1, Step.COMPENSATED)]  # 2 still runs
    state, commands = m.step(state, m.ActionDone(2))
    assert commands == [m.Progress(2, Step.SUCCEEDED), m.SendCompensation(2)]
    state, commands = m.step(state, m.CompensationDone(2))
    assert commands == [m.Progress(2, Step.COMPENSATED), m.Reschedule()]
    assert state.status is Status.COMPENSATING and state.deferred == {0}


def test_replies_for_a_deferred_compensation_are_ignored() -> None:
    state, _ = m.step(m.State.new(m.sequential(2)), m.Start())
    state, _ = m.step(state, m.ActionDone(0))
    state, _ = m.step(state, m.ActionFailed(1, "no"))
    state, _ = m.step(state, m.CompensationDeferred(1, "503"))
    for stale in (m.CompensationDone(1), m.CompensationDeferred(1, "503")):
        same, commands = m.step(state, stale)
        assert commands == [] and same == state, stale
    # Nor does a reply for a step whose compensation was never sent count.
    for stray in (m.CompensationDone(0), m.CompensationDeferred(0, "503"), m.ActionDone(0)):
        same, commands = m.step(state, stray)
        assert commands == [] and same == state, stray


def test_resume_owes_again_what_a_previous_drive_deferred() -> None:
    state = m.State(
        Status.COMPENSATING,
        (Step.COMPENSATED, Step.COMPENSATING),
        (frozenset(), frozenset()),
        reason="no",
        deferred=frozenset({1}),
    )
    state, commands = m.step(state, m.Resume())
    assert commands == [m.SendCompensation(1)]
    assert state.deferred == frozenset() and state.steps == (Step.COMPENSATED, Step.COMPENSATING)
    state, commands = m.step(state, m.CompensationDone(1))
    assert commands == [m.Progress(1, Step.COMPENSATED), m.Finish(Status.ABORTED)]


def test_resume_while_compensating_keeps_the_decision() -> None:
    logged = m.State(
        Status.COMPENSATING, (Step.SUCCEEDED, Step.FAILED), m.sequential(2), reason="no"
    )
    for past_deadline in (False, True):
        state, commands = m.step(logged, m.Resume(past_deadline=past_deadline))
        assert commands == [m.SendCompensation(1)], past_deadline
        assert state.status is Status.COMPENSATING and state.reason == "no"


def test_resume_while_running_sends_again_what_may_have_been_sent() -> None:
    logged = m.State(Status.RUNNING, (Step.SUCCEEDED, Step.RUNNING, Step.PENDING), m.sequential(3))
    state, commands = m.step(logged, m.Resume())
    assert commands == [m.SendAction(1)]
    # Step 2 waits for 1, but may have been sent by a previous driver if it looks pending.
    assert state.steps == (Step.SUCCEEDED, Step.RUNNING, Step.MAYBE)
    state, commands = m.step(state, m.ActionDone(1))
    assert commands == [m.Progress(1, Step.SUCCEEDED), m.SendAction(2)]


def test_resume_of_a_compensated_saga_finishes_it() -> None:
    logged = m.State(Status.COMPENSATING, (Step.COMPENSATED, Step.COMPENSATED), m.sequential(2))
    state, commands = m.step(logged, m.Resume())
    assert commands == [m.Finish(Status.ABORTED)] and state.status is Status.ABORTED


def test_an_ended_saga_ignores_everything() -> None:
    for status in m.TERMINAL:
        done = m.State(status, (Step.RUNNING, Step.COMPENSATING), m.sequential(2))
        for event in (
            m.Start(),
            m.Resume(past_deadline=True),
            m.ActionDone(0),
            m.ActionFailed(0, "x"),
            m.TimedOut(),
            m.CompensationDone(1),
            m.CompensationDeferred(1, "x"),
        ):
            assert m.step(done, event) == (done, []), (status, event)


def test_a_failed_action_of_a_step_not_running_is_ignored() -> None:
    state, _ = m.step(m.State.new(m.sequential(2)), m.Start())
    for stray in (m.ActionFailed(1, "never sent"), m.ActionDone(1)):
        same, commands = m.step(state, stray)
        assert commands == [] and same == state, stray


def test_dependents_are_the_reverse_of_the_dependencies() -> None:
    deps: tuple[frozenset[int], ...] = (frozenset(), frozenset({0}), frozenset({0, 1}))
    state = m.State.new(deps)
    assert m.dependents(state) == (frozenset({1, 2}), frozenset({2}), frozenset())


def test_an_unknown_event_fails_loudly() -> None:
    with pytest.raises(AssertionError, match="unknown event 'stray'"):
        m.step(m.State.new(m.sequential(1)), "stray")  # type: ignore[arg-type]
