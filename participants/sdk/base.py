"""What the SDK's 2PC and saga halves share: the handler type, the business and transient
errors, the engine a participant holds, and the barrier's lock timeout."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.crash import PausePoint
from participants.sdk.settings import ParticipantSettings

Handler = Callable[[AsyncConnection, dict[str, Any]], Awaitable[dict[str, Any] | None]]
# (op, gid, branch): awaited inside the local transaction right after the barrier write.
BarrierHook = Callable[[str, str, int], Awaitable[None]]


class BusinessError(Exception):
    """Raised by a handler to refuse the work; the participant answers 409 with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Transient(Exception):
    """The call cannot be answered now; the coordinator retries (HTTP 503)."""


# The database failed the call where no protocol step expected it: it is down, restarting, or
# dropped the connection. Such a call is answered 503 like a _Transient, never 500. Connecting
# raises the driver's own errors (a refused connection is an OSError; "the database system is
# starting up" an asyncpg error), which SQLAlchemy does not wrap in DBAPIError.
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    DBAPIError,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


# What a statement run with ``run_once`` raises when the server refuses it or the connection
# is gone (asyncpg's own errors: SQLAlchemy does not wrap what it does not run).
STATEMENT_ERRORS: tuple[type[Exception], ...] = (
    DBAPIError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


async def run_once(conn: AsyncConnection, sql: str) -> str:
    """One round trip, simple query protocol: a statement text used once (``PREPARE
    TRANSACTION 'txn:gid:0'``) is not worth a server-side prepare, which costs a round trip of
    its own and churns the driver's statement cache. ``sql`` may hold several statements
    (``BEGIN; INSERT ...``); returns the last one's status (``INSERT 0 1``)."""
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None, "an open connection has its driver connection"
    try:
        status: str = await driver.execute(sql)
        return status
    except BaseException as e:
        # SQLAlchemy does not see this call, so it cannot tell a dead connection from a refused
        # statement: drop the connection ourselves unless the server merely refused the SQL.
        # (Found by test_participant_db_crash: the pool kept handing out connections a crash had
        # killed, and the commit took one attempt per dead connection.)
        refused = isinstance(e, asyncpg.PostgresError) and (sqlstate(e) or "")[:2] not in (
            "08",  # connection exception
            "57",  # operator intervention: shutdown, terminated
        )
        if not refused or driver.is_closed():
            await conn.invalidate()
        raise


def literal(value: str) -> str:
    """``value`` as an SQL string literal, for the few statements sent as text in one round trip
    (``BEGIN; INSERT ...``). Only gids and names made of them pass: nothing to escape."""
    if not SAFE_LITERAL.match(value):
        raise ValueError(f"not a gid-like value: {value!r}")
    return f"'{value}'"


SAFE_LITERAL = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")


def begin(lock_timeout_ms: int | None) -> str:
    """The start of a local transaction the SDK begins itself, to be sent in the same text as
    its first statement; with ``lock_timeout_ms`` when the connection does not carry one."""
    if lock_timeout_ms is None:
        return "BEGIN; "
    return f"BEGIN; SET LOCAL lock_timeout = {int(lock_timeout_ms)}; "


async def roll_back_unless(conn: AsyncConnection, ended: bool) -> None:
    """Roll back a local transaction the SDK began itself on an AUTOCOMMIT connection, unless
    it ``ended`` already. If it cannot be rolled back, the connection is dropped, never returned
    to the pool inside a transaction."""
    if ended or conn.closed or conn.invalidated:
        return  # ended, or the connection is dropped already (a dead one is never pooled)
    try:
        await run_once(conn, "ROLLBACK")
    except BaseException:
        if not conn.invalidated:
            await conn.invalidate()
        raise


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error, looking through SQLAlchemy's and asyncpg's wrappers."""
    seen: BaseException | None = exc
    while seen is not None:
        for attr in ("sqlstate", "pgcode"):
            code = getattr(seen, attr, None)
            if isinstance(code, str):
                return code
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


class _Core:
    """The engine and settings both protocol halves run on."""

    settings: ParticipantSettings
    _engine: AsyncEngine | None
    barrier_hook: BarrierHook | None
    pause: PausePoint | None = None
    # True once the engine's connections carry lock_timeout themselves (the SDK made them).
    lock_timeout_set: bool = False
    _autocommit_pair: tuple[AsyncEngine, AsyncEngine] | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the participant's engine is not open: use its lifespan")
        return self._engine

    def _autocommit(self) -> AsyncConnection:
        """A connection whose statements commit by themselves (COMMIT PREPARED needs that)."""
        # Made once per engine: building the option engine on every call showed in the profile.
        engine = self.engine
        if self._autocommit_pair is None or self._autocommit_pair[0] is not engine:
            self._autocommit_pair = (engine, engine.execution_options(isolation_level="AUTOCOMMIT"))
        return self._autocommit_pair[1].connect()

    async def _limit_lock_wait(self, conn: AsyncConnection) -> None:
        """A call that finds its barrier key held by another call waits at most this long,
        then answers 503: no request blocks for long behind another."""
        timeout = self._lock_wait_ms()
        if timeout is not None:
            await conn.execute(text(f"SET LOCAL lock_timeout = {timeout}"))

    def _lock_wait_ms(self) -> int | None:
        """The lock timeout a local transaction must set itself: None when the connection
        carries it already."""
        return None if self.lock_timeout_set else int(self.settings.lock_timeout_ms)

    async def _pause_at(self, point: str) -> None:
        """Tests only (``pause_at``): hold the call here until the test releases it."""
        if self.pause is not None:
            await self.pause.hit(point)

    async def _at_barrier(self, op: str, gid: str, branch: int) -> None:
        if self.barrier_hook is not None:
            await self.barrier_hook(op, gid, branch)
