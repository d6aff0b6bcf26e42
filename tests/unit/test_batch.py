"""The coalescer of redoable log writes (coordinator/batch.py), with a recording fake statement."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest

from coordinator.batch import Coalescer


class Statement:
    """Records each batch; finds every gid except those in ``stale`` (answering True for it);
    refuses rows with "bad" as a data error and any batch while ``down``. ``gate`` holds a
    batch until it is set."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.stale: set[str] = set()
        self.down = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, rows: Sequence[tuple[Any, ...]]) -> dict[str, bool]:
        gids = [row[0] for row in rows]
        self.batches.append(gids)
        await self.gate.wait()
        if self.down:
            raise ConnectionError("log down")
        if any(row[1] == "bad" for row in rows):
            raise asyncpg.DataError("invalid byte sequence")
        return {gid: True for gid in gids if gid not in self.stale}


async def test_a_lone_write_goes_at_once_in_a_statement_of_its_own() -> None:
    statement = Statement()
    coalescer = Coalescer(statement)
    assert await coalescer.write("g1", ("g1", "ok")) is True
    assert statement.batches == [["g1"]]


async def test_writes_arriving_during_a_batch_travel_together_in_the_next() -> None:
    statement = Statement()
    statement.gate.clear()
    coalescer = Coalescer(statement, limit=3)
    first = asyncio.create_task(coalescer.write("g0", ("g0", "ok")))
    await asyncio.sleep(0)  # the first batch is on its way
    rest = [asyncio.create_task(coalescer.write(f"g{i}", (f"g{i}", "ok"))) for i in range(1, 6)]
    await asyncio.sleep(0)
    statement.gate.set()
    assert await asyncio.gather(first, *rest) == [True] * 6
    assert statement.batches == [["g0"], ["g1", "g2", "g3"], ["g4", "g5"]]
    assert (coalescer.batches, coalescer.writes) == (3, 6)


async def test_two_writes_of_one_transaction_never_share_a_batch_and_keep_their_order() -> None:
    statement = Statement()
    statement.gate.clear()
    coalescer = Coalescer(statement)
    first = asyncio.create_task(coalescer.write("g0", ("g0", "ok")))
    await asyncio.sleep(0)
    later = [asyncio.create_task(coalescer.write(gid, (gid, "ok"))) for gid in ("a", "a", "b", "a")]
    await asyncio.sleep(0)
    statement.gate.set()
    await asyncio.gather(first, *later)
    assert statement.batches == [["g0"], ["a", "b"], ["a"], ["a"]]


async def test_each_write_gets_its_own_fence() -> None:
    statement = Statement()
    statement.stale = {"old"}
    coalescer = Coalescer(statement)
    answers = await asyncio.gather(*(coalescer.write(g, (g, "ok")) for g in ("x", "old", "y")))
    assert answers == [True, None, True]


async def test_a_row_the_log_cannot_store_fails_alone() -> None:
    statement = Statement()
    statement.gate.clear()
    coalescer = Coalescer(statement)
    first = asyncio.create_task(coalescer.write("g0", ("g0", "ok")))
    await asyncio.sleep(0)
    rows = {"a": "ok", "b": "bad", "c": "ok"}
    later = [asyncio.create_task(coalescer.write(g, (g, v))) for g, v in rows.items()]
    await asyncio.sleep(0)
    statement.gate.set()
    results = await asyncio.gather(first, *later, return_exceptions=True)
    assert results[:2] == [True, True] and results[3] is True
    assert isinstance(results[2], asyncpg.DataError)
    # The batch, then one statement per row.
    assert statement.batches == [["g0"], ["a", "b", "c"], ["a"], ["b"], ["c"]]


async def test_a_failed_statement_fails_its_batch_and_the_next_writes_go_on() -> None:
    statement = Statement()
    statement.down = True
    coalescer = Coalescer(statement)
    with pytest.raises(ConnectionError):
        await coalescer.write("g1", ("g1", "ok"))
    statement.down = False
    assert await coalescer.write("g2", ("g2", "ok")) is True


async def _first_of_two_statements(
    rows: Sequence[tuple[str, str]], stale: frozenset[str] = frozenset()
) -> tuple[Statement, Statement, list[bool | BaseException | None]]:
    """Writes ``rows`` through a coalescer with a many-row and a one-row statement: the first
    alone, held on its way until the others have queued behind it. Returns (many, one, the
    writes' answers or errors)."""
    many, one = Statement(), Statement()
    one.stale = set(stale)

    async def run_one(row: tuple[Any, ...]) -> dict[str, bool]:
        return await one([row])

    one.gate.clear()
    coalescer = Coalescer(many, run_one=run_one)
    first = asyncio.create_task(coalescer.write(rows[0][0], rows[0]))
    for _ in range(3):
        await asyncio.sleep(0)
    assert (one.batches, many.batches) == ([[rows[0][0]]], [])  # on its way, alone
    rest = [asyncio.create_task(coalescer.write(row[0], row)) for row in rows[1:]]
    await asyncio.sleep(0)
    one.gate.set()
    return many, one, await asyncio.gather(first, *rest, return_exceptions=True)


async def test_a_batch_of_one_goes_through_the_one_row_statement_when_there_is_one() -> None:
    many, one, results = await _first_of_two_statements([("g0", "ok"), ("g1", "ok"), ("g2", "ok")])
    assert results == [True] * 3
    assert (one.batches, many.batches) == ([["g0"]], [["g1", "g2"]])


async def test_a_refused_batch_is_retried_row_by_row_with_the_one_row_statement() -> None:
    many, one, results = await _first_of_two_statements(
        [("g0", "ok"), ("g1", "bad"), ("g2", "ok"), ("g3", "ok")], stale=frozenset({"g2"})
    )
    assert results[0] is True and results[3] is True
    assert isinstance(results[1], asyncpg.DataError)
    assert results[2] is None  # not found at its epoch: its write alone answers so
    assert many.batches == [["g1", "g2", "g3"]]
    assert one.batches == [["g0"], ["g1"], ["g2"], ["g3"]]


async def test_a_cancelled_waiter_never_fails_the_rest_of_its_batch() -> None:
    """A waiter that gave up (its request was cancelled) mid-batch: the rows still go in, and
    every other waiter of the batch gets its own answer, in the many-row statement and in the
    row-by-row retry that follows a data error alike."""
    for bad in (False, True):
        statement = Statement()
        statement.gate.clear()
        coalescer = Coalescer(statement, limit=8)
        first = asyncio.create_task(coalescer.write("g0", ("g0", "ok")))
        await asyncio.sleep(0)  # the first batch is on its way, held
        rows = [("g1", "ok"), ("g2", "bad" if bad else "ok"), ("g3", "ok")]
        waiters = [asyncio.create_task(coalescer.write(row[0], row)) for row in rows]
        await asyncio.sleep(0)
        waiters[1].cancel()  # g2's waiter gives up while its row waits in the queue
        await asyncio.sleep(0)
        statement.gate.set()
        answers = await asyncio.gather(first, *waiters, return_exceptions=True)
        assert answers[0] is True and answers[1] is True and answers[3] is True, (bad, answers)
        assert isinstance(answers[2], asyncio.CancelledError)
        assert ["g1", "g2", "g3"] in statement.batches  # the cancelled row still went along
