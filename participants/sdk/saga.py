"""The saga half of the participant SDK: DTM's sub-transaction barrier, written in the same local
transaction as the business change. Per branch, rows ``(gid, branch, 'action')`` and
``(gid, branch, 'compensate')`` in the barrier table make every call idempotent:

- a duplicate action or compensation answers as the first did without running business code;
- a compensation that arrives before its action ever ran (null compensation) writes the action's
  row itself as ``null_compensated`` and succeeds without running business code, so the late
  action then finds the key taken and is refused (anti-hanging);
- two racing calls serialize on the primary key: the second waits (at most the lock timeout,
  then 503) until the first commits or rolls back, then decides from what it finds.

TCC's try and cancel (participants/sdk/tcc.py) are the same two calls under other names: the
forward step and its undo here take a ``Phases`` that names their ops, outcomes and answers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from participants.sdk.base import (
    STATEMENT_ERRORS,
    BusinessError,
    Handler,
    _Core,
    _Transient,
    begin,
    call_handler,
    literal,
    roll_back_unless,
    run_once,
    sqlstate,
)
from participants.sdk.oneshot import OneShot, action_text, attempt
from participants.sdk.schema import BARRIER

log = logging.getLogger(__name__)

ACTION = "action"
COMPENSATE = "compensate"
# Outcomes of the action row: it ran and committed, it refused (with a reason), or a
# compensation took its key before it ever ran.
DONE = "done"
FAILED = "failed"
NULL_COMPENSATED = "null_compensated"

_INSERT = text(
    f"INSERT INTO {BARRIER} (gid, branch, op, outcome, reason) "
    "VALUES (:gid, :branch, :op, :outcome, :reason) ON CONFLICT DO NOTHING RETURNING 1"
)
# The forward step's row (the saga action's, or TCC's try): ``op`` names it.
_READ_ACTION = text(
    f"SELECT outcome, reason FROM {BARRIER} WHERE gid = :gid AND branch = :branch AND op = :op"
)

Reply = tuple[int, dict[str, Any]]


@dataclass(frozen=True)
class Phases:
    """A forward step and its undo, as the barrier names them: the saga's action and
    compensation, or TCC's try and cancel."""

    forward: str  # the forward step's op (its barrier row and its barrier hook)
    undo: str  # the undo's op
    null: str  # the forward row's outcome when the undo took its key first
    late: str  # the refusal of a forward step whose undo came first (anti-hanging)
    undone: str  # the undo's answer's key: {"compensated": true, ...}
    forward_label: str  # in 503 details and logs: "action 'gid'/0 failed: ..."
    undo_label: str
    forward_pause: str  # the pause points before each one's COMMIT (tests only)
    undo_pause: str


SAGA = Phases(
    forward=ACTION,
    undo=COMPENSATE,
    null=NULL_COMPENSATED,
    late="this branch was compensated before it ran: the action is refused",
    undone="compensated",
    forward_label="action",
    undo_label="compensation",
    forward_pause="before_action_commit",
    undo_pause="before_compensate_commit",
)


def _row(key: dict[str, Any], op: str, outcome: str, reason: str | None = None) -> dict[str, Any]:
    return {**key, "op": op, "outcome": outcome, "reason": reason}


def _answer_existing_action(row: Row[Any] | None, phases: Phases = SAGA) -> Reply:
    if row is None:  # the row we conflicted with is gone again (retention): try later
        raise _Transient("branch is being resolved concurrently")
    if row.outcome == DONE:
        return 200, {"done": True, "repeat": True}
    if row.outcome == phases.null:
        return 409, {"reason": phases.late}
    return 409, {"reason": row.reason or f"the {phases.forward_label} failed"}


def begin_and_take(gid: str, branch: int, lock_timeout_ms: int | None, op: str = ACTION) -> str:
    """Begin, and take the forward step's barrier key: status ``INSERT 0 1`` when it is ours.
    (The bench's floor sends the same text.)"""
    return (
        begin(lock_timeout_ms) + f"INSERT INTO {BARRIER} (gid, branch, op, outcome) "
        f"VALUES ({literal(gid)}, {int(branch)}, '{op}', '{DONE}') "
        "ON CONFLICT DO NOTHING"
    )


# The work of one local transaction: (status, body, whether to commit).
Work = Callable[[AsyncConnection], Awaitable[tuple[int, dict[str, Any], bool]]]


class SagaBarrier(_Core):
    """run_action and run_compensation of one saga branch, as (HTTP status, JSON body)."""

    async def run_action(
        self,
        gid: str,
        branch: int,
        payload: dict[str, Any],
        handler: Handler,
        one_shot: OneShot | None = None,
    ) -> Reply:
        """200: done now, or earlier (a duplicate: the handler does not run again).
        409: refused now or earlier (same reason), or compensated before it ran. With
        ``one_shot`` (participants/sdk/oneshot.py), the happy case is one round trip."""
        return await self._run_forward(SAGA, gid, branch, payload, handler, one_shot)

    async def _run_forward(
        self,
        phases: Phases,
        gid: str,
        branch: int,
        payload: dict[str, Any],
        handler: Handler,
        one_shot: OneShot | None = None,
    ) -> Reply:
        key = {"gid": gid, "branch": branch}
        try:
            done = await attempt(self, one_shot, payload, lambda sql: action_text(gid, branch, sql))
            if done is not None:
                log.debug("%s done", phases.forward_label, extra={"gid": gid, "branch": branch})
                return 200, {"done": True, "result": done}
            # Begun by the SDK on an AUTOCOMMIT connection: BEGIN travels with the barrier
            # row, one round trip (see TwoPhase.prepare).
            async with self._autocommit() as conn:
                ended = False
                try:
                    claimed = await run_once(
                        conn, begin_and_take(gid, branch, self._lock_wait_ms(), phases.forward)
                    )
                    if claimed != "INSERT 0 1":
                        read = {**key, "op": phases.forward}
                        existing = (await conn.execute(_READ_ACTION, read)).first()
                        await run_once(conn, "ROLLBACK")
                        ended = True
                        return _answer_existing_action(existing, phases)
                    await self._at_barrier(phases.forward, gid, branch)
                    result = await call_handler(handler, conn, payload, gid, branch)
                    await self._pause_at(phases.forward_pause)  # pragma: no mutate
                    # The business change and its 'done' row together.
                    await run_once(conn, "COMMIT")
                    ended = True
                except BusinessError as e:
                    await run_once(conn, "ROLLBACK")
                    ended = True
                    await self._record_failure(key, e.reason, phases.forward)
                    return 409, {"reason": e.reason}
                finally:
                    await roll_back_unless(conn, ended)
        except STATEMENT_ERRORS as e:
            what = phases.forward_label
            raise _Transient(f"{what} {gid}/{branch} failed: {sqlstate(e) or e}") from e
        log.debug("%s done", phases.forward_label, extra={"gid": gid, "branch": branch})
        return 200, {"done": True, "result": result or {}}

    async def _record_failure(self, key: dict[str, Any], reason: str, op: str = ACTION) -> None:
        # Autonomous, after the rollback: a duplicate answers the same 409 without running the
        # handler. If a compensation took the key meanwhile, its row stands (DO NOTHING).
        async with self._autocommit() as conn:
            await conn.execute(_INSERT, _row(key, op, FAILED, reason))

    async def run_compensation(
        self, gid: str, branch: int, payload: dict[str, Any], handler: Handler
    ) -> Reply:
        """200: compensated now or earlier, or nothing to undo (the action failed, or never ran
        and now never will: ``{"null": true}``). 409: the handler refused; nothing is recorded,
        so a retry runs it again."""
        return await self._run_undo(SAGA, gid, branch, payload, handler)

    async def _run_undo(
        self, phases: Phases, gid: str, branch: int, payload: dict[str, Any], handler: Handler
    ) -> Reply:
        key = {"gid": gid, "branch": branch}

        async def work(conn: AsyncConnection) -> tuple[int, dict[str, Any], bool]:
            # The origin row: inserted means the forward step never ran, and now never will.
            origin = (await conn.execute(_INSERT, _row(key, phases.forward, phases.null))).first()
            action = None
            if origin is None:
                action = (await conn.execute(_READ_ACTION, {**key, "op": phases.forward})).first()
                if action is None:
                    raise _Transient("branch is being resolved concurrently")
            mine = (await conn.execute(_INSERT, _row(key, phases.undo, DONE))).first()
            if mine is None:  # undone already: answer as the first did
                return 200, {phases.undone: True, "repeat": True}, False
            await self._at_barrier(phases.undo, gid, branch)
            answer: dict[str, Any] = {phases.undone: True}
            if action is None:
                answer["null"] = True
            elif action.outcome == DONE:
                answer["result"] = await call_handler(handler, conn, payload, gid, branch) or {}
            else:  # the forward step refused: there is nothing to undo
                answer["nothing_to_undo"] = True
            await self._pause_at(phases.undo_pause)  # pragma: no mutate
            return 200, answer, True

        reply = await self._in_transaction(phases.undo_label, gid, branch, work)
        if reply[0] == 200:
            log.debug("%s done", phases.undo_label, extra={"gid": gid, "branch": branch})
        return reply

    async def _in_transaction(self, what: str, gid: str, branch: int, work: Work) -> Reply:
        """``work`` in one local transaction, committed when it says so. A BusinessError: 409,
        and nothing is recorded, barrier rows included (the coordinator retries). A database
        error: _Transient (503)."""
        try:
            async with self.engine.connect() as conn:
                trans = await conn.begin()
                try:
                    await self._limit_lock_wait(conn)
                    status, answer, keep = await work(conn)
                    if keep:
                        await trans.commit()
                    else:
                        await trans.rollback()
                    return status, answer
                except BusinessError as e:
                    await trans.rollback()
                    return 409, {"reason": e.reason}
                except BaseException:
                    if trans.is_active:
                        await trans.rollback()
                    raise
        except DBAPIError as e:
            raise _Transient(f"{what} {gid}/{branch} failed: {sqlstate(e) or e}") from e
