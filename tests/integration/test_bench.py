"""``txn bench`` in miniature on the session's stack: both modes, two concurrencies, one short
repetition each; the figures are there, nothing failed, and the floor really did its work
(PREPARE TRANSACTION and COMMIT PREPARED on every ledger, the product's log writes)."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest

from bench import floor
from bench.txn_bench import BenchConfig, Target, format_table, run_bench
from devstack.stack import Stack


async def _fetchval(dsn: str, query: str, *args: object) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value: int = await conn.fetchval(query, *args)
        return value
    finally:
        await conn.close()


@pytest.mark.timeout(120)
async def test_bench_smoke(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    config = BenchConfig(
        concurrency=(1, 4), duration_s=1.0, warmup_s=0.5, repeat=1, history=2000, out=out
    )
    target = Target.from_state(stack.state(), "session stack")
    report = await run_bench(target, config)

    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert {r["mode"] for r in report["results"]} == {"2pc", "saga"}
    assert [r["concurrency"] for r in report["results"]] == [1, 4, 1, 4]
    for r in report["results"]:
        where = f"{r['mode']} c={r['concurrency']}"
        assert r["product"]["median"]["tps"] > 0, where
        assert r["floor"]["median"]["tps"] > 0, where
        assert r["ratio"] is not None and r["ratio"] > 0, where
        assert r["p50_ratio"] is not None, where
        assert r["errors"] == 0, (where, r["product"]["runs"], r["floor"]["runs"])
        assert len(r["product"]["runs"]) == len(r["floor"]["runs"]) == 1
    assert {"cpu_count", "python", "postgres_version", "fsync"} <= set(report["machine"])
    assert "product tps" in format_table(report)

    # The floor makes the product's log writes: 3 per 2PC transaction, 2 + one per step for
    # a saga; the product's own log shows the same counts.
    writes = report["log_writes"]
    assert writes["2pc"]["product"]["writes_per_txn"] == writes["2pc"]["floor"]["writes_per_txn"]
    assert writes["2pc"]["floor"]["writes_per_txn"] == 3
    assert writes["saga"]["product"]["writes_per_txn"] == writes["saga"]["floor"]["writes_per_txn"]
    assert writes["saga"]["floor"]["writes_per_txn"] == 2 + len(target.ledgers)
    grown = report["floor_log_rows"]["after"] - report["floor_log_rows"]["before"]
    floor_txns = writes["2pc"]["floor"]["transactions"] + writes["saga"]["floor"]["transactions"]
    assert grown == floor_txns > 0

    # Every floor 2PC transaction was prepared and then committed on every ledger: its barrier
    # row is inside the prepared transaction, visible only after COMMIT PREPARED; none is left.
    prefix = writes["2pc"]["floor_gid_prefix"]
    for ledger in target.ledgers:
        committed = await _fetchval(
            ledger.dsn,
            f"SELECT count(*) FROM {floor.SCHEMA}.txn_barrier "
            "WHERE gid LIKE $1 || '%' AND op = '2pc' AND outcome = 'prepared'",
            prefix,
        )
        assert committed == writes["2pc"]["floor"]["transactions"], ledger.name
        left = await _fetchval(
            ledger.dsn,
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE $1 || '%'",
            floor.XID_PREFIX,
        )
        assert left == 0, ledger.name


@pytest.mark.timeout(120)
async def test_cpu_split_smoke(stack: Stack) -> None:
    """``txn bench --cpu``: every process of the stack is accounted, and the ones that did the
    work show CPU per transaction (the coordinator only on the product's side)."""
    from bench import cpushare
    from bench.load import run_product

    state = stack.state()
    target = Target.from_state(state, "session stack")
    names = [lg.name for lg in target.ledgers]
    dsns = [lg.dsn for lg in target.ledgers]
    await floor.setup(dsns, target.log_dsn, 2, 500)
    product = await cpushare.measure(
        state, run_product(target.coordinator_url, names, "2pc", 2, 0.0, 1.5, "cpu-smoke-p")
    )
    floor_ = await cpushare.measure(
        state, floor.run_floor(dsns, names, target.log_dsn, "2pc", 2, 0.0, 1.5, "cpu-smoke-f")
    )
    assert product["committed"] > 0 and floor_["committed"] > 0
    coordinator = next(k for k in product["by_process"] if k.startswith("coordinator"))
    assert product["by_process"][coordinator]["ms_per_txn"] > 0
    assert (
        floor_["by_process"][coordinator]["ms_per_txn"]
        < product["by_process"][coordinator]["ms_per_txn"]
    )
    for side in (product, floor_):
        assert side["by_process"]["postgres log"]["ms_per_txn"] > 0
        assert side["machine_busy"]["ms_per_txn"] > 0
    assert "whole machine" in cpushare.table("2pc", 2, product, floor_)
