"""Coalescing of concurrent log writes that recovery can redo (DESIGN rule 4): a saga step's
progress, and a 2PC outcome written after its durable decision.

While one batch is on its way to the log, the writes that arrive queue up; the next batch takes
them all (up to ``limit``) in one statement. A lone write goes at once, so one client sees no
extra wait; at 32 clients a saga's progress writes travel several to a round trip, which saves
the coordinator and the log a statement each (``docs/performance.md``).

Each write keeps its own answer: what its fenced update returned for its transaction, or None
when it did not find it at its epoch (rule 5). Two writes for one transaction never share a
batch, so their order holds. A batch the log refuses for its data is retried one write at a
time, so only the write at fault fails.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg

R = TypeVar("R")


@dataclass
class _Write(Generic[R]):
    gid: str
    row: tuple[Any, ...]
    answer: asyncio.Future[R | None] = field(repr=False)


class Coalescer(Generic[R]):
    """``write(gid, row)`` answers what ``run`` said of that row: ``run(rows)`` writes every
    row in one statement and returns, by gid, what it returned for each transaction it found
    at its epoch."""

    def __init__(
        self,
        run: Callable[[Sequence[tuple[Any, ...]]], Awaitable[dict[str, R]]],
        limit: int = 64,
        run_one: Callable[[tuple[Any, ...]], Awaitable[dict[str, R]]] | None = None,
    ) -> None:
        self.run = run
        # A batch of one row, when the store has a cheaper statement for it (the one-row
        # statement costs the log less than the many-row one with one row).
        self.run_one = run_one
        self.limit = limit
        self._queue: deque[_Write[R]] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0  # statements sent, for the tests and the docs' figures
        self.writes = 0

    async def write(self, gid: str, row: tuple[Any, ...]) -> R | None:
        write: _Write[R] = _Write(gid, row, asyncio.get_running_loop().create_future())
        self._queue.append(write)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="log-write-coalescer")
        return await write.answer

    async def _flush(self) -> None:
        while self._queue:
            batch = self._take()
            try:
                found = await self._send(batch)
            except asyncio.CancelledError:
                for write in batch + list(self._queue):
                    write.answer.cancel()
                self._queue.clear()
                raise
            except Exception as e:
                for write in batch:
                    if not write.answer.done():
                        write.answer.set_exception(e)
                continue
            for write in batch:
                if not write.answer.done():  # a waiter that gave up: the write still stands
                    write.answer.set_result(found.get(write.gid))

    def _take(self) -> list[_Write[R]]:
        batch: list[_Write[R]] = []
        gids: set[str] = set()
        later: list[_Write[R]] = []
        while self._queue and len(batch) < self.limit:
            write = self._queue.popleft()
            (later if write.gid in gids else batch).append(write)
            gids.add(write.gid)
        self._queue.extendleft(reversed(later))
        return batch

    async def _send(self, batch: list[_Write[R]]) -> dict[str, R]:
        self.batches += 1
        self.writes += len(batch)
        if len(batch) == 1:
            return await self._one(batch[0].row)
        try:
            return await self.run([w.row for w in batch])
        except asyncpg.DataError:
            pass
        # One row the log cannot store must not fail the others: one statement each.
        found: dict[str, R] = {}
        for write in batch:
            try:
                found |= await self._one(write.row)
            except asyncpg.DataError as e:
                # A waiter that gave up has a cancelled future: setting it would raise and
                # fail the rows already written.
                if not write.answer.done():
                    write.answer.set_exception(e)
        return found

    async def _one(self, row: tuple[Any, ...]) -> dict[str, R]:
        if self.run_one is not None:
            return await self.run_one(row)
        return await self.run([row])
