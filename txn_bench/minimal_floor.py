"""The minimal floor: the least durable work a correct coordinator needs, by a bare asyncpg script
on the same clusters (no HTTP), so the product can be read against what any design could reach.
(``txn_bench.floor`` is the other floor: the product's own SQL.)

Its own log, one table with its primary key only (``bench_min.log``), and copies of the ledgers'
accounts (``bench_min.accounts``); per transaction:

- 2PC: INSERT the log row ('preparing', the branches as one jsonb value); on every ledger, in
  parallel, one round trip: ``BEGIN``, the ledger's adjust, ``PREPARE TRANSACTION`` as one simple
  query; the decision (UPDATE to 'committing'); ``COMMIT PREPARED`` on every ledger, in
  parallel; the outcome (UPDATE to 'committed'). Three log writes.
- Saga: INSERT the log row ('running'); every step, in parallel, one autocommit adjust; the
  outcome (UPDATE to 'committed'). Two log writes. A coordinator is free to run independent
  steps at once, so the floor always does, even against the product's sequential saga.

Every log write is a durable decision: ``synchronous_commit`` stays on, and each must touch
exactly one row (the UPDATEs compare and set the status they expect to leave).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import asyncpg
import orjson

from txn_bench.floor import ADJUST, STATEMENT_TIMEOUT_MS, rollback_leftovers
from txn_bench.load import (
    ACCOUNT_BALANCE,
    RunStats,
    TxnFailed,
    account,
    branches,
    closed_loop,
    deltas,
    flush_stats,
    protocol,
)

SCHEMA = "bench_min"
XID_PREFIX = "bench_min:"  # never "txn:": the SDK's doubt resolver leaves these alone

_LEDGER_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.accounts (LIKE public.accounts INCLUDING ALL);
"""
_LOG_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.log (
    gid text PRIMARY KEY,
    mode text NOT NULL,
    status text NOT NULL,
    branches jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""
# History, so the primary key has the depth of a log in use (as the design floor's).
_SEED = f"""
INSERT INTO {SCHEMA}.log (gid, mode, status, branches, created_at, updated_at)
SELECT 'hist-' || g, CASE WHEN g % 2 = 0 THEN '2pc' ELSE 'saga' END, 'committed',
       CAST($2 AS jsonb), at, at
FROM generate_series(1, CAST($1 AS int)) AS g,
     LATERAL (SELECT now() - make_interval(secs => CAST($1 - g AS float8)) AS at) AS ts
ON CONFLICT (gid) DO NOTHING
"""
INSERT = f"INSERT INTO {SCHEMA}.log (gid, mode, status, branches) VALUES ($1, $2, $3, $4)"
SET_STATUS = (
    f"UPDATE {SCHEMA}.log SET status = $3, updated_at = now() WHERE gid = $1 AND status = $2"
)


def quote(text: str) -> str:
    """A SQL string literal (standard_conforming_strings: only the quote needs doubling)."""
    return "'" + text.replace("'", "''") + "'"


def prepare_sql(delta: int, account_id: str, xid: str) -> str:
    """One round trip: the ledger's adjust, checked to have touched its row (else ``1 / 0``
    fails the query and the rest of it, PREPARE included, is skipped), then the prepare."""
    adjust = ADJUST.replace("$1", f"({int(delta)})").replace("$2", quote(account_id))
    return (
        f"BEGIN; WITH adjusted AS ({adjust}) SELECT 1 / count(*) FROM adjusted; "
        f"PREPARE TRANSACTION {quote(xid)}"
    )


async def setup(ledger_dsns: list[str], log_dsn: str, accounts: int, history: int) -> None:
    """The floor's tables (idempotent), its accounts, and ``history`` rows in its log."""
    for dsn in ledger_dsns:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(_LEDGER_DDL)
            await conn.executemany(
                f"INSERT INTO {SCHEMA}.accounts (id, balance) VALUES ($1, $2) "
                "ON CONFLICT (id) DO NOTHING",
                [(account(c), ACCOUNT_BALANCE) for c in range(accounts)],
            )
            await conn.execute(f"ANALYZE {SCHEMA}.accounts")
            await flush_stats(conn)
        finally:
            await conn.close()
    await rollback_leftovers(ledger_dsns, XID_PREFIX)
    conn = await asyncpg.connect(log_dsn)
    try:
        await conn.execute(_LOG_DDL)
        if history > 0:
            await conn.execute(_SEED, history, orjson.dumps([]).decode())
        await conn.execute(f"ANALYZE {SCHEMA}.log")
        await flush_stats(conn)
    finally:
        await conn.close()


async def _each(aws: list[Awaitable[Any]]) -> None:
    """Await all (each connection idle again before the client's next transaction), then
    raise the first failure."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


class MinimalRun:
    """One run: pools sized to the concurrency, one connection per database per client."""

    def __init__(
        self, ledger_dsns: list[str], ledgers: list[str], log_dsn: str, mode: str, prefix: str
    ) -> None:
        self.ledger_dsns = ledger_dsns
        self.ledgers = ledgers
        self.log_dsn = log_dsn
        self.mode = protocol(mode)[0]
        self.prefix = prefix
        self.ledger_conns: list[list[asyncpg.Connection]] = []
        self.log_conns: list[asyncpg.Connection] = []

    async def run(self, concurrency: int, warmup_s: float, duration_s: float) -> RunStats:
        settings = {"search_path": SCHEMA, "statement_timeout": STATEMENT_TIMEOUT_MS}
        pools: list[asyncpg.Pool] = []
        held: list[list[asyncpg.Connection]] = []
        try:
            for dsn in [*self.ledger_dsns, self.log_dsn]:
                pools.append(
                    await asyncpg.create_pool(
                        dsn,
                        min_size=concurrency,
                        max_size=concurrency,
                        server_settings=settings,
                    )
                )
                held.append([await pools[-1].acquire() for _ in range(concurrency)])
            self.ledger_conns = [[conns[c] for conns in held[:-1]] for c in range(concurrency)]
            self.log_conns = held[-1]
            txn = self._twopc if self.mode == "2pc" else self._saga
            stats = await closed_loop(concurrency, warmup_s, duration_s, txn)
            await asyncio.gather(*(flush_stats(conn) for conns in held for conn in conns))
            return stats
        finally:
            self.ledger_conns, self.log_conns = [], []
            for p, conns in zip(pools, held, strict=False):
                for conn in conns:
                    await p.release(conn)
            for p in pools:
                await p.close()
            await rollback_leftovers(self.ledger_dsns, XID_PREFIX)

    async def _log(self, client: int, gid: str, seq: int, status: str) -> None:
        bs = branches(self.mode, self.ledgers, client, seq, parallel=True)
        done = await self.log_conns[client].execute(
            INSERT, gid, self.mode, status, orjson.dumps(bs).decode()
        )
        if done != "INSERT 0 1":
            raise TxnFailed(f"{gid}: log insert: {done}")

    async def _status(self, client: int, gid: str, was: str, status: str) -> None:
        done = await self.log_conns[client].execute(SET_STATUS, gid, was, status)
        if done != "UPDATE 1":
            raise TxnFailed(f"{gid}: {was} -> {status}: {done}")

    async def _prepare(self, conn: asyncpg.Connection, xid: str, delta: int, client: int) -> None:
        try:
            await conn.execute(prepare_sql(delta, account(client), xid))
        except asyncpg.DivisionByZeroError as e:
            raise TxnFailed(f"{xid}: {account(client)} missing or would go negative") from e
        finally:
            if conn.is_in_transaction():  # failed before PREPARE: the block is still open
                await conn.execute("ROLLBACK")

    async def _twopc(self, client: int, seq: int) -> None:
        gid = f"{self.prefix}-{client}-{seq}"
        ds = deltas(len(self.ledgers), seq)
        xids = [f"{XID_PREFIX}{gid}:{i}" for i in range(len(self.ledgers))]
        ledgers = self.ledger_conns[client]
        await self._log(client, gid, seq, "preparing")
        prepared = await asyncio.gather(
            *(
                self._prepare(conn, xid, d, client)
                for conn, xid, d in zip(ledgers, xids, ds, strict=True)
            ),
            return_exceptions=True,
        )
        if failed := [r for r in prepared if isinstance(r, BaseException)]:
            # Presumed abort: what did prepare is rolled back, the log row stays 'preparing'.
            await _each(
                [
                    conn.execute(f"ROLLBACK PREPARED {quote(xid)}")
                    for conn, xid, r in zip(ledgers, xids, prepared, strict=True)
                    if not isinstance(r, BaseException)
                ]
            )
            raise failed[0]
        await self._status(client, gid, "preparing", "committing")
        await _each(
            [
                conn.execute(f"COMMIT PREPARED {quote(xid)}")
                for conn, xid in zip(ledgers, xids, strict=True)
            ]
        )
        await self._status(client, gid, "committing", "committed")

    async def _saga(self, client: int, seq: int) -> None:
        gid = f"{self.prefix}-{client}-{seq}"
        ds = deltas(len(self.ledgers), seq)
        await self._log(client, gid, seq, "running")

        async def step(conn: asyncpg.Connection, delta: int) -> None:
            if await conn.fetchval(ADJUST, delta, account(client)) is None:
                raise TxnFailed(f"{gid}: {account(client)} missing or would go negative")

        await _each([step(c, d) for c, d in zip(self.ledger_conns[client], ds, strict=True)])
        await self._status(client, gid, "running", "committed")


async def run_minimal(
    ledger_dsns: list[str],
    ledgers: list[str],
    log_dsn: str,
    mode: str,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    gid_prefix: str,
) -> RunStats:
    run = MinimalRun(ledger_dsns, ledgers, log_dsn, mode, gid_prefix)
    return await run.run(concurrency, warmup_s, duration_s)
