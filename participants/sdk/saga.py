"""The saga half of the participant SDK: DTM's sub-transaction barrier, written in the same local
transaction as the business change. Per branch, rows ``(gid, branch, 'action')`` and
``(gid, branch, 'compensate')`` in the barrier table make every call idempotent:

- a duplicate action or compensation answers as the first did without running business code;
- a compensation that arrives before its action ever ran (null compensation) writes the action's
  row itself as ``null_compensated`` and succeeds without running business code, so the late
  action then finds the key taken and is refused (anti-hanging);
- two racing calls serialize on the primary key: the second waits (at most the lock timeout,
  then 503) until the first commits or rolls back, then decides from what it finds.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError

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
_READ_ACTION = text(
    f"SELECT outcome, reason FROM {BARRIER} "
    f"WHERE gid = :gid AND branch = :branch AND op = '{ACTION}'"
)

Reply = tuple[int, dict[str, Any]]


def _row(key: dict[str, Any], op: str, outcome: str, reason: str | None = None) -> dict[str, Any]:
    return {**key, "op": op, "outcome": outcome, "reason": reason}


def _answer_existing_action(row: Row[Any] | None) -> Reply:
    if row is None:  # the row we conflicted with is gone again (retention): try later
        raise _Transient("branch is being resolved concurrently")
    if row.outcome == DONE:
        return 200, {"done": True, "repeat": True}
    if row.outcome == NULL_COMPENSATED:
        return 409, {"reason": "this branch was compensated before it ran: the action is refused"}
    return 409, {"reason": row.reason or "the action failed"}


def begin_and_take(gid: str, branch: int, lock_timeout_ms: int | None) -> str:
    """Begin, and take the action's barrier key: status ``INSERT 0 1`` when it is ours. (The
    bench's floor sends the same text.)"""
    return (
        begin(lock_timeout_ms) + f"INSERT INTO {BARRIER} (gid, branch, op, outcome) "
        f"VALUES ({literal(gid)}, {int(branch)}, '{ACTION}', '{DONE}') "
        "ON CONFLICT DO NOTHING"
    )


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
        key = {"gid": gid, "branch": branch}
        try:
            done = await attempt(self, one_shot, payload, lambda sql: action_text(gid, branch, sql))
            if done is not None:
                log.debug("saga action done", extra={"gid": gid, "branch": branch})
                return 200, {"done": True, "result": done}
            # Begun by the SDK on an AUTOCOMMIT connection: BEGIN travels with the barrier
            # row, one round trip (see TwoPhase.prepare).
            async with self._autocommit() as conn:
                ended = False
                try:
                    claimed = await run_once(
                        conn, begin_and_take(gid, branch, self._lock_wait_ms())
                    )
                    if claimed != "INSERT 0 1":
                        existing = (await conn.execute(_READ_ACTION, key)).first()
                        await run_once(conn, "ROLLBACK")
                        ended = True
                        return _answer_existing_action(existing)
                    await self._at_barrier(ACTION, gid, branch)
                    result = await call_handler(handler, conn, payload, gid, branch)
                    await self._pause_at("before_action_commit")  # pragma: no mutate
                    # The business change and its 'done' row together.
                    await run_once(conn, "COMMIT")
                    ended = True
                except BusinessError as e:
                    await run_once(conn, "ROLLBACK")
                    ended = True
                    await self._record_failure(key, e.reason)
                    return 409, {"reason": e.reason}
                finally:
                    await roll_back_unless(conn, ended)
        except STATEMENT_ERRORS as e:
            raise _Transient(f"action {gid}/{branch} failed: {sqlstate(e) or e}") from e
        log.debug("saga action done", extra={"gid": gid, "branch": branch})
        return 200, {"done": True, "result": result or {}}

    async def _record_failure(self, key: dict[str, Any], reason: str) -> None:
        # Autonomous, after the rollback: a duplicate answers the same 409 without running the
        # handler. If a compensation took the key meanwhile, its row stands (DO NOTHING).
        async with self._autocommit() as conn:
            await conn.execute(_INSERT, _row(key, ACTION, FAILED, reason))

    async def run_compensation(
        self, gid: str, branch: int, payload: dict[str, Any], handler: Handler
    ) -> Reply:
        """200: compensated now or earlier, or nothing to undo (the action failed, or never ran
        and now never will: ``{"null": true}``). 409: the handler refused; nothing is recorded,
        so a retry runs it again."""
        key = {"gid": gid, "branch": branch}
        try:
            async with self.engine.connect() as conn:
                trans = await conn.begin()
                try:
                    await self._limit_lock_wait(conn)
                    # The origin row: inserted means the action never ran, and now never will.
                    origin = (
                        await conn.execute(_INSERT, _row(key, ACTION, NULL_COMPENSATED))
                    ).first()
                    action = None
                    if origin is None:
                        action = (await conn.execute(_READ_ACTION, key)).first()
                        if action is None:
                            raise _Transient("branch is being resolved concurrently")
                    mine = (await conn.execute(_INSERT, _row(key, COMPENSATE, DONE))).first()
                    if mine is None:  # compensated already: answer as the first did
                        await trans.rollback()
                        return 200, {"compensated": True, "repeat": True}
                    await self._at_barrier(COMPENSATE, gid, branch)
                    answer: dict[str, Any] = {"compensated": True}
                    if action is None:
                        answer["null"] = True
                    elif action.outcome == DONE:
                        answer["result"] = (
                            await call_handler(handler, conn, payload, gid, branch) or {}
                        )
                    else:  # the action refused: there is nothing to undo
                        answer["nothing_to_undo"] = True
                    await self._pause_at("before_compensate_commit")  # pragma: no mutate
                    await trans.commit()
                except BusinessError as e:
                    # Nothing is recorded, barrier rows included: the coordinator retries.
                    await trans.rollback()
                    return 409, {"reason": e.reason}
                except BaseException:
                    if trans.is_active:
                        await trans.rollback()
                    raise
        except DBAPIError as e:
            raise _Transient(f"compensation {gid}/{branch} failed: {sqlstate(e) or e}") from e
        log.debug("saga compensation done", extra={"gid": gid, "branch": branch})
        return 200, answer
