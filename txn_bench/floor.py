"""The design floor: the database work of one transaction as the product designs it, done by a
bare asyncpg script (no HTTP, no coordinator, no SQLAlchemy) on the same clusters, so the
product's throughput and latency can be read against what its own SQL alone allows.
(``txn_bench.minimal_floor`` is the other floor: the least durable work a correct coordinator
needs.)

Per 2PC transaction, as the product does it (docs/protocol.md):

1. the log's ``INSERT_TXN`` (one row: the transaction, its branches, its first event);
2. on every participant database, in parallel: ``BEGIN`` with the SDK's barrier row (the SDK's
   own text, one round trip); the ledger's ``UPDATE`` of the account; ``PREPARE TRANSACTION``;
3. ``WRITE_STATUS`` committing (the commit point);
4. ``COMMIT PREPARED`` on every participant database, in parallel;
5. ``WRITE_STATUS`` committed.

Per saga transaction: ``INSERT_TXN``; then per participant ``BEGIN`` with the barrier row;
``UPDATE``; ``COMMIT``, followed by the step's ``WRITE_PROGRESS`` (on a ``synchronous_commit =
off`` connection, as the product's progress pool); finally ``WRITE_STATUS`` committed. The steps
run in turn (``saga-seq``: a saga without ``depends_on``) or all at once (``saga``: every step
``depends_on: []``), their progress writes one after another as the product's saga driver
awaits them. The log's connections have the product's log pools' settings (generic plans;
``synchronous_commit = off`` for progress).

The SQL of the log writes is the product's own (``coordinator.queries``), run with
``search_path = bench_floor`` against copies of the tables (``CREATE TABLE ... (LIKE ...
INCLUDING ALL)``) so the product's data is never touched. The floor's log is seeded with history
and analysed first: on an empty table the planner picks sequential scans that decay as it grows.
Each client holds one connection per database for the run (a pool per database sized to the
concurrency), so no pool reset query sits between its transactions.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from coordinator import queries
from coordinator.pglog import Raw
from coordinator.records import stored_request
from coordinator.schema import FILLFACTOR
from participants.sdk.db import server_settings
from participants.sdk.saga import begin_and_take
from participants.sdk.twopc import begin_and_claim
from sagas.policy import RetryPolicy
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

SCHEMA = "bench_floor"
XID_PREFIX = "bench_floor:"  # never "txn:": the SDK's doubt resolver leaves these alone
OWNER = "bench-floor"
LEASE_S = 3.0
TIMEOUT_S = 30.0
STATEMENT_TIMEOUT_MS = "30000"

# The product's own statements, numbered for asyncpg as the product numbers them.
INSERT_TXN = Raw.of(queries.INSERT_TXN)
WRITE_STATUS = Raw.of(queries.WRITE_STATUS)
WRITE_PROGRESS = Raw.of(queries.WRITE_PROGRESS)
# The ledger's adjust (participants/ledger/app.py).
ADJUST = (
    "UPDATE accounts SET balance = balance + $1 "
    "WHERE id = $2 AND balance + $1 >= 0 RETURNING balance"
)

_LEDGER_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.accounts (LIKE public.accounts INCLUDING ALL);
CREATE TABLE IF NOT EXISTS {SCHEMA}.txn_barrier (LIKE public.txn_barrier INCLUDING ALL);
"""
_LOG_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
DROP TABLE IF EXISTS {SCHEMA}.events, {SCHEMA}.branches;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = '{SCHEMA}'
                   AND table_name = 'transactions' AND column_name = 'timeline') THEN
        DROP TABLE IF EXISTS {SCHEMA}.transactions;  -- the log's shape before migration 0002
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS {SCHEMA}.transactions (LIKE public.transactions INCLUDING ALL)
    WITH (fillfactor = {FILLFACTOR});
"""
# History: committed transactions of both modes, three branches and three events each.
_SEED = f"""
INSERT INTO {SCHEMA}.transactions (gid, mode, status, request, request_hash, created_at,
    updated_at, deadline_at, next_attempt_at, attempts, owner, lease_until, epoch, branches,
    timeline)
SELECT 'hist-' || g, CASE WHEN g % 2 = 0 THEN '2pc' ELSE 'saga' END, 'committed',
       CAST($2 AS jsonb), md5(CAST(g AS text)), at, at, now(), now(), 0, '{OWNER}', now(), 1,
       (SELECT jsonb_agg(jsonb_build_object(
            'participant', 'ledger' || (i + 1), 'action', '/accounts/adjust',
            'compensation', NULL, 'payload', jsonb_build_object('account', 'hist', 'delta', 1),
            'status', 'committed', 'attempts', 2, 'last_error', NULL, 'updated_at', at))
        FROM generate_series(0, 2) AS i),
       (SELECT jsonb_agg(jsonb_build_object(
            'id', n, 'at', at, 'kind', k, 'branch', NULL,
            'detail', jsonb_build_object('status', 'committed')))
        FROM unnest(ARRAY['submitted', 'decided', 'finished']) WITH ORDINALITY AS e(k, n))
FROM generate_series(1, CAST($1 AS int)) AS g,
     LATERAL (SELECT now() - make_interval(secs => CAST($1 - g AS float8)) AS at) AS ts
ON CONFLICT (gid) DO NOTHING
"""


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn)


async def rollback_leftovers(ledger_dsns: list[str], prefix: str = XID_PREFIX) -> int:
    """Roll back a floor's prepared transactions a failed or interrupted run left behind."""
    n = 0
    for dsn in ledger_dsns:
        conn = await _connect(dsn)
        try:
            xids = await conn.fetch(
                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() "
                "AND gid LIKE $1 || '%'",
                prefix,
            )
            for row in xids:
                await conn.execute(f"ROLLBACK PREPARED '{row['gid']}'")
                n += 1
        finally:
            await conn.close()
    return n


async def setup(ledger_dsns: list[str], log_dsn: str, accounts: int, history: int) -> None:
    """The floor's tables (idempotent), its accounts, and ``history`` rows in its log."""
    for dsn in ledger_dsns:
        conn = await _connect(dsn)
        try:
            await conn.execute(_LEDGER_DDL)
            await conn.execute(
                f"INSERT INTO {SCHEMA}.accounts (id, balance) "
                "SELECT 'bench-c' || g, $1 FROM generate_series(0, $2 - 1) AS g "
                "ON CONFLICT (id) DO NOTHING",
                ACCOUNT_BALANCE,
                accounts,
            )
            await conn.execute(f"ANALYZE {SCHEMA}.accounts")
            await conn.execute(f"ANALYZE {SCHEMA}.txn_barrier")
            await flush_stats(conn)
        finally:
            await conn.close()
    await rollback_leftovers(ledger_dsns)
    conn = await _connect(log_dsn)
    try:
        await conn.execute(_LOG_DDL)
        if history > 0:
            request = orjson.dumps({"mode": "2pc", "branches": []}).decode()
            await conn.execute(_SEED, history, request)
        await conn.execute(f"ANALYZE {SCHEMA}.transactions")
        await flush_stats(conn)
    finally:
        await conn.close()


@dataclass
class _Conns:
    ledgers: list[asyncpg.Connection]
    log: asyncpg.Connection
    progress: asyncpg.Connection  # synchronous_commit off, as the product's progress pool
    progress_turn: asyncio.Lock  # parallel steps write their progress one after another


class FloorRun:
    """One floor run: pools sized to the concurrency, one connection per database per client."""

    def __init__(
        self, ledger_dsns: list[str], ledgers: list[str], log_dsn: str, mode: str, prefix: str
    ) -> None:
        self.ledger_dsns = ledger_dsns
        self.ledgers = ledgers
        self.log_dsn = log_dsn
        self.mode, self.parallel = protocol(mode)
        self.prefix = prefix
        self.conns: list[_Conns] = []
        self.retry = RetryPolicy().model_dump(mode="json")

    async def run(self, concurrency: int, warmup_s: float, duration_s: float) -> RunStats:
        settings = {"search_path": SCHEMA, "statement_timeout": STATEMENT_TIMEOUT_MS}
        # The log's connections are set up as the product's hot and progress pools are.
        log_settings = {**settings, **server_settings(generic_plans=True)}
        no_sync = {**log_settings, **server_settings(synchronous_commit=False)}

        async def pool(dsn: str, server_settings: dict[str, str]) -> asyncpg.Pool:
            return await asyncpg.create_pool(
                dsn, min_size=concurrency, max_size=concurrency, server_settings=server_settings
            )

        pools: list[asyncpg.Pool] = []
        held: list[list[asyncpg.Connection]] = []
        try:
            for dsn in self.ledger_dsns:
                pools.append(await pool(dsn, settings))
            pools.append(await pool(self.log_dsn, log_settings))
            pools.append(await pool(self.log_dsn, no_sync))
            for p in pools:
                held.append([])
                for _ in range(concurrency):
                    held[-1].append(await p.acquire())
            n = len(self.ledger_dsns)
            self.conns = [
                _Conns([held[i][c] for i in range(n)], held[n][c], held[n + 1][c], asyncio.Lock())
                for c in range(concurrency)
            ]
            txn = self._twopc if self.mode == "2pc" else self._saga
            stats = await closed_loop(concurrency, warmup_s, duration_s, txn)
            await asyncio.gather(*(flush_stats(conn) for conns in held for conn in conns))
            return stats
        finally:
            self.conns = []
            for p, conns in zip(pools, held, strict=False):
                for conn in conns:
                    await p.release(conn)
            for p in pools:
                await p.close()
            await rollback_leftovers(self.ledger_dsns)

    # -- the log writes, the product's SQL ------------------------------------------------

    async def _insert(self, log: asyncpg.Connection, gid: str, seq: int, client: int) -> None:
        n = len(self.ledgers)
        # What the product stores: the body as sent, plus the saga's plan (deps, retry policy),
        # its branches in their own column.
        bs = branches(self.mode, self.ledgers, client, seq, self.parallel)
        request: dict[str, Any] = {"mode": self.mode, "branches": bs}
        if self.mode == "saga":
            request["deps"] = [[] if self.parallel or not i else [i - 1] for i in range(n)]
            request["retry"] = self.retry
        raw = orjson.dumps(request)
        params = {
            "gid": gid,
            "mode": self.mode,
            "status": "preparing" if self.mode == "2pc" else "running",
            "request": orjson.dumps(stored_request(request)).decode(),
            "request_hash": hashlib.sha256(raw).hexdigest(),
            "timeout_s": TIMEOUT_S,
            "lease_s": LEASE_S,
            "owner": OWNER,
            "idx": list(range(n)),
            "participant": self.ledgers,
            "action": ["/accounts/adjust"] * n,
            "compensation": [b.get("compensation") for b in bs],
            "payload": [orjson.dumps(b["payload"]).decode() for b in bs],
            "confirm": [None] * n,  # TCC's confirm path: none for 2PC and saga branches
        }
        row = await log.fetchrow(INSERT_TXN.sql, *INSERT_TXN.args(params))
        if row is None:
            raise TxnFailed(f"{gid}: already logged")

    async def _status(
        self, log: asyncpg.Connection, gid: str, status: str, event: str, branch: str, att: int
    ) -> None:
        n = len(self.ledgers)
        params = {
            "gid": gid,
            "epoch": 1,
            "status": status,
            "reason": None,
            "event": event,
            "idx": list(range(n)),
            "bstatus": [branch] * n,
            "battempts": [att] * n,
            "berror": [None] * n,
        }
        if await log.fetchval(WRITE_STATUS.sql, *WRITE_STATUS.args(params)) is None:
            raise TxnFailed(f"{gid}: status write fenced out")

    async def _progress(self, conns: _Conns, gid: str, idx: int) -> None:
        params = {
            "gid": gid,
            "epoch": 1,
            "branch": idx,
            "status": "succeeded",
            "attempts": 1,
            "last_error": None,
            "event": "action:succeeded",
            "detail": None,
        }
        async with conns.progress_turn:
            n = await conns.progress.fetchval(WRITE_PROGRESS.sql, *WRITE_PROGRESS.args(params))
        if n != 1:
            raise TxnFailed(f"{gid}: progress write fenced out")

    # -- the participants' work --------------------------------------------------------------

    async def _local(
        self, conn: asyncpg.Connection, gid: str, idx: int, op: str, delta: int, client: int
    ) -> None:
        """BEGIN with the barrier row (the SDK's own text, one round trip); the adjust; then
        PREPARE TRANSACTION (2PC) or COMMIT."""
        xid = f"{XID_PREFIX}{gid}:{idx}"
        begin = (
            begin_and_claim(gid, idx, xid, None) if op == "2pc" else begin_and_take(gid, idx, None)
        )
        try:
            if await conn.execute(begin) != "INSERT 0 1":
                raise TxnFailed(f"{gid}/{idx}: barrier key taken")
            if await conn.fetchval(ADJUST, delta, account(client)) is None:
                raise TxnFailed(f"{gid}/{idx}: {account(client)} would go negative")
            if op == "2pc":
                await conn.execute(f"PREPARE TRANSACTION '{xid}'")
            else:
                await conn.execute("COMMIT")
        except BaseException:
            if conn.is_in_transaction():
                await conn.execute("ROLLBACK")
            raise

    async def _twopc(self, client: int, seq: int) -> None:
        conns = self.conns[client]
        gid = f"{self.prefix}-{client}-{seq}"
        ds = deltas(len(self.ledgers), seq)
        await self._insert(conns.log, gid, seq, client)
        await asyncio.gather(
            *(
                self._local(conn, gid, i, "2pc", ds[i], client)
                for i, conn in enumerate(conns.ledgers)
            )
        )
        await self._status(conns.log, gid, "committing", "decided", "prepared", 1)
        await asyncio.gather(
            *(
                conn.execute(f"COMMIT PREPARED '{XID_PREFIX}{gid}:{i}'")
                for i, conn in enumerate(conns.ledgers)
            )
        )
        await self._status(conns.log, gid, "committed", "finished", "committed", 2)

    async def _saga(self, client: int, seq: int) -> None:
        conns = self.conns[client]
        gid = f"{self.prefix}-{client}-{seq}"
        ds = deltas(len(self.ledgers), seq)
        await self._insert(conns.log, gid, seq, client)

        async def step(i: int, conn: asyncpg.Connection) -> None:
            await self._local(conn, gid, i, "action", ds[i], client)
            await self._progress(conns, gid, i)

        if self.parallel:
            await asyncio.gather(*(step(i, conn) for i, conn in enumerate(conns.ledgers)))
        else:
            for i, conn in enumerate(conns.ledgers):
                await step(i, conn)
        await self._status(conns.log, gid, "committed", "finished", "succeeded", 1)


async def run_floor(
    ledger_dsns: list[str],
    ledgers: list[str],
    log_dsn: str,
    mode: str,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    gid_prefix: str,
) -> RunStats:
    run = FloorRun(ledger_dsns, ledgers, log_dsn, mode, gid_prefix)
    return await run.run(concurrency, warmup_s, duration_s)
