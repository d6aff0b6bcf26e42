"""The 2PC half of the participant SDK: a router whose prepare endpoints run the business
handler, write the barrier row and ``PREPARE TRANSACTION`` in one local transaction, plus the
fixed ``/txn/2pc/commit`` and ``/txn/2pc/rollback`` endpoints. Every endpoint is idempotent:
a repeated call answers as the first one did."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.crash import PARTICIPANT_POINTS, CrashPoints
from coordinator.db import make_engine
from participants.sdk import wire
from participants.sdk.schema import BARRIER
from participants.sdk.settings import ParticipantSettings

log = logging.getLogger(__name__)

Handler = Callable[[AsyncConnection, dict[str, Any]], Awaitable[dict[str, Any] | None]]

# SQLSTATEs the 2PC endpoints tell apart.
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


class BusinessError(Exception):
    """Raised by a handler to refuse the work; the participant answers 409 with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Transient(Exception):
    """The call cannot be answered now; the coordinator retries (HTTP 503)."""


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


def _reply(status: int, body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class Participant:
    """Holds the service's engine and the 2PC endpoints registered on it."""

    def __init__(self, settings: ParticipantSettings, engine: AsyncEngine | None = None) -> None:
        self.settings = settings
        self._engine = engine
        self.router = APIRouter()
        self.crash = CrashPoints(settings.crash_at, settings.crash_marker, PARTICIPANT_POINTS)
        self.router.add_api_route(wire.COMMIT_PATH, self._commit_endpoint, methods=["POST"])
        self.router.add_api_route(wire.ROLLBACK_PATH, self._rollback_endpoint, methods=["POST"])

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the participant's engine is not open: use its lifespan")
        return self._engine

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        if self._engine is None:
            self._engine = make_engine(self.settings.dsn, pool_size=self.settings.pool_size)
        try:
            yield
        finally:
            await self._engine.dispose()
            self._engine = None

    def twopc(self, path: str) -> Callable[[Handler], Handler]:
        """Register ``handler`` as the prepare (phase one) of a 2PC branch at ``path``."""

        def register(handler: Handler) -> Handler:
            async def endpoint(request: Request) -> Response:
                return await self._prepare_endpoint(request, handler)

            endpoint.__name__ = f"prepare_{handler.__name__}"
            self.router.add_api_route(
                path,
                endpoint,
                methods=["POST"],
                summary=f"2PC prepare: {handler.__doc__ or handler.__name__}",
            )
            return handler

        return register

    # -- request plumbing ----------------------------------------------------------------

    async def _branch_of(self, request: Request, op: str) -> tuple[str, int, bytes] | Response:
        gid = request.headers.get(wire.H_GID, "")
        raw_branch = request.headers.get(wire.H_BRANCH, "")
        body = await request.body()
        if not wire.GID_PATTERN.match(gid):
            return _reply(
                400, {"detail": f"header {wire.H_GID} must match {wire.GID_PATTERN.pattern}"}
            )
        if not raw_branch.isdigit() or int(raw_branch) >= wire.MAX_BRANCHES:
            return _reply(
                400, {"detail": f"header {wire.H_BRANCH} must be 0..{wire.MAX_BRANCHES - 1}"}
            )
        branch = int(raw_branch)
        if self.settings.hmac_secret:
            signature = request.headers.get(wire.H_SIGNATURE, "")
            if not wire.verify(self.settings.hmac_secret, gid, branch, op, body, signature):
                return _reply(401, {"detail": f"header {wire.H_SIGNATURE} is missing or wrong"})
        return gid, branch, body

    async def _prepare_endpoint(self, request: Request, handler: Handler) -> Response:
        parsed = await self._branch_of(request, "prepare")
        if isinstance(parsed, Response):
            return parsed
        gid, branch, body = parsed
        try:
            payload = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            return _reply(409, {"reason": "payload is not valid JSON"})
        if not isinstance(payload, dict):
            return _reply(409, {"reason": "payload must be a JSON object"})
        try:
            status, answer = await self.prepare(gid, branch, payload, handler)
        except _Transient as e:
            return _reply(503, {"detail": str(e)})
        if status == 200:
            self.crash.hit("after_prepare_before_reply")
        return _reply(status, answer)

    async def _commit_endpoint(self, request: Request) -> Response:
        parsed = await self._branch_of(request, "commit")
        if isinstance(parsed, Response):
            return parsed
        try:
            status, answer = await self.commit(parsed[0], parsed[1])
        except _Transient as e:
            return _reply(503, {"detail": str(e)})
        if status == 200:
            self.crash.hit("after_commit_before_reply")
        return _reply(status, answer)

    async def _rollback_endpoint(self, request: Request) -> Response:
        parsed = await self._branch_of(request, "rollback")
        if isinstance(parsed, Response):
            return parsed
        try:
            status, answer = await self.rollback(parsed[0], parsed[1])
        except _Transient as e:
            return _reply(503, {"detail": str(e)})
        return _reply(status, answer)

    # -- the protocol --------------------------------------------------------------------

    def _autocommit(self) -> AsyncConnection:
        """A connection whose statements commit by themselves (COMMIT PREPARED needs that)."""
        return self.engine.execution_options(isolation_level="AUTOCOMMIT").connect()

    async def prepare(
        self, gid: str, branch: int, payload: dict[str, Any], handler: Handler
    ) -> tuple[int, dict[str, Any]]:
        """Phase one. 200: voted yes (prepared now, earlier, or already committed).
        409: voted no, now or earlier, or refused because a rollback came first."""
        xid = wire.xid(gid, branch)
        key = {"gid": gid, "branch": branch}
        async with self._autocommit() as conn:
            if (await conn.execute(_IS_PREPARED, {"xid": xid})).first() is not None:
                return 200, {"vote": "yes", "repeat": True}
        try:
            async with self.engine.connect() as conn:
                trans = await conn.begin()
                try:
                    await conn.execute(
                        text(f"SET LOCAL lock_timeout = {self.settings.lock_timeout_ms}")
                    )
                    fresh = await conn.execute(
                        _BARRIER_INSERT, {**key, "outcome": "prepared", "reason": None}
                    )
                    if fresh.first() is None:
                        await trans.rollback()
                        return await self._answer_existing_prepare(conn, key)
                    result = await handler(conn, payload)
                    # The barrier row and the business change are prepared together: after
                    # this they survive a crash, and only COMMIT/ROLLBACK PREPARED ends them.
                    await conn.exec_driver_sql(f"PREPARE TRANSACTION '{xid}'")
                    await trans.commit()  # the server has no open transaction any more
                except BusinessError as e:
                    await trans.rollback()
                    await self._record_no_vote(key, e.reason)
                    return 409, {"reason": e.reason}
                except BaseException:
                    if trans.is_active:
                        await trans.rollback()
                    raise
        except DBAPIError as e:
            raise _Transient(f"prepare of {xid} failed: {sqlstate(e) or e}") from e
        log.info("prepared", extra={"gid": gid, "branch": branch})
        return 200, {"vote": "yes", "result": result or {}}

    async def _answer_existing_prepare(
        self, conn: AsyncConnection, key: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        row = (await conn.execute(_BARRIER_READ, key)).first()
        await conn.rollback()
        if row is None:  # the row we conflicted with was rolled back meanwhile: try again
            raise _Transient("branch is being resolved concurrently")
        if row.outcome == "prepared":  # prepared and since committed
            return 200, {"vote": "yes", "repeat": True}
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
                await conn.exec_driver_sql(f"COMMIT PREPARED '{xid}'")
                return 200, {"committed": True}
            except DBAPIError as e:
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
                await conn.exec_driver_sql(f"ROLLBACK PREPARED '{xid}'")
                # The prepared barrier row is gone with it: leave a marker so a duplicated
                # prepare arriving later is refused instead of preparing again.
                await conn.execute(_BARRIER_INSERT, marker)
                return 200, {"rolled_back": True}
            except DBAPIError as e:
                code = sqlstate(e)
                if code != UNDEFINED_OBJECT:
                    raise _Transient(f"rollback of {xid} failed: {code or e}") from e
        try:
            async with self.engine.begin() as tconn:
                await tconn.execute(
                    text(f"SET LOCAL lock_timeout = {self.settings.lock_timeout_ms}")
                )
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
