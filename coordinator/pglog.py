"""The Postgres log store. Every write is one statement on an autocommit connection.

The statements every transaction makes (insert, status writes, saga progress, the read of one
transaction) run on asyncpg directly, from pools of its own; the rest (recovery's claim, lease
renewal, listing, metrics) go through SQLAlchemy Core. Why: SQLAlchemy's execution path was a
sixth of the coordinator's CPU at 32 clients (docs/decisions.md, "The log's hot statements on
asyncpg"). The SQL is the same text either way (``coordinator.queries``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Integer,
    Text,
    and_,
    bindparam,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator import queries
from coordinator.batch import Coalescer
from coordinator.cursor import decode_cursor, encode_cursor
from coordinator.errors import OwnershipLost
from coordinator.records import (
    BranchProgress,
    BranchRecord,
    Claim,
    EventRecord,
    Inserted,
    Intervention,
    ListFilter,
    LiveSummary,
    NewTxn,
    Page,
    TxnRecord,
    stored_request,
)
from coordinator.schema import transactions
from coordinator.sizing import log_pools
from participants.sdk.db import make_engine, plain_dsn, server_settings

_ARRAYS: dict[str, Any] = {
    "idx": ARRAY(Integer),
    "bstatus": ARRAY(Text),
    "battempts": ARRAY(Integer),
    "berror": ARRAY(Text),
    "gids": ARRAY(Text),
    "epochs": ARRAY(BigInteger),
}


# pragma: no mutate start (not the status guard)
def _stmt(sql: str) -> Any:
    stmt = text(sql)
    names = set(stmt._bindparams)
    return stmt.bindparams(*(bindparam(n, type_=t) for n, t in _ARRAYS.items() if n in names))


_RESCHEDULE = _stmt(queries.RESCHEDULE)
_CLAIM = _stmt(queries.CLAIM)
_RENEW = _stmt(queries.RENEW)
_LIVE_SUMMARY = _stmt(queries.LIVE_SUMMARY)
_ABORT_ORPHAN = _stmt(queries.ABORT_ORPHAN)
_INTERVENE = _stmt(queries.INTERVENE)
_PURGE = _stmt(queries.PURGE)
_PURGEABLE = _stmt(queries.PURGEABLE)
_ENDED = _stmt(queries.ENDED)
_LEASE_HORIZON = _stmt(queries.LEASE_HORIZON)

_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@dataclass(frozen=True)
class Raw:
    """A statement of ``coordinator.queries`` for asyncpg: ``:name`` placeholders numbered."""

    sql: str
    names: tuple[str, ...]

    @staticmethod
    def of(sql: str) -> Raw:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        return Raw(_PARAM.sub(number, sql), tuple(names))

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[n] for n in self.names]


RAW_INSERT = Raw.of(queries.INSERT_TXN)
RAW_WRITE_STATUS = Raw.of(queries.WRITE_STATUS)
RAW_WRITE_PROGRESS = Raw.of(queries.WRITE_PROGRESS)
RAW_WRITE_PROGRESS_MANY = Raw.of(queries.WRITE_PROGRESS_MANY)
RAW_WRITE_STATUS_MANY = Raw.of(queries.WRITE_STATUS_MANY)
# The columns of WRITE_PROGRESS_MANY, in the order of a row passed to the coalescer.
_PROGRESS_COLUMNS = (
    "gids",
    "epochs",
    "branches",
    "statuses",
    "attempts",
    "last_errors",
    "events",
    "details",
)
# The parameters of WRITE_PROGRESS (one row), in the same order.
_PROGRESS_PARAMS = (
    "gid",
    "epoch",
    "branch",
    "status",
    "attempts",
    "last_error",
    "event",
    "detail",
)
RAW_GET = Raw.of(queries.GET_TXN)


async def _no_reset(_conn: asyncpg.Connection) -> None:
    """Every statement on these pools is one autocommit statement: there is no session state to
    reset, and asyncpg's default reset costs a round trip per release."""


def _json(value: Any) -> Any:
    """A jsonb value: parsed by SQLAlchemy's JSONB type, or text from asyncpg and text()."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _txn(row: Any) -> TxnRecord:
    """From a SQLAlchemy row or an asyncpg record, with its branches (the row holds them)."""
    m = row._mapping if hasattr(row, "_mapping") else row
    return TxnRecord(
        gid=m["gid"],
        mode=m["mode"],
        status=m["status"],
        reason=m["reason"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        deadline_at=m["deadline_at"],
        attempts=m["attempts"],
        owner=m["owner"],
        epoch=m["epoch"],
        request_hash=m["request_hash"],
        request=_json(m["request"]),
        branches=[_branch(i, b) for i, b in enumerate(_json(m["branches"]))],
    )


def _branch(idx: int, b: dict[str, Any]) -> BranchRecord:
    return BranchRecord(
        idx=idx,
        participant=b["participant"],
        action=b["action"],
        compensation=b["compensation"],
        payload=b["payload"],
        status=b["status"],
        attempts=b["attempts"],
        last_error=b["last_error"],
        updated_at=datetime.fromisoformat(b["updated_at"]),
        resolved_by=b.get("resolved_by"),
        confirm=b.get("confirm"),
    )


def _progress_params(progress: Sequence[BranchProgress]) -> dict[str, Any]:
    return {
        "idx": list(range(len(progress))),
        "bstatus": [p.status for p in progress],
        "battempts": [p.attempts for p in progress],
        "berror": [p.last_error for p in progress],
    }


# pragma: no mutate end
class PgLog:
    """LogStore on Postgres: asyncpg for the hot statements, SQLAlchemy Core for the rest."""

    # pragma: no mutate start (not the status guard)
    def __init__(
        self,
        engine: AsyncEngine,
        dsn: str,
        pool_size: int = 20,
        application_name: str = "",
    ) -> None:
        self.engine = engine
        self.dsn = plain_dsn(dsn)
        self.pool_size = pool_size
        self.application_name = application_name
        self._hot: asyncpg.Pool | None = None
        self._progress: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self.progress_writes = Coalescer(
            self._write_progress_rows, run_one=self._write_progress_row
        )
        self.status_writes = Coalescer(self._write_status_rows, run_one=self._write_status_row)

    @classmethod
    def connect(cls, dsn: str, pool_size: int = 20, application_name: str = "") -> PgLog:
        # Sized by coordinator.sizing, which max_connections is counted with.
        pools = log_pools(pool_size)
        engine = make_engine(
            dsn,
            pool_size=pools.engine_size,
            max_overflow=pools.engine_overflow,
            autocommit=True,
            application_name=application_name,
        )
        return cls(engine, dsn, pools.asyncpg_size, application_name)

    async def _pools(self) -> tuple[asyncpg.Pool, asyncpg.Pool]:
        if self._hot is None or self._progress is None:
            async with self._opening:
                if self._hot is None or self._progress is None:
                    # Opened lazily (connections too: min_size 0), so a coordinator starts
                    # while its log is down and serves once it is back.
                    # Every statement on these two pools goes through a primary key: one plan
                    # per connection, made once (generic_plans). Two: as
                    # coordinator.sizing.ASYNCPG_POOLS counts them.
                    self._hot = await self._pool(
                        server_settings(self.application_name, generic_plans=True)
                    )
                    # Rule 4: progress that recovery redoes idempotently (a saga step's
                    # result) is committed without waiting for the WAL flush; decisions never
                    # go through here.
                    self._progress = await self._pool(
                        server_settings(
                            self.application_name, synchronous_commit=False, generic_plans=True
                        )
                    )
        return self._hot, self._progress

    async def _pool(self, settings: dict[str, str]) -> asyncpg.Pool:
        pool = await asyncpg.create_pool(
            self.dsn,
            min_size=0,
            max_size=self.pool_size,
            server_settings=settings,
            reset=_no_reset,
        )
        assert pool is not None
        return pool

    async def close(self) -> None:
        await self.engine.dispose()
        for pool in (self._hot, self._progress):
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), 5)
                except TimeoutError:
                    pool.terminate()
        self._hot = self._progress = None

    async def live_summary(self, stuck_attempts: int) -> dict[str, LiveSummary]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(_LIVE_SUMMARY, {"stuck": stuck_attempts})
            return {r.status: LiveSummary(r.n, r.stuck, float(r.oldest)) for r in rows}

    async def purge(self, older_than_s: float, limit: int, dry_run: bool = False) -> int:
        params = {"older_than_s": float(older_than_s), "limit": limit}
        async with self.engine.connect() as conn:
            if dry_run:
                return int((await conn.execute(_PURGEABLE, params)).scalar_one())
            rows = await conn.execute(_PURGE, {**params, "lock": queries.RETENTION_LOCK})
            return len(list(rows))

    async def lease_horizon(self, owner: str) -> datetime | None:
        async with self.engine.connect() as conn:
            horizon: datetime | None = (
                await conn.execute(_LEASE_HORIZON, {"owner": owner})
            ).scalar_one()
            return horizon

    async def ended(self, gids: Sequence[str]) -> dict[str, float | None]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(_ENDED, {"gids": list(gids)})).all()
        found: dict[str, float | None] = {r.gid: max(r.ago, 0.0) for r in rows if not r.live}
        held = {r.gid for r in rows}
        return {**found, **{g: None for g in gids if g not in held}}

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def clock(self) -> datetime:
        async with self.engine.connect() as conn:
            now: datetime = (await conn.execute(text("SELECT now()"))).scalar_one()
            return now

    async def insert(self, new: NewTxn, owner: str, lease_s: float) -> tuple[Inserted, Claim]:
        params = {
            "gid": new.gid,
            "mode": new.mode,
            "status": "running" if new.mode == "saga" else "preparing",
            "request": orjson.dumps(stored_request(new.request)).decode(),
            "request_hash": new.request_hash,
            "timeout_s": float(new.timeout_s),
            "lease_s": float(lease_s),
            "owner": owner,
            "idx": list(range(len(new.branches))),
            "participant": [b.participant for b in new.branches],
            "action": [b.action for b in new.branches],
            "compensation": [b.compensation for b in new.branches],
            "payload": [orjson.dumps(b.payload).decode() for b in new.branches],
            "confirm": [b.confirm for b in new.branches],
        }
        hot, _ = await self._pools()
        async with hot.acquire() as conn:
            row = await conn.fetchrow(RAW_INSERT.sql, *RAW_INSERT.args(params))
            if row is not None:
                return Inserted.CREATED, Claim(_txn(row), row["db_now"])
            existing = await self._get(conn, new.gid)
            now = await conn.fetchval("SELECT now()")
        if existing is None:  # deleted between the two statements: vanishingly rare
            raise RuntimeError(f"transaction {new.gid} conflicted but cannot be read")
        same = existing.request_hash == new.request_hash
        return (Inserted.EXISTING if same else Inserted.CONFLICT), Claim(existing, now)

    async def _get(self, conn: asyncpg.Connection, gid: str) -> TxnRecord | None:
        row = await conn.fetchrow(RAW_GET.sql, gid)
        return None if row is None else _txn(row)

    async def get(self, gid: str) -> TxnRecord | None:
        hot, _ = await self._pools()
        async with hot.acquire() as conn:
            return await self._get(conn, gid)

    async def events(self, gid: str) -> list[EventRecord]:
        async with self.engine.connect() as conn:
            query = select(transactions.c.timeline).where(transactions.c.gid == gid)
            timeline = (await conn.execute(query)).scalar_one_or_none() or []
        return [
            EventRecord(
                e["id"],
                gid,
                datetime.fromisoformat(e["at"]),
                e["kind"],
                e.get("branch"),
                e.get("detail"),
            )
            for e in timeline
        ]

    async def page(self, where: ListFilter, limit: int, cursor: str | None) -> Page:
        t = transactions.c
        query = select(transactions).order_by(t.created_at.desc(), t.gid.desc()).limit(limit + 1)
        if where.status is not None:
            query = query.where(t.status == where.status)
        if where.mode is not None:
            query = query.where(t.mode == where.mode)
        if where.participant is not None:
            query = query.where(t.branches.contains([{"participant": where.participant}]))
        if where.gid_prefix:
            query = query.where(t.gid.startswith(where.gid_prefix, autoescape=True))
        if where.older_than_s is not None:
            query = query.where(t.created_at <= func.now() - timedelta(seconds=where.older_than_s))
        if where.newer_than_s is not None:
            query = query.where(t.created_at >= func.now() - timedelta(seconds=where.newer_than_s))
        if cursor is not None:
            at, gid = decode_cursor(cursor)
            query = query.where(or_(t.created_at < at, and_(t.created_at == at, t.gid < gid)))
        async with self.engine.connect() as conn:
            rows = list(await conn.execute(query))
            items = [_txn(r) for r in rows[:limit]]
        more = len(rows) > limit
        next_cursor = encode_cursor(items[-1].created_at, items[-1].gid) if more else None
        return Page(items, next_cursor)

    # pragma: no mutate end
    async def write_status(
        self,
        gid: str,
        epoch: int,
        status: str,
        reason: str | None,
        branches: Sequence[BranchProgress],
        event: str,
        *,
        redoable: bool = False,
    ) -> datetime:
        row = (gid, epoch, status, reason, event, tuple(branches))
        if redoable:
            # Rule 4: coalesced with other transactions' (coordinator/batch.py); a statement
            # on the synchronous pool, so durable before anyone is told.
            written = await self.status_writes.write(gid, row)
        else:
            written = (await self._write_status_row(row)).get(gid)
        if written is None:
            # Fenced out, or a decided or terminal status may not move there (NEXT_STATUS).
            raise OwnershipLost(
                f"transaction {gid}: epoch {epoch} is no longer current, or its logged status "
                f"may not move to '{status}'"
            )
        return written

    # pragma: no mutate start (not the status guard)
    async def write_progress(
        self,
        gid: str,
        epoch: int,
        idx: int,
        progress: BranchProgress,
        event: str,
        detail: dict[str, Any] | None,
    ) -> None:
        row = (
            gid,
            epoch,
            idx,
            progress.status,
            progress.attempts,
            progress.last_error,
            event,
            orjson.dumps(detail).decode() if detail is not None else None,
        )
        # Rule 4: redoable progress, coalesced with other transactions' (coordinator/batch.py).
        if await self.progress_writes.write(gid, row) is None:
            raise OwnershipLost(f"transaction {gid}: epoch {epoch} is no longer current")

    # pragma: no mutate end
    async def _write_status_row(self, row: tuple[Any, ...]) -> dict[str, datetime]:
        gid, epoch, status, reason, event, progress = row
        params = {
            "gid": gid,
            "epoch": epoch,
            "status": status,
            "reason": reason,
            "event": event,
            **_progress_params(progress),
        }
        hot, _ = await self._pools()
        async with hot.acquire() as conn:
            found = await conn.fetchrow(RAW_WRITE_STATUS.sql, *RAW_WRITE_STATUS.args(params))
        return {gid: found["at"]} if found is not None else {}

    # pragma: no mutate block (not the status guard, to the end of the class)
    async def _write_status_rows(self, rows: Sequence[tuple[Any, ...]]) -> dict[str, datetime]:
        params: dict[str, list[Any]] = {
            "gids": [],
            "epochs": [],
            "statuses": [],
            "reasons": [],
            "events": [],
            "bgids": [],
            "idx": [],
            "bstatus": [],
            "battempts": [],
            "berror": [],
        }
        for gid, epoch, status, reason, event, progress in rows:
            params["gids"].append(gid)
            params["epochs"].append(epoch)
            params["statuses"].append(status)
            params["reasons"].append(reason)
            params["events"].append(event)
            for idx, b in enumerate(progress):
                params["bgids"].append(gid)
                params["idx"].append(idx)
                params["bstatus"].append(b.status)
                params["battempts"].append(b.attempts)
                params["berror"].append(b.last_error)
        hot, _ = await self._pools()
        async with hot.acquire() as conn:
            found = await conn.fetch(RAW_WRITE_STATUS_MANY.sql, *RAW_WRITE_STATUS_MANY.args(params))
        return {r["gid"]: r["at"] for r in found}

    async def _write_progress_row(self, row: tuple[Any, ...]) -> dict[str, bool]:
        params = dict(zip(_PROGRESS_PARAMS, row, strict=True))
        _, progress_pool = await self._pools()
        async with progress_pool.acquire() as conn:
            n = await conn.fetchval(RAW_WRITE_PROGRESS.sql, *RAW_WRITE_PROGRESS.args(params))
        return {row[0]: True} if n else {}

    async def _write_progress_rows(self, rows: Sequence[tuple[Any, ...]]) -> dict[str, bool]:
        columns = dict(zip(_PROGRESS_COLUMNS, map(list, zip(*rows, strict=True)), strict=True))
        _, progress_pool = await self._pools()
        async with progress_pool.acquire() as conn:
            found = await conn.fetch(
                RAW_WRITE_PROGRESS_MANY.sql, *RAW_WRITE_PROGRESS_MANY.args(columns)
            )
        return {r["gid"]: True for r in found}

    async def reschedule(
        self,
        gid: str,
        epoch: int,
        branches: Sequence[BranchProgress],
        initial_s: float,
        max_s: float,
    ) -> float:
        params = {
            "gid": gid,
            "epoch": epoch,
            "initial_s": initial_s,
            "max_s": max_s,
            **_progress_params(branches),
        }
        async with self.engine.connect() as conn:
            row = (await conn.execute(_RESCHEDULE, params)).first()
        if row is None:
            raise OwnershipLost(f"transaction {gid}: epoch {epoch} is no longer current")
        return float(row.delay)

    async def claim(
        self, owner: str, limit: int, lease_s: float, own_before: datetime | None = None
    ) -> list[Claim]:
        params = {
            "owner": owner,
            "limit": limit,
            "lease_s": float(lease_s),
            "own_before": own_before,
        }
        async with self.engine.connect() as conn:
            rows = list(await conn.execute(_CLAIM, params))
            if not rows:
                return []
            records = [_txn(r) for r in rows]
        return [Claim(rec, row.db_now) for rec, row in zip(records, rows, strict=True)]

    async def abort_orphan(self, gid: str, owner: str, lease_s: float, reason: str) -> Claim | None:
        params = {"gid": gid, "owner": owner, "lease_s": float(lease_s), "reason": reason}
        async with self.engine.connect() as conn:
            row = (await conn.execute(_ABORT_ORPHAN, params)).first()
            if row is None:
                return None
        return Claim(_txn(row), row.db_now)

    async def intervene(
        self, gid: str, act: Intervention, owner: str, lease_s: float
    ) -> Claim | None:
        params = {
            "gid": gid,
            "epoch": act.epoch,
            "status": act.status,
            "new_status": act.new_status,
            "reason": act.reason,
            "owner": owner,
            "lease_s": float(lease_s),
            "reset": act.reset_attempts,
            "unleased": act.unleased,
            "branch": act.branch,
            "branch_status": act.branch_status,
            "branch_new_status": act.branch_new_status,
            "by": act.by,
            "note": act.note,
            "event": f"operator:{act.kind}",
        }
        async with self.engine.connect() as conn:
            row = (await conn.execute(_INTERVENE, params)).first()
            if row is None:
                return None
        return Claim(_txn(row), row.db_now)

    async def renew(self, owner: str, held: Mapping[str, int], lease_s: float) -> set[str]:
        if not held:
            return set()
        params = {
            "owner": owner,
            "lease_s": float(lease_s),
            "gids": list(held),
            "epochs": list(held.values()),
        }
        async with self.engine.connect() as conn:
            return {r.gid for r in await conn.execute(_RENEW, params)}
