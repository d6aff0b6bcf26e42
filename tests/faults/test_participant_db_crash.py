"""A participant's own Postgres crashes (immediate shutdown: no checkpoint, every backend gone)
while one of its calls holds an open local transaction, at four moments of the protocol: in a
2PC prepare, just before COMMIT PREPARED, in a saga action and in a saga compensation.

The SDK's pause point (``TXNP_PAUSE_AT``) holds the call at the exact moment, inside its local
transaction; the test crashes the participant's cluster, starts it again, checks what the crash
left in that database, and only then releases the call, whose connection is now dead. The
participant service itself keeps running: only its database crashed.

Every outcome is measured in the participants' own databases (balances, barrier rows and
``pg_prepared_xacts``), not read from the coordinator's log, and the transaction must reach it
within ``TERMINAL_BOUND_S`` of the release. The coordinator runs with a call timeout and the
transactions with a deadline (``PATIENT_S``) far beyond the pause (a crash and restart of one
small cluster: a second or two, more on a loaded machine), so the released call is still the one
the coordinator waits on and the outcome does not depend on timing: the released call answers a
transient 503 (its connection died with the server), and exactly one retry finishes the branch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from participants.sdk.crash import PARTICIPANT_PAUSE_POINTS, PausePoint
from tests.conftest import TEST_COORDINATOR_ENV
from tests.helpers import (
    api_client,
    balances,
    barrier_rows,
    branch_headers,
    open_accounts,
    prepared_xacts,
    saga_branch,
    twopc_transfer,
    unique,
    wait_terminal,
)
from txn_devstack.services import Service
from txn_devstack.stack import Stack

OPENING = 100
MOVES = {"ledger1": -30, "ledger2": 20, "ledger3": 10}
REACH_BOUND_S = 15.0  # the paused call reaches its point
TERMINAL_BOUND_S = 30.0  # from the release to a terminal status
PATIENT_S = 60  # the coordinator's call timeout and each transaction's timeout_s here
# Patient enough for a database's restart, as in the saga fault tests.
SAGA_RETRY = {"max_attempts": 20, "initial_s": 0.2, "max_s": 1.0}
# Uvicorn's line for an exception that escaped the SDK: the call would have answered 500.
UNHANDLED = "Exception in ASGI application"


@pytest.fixture(scope="module", autouse=True)
def patient_coordinator(fault_stack: Stack) -> Iterator[None]:
    """coord1 waits out a paused call instead of timing it out and retrying meanwhile (which,
    against a database still down, could exhaust the prepare's burst and abort instead)."""
    coord = fault_stack.coordinators[0].name
    fault_stack.restart(coord, env={"TXN_CALL_TIMEOUT_S": str(PATIENT_S)})
    try:
        yield
    finally:
        normal = TEST_COORDINATOR_ENV["TXN_CALL_TIMEOUT_S"]
        fault_stack.restart(coord, env={"TXN_CALL_TIMEOUT_S": normal})


@dataclass
class Pause:
    """The test's end of the SDK's pause handshake, and the service it is armed in."""

    service: Service
    file: Path
    log_offset: int

    @property
    def reached(self) -> Path:
        return Path(f"{self.file}.reached")

    async def wait_reached(self) -> None:
        deadline = time.monotonic() + REACH_BOUND_S
        while not self.reached.exists():
            assert time.monotonic() < deadline, f"{self.service.name} never paused"
            await asyncio.sleep(0.02)

    def release(self) -> None:
        Path(f"{self.file}.release").write_text("go\n")

    def new_log(self) -> str:
        return log_since(self.service, self.log_offset)


def log_since(service: Service, offset: int) -> str:
    """What the service logged past ``offset``."""
    with open(service.log_file, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


@contextlib.asynccontextmanager
async def paused(stack: Stack, ledger: str, point: str, tmp_path: Path) -> AsyncIterator[Pause]:
    """``ledger`` restarted with the pause point armed; restarted without it afterwards, so the
    rest of the session sees a normal stack (with a fresh connection pool)."""
    service = stack.service(ledger)
    file = tmp_path / f"pause-{point}"
    env = {"TXNP_PAUSE_AT": point, "TXNP_PAUSE_FILE": str(file)}
    await asyncio.to_thread(stack.restart, ledger, env)
    pause = Pause(service, file, service.log_file.stat().st_size)
    try:
        yield pause
    finally:
        pause.release()  # a call still held (the test failed early) ends before the restart
        off = {"TXNP_PAUSE_AT": "", "TXNP_PAUSE_FILE": ""}
        await asyncio.to_thread(stack.restart, ledger, off)


async def crash_database_under(stack: Stack, pause: Pause) -> None:
    """Once the call is paused: its cluster crashes and starts again; the service stays up."""
    await pause.wait_reached()
    cluster = stack.participant_cluster(pause.service.name)
    service_pid, old_pid = pause.service.pid, cluster.pid
    await asyncio.to_thread(cluster.crash)
    await asyncio.to_thread(cluster.start)
    assert cluster.pid is not None and cluster.pid != old_pid
    assert pause.service.pid == service_pid, "the service died with its database"


def urls(stack: Stack) -> dict[str, str]:
    return {p.name: p.url for p in stack.participants}


def dsns(stack: Stack) -> dict[str, str]:
    return {p.name: p.dsn for p in stack.participants if p.dsn}


async def submit(stack: Stack, client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    body = {**body, "timeout_s": PATIENT_S}
    reply = await client.post(f"{stack.coordinators[0].url}/v1/transactions", json=body)
    assert reply.status_code == 201, reply.text


async def finish(stack: Stack, client: httpx.AsyncClient, pause: Pause, gid: str) -> dict[str, Any]:
    """Release the call; the transaction must be terminal within TERMINAL_BOUND_S, the released
    call must have answered (503, a transient error) rather than failed (500), and no
    participant database may keep a prepared transaction."""
    pause.release()
    txn = await wait_terminal(client, stack.coordinators[0].url, gid, TERMINAL_BOUND_S)
    assert UNHANDLED not in pause.new_log(), pause.new_log()
    for name, dsn in dsns(stack).items():
        assert await prepared_xacts(dsn) == [], name
    return txn


def transient(branch: dict[str, Any], what: str) -> None:
    """The branch needed exactly one retry after the released call, which answered 503: the
    coordinator logged that answer's detail (a 500 would read "HTTP 500: ...")."""
    error = branch["last_error"] or ""
    assert error.startswith(what) and "connection is closed" in error, branch


def three_steps(account: str, last_delta: int) -> list[dict[str, Any]]:
    return [
        saga_branch("ledger1", account, -10),
        saga_branch("ledger2", account, 6),
        saga_branch("ledger3", account, last_delta),
    ]


async def test_database_crash_mid_prepare_then_the_retried_prepare_commits(
    fault_stack: Stack, tmp_path: Path
) -> None:
    """ledger2's prepare has run its UPDATE and written its barrier row, PREPARE TRANSACTION not
    yet sent, when ledger2's database crashes. The open local transaction dies with the server:
    after the restart ledger2 holds neither the change, nor the barrier row, nor a prepared
    transaction. The released call's PREPARE fails on its dead connection; the SDK answers a
    transient 503, the coordinator retries within its burst, the retried prepare finds no
    barrier row, runs the handler once more and votes yes: the transfer COMMITS, each move
    applied exactly once."""
    account, gid = unique("dbcrash"), unique("dbcrash-prepare")
    async with (
        paused(fault_stack, "ledger2", "before_prepare_statement", tmp_path) as pause,
        api_client(timeout=10) as client,
    ):
        await open_accounts(client, urls(fault_stack), account, OPENING)
        await submit(fault_stack, client, twopc_transfer(gid, account, MOVES))
        await crash_database_under(fault_stack, pause)
        ledger2 = dsns(fault_stack)["ledger2"]
        assert await barrier_rows(ledger2, gid) == []
        assert await prepared_xacts(ledger2) == []
        assert (await balances({"ledger2": ledger2}, account))["ledger2"] == OPENING
        txn = await finish(fault_stack, client, pause, gid)
    assert txn["status"] == "committed", txn
    assert [b["status"] for b in txn["branches"]] == ["committed"] * 3
    # prepare (503), prepare (yes), commit; the others: prepare, commit.
    assert [b["attempts"] for b in txn["branches"]] == [2, 3, 2]
    transient(txn["branches"][1], f"prepare of txn:{gid}:1 failed")
    assert await balances(dsns(fault_stack), account) == {
        name: OPENING + delta for name, delta in MOVES.items()
    }
    for index, name in enumerate(MOVES):
        assert await barrier_rows(dsns(fault_stack)[name], gid) == [(index, "2pc", "prepared")]


async def test_database_crash_before_commit_prepared_then_the_retried_commit_commits(
    fault_stack: Stack, tmp_path: Path
) -> None:
    """Every branch voted yes and the coordinator decided commit; ledger3's COMMIT PREPARED is
    about to be sent when ledger3's database crashes. A prepared transaction is durable: after
    the restart it is still in ledger3's pg_prepared_xacts, its change not yet visible. The
    released call's COMMIT PREPARED fails on its dead connection (503); the coordinator's
    retried commit finds the prepared transaction and commits it: COMMITTED, each move applied
    exactly once."""
    account, gid = unique("dbcrash"), unique("dbcrash-commit")
    async with (
        paused(fault_stack, "ledger3", "before_commit_prepared", tmp_path) as pause,
        api_client(timeout=10) as client,
    ):
        await open_accounts(client, urls(fault_stack), account, OPENING)
        await submit(fault_stack, client, twopc_transfer(gid, account, MOVES))
        await crash_database_under(fault_stack, pause)
        ledger3 = dsns(fault_stack)["ledger3"]
        assert await prepared_xacts(ledger3) == [f"txn:{gid}:2"]  # survived the crash
        assert (await balances({"ledger3": ledger3}, account))["ledger3"] == OPENING
        txn = await finish(fault_stack, client, pause, gid)
    assert txn["status"] == "committed", txn
    assert [b["status"] for b in txn["branches"]] == ["committed"] * 3
    # prepare, commit (503), commit; the others: prepare, commit.
    assert [b["attempts"] for b in txn["branches"]] == [2, 2, 3]
    transient(txn["branches"][2], f"commit of txn:{gid}:2 failed")
    assert await balances(dsns(fault_stack), account) == {
        name: OPENING + delta for name, delta in MOVES.items()
    }
    for index, name in enumerate(MOVES):
        assert await barrier_rows(dsns(fault_stack)[name], gid) == [(index, "2pc", "prepared")]


async def test_database_crash_mid_saga_action_then_the_action_is_applied_once(
    fault_stack: Stack, tmp_path: Path
) -> None:
    """ledger2's saga action has run its UPDATE and written its 'done' barrier row, COMMIT not
    yet sent, when ledger2's database crashes: both are lost with the open transaction. The
    released call's COMMIT fails on its dead connection (503, transient: the step's outcome is
    unknown to the coordinator, never a refusal); the saga retries the action, which finds no
    barrier row and runs once more. The saga COMMITS with every action applied exactly once."""
    account, gid = unique("dbcrash"), unique("dbcrash-action")
    body = {"gid": gid, "mode": "saga", "branches": three_steps(account, 4), "retry": SAGA_RETRY}
    async with (
        paused(fault_stack, "ledger2", "before_action_commit", tmp_path) as pause,
        api_client(timeout=10) as client,
    ):
        await open_accounts(client, urls(fault_stack), account, OPENING)
        await submit(fault_stack, client, body)
        await crash_database_under(fault_stack, pause)
        ledger2 = dsns(fault_stack)["ledger2"]
        assert await barrier_rows(ledger2, gid) == []
        assert (await balances({"ledger2": ledger2}, account))["ledger2"] == OPENING
        txn = await finish(fault_stack, client, pause, gid)
    assert txn["status"] == "committed", txn
    assert [b["attempts"] for b in txn["branches"]] == [1, 2, 1]  # ledger2: 503, then done
    transient(txn["branches"][1], f"action {gid}/1 failed")
    assert await balances(dsns(fault_stack), account) == {
        "ledger1": 90,
        "ledger2": 106,
        "ledger3": 104,
    }
    rows = {name: await barrier_rows(dsn, gid) for name, dsn in dsns(fault_stack).items()}
    assert rows == {
        "ledger1": [(0, "action", "done")],
        "ledger2": [(1, "action", "done")],
        "ledger3": [(2, "action", "done")],
    }


async def test_database_crash_mid_compensation_then_each_compensation_is_applied_once(
    fault_stack: Stack, tmp_path: Path
) -> None:
    """ledger3 refuses its step (-1000 on 100), so the saga compensates in reverse order.
    ledger1's compensation has run its UPDATE and written its 'compensate' barrier row, COMMIT
    not yet sent, when ledger1's database crashes: both are lost, the action's row and effect
    stay. The released call answers 503; compensations are retried until they succeed, and the
    retry finds no 'compensate' row and undoes the action once. The saga ends ABORTED with every
    balance back at its opening and each compensation recorded exactly once."""
    account, gid = unique("dbcrash"), unique("dbcrash-compensate")
    body = {
        "gid": gid,
        "mode": "saga",
        "branches": three_steps(account, -1000),
        "retry": SAGA_RETRY,
    }
    async with (
        paused(fault_stack, "ledger1", "before_compensate_commit", tmp_path) as pause,
        api_client(timeout=10) as client,
    ):
        await open_accounts(client, urls(fault_stack), account, OPENING)
        await submit(fault_stack, client, body)
        await crash_database_under(fault_stack, pause)
        ledger1 = dsns(fault_stack)["ledger1"]
        assert await barrier_rows(ledger1, gid) == [(0, "action", "done")]
        assert (await balances({"ledger1": ledger1}, account))["ledger1"] == 90
        txn = await finish(fault_stack, client, pause, gid)
    assert txn["status"] == "aborted", txn
    # Each branch: its action, then its compensation; ledger1's compensation twice (503, done).
    assert [b["attempts"] for b in txn["branches"]] == [3, 2, 2]
    transient(txn["branches"][0], f"compensation {gid}/0 failed")
    assert await balances(dsns(fault_stack), account) == {name: OPENING for name in MOVES}
    rows = {name: await barrier_rows(dsn, gid) for name, dsn in dsns(fault_stack).items()}
    assert rows == {
        "ledger1": [(0, "action", "done"), (0, "compensate", "done")],
        "ledger2": [(1, "action", "done"), (1, "compensate", "done")],
        "ledger3": [(2, "action", "failed"), (2, "compensate", "done")],
    }


async def test_calls_while_the_database_is_down_answer_503_and_leave_nothing(
    fault_stack: Stack,
) -> None:
    """ledger2's database crashes and stays down while every kind of branch call arrives; its
    connection pool still holds the connections the crash killed. Each call answers 503 (the
    coordinator retries it), never 500: before the fix, a dead pooled connection in the
    prepare's first check and a refused connection in prepare, commit, action and compensation
    escaped as 500. Once the database is back, the same calls work and nothing was left
    behind: no barrier row, no prepared transaction, the balance untouched."""
    ledger2 = fault_stack.service("ledger2")
    assert ledger2.dsn is not None
    cluster = fault_stack.participant_cluster("ledger2")
    account, gid = unique("dbdown"), unique("dbdown")
    calls = [  # (Txn-Op, path); the prepare first: it meets the dead pooled connections
        ("prepare", "/accounts/adjust"),
        ("commit", "/txn/2pc/commit"),
        ("rollback", "/txn/2pc/rollback"),
        ("action", "/accounts/adjust"),
        ("compensate", "/accounts/adjust/undo"),
    ]
    offset = ledger2.log_file.stat().st_size
    async with api_client(timeout=10) as client:
        await open_accounts(client, {"ledger2": ledger2.url}, account, OPENING)

        secret = fault_stack.participant_secrets["ledger2"]

        async def call(op: str, path: str, branch: int) -> httpx.Response:
            body = orjson.dumps({"account": account, "delta": 5})
            headers = branch_headers(secret, "ledger2", path, gid, branch, op, body)
            return await client.post(f"{ledger2.url}{path}", content=body, headers=headers)

        await asyncio.to_thread(cluster.crash)
        try:
            for op, path in calls:
                reply = await call(op, path, 0)
                assert reply.status_code == 503, (op, reply.text)
        finally:
            await asyncio.to_thread(cluster.start)
        assert await barrier_rows(ledger2.dsn, gid) == []
        # Back up: branch 1 is prepared and rolled back, branch 2 runs a saga step and its undo.
        prepare, _, rollback, action, compensate = calls
        again = [(1, prepare), (1, rollback), (2, action), (2, compensate)]
        got = [(await call(op, path, branch)).status_code for branch, (op, path) in again]
    assert got == [200, 200, 200, 200]
    assert UNHANDLED not in log_since(ledger2, offset)
    assert await prepared_xacts(ledger2.dsn) == []
    assert (await balances({"ledger2": ledger2.dsn}, account))["ledger2"] == OPENING
    assert await barrier_rows(ledger2.dsn, gid) == [
        (1, "2pc", "rolled_back"),
        (2, "action", "done"),
        (2, "compensate", "done"),
    ]


@pytest.mark.parametrize("point", ["before_prepare_statement", "nowhere"])
def test_pause_point_names_are_checked(point: str) -> None:
    """A mistyped point, or one without its file, is refused at start instead of silently
    never pausing."""
    if point in PARTICIPANT_PAUSE_POINTS:
        with pytest.raises(ValueError, match="needs a pause file"):
            PausePoint(point, "", PARTICIPANT_PAUSE_POINTS)
    else:
        with pytest.raises(ValueError, match="unknown pause point"):
            PausePoint(point, "/tmp/x", PARTICIPANT_PAUSE_POINTS)
