"""The drivers on the in-memory log with a scripted transport (pure unit tests; the contract
suite keeps MemLog honest, the integration and fault suites cover the real edges)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from coordinator.drivebase import Deps
from coordinator.driver import TwoPCDriver
from coordinator.memlog import MemLog
from coordinator.metrics import Metrics
from coordinator.records import BranchSpec, Inserted, NewTxn
from coordinator.settings import Settings
from coordinator.transport import Kind, Reply
from participants.sdk.crash import COORDINATOR_POINTS, CrashPoints


class Scripted:
    """Answers per (op, branch): a Reply, or an exception to raise."""

    def __init__(self, script: dict[tuple[str, int], Reply | Exception]) -> None:
        self.script = script
        self.calls: list[tuple[str, int]] = []

    async def call(
        self,
        participant: str,
        path: str,
        op: str,
        gid: str,
        branch: int,
        payload: dict[str, Any] | None,
    ) -> Reply:
        self.calls.append((op, branch))
        answer = self.script.get((op, branch), Reply(Kind.OK, 200, ""))
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def close(self) -> None:
        return None


def deps(store: MemLog, transport: Scripted) -> Deps:
    settings = Settings(retry_initial_s=0.001, retry_max_s=0.002, burst_attempts=2)
    return Deps(
        store,
        transport,
        settings,
        CrashPoints("", "", COORDINATOR_POINTS),
        lambda gid, logged: None,
        Metrics(),
    )


async def submit(store: MemLog, n: int = 2) -> Any:
    branches = tuple(BranchSpec(f"p{i}", "/do", None, {}) for i in range(n))
    outcome, claim = await store.insert(NewTxn("g", "2pc", {}, "h", branches, 30), "me", 60)
    assert outcome is Inserted.CREATED
    return claim


async def test_commits_when_every_branch_votes_yes() -> None:
    store, transport = MemLog(), Scripted({})
    state = await TwoPCDriver(deps(store, transport)).drive(await submit(store), fresh=True)
    assert state is not None and state.status == "committed"
    record = await store.get("g")
    assert record is not None and record.status == "committed"
    assert sorted(transport.calls) == [("commit", 0), ("commit", 1), ("prepare", 0), ("prepare", 1)]


async def test_a_commit_owed_to_a_failing_participant_is_rescheduled() -> None:
    store = MemLog()
    transport = Scripted({("commit", 1): Reply(Kind.TRANSIENT, 503, "down")})
    state = await TwoPCDriver(deps(store, transport)).drive(await submit(store), fresh=True)
    assert state is not None and state.status == "committing"
    record = await store.get("g")
    assert record is not None and record.status == "committing" and record.attempts == 1
    assert [b.status for b in record.branches] == ["committed", "prepared"]
    assert record.branches[1].last_error == "down"


async def test_a_crashing_call_stops_the_drive_instead_of_hanging_it() -> None:
    store = MemLog()
    transport = Scripted({("commit", 0): RuntimeError("bug in a transport")})
    drive = asyncio.create_task(
        TwoPCDriver(deps(store, transport)).drive(await submit(store), fresh=True)
    )
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(drive, 5)
    record = await store.get("g")
    # The decision stands; the lease will lapse and recovery will finish the commit.
    assert record is not None and record.status == "committing"


class Recording(Scripted):
    """Also keeps each call's path and body."""

    def __init__(self, script: dict[tuple[str, int], Reply | Exception]) -> None:
        super().__init__(script)
        self.sent: list[tuple[str, int, str, dict[str, Any] | None]] = []

    async def call(
        self,
        participant: str,
        path: str,
        op: str,
        gid: str,
        branch: int,
        payload: dict[str, Any] | None,
    ) -> Reply:
        self.sent.append((op, branch, path, payload))
        return await super().call(participant, path, op, gid, branch, payload)


async def submit_tcc(store: MemLog, n: int = 2) -> Any:
    branches = tuple(
        BranchSpec(f"p{i}", "/t", "/t/cancel", {"i": i}, confirm="/t/confirm") for i in range(n)
    )
    outcome, claim = await store.insert(NewTxn("g", "tcc", {}, "h", branches, 30), "me", 60)
    assert outcome is Inserted.CREATED
    assert claim.record.status == "preparing"
    return claim


async def test_tcc_tries_then_confirms_each_branch_at_its_own_paths() -> None:
    store, transport = MemLog(), Recording({("try", 0): Reply(Kind.OK, 200, "", {"done": True})})
    state = await TwoPCDriver(deps(store, transport)).drive(await submit_tcc(store), fresh=True)
    assert state is not None and state.status == "committed"
    assert sorted(transport.sent, key=lambda s: (s[0] != "try", s[1])) == [
        ("try", 0, "/t", {"i": 0}),
        ("try", 1, "/t", {"i": 1}),
        ("confirm", 0, "/t/confirm", {"i": 0}),
        ("confirm", 1, "/t/confirm", {"i": 1}),
    ]
    record = await store.get("g")
    assert record is not None and [b.status for b in record.branches] == ["committed"] * 2
    assert [b.confirm for b in record.branches] == ["/t/confirm"] * 2


async def test_a_refused_tcc_try_cancels_every_branch() -> None:
    store = MemLog()
    transport = Recording({("try", 1): Reply(Kind.REFUSED, 409, "insufficient funds")})
    state = await TwoPCDriver(deps(store, transport)).drive(await submit_tcc(store), fresh=True)
    assert state is not None and state.status == "aborted"
    assert state.reason == "p1: insufficient funds"
    cancels = sorted((b, path, body) for op, b, path, body in transport.sent if op == "cancel")
    assert cancels == [(0, "/t/cancel", {"i": 0}), (1, "/t/cancel", {"i": 1})]
    assert not [s for s in transport.sent if s[0] == "confirm"]


async def test_a_tcc_transaction_recovered_before_its_decision_is_cancelled() -> None:
    store, transport = MemLog(), Recording({})
    state = await TwoPCDriver(deps(store, transport)).drive(await submit_tcc(store), fresh=False)
    assert state is not None and state.status == "aborted"
    assert sorted((op, b) for op, b, _, _ in transport.sent) == [("cancel", 0), ("cancel", 1)]


async def test_a_confirm_refused_for_now_stays_owed() -> None:
    store = MemLog()
    transport = Recording({("confirm", 1): Reply(Kind.REFUSED, 409, "not yet")})
    state = await TwoPCDriver(deps(store, transport)).drive(await submit_tcc(store), fresh=True)
    assert state is not None and state.status == "committing"
    record = await store.get("g")
    assert record is not None and [b.status for b in record.branches] == ["committed", "prepared"]
    assert record.branches[1].last_error == "not yet"
