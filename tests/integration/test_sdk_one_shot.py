"""The SDK's one-round-trip path (participants/sdk/oneshot.py) against a real Postgres: the happy
prepare and saga action cost one statement text and never run the handler; every other case
(a repeat, a refusal, a payload that cannot be sent as text, a branch rolled back or
compensated first) falls back to the ordinary path and answers exactly as it does."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection

from participants.ledger.app import adjust, adjust_statement, undo_adjust
from participants.sdk import Participant, ParticipantSettings, base, saga, twopc
from participants.sdk.db import make_engine
from participants.sdk.oneshot import Statement, business_text, render, sql_value
from tests.helpers import Counting, prepared_here


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


class RoundTrips:
    """Counts what reaches the database: texts sent by the SDK (``run_once``) and statements
    SQLAlchemy executes."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.statements = 0


@pytest.fixture
def trips(sdk: Participant, monkeypatch: pytest.MonkeyPatch) -> Iterator[RoundTrips]:
    seen = RoundTrips()
    original = base.run_once

    async def counting(conn: AsyncConnection, sql: str) -> str:
        seen.texts.append(sql)
        return await original(conn, sql)

    for module in (base, twopc, saga):
        monkeypatch.setattr(module, "run_once", counting)

    def on_execute(*_: Any) -> None:
        seen.statements += 1

    event.listen(sdk.engine.sync_engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        event.remove(sdk.engine.sync_engine, "before_cursor_execute", on_execute)


async def sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def account(dsn: str, amount: int) -> str:
    name = f"os-{uuid.uuid4().hex[:12]}"
    await sql(dsn, "INSERT INTO accounts (id, balance) VALUES ($1, $2)", name, amount)
    return name


async def balance(dsn: str, name: str) -> int:
    return int((await sql(dsn, "SELECT balance FROM accounts WHERE id = $1", name))[0][0])


async def barrier(dsn: str, gid: str) -> list[tuple[str, str]]:
    rows = await sql(dsn, "SELECT op, outcome FROM txn_barrier WHERE gid = $1 ORDER BY op", gid)
    return [(r["op"], r["outcome"]) for r in rows]


def gid() -> str:
    return f"os-{uuid.uuid4().hex}"


async def test_a_happy_prepare_is_one_text_and_runs_no_handler(
    sdk: Participant, ledger_dsn: str, trips: RoundTrips
) -> None:
    a, g, handler = await account(ledger_dsn, 100), gid(), Counting(adjust)
    payload = {"account": a, "delta": -40}
    status, answer = await sdk.prepare(g, 0, payload, handler, adjust_statement)
    assert status == 200
    assert answer == {"vote": "yes", "prepared": f"txn:{g}:0", "result": payload}
    assert (len(trips.texts), trips.statements, handler.calls) == (1, 0, 0), trips.texts
    assert "PREPARE TRANSACTION" in trips.texts[0]
    assert await prepared_here(ledger_dsn) == [f"txn:{g}:0"]
    assert await balance(ledger_dsn, a) == 100  # prepared, not committed

    # A repeat takes the ordinary path and answers as the first did, running nothing.
    again = await sdk.prepare(g, 0, payload, handler, adjust_statement)
    assert again[0] == 200 and again[1]["repeat"] is True and handler.calls == 0
    assert (await sdk.commit(g, 0))[0] == 200
    assert await balance(ledger_dsn, a) == 60
    late = await sdk.prepare(g, 0, payload, handler, adjust_statement)
    assert late[0] == 200 and handler.calls == 0
    assert await balance(ledger_dsn, a) == 60
    assert await prepared_here(ledger_dsn) == []


async def test_a_refused_prepare_falls_back_and_votes_no_with_the_handlers_reason(
    sdk: Participant, ledger_dsn: str
) -> None:
    a, g, handler = await account(ledger_dsn, 10), gid(), Counting(adjust)
    status, answer = await sdk.prepare(
        g, 0, {"account": a, "delta": -40}, handler, adjust_statement
    )
    assert status == 409 and "would make it negative" in answer["reason"], answer
    assert handler.calls == 1  # the one-shot text failed; the handler explained why
    assert await prepared_here(ledger_dsn) == []
    assert await balance(ledger_dsn, a) == 10
    assert await barrier(ledger_dsn, g) == [("2pc", "voted_no")]
    missing = await sdk.prepare(
        gid(), 0, {"account": "nobody", "delta": 1}, adjust, adjust_statement
    )
    assert missing[0] == 409 and "does not exist" in missing[1]["reason"]


async def test_a_rollback_first_refuses_the_late_one_shot_prepare(
    sdk: Participant, ledger_dsn: str
) -> None:
    a, g, handler = await account(ledger_dsn, 100), gid(), Counting(adjust)
    assert (await sdk.rollback(g, 0))[0] == 200  # leaves the marker
    status, answer = await sdk.prepare(g, 0, {"account": a, "delta": -1}, handler, adjust_statement)
    assert status == 409 and "rolled back" in answer["reason"]
    assert handler.calls == 0 and await balance(ledger_dsn, a) == 100
    assert await prepared_here(ledger_dsn) == []


async def test_a_payload_that_cannot_be_text_takes_the_ordinary_path(
    sdk: Participant, ledger_dsn: str, trips: RoundTrips
) -> None:
    a, handler = await account(ledger_dsn, 100), Counting(adjust)
    quoted = {"account": "x'; DROP TABLE accounts; --", "delta": 1}
    refused = await sdk.prepare(gid(), 0, quoted, handler, adjust_statement)
    assert refused[0] == 409 and handler.calls == 1
    assert not any("DROP" in t for t in trips.texts)
    assert await balance(ledger_dsn, a) == 100  # the table is there


async def test_a_happy_saga_action_is_one_text_and_repeats_answer_as_the_first(
    sdk: Participant, ledger_dsn: str, trips: RoundTrips
) -> None:
    a, g, handler = await account(ledger_dsn, 100), gid(), Counting(adjust)
    payload = {"account": a, "delta": -30}
    assert await sdk.run_action(g, 1, payload, handler, adjust_statement) == (
        200,
        {"done": True, "result": {"account": a, "delta": -30}},  # as the handler answers
    )
    assert (len(trips.texts), trips.statements, handler.calls) == (1, 0, 0), trips.texts
    assert await balance(ledger_dsn, a) == 70
    assert await barrier(ledger_dsn, g) == [("action", "done")]
    repeat = await sdk.run_action(g, 1, payload, handler, adjust_statement)
    assert repeat == (200, {"done": True, "repeat": True}) and handler.calls == 0
    assert await balance(ledger_dsn, a) == 70
    undone = await sdk.run_compensation(g, 1, payload, undo_adjust)
    assert undone[0] == 200 and await balance(ledger_dsn, a) == 100


async def test_a_refused_or_compensated_saga_action_answers_as_the_ordinary_path(
    sdk: Participant, ledger_dsn: str
) -> None:
    a = await account(ledger_dsn, 5)
    g, handler = gid(), Counting(adjust)
    refused = await sdk.run_action(g, 0, {"account": a, "delta": -6}, handler, adjust_statement)
    assert refused[0] == 409 and "would make it negative" in refused[1]["reason"]
    assert handler.calls == 1 and await balance(ledger_dsn, a) == 5
    assert await barrier(ledger_dsn, g) == [("action", "failed")]

    # A compensation that arrives first takes the key: the late action is refused, not run.
    late, handler = gid(), Counting(adjust)
    assert (await sdk.run_compensation(late, 0, {"account": a, "delta": 1}, undo_adjust))[0] == 200
    after = await sdk.run_action(late, 0, {"account": a, "delta": 1}, handler, adjust_statement)
    assert after[0] == 409 and "compensated before it ran" in after[1]["reason"]
    assert handler.calls == 0 and await balance(ledger_dsn, a) == 5


def test_only_integers_and_gid_like_strings_become_literals() -> None:
    assert sql_value(-42) == "-42"
    assert sql_value("bench-c1") == "'bench-c1'"
    for bad in (True, 2**63, "o'brien", "back\\slash", "", "é", 1.5, None, ["a"]):
        assert sql_value(bad) is None, bad
    statement = Statement("UPDATE t SET n = n + {d} WHERE id = {id} RETURNING 1", {"d": 1})
    with pytest.raises(KeyError):
        render(statement)  # a placeholder without a value is the caller's bug, not a literal
    assert render(Statement("SELECT {v}", {"v": "a'b"})) is None


def test_a_statement_builder_that_cannot_read_the_payload_means_the_ordinary_path() -> None:
    assert business_text(adjust_statement, {"account": "a"}) is None  # no delta
    assert business_text(lambda p: Statement("SELECT {v}", {"v": p["v"]}), {}) is None
    assert business_text(adjust_statement, {"account": "a", "delta": 2}) == (
        "UPDATE accounts SET balance = balance + 2 "
        "WHERE id = 'a' AND balance - frozen + 2 >= 0 RETURNING 1",
        {"account": "a", "delta": 2},
    )


async def test_a_locked_row_is_waited_for_once_then_the_vote_is_no(
    sdk: Participant, ledger_dsn: str
) -> None:
    """The one text gives up on a held lock at once (oneshot.LOCK_WAIT_MS) and the ordinary path
    waits the participant's lock timeout (300 ms here): one wait, not two."""
    a, handler = await account(ledger_dsn, 10), Counting(adjust)
    holder = await asyncpg.connect(ledger_dsn)
    try:
        locked = holder.transaction()
        await locked.start()
        await holder.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", a)
        started = time.monotonic()
        status, answer = await sdk.prepare(
            gid(), 0, {"account": a, "delta": 1}, handler, adjust_statement
        )
        waited = time.monotonic() - started
        await locked.rollback()
    finally:
        await holder.close()
    assert status == 409 and "contention" in answer["reason"], answer
    assert handler.calls == 1
    assert 0.3 <= waited < 0.55, waited  # 300 ms + 50 ms, not 600 ms
    assert await prepared_here(ledger_dsn) == [] and await balance(ledger_dsn, a) == 10
