"""The 2PC half of the participant SDK: a prepare runs the business handler, writes the barrier
row and ``PREPARE TRANSACTION`` in one local transaction; commit and rollback finish it. Every
call is idempotent: a repeated call answers as the first one did."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from participants.sdk import wire
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
from participants.sdk.oneshot import OneShot, attempt, prepare_text
from participants.sdk.schema import BARRIER

log = logging.getLogger(__name__)

# SQLSTATEs the 2PC calls tell apart.
UNDEFINED_OBJECT = "42704"  # no prepared transaction with that name
OBJECT_IN_USE = "55006"  # another backend is finishing that prepared transaction right now
LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout: a prepare holds the branch's barrier key
QUERY_CANCELED = "57014"

_BARRIER_INSERT = text(
    f"INSERT INTO {BARRIER} (gid, branch, op, outcome, reason) "
    "VALUES (:gid, :branch, '2pc', :outcome, :reason) ON CONFLICT DO NOTHING RETURNING 1"
)
_BARRIER_READ = text(
    f"SELECT outcome, reason FROM {BARRIER} WHERE gid = :gid AND branch = :branch AND op = '2pc'"
)
_IS_PREPARED = text(
    "SELECT 1 FROM pg_prepared_xacts WHERE gid = :xid AND database = current_database()"
)


# Lock timeout, deadlock detected, serialization failure: another transaction is in the way.
CONTENTION = frozenset({"55P03", "40P01", "40001"})


def begin_and_claim(gid: str, branch: int, xid: str, lock_timeout_ms: int | None) -> str:
    """One round trip: begin, and take the branch's barrier key unless the branch is prepared
    already (then the key is the prepared transaction's, and waiting on it would last until its
    commit). Its status is ``INSERT 0 1`` when the key is now ours. (The bench's floor sends the
    same text.)"""
    return (
        begin(lock_timeout_ms) + f"INSERT INTO {BARRIER} (gid, branch, op, outcome) "
        f"SELECT {literal(gid)}, {int(branch)}, '2pc', 'prepared' "
        f"WHERE NOT EXISTS (SELECT 1 FROM pg_prepared_xacts "
        f"WHERE gid = {literal(xid)} AND database = current_database()) "
        "ON CONFLICT DO NOTHING"
    )


class TwoPhase(_Core):
    """prepare, commit and rollback of one 2PC branch, as (HTTP status, JSON body)."""

    async def prepare(
        self,
        gid: str,
        branch: int,
        payload: dict[str, Any],
        handler: Handler,
        one_shot: OneShot | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Phase one. 200: voted yes (prepared now, earlier, or already committed).
        409: voted no, now or earlier, or refused because a rollback came first.

        With ``one_shot`` (participants/sdk/oneshot.py), the happy case is one round trip; any
        other case runs the path below.

        Three round trips when all goes well: ``BEGIN`` and the barrier row together, the
        handler's statements, ``PREPARE TRANSACTION``. The SDK begins the local transaction
        itself on an AUTOCOMMIT connection, so no driver-issued ``BEGIN`` or ``COMMIT`` costs a
        round trip of its own."""
        xid = wire.xid(gid, branch)
        key = {"gid": gid, "branch": branch}
        try:
            done = await attempt(
                self, one_shot, payload, lambda sql: prepare_text(gid, branch, xid, sql)
            )
            if done is not None:
                log.debug("prepared", extra={"gid": gid, "branch": branch})
                return 200, {"vote": "yes", "prepared": xid, "result": done}
            async with self._autocommit() as conn:
                ended = False
                try:
                    claimed = await run_once(
                        conn, begin_and_claim(gid, branch, xid, self._lock_wait_ms())
                    )
                    if claimed != "INSERT 0 1":
                        # Prepared already (a repeat), or the key is another call's: answer as
                        # that call did, running no business code.
                        await run_once(conn, "ROLLBACK")
                        ended = True
                        return await self._answer_existing_prepare(conn, key, xid)
                    await self._at_barrier("prepare", gid, branch)
                    try:
                        result = await call_handler(handler, conn, payload, gid, branch)
                    except DBAPIError as e:
                        if sqlstate(e) not in CONTENTION:
                            raise
                        # Waiting on another transaction's row locks while this one's other
                        # branches hold theirs can deadlock across databases, where no single
                        # server sees the cycle. Vote no: the global transaction aborts, frees
                        # its locks, and the client may retry it.
                        raise BusinessError(
                            f"contention: rows locked by another transaction for over "
                            f"{self.settings.lock_timeout_ms} ms ({sqlstate(e)}); retry later"
                        ) from e
                    # The barrier row and the business change are prepared together: after
                    # this they survive a crash, and only COMMIT/ROLLBACK PREPARED ends them.
                    await self._pause_at("before_prepare_statement")  # pragma: no mutate
                    await run_once(conn, f"PREPARE TRANSACTION {literal(xid)}")
                    ended = True  # the session has no open transaction any more
                except BusinessError as e:
                    await run_once(conn, "ROLLBACK")
                    ended = True
                    await self._record_no_vote(key, e.reason)
                    return 409, {"reason": e.reason}
                finally:
                    await roll_back_unless(conn, ended)
        except STATEMENT_ERRORS as e:
            raise _Transient(f"prepare of {xid} failed: {sqlstate(e) or e}") from e
        log.debug("prepared", extra={"gid": gid, "branch": branch})
        # The prepared transaction's name: the coordinator counts a yes vote only with it (any
        # other 2xx, say from an endpoint that is not a 2PC branch, is a failed prepare).
        return 200, {"vote": "yes", "prepared": xid, "result": result or {}}

    async def _answer_existing_prepare(
        self, conn: AsyncConnection, key: dict[str, Any], xid: str
    ) -> tuple[int, dict[str, Any]]:
        if (await conn.execute(_IS_PREPARED, {"xid": xid})).first() is not None:
            return 200, {"vote": "yes", "prepared": xid, "repeat": True}
        row = (await conn.execute(_BARRIER_READ, key)).first()
        if row is None:  # the row we conflicted with was rolled back meanwhile: try again
            raise _Transient("branch is being resolved concurrently")
        if row.outcome == "prepared":  # prepared and since committed
            return 200, {"vote": "yes", "prepared": xid, "repeat": True}
        if row.outcome == "rolled_back":
            return 409, {"reason": "this branch was rolled back before it could be prepared"}
        return 409, {"reason": row.reason or "voted no"}

    async def _record_no_vote(self, key: dict[str, Any], reason: str) -> None:
        # A repeated prepare must answer 409 with the same reason, not rerun the handler.
        async with self._autocommit() as conn:
            await conn.execute(_BARRIER_INSERT, {**key, "outcome": "voted_no", "reason": reason})

    async def commit(self, gid: str, branch: int) -> tuple[int, dict[str, Any]]:
        xid = wire.xid(gid, branch)
        key = {"gid": gid, "branch": branch}
        async with self._autocommit() as conn:
            try:
                await self._pause_at("before_commit_prepared")  # pragma: no mutate
                await run_once(conn, f"COMMIT PREPARED '{xid}'")
                return 200, {"committed": True}
            except STATEMENT_ERRORS as e:
                code = sqlstate(e)
                if code != UNDEFINED_OBJECT:
                    raise _Transient(f"commit of {xid} failed: {code or e}") from e
            row = (await conn.execute(_BARRIER_READ, key)).first()
        if row is not None and row.outcome == "prepared":
            return 200, {"committed": True, "repeat": True}
        outcome = row.outcome if row is not None else "nothing recorded"
        return 409, {"reason": f"cannot commit {xid}: it is not prepared ({outcome})"}

    async def rollback(self, gid: str, branch: int) -> tuple[int, dict[str, Any]]:
        xid = wire.xid(gid, branch)
        key = {"gid": gid, "branch": branch}
        marker = {**key, "outcome": "rolled_back", "reason": None}
        async with self._autocommit() as conn:
            try:
                await run_once(conn, f"ROLLBACK PREPARED '{xid}'")
                # The prepared barrier row is gone with it: leave a marker so a duplicated
                # prepare arriving later is refused instead of preparing again.
                await conn.execute(_BARRIER_INSERT, marker)
                return 200, {"rolled_back": True}
            except STATEMENT_ERRORS as e:
                code = sqlstate(e)
                if code != UNDEFINED_OBJECT:
                    raise _Transient(f"rollback of {xid} failed: {code or e}") from e
        try:
            async with self.engine.begin() as tconn:
                await self._limit_lock_wait(tconn)
                inserted = (await tconn.execute(_BARRIER_INSERT, marker)).first()
                row = None if inserted else (await tconn.execute(_BARRIER_READ, key)).first()
        except DBAPIError as e:
            # A prepare of this branch holds the key; once it is prepared, a retry finds it.
            raise _Transient(f"rollback of {xid} must wait: {sqlstate(e) or e}") from e
        if inserted is not None:
            return 200, {"rolled_back": True, "marker": True}
        if row is not None and row.outcome == "prepared":
            return 409, {"reason": f"cannot roll back {xid}: it is already committed"}
        return 200, {"rolled_back": True, "repeat": True}
