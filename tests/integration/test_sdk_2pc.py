"""The participant SDK's 2PC endpoints against a real Postgres: idempotent prepare, commit and
rollback; rollback before prepare leaves a marker that refuses the late prepare; a business
error votes no and leaves nothing prepared."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from participants.ledger.app import adjust
from participants.sdk import BusinessError, Participant, ParticipantSettings
from participants.sdk.base import _Transient, run_once
from participants.sdk.db import make_engine
from tests.helpers import prepared_here


@pytest.fixture
async def sdk(ledger_dsn: str) -> AsyncIterator[Participant]:
    engine = make_engine(ledger_dsn, pool_size=5)
    participant = Participant(
        ParticipantSettings(name="t", dsn=ledger_dsn, lock_timeout_ms=300), engine
    )
    try:
        yield participant
    finally:
        await participant._drop_spare()
        await engine.dispose()


async def sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def balance(dsn: str, account: str) -> int:
    rows = await sql(dsn, "SELECT balance FROM accounts WHERE id = $1", account)
    return int(rows[0]["balance"])


def gid() -> str:
    return f"sdk-{uuid.uuid4().hex}"


async def open_account(dsn: str, account: str, amount: int) -> None:
    await sql(dsn, "INSERT INTO accounts (id, balance) VALUES ($1, $2)", account, amount)


async def test_prepare_commit_and_repeats_answer_as_the_first(
    sdk: Participant, ledger_dsn: str
) -> None:
    await open_account(ledger_dsn, "a", 100)
    g = gid()
    first = await sdk.prepare(g, 0, {"account": "a", "delta": -40}, adjust)
    assert first[0] == 200 and first[1]["vote"] == "yes"
    assert await prepared_here(ledger_dsn) == [f"txn:{g}:0"]
    assert await balance(ledger_dsn, "a") == 100  # not visible before commit
    again = await sdk.prepare(g, 0, {"account": "a", "delta": -40}, adjust)
    assert again[0] == 200 and again[1]["vote"] == "yes"
    assert (await sdk.commit(g, 0))[0] == 200
    assert await balance(ledger_dsn, "a") == 60
    assert (await sdk.commit(g, 0))[0] == 200  # repeated commit: same answer
    # A prepare duplicated after the commit must not apply the change twice.
    late = await sdk.prepare(g, 0, {"account": "a", "delta": -40}, adjust)
    assert late[0] == 200
    assert await balance(ledger_dsn, "a") == 60
    assert await prepared_here(ledger_dsn) == []


async def test_prepare_then_rollback_and_repeats(sdk: Participant, ledger_dsn: str) -> None:
    await open_account(ledger_dsn, "b", 10)
    g = gid()
    assert (await sdk.prepare(g, 1, {"account": "b", "delta": 5}, adjust))[0] == 200
    assert (await sdk.rollback(g, 1))[0] == 200
    assert (await sdk.rollback(g, 1))[0] == 200
    assert await prepared_here(ledger_dsn) == []
    assert await balance(ledger_dsn, "b") == 10
    # The duplicated prepare arriving after the rollback is refused: no hanging branch.
    late = await sdk.prepare(g, 1, {"account": "b", "delta": 5}, adjust)
    assert late[0] == 409 and "rolled back" in late[1]["reason"]
    assert await prepared_here(ledger_dsn) == []
    assert await balance(ledger_dsn, "b") == 10


async def test_rollback_before_prepare_leaves_marker_and_refuses_late_prepare(
    sdk: Participant, ledger_dsn: str
) -> None:
    await open_account(ledger_dsn, "c", 10)
    g = gid()
    status, body = await sdk.rollback(g, 0)
    assert status == 200 and body.get("marker") is True
    rows = await sql(ledger_dsn, "SELECT outcome FROM txn_barrier WHERE gid = $1", g)
    assert [r["outcome"] for r in rows] == ["rolled_back"]
    calls = 0

    async def counting(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return await adjust(conn, payload)

    late = await sdk.prepare(g, 0, {"account": "c", "delta": 1}, counting)
    assert late[0] == 409
    assert calls == 0  # the business code never ran
    assert await prepared_here(ledger_dsn) == []
    assert await balance(ledger_dsn, "c") == 10


async def test_business_error_votes_no_and_leaves_nothing_prepared(
    sdk: Participant, ledger_dsn: str
) -> None:
    await open_account(ledger_dsn, "d", 5)
    g = gid()
    status, body = await sdk.prepare(g, 0, {"account": "d", "delta": -6}, adjust)
    assert status == 409
    assert body["reason"] == "account d has 5; adding -6 would make it negative"
    assert await prepared_here(ledger_dsn) == []
    # The repeat answers as the first did, with the same reason, without rerunning the handler.
    calls = 0

    async def counting(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        raise BusinessError("different")

    again = await sdk.prepare(g, 0, {"account": "d", "delta": -6}, counting)
    assert again == (409, body)
    assert calls == 0
    missing = await sdk.prepare(gid(), 0, {"account": "nobody", "delta": 1}, adjust)
    assert missing == (409, {"reason": "account nobody does not exist"})
    # The coordinator then rolls the branch back: answered, nothing left behind.
    assert (await sdk.rollback(g, 0))[0] == 200
    assert await prepared_here(ledger_dsn) == []


async def test_commit_of_unprepared_branch_is_refused(sdk: Participant) -> None:
    status, body = await sdk.commit(gid(), 0)
    assert status == 409 and "not prepared" in body["reason"]


async def test_rollback_waits_for_a_prepare_in_flight(sdk: Participant, ledger_dsn: str) -> None:
    """A rollback that races a prepare holding the branch key answers transient (503) instead of
    blocking; once the prepare is done the retried rollback undoes it."""
    await open_account(ledger_dsn, "e", 10)
    g = gid()
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
        entered.set()
        await release.wait()
        return await adjust(conn, payload)

    prepare = asyncio.create_task(sdk.prepare(g, 0, {"account": "e", "delta": 3}, slow))
    await entered.wait()
    with pytest.raises(Exception, match="must wait"):
        await sdk.rollback(g, 0)
    release.set()
    assert (await prepare)[0] == 200
    assert (await sdk.rollback(g, 0))[0] == 200
    assert await prepared_here(ledger_dsn) == []
    assert await balance(ledger_dsn, "e") == 10


async def test_prepare_blocked_by_row_locks_votes_no_instead_of_waiting(
    sdk: Participant, ledger_dsn: str
) -> None:
    """Another transaction holds the row: the prepare waits at most the lock timeout, then
    votes no (a wait across databases could be a distributed deadlock no server detects)."""
    await open_account(ledger_dsn, "hot", 10)
    holder = await asyncpg.connect(ledger_dsn)
    try:
        locked = holder.transaction()
        await locked.start()
        await holder.execute("SELECT 1 FROM accounts WHERE id = 'hot' FOR UPDATE")
        g = gid()
        status, body = await sdk.prepare(g, 0, {"account": "hot", "delta": 1}, adjust)
        assert status == 409 and "contention" in body["reason"]
        await locked.rollback()
    finally:
        await holder.close()
    assert await prepared_here(ledger_dsn) == []
    assert await balance(ledger_dsn, "hot") == 10
    # Answered the same way if the coordinator asks again.
    assert (await sdk.prepare(g, 0, {"account": "hot", "delta": 1}, adjust))[0] == 409


async def idle_in_transaction(dsn: str) -> list[str]:
    rows = await sql(
        dsn,
        "SELECT state FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'",
    )
    return [r["state"] for r in rows]


@pytest.mark.parametrize("failure", ["python", "sql"])
async def test_a_failing_handler_leaves_no_connection_inside_a_transaction(
    sdk: Participant, ledger_dsn: str, failure: str
) -> None:
    """The SDK begins the local transaction itself (BEGIN travels with the barrier row): a
    handler that raises, in Python or in SQL, must not leave its connection in the pool with
    that transaction open, and must leave nothing behind."""
    await open_account(ledger_dsn, "f", 100)

    async def broken(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
        await adjust(conn, payload)
        if failure == "python":
            raise RuntimeError("a bug in the handler")
        await conn.execute(text("SELECT 1 / 0"))
        return {}

    g = gid()
    for call in (sdk.prepare, sdk.run_action):
        with pytest.raises((RuntimeError, _Transient)):
            await call(g, 0, {"account": "f", "delta": -10}, broken)
        assert await idle_in_transaction(ledger_dsn) == []
    assert await prepared_here(ledger_dsn) == []
    assert await sql(ledger_dsn, "SELECT op FROM txn_barrier WHERE gid = $1", g) == []
    assert await balance(ledger_dsn, "f") == 100
    # The same pool serves the next calls normally.
    assert (await sdk.prepare(g, 0, {"account": "f", "delta": -10}, adjust))[0] == 200
    assert (await sdk.commit(g, 0))[0] == 200
    assert (await sdk.run_action(g, 1, {"account": "f", "delta": -5}, adjust))[0] == 200
    assert await balance(ledger_dsn, "f") == 85
    assert await idle_in_transaction(ledger_dsn) == []


async def test_calls_run_on_kept_connections_and_none_is_kept_in_a_transaction(
    sdk: Participant, ledger_dsn: str
) -> None:
    """The SDK keeps a few AUTOCOMMIT connections between its own calls (the pool's checkout
    cost more than a round trip): one call after another runs on one server session, and a
    connection given back inside a transaction is neither kept nor pooled."""
    await open_account(ledger_dsn, "k", 100)
    sessions: list[int] = []

    async def adjust_and_tell(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
        sessions.append((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
        return await adjust(conn, payload)

    for branch in range(3):
        call = await sdk.run_action(gid(), branch, {"account": "k", "delta": 1}, adjust_and_tell)
        assert call[0] == 200
    assert len(sessions) == 3 and len(set(sessions)) == 1
    async with sdk._autocommit() as conn:
        await run_once(conn, "BEGIN")
    assert conn not in sdk._spare and conn.closed
    assert await idle_in_transaction(ledger_dsn) == []
    assert (await sdk.run_action(gid(), 0, {"account": "k", "delta": 1}, adjust))[0] == 200
    assert await balance(ledger_dsn, "k") == 104


async def test_kept_connections_the_server_closed_are_not_used(
    sdk: Participant, ledger_dsn: str
) -> None:
    """A database restart closes every kept connection: the next call passes over them and
    succeeds at once on a fresh one, instead of failing on a dead one. (Two calls at once, so
    both connections are kept, half the pool of 5, and none waits in the pool itself.)"""
    await open_account(ledger_dsn, "d", 100)
    moves = [sdk.run_action(gid(), 0, {"account": "d", "delta": 1}, adjust) for _ in range(2)]
    assert [status for status, _ in await asyncio.gather(*moves)] == [200] * 2
    kept = list(sdk._spare)
    assert len(kept) == 2
    await sql(
        ledger_dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND backend_type = 'client backend'",
    )
    await asyncio.sleep(0.3)  # the event loop sees the sockets end
    assert (await sdk.run_action(gid(), 0, {"account": "d", "delta": 1}, adjust))[0] == 200
    assert all(conn.closed for conn in kept)
    assert await balance(ledger_dsn, "d") == 103
