"""What the SDK's 2PC and saga halves share: the handler type, the business and transient
errors, the engine a participant holds, and the barrier's lock timeout."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import QueuePool

from participants.sdk.crash import PausePoint
from participants.sdk.settings import ParticipantSettings

Handler = Callable[[AsyncConnection, dict[str, Any]], Awaitable[dict[str, Any] | None]]
# (op, gid, branch): awaited inside the local transaction right after the barrier write.
BarrierHook = Callable[[str, str, int], Awaitable[None]]


# The branch whose business code runs now: (gid, branch index). Set by the SDK around every
# handler call, so a handler can key its own rows by the branch (a compensation then undoes
# exactly its own action's rows, never another transaction's).
_CURRENT_BRANCH: ContextVar[tuple[str, int]] = ContextVar("txn_current_branch")


def current_branch() -> tuple[str, int]:
    """(gid, branch index) of the branch whose handler is running; only inside a handler."""
    try:
        return _CURRENT_BRANCH.get()
    except LookupError:
        raise RuntimeError("current_branch() is only known inside a branch handler") from None


async def call_handler(
    handler: Handler, conn: AsyncConnection, payload: dict[str, Any], gid: str, branch: int
) -> dict[str, Any] | None:
    """Run the business handler with ``current_branch()`` set to (gid, branch)."""
    token = _CURRENT_BRANCH.set((gid, branch))
    try:
        return await handler(conn, payload)
    finally:
        _CURRENT_BRANCH.reset(token)


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
    # A connection whose server vanished mid-exchange (a failover) can be left mid-protocol.
    asyncpg.InternalClientError,
)


# What a statement run with ``run_once`` raises when the server refuses it or the connection
# is gone (asyncpg's own errors: SQLAlchemy does not wrap what it does not run).
STATEMENT_ERRORS: tuple[type[Exception], ...] = (
    DBAPIError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


async def run_once(conn: AsyncConnection, sql: str) -> str:
    """One round trip, simple query protocol: a statement text used once (``PREPARE
    TRANSACTION 'txn:gid:0'``) is not worth a server-side prepare, which costs a round trip of
    its own and churns the driver's statement cache. ``sql`` may hold several statements
    (``BEGIN; INSERT ...``); returns the last one's status (``INSERT 0 1``)."""
    driver = await driver_of(conn)
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


# pragma: no mutate start (connection handling, not the barrier)
async def driver_of(conn: AsyncConnection) -> Any:
    """The asyncpg connection under ``conn``: of a live connection, read without the greenlet
    hop ``get_raw_connection`` takes (one per statement showed in the profile)."""
    sync = conn.sync_connection
    if sync is not None and not sync.invalidated and not sync.closed:
        driver = sync.connection.driver_connection
    else:
        driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None, "an open connection has its driver connection"
    return driver


# pragma: no mutate end
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
    _spare: list[AsyncConnection]
    _spare_cap: int = 1

    # pragma: no mutate start (connection pooling, not the barrier)
    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the participant's engine is not open: use its lifespan")
        return self._engine

    @asynccontextmanager
    async def _autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection whose statements commit by themselves (COMMIT PREPARED needs that).

        The SDK keeps a few of them checked out between its calls (``_spare``): the pool's
        checkout and checkin, with their events and isolation-level switches, cost a
        participant more CPU than a round trip to its database. One is kept only when the call
        ended cleanly, with no transaction open; a connection error drops them all, as a
        crashed database killed every one of them."""
        engine = self.engine
        pair = self._autocommit_pair
        if pair is None or pair[0] is not engine:
            # Made once per engine: building the option engine on every call showed in the
            # profile.
            pair = (engine, engine.execution_options(isolation_level="AUTOCOMMIT"))
            self._autocommit_pair, self._spare = pair, []
            # Half the engine's pool at most: the service's own endpoints keep the rest.
            pool = engine.sync_engine.pool
            size = pool.size() if isinstance(pool, QueuePool) else self.settings.pool_size
            self._spare_cap = max(1, size // 2)
        conn = await self._kept() or await pair[1].connect()
        clean = False
        try:
            yield conn
            clean = True
        finally:
            await self._release(conn, clean and pair is self._autocommit_pair)

    async def _kept(self) -> AsyncConnection | None:
        """A kept connection whose server is still there (one the server closed, as a restart
        does, is known closed as soon as the event loop saw its socket end)."""
        while self._spare:
            conn = self._spare.pop()
            if not (await driver_of(conn)).is_closed():
                return conn
            await conn.invalidate()
            await conn.close()
        return None

    async def _release(self, conn: AsyncConnection, reusable: bool) -> None:
        if conn.invalidated or conn.closed:
            # A connection error (run_once drops the connection): the kept ones met the same
            # fate, a crashed or restarted database, most likely.
            await self._drop_spare()
            await conn.close()
            return
        if (await driver_of(conn)).is_in_transaction():
            # Never back to a pool inside a transaction (the pool's reset does not see one the
            # SDK began itself).
            await conn.invalidate()
            await conn.close()
            return
        if reusable and len(self._spare) < self._spare_cap:
            if conn.in_transaction():
                # SQLAlchemy's own marker: on an AUTOCOMMIT connection, no round trip.
                await conn.rollback()
            self._spare.append(conn)
            return
        await conn.close()

    async def _drop_spare(self) -> None:
        """Drop the kept connections (invalidated: closed, never pooled again): on a connection
        error, and before the engine is disposed of."""
        spare, self._spare = self._spare, []
        for conn in spare:
            await conn.invalidate()
            await conn.close()

    # pragma: no mutate end
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

    # pragma: no mutate start (tests' pause points)
    async def _pause_at(self, point: str) -> None:
        """Tests only (``pause_at``): hold the call here until the test releases it."""
        if self.pause is not None:
            await self.pause.hit(point)

    # pragma: no mutate end
    def _one_shot_allowed(self) -> bool:
        """Tests' pause points and barrier hooks need the path with those stops."""
        return bool(self.settings.one_shot) and not self._stops_armed()

    async def _in_one_round_trip(self, sql: str) -> bool:
        """Run a one-shot text (participants/sdk/oneshot.py). True: it took effect whole. False:
        the server refused part of it, so none of it did (rolled back): take the ordinary path.
        A lost connection raises: whether the text ran is then unknown, as for any call."""
        async with self._autocommit() as conn:
            try:
                await run_once(conn, sql)
            except asyncpg.PostgresError:
                if conn.invalidated:
                    raise
                await run_once(conn, "ROLLBACK")
                return False
        return True

    def _stops_armed(self) -> bool:
        """Tests only: a pause point or barrier hook is set, so calls take the path that has
        those stops (never the one-round-trip path)."""
        return self.barrier_hook is not None or bool(self.pause is not None and self.pause.point)

    async def _at_barrier(self, op: str, gid: str, branch: int) -> None:
        if self.barrier_hook is not None:
            await self.barrier_hook(op, gid, branch)
