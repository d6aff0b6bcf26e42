"""``txn bench`` in miniature on the session's stack: every mode, two concurrencies, one short
repetition of each side; the figures are there, nothing failed, the minimal floor really did its
work (every transaction logged and committed, no prepared transaction left, the balances whole),
and the measured database work per transaction is what each floor's design says."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest

from tests.helpers import fetch
from txn_bench import floor, minimal_floor
from txn_bench.load import ACCOUNT_BALANCE, MODES, account
from txn_bench.txn_bench import SIDES, BenchConfig, Target, format_table, run_bench
from txn_devstack.stack import Stack


async def _fetchval(dsn: str, query: str, *args: object) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value: int = await conn.fetchval(query, *args)
        return value
    finally:
        await conn.close()


@pytest.mark.timeout(180)
async def test_bench_smoke(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    config = BenchConfig(
        # One concurrency: each product run waits for its database counters to be published
        # (txn_bench.dbwork.SETTLE_S), so every extra row of the table costs the run ~10 s.
        concurrency=(4,),
        duration_s=1.0,
        warmup_s=0.5,
        repeat=1,
        history=2000,
        out=out,
    )
    target = Target.from_state(stack.state(), "session stack")
    report = await run_bench(target, config)

    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert [(r["mode"], r["concurrency"]) for r in report["results"]] == [
        (mode, 4) for mode in MODES
    ]
    for r in report["results"]:
        where = f"{r['mode']} c={r['concurrency']}"
        for side in SIDES:
            assert r[side]["median"]["tps"] > 0, (where, side)
            assert len(r[side]["runs"]) == 1, (where, side)
        for ratio in ("ratio_minimal", "ratio_design", "p50_ratio_minimal", "p50_ratio_design"):
            assert r[ratio] is not None and r[ratio] > 0, (where, ratio)
        assert r["errors"] == 0, (where, [r[side]["runs"] for side in SIDES])
    assert {"cpu_count", "python", "postgres_version", "fsync"} <= set(report["machine"])
    table = format_table(report)
    assert "÷minimal" in table and "÷design" in table and "log WAL B" in table

    # The minimal floor logged every transaction it counted, once, and finished each; nothing it
    # prepared is left; and the balances are whole (every transaction's deltas sum to zero).
    minimal_runs = [run for r in report["results"] for run in r["minimal"]["runs"]]
    committed = sum(run["committed_total"] for run in minimal_runs)
    assert committed > 0
    log = minimal_floor.SCHEMA + ".log"
    prefix = report["gid_prefix"]["minimal"]
    mine = f"FROM {log} WHERE gid LIKE $1 || '%'"
    assert await _fetchval(target.log_dsn, f"SELECT count(*) {mine}", prefix) == committed
    statuses = await _fetchval(target.log_dsn, f"SELECT array_agg(DISTINCT status) {mine}", prefix)
    assert statuses == ["committed"]
    for ledger in target.ledgers:
        left = await _fetchval(
            ledger.dsn,
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE $1 || '%'",
            minimal_floor.XID_PREFIX,
        )
        assert left == 0, ledger.name
    for c in range(max(config.concurrency)):
        total = 0
        for ledger in target.ledgers:
            total += await _fetchval(
                ledger.dsn,
                f"SELECT balance FROM {minimal_floor.SCHEMA}.accounts WHERE id = $1",
                account(c),
            )
        assert total == len(target.ledgers) * ACCOUNT_BALANCE, account(c)

    # Database work per transaction, measured: the minimal floor's three log writes per 2PC
    # transaction and two per saga, one ledger row per ledger; the design floor (the product's
    # SQL) writes the same three one-row writes for 2PC and a progress write per saga step
    # besides; everything wrote WAL.
    work = {
        mode: {side: w["per_txn"] for side, w in by.items()} for mode, by in report["work"].items()
    }
    n = len(target.ledgers)
    assert 2.5 <= work["2pc"]["minimal"]["log_rows"] <= 4
    assert n - 0.5 <= work["2pc"]["minimal"]["ledger_rows"] <= n + 1
    for saga in ("saga", "saga-seq"):
        assert 1.5 <= work[saga]["minimal"]["log_rows"] <= 3, saga
    assert 2.5 <= work["2pc"]["design"]["log_rows"] <= 4
    for saga in ("saga", "saga-seq"):
        assert work[saga]["design"]["log_rows"] > work[saga]["minimal"]["log_rows"], saga
    for mode in MODES:
        for side in SIDES:
            assert work[mode][side]["log_rows"] > 0, (mode, side)
            assert work[mode][side]["log_wal_bytes"] > 0, (mode, side)
            assert work[mode][side]["ledger_wal_bytes"] > 0, (mode, side)
    assert report["work"]["2pc"]["minimal"]["transactions"] == sum(
        run["committed_total"]
        for r in report["results"]
        if r["mode"] == "2pc"
        for run in r["minimal"]["runs"]
    )


@pytest.mark.timeout(120)
async def test_cpu_split_smoke(stack: Stack) -> None:
    """``txn bench --cpu``: every process of the stack is accounted, and the ones that did the
    work show CPU per transaction (the coordinator only on the product's side)."""
    from txn_bench import cpushare
    from txn_bench.load import run_product

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


@pytest.mark.timeout(120)
async def test_console_pages_smoke(stack: Stack) -> None:
    """``txn bench --console``: every page answers before and with the history, and the
    history is gone again afterwards."""
    from txn_bench import console_pages, growth

    state = stack.state()
    target = Target.from_state(state, "session stack")
    said: list[str] = []
    results = await console_pages.pages(
        target.coordinator_url,
        state["api_token"],
        target.log_dsn,
        target.ledgers[0].name,
        2000,
        said.append,
    )
    assert [r["page"] for r in results] == [name for name, _ in console_pages.PAGES]
    assert all(r["before_ms"] > 0 and r["with_history_ms"] > 0 for r in results)
    assert any("overview" in line for line in said)
    rows = await fetch(
        target.log_dsn,
        "SELECT count(*) AS n FROM transactions WHERE gid LIKE $1",
        growth.HISTORY_PREFIX + "%",
    )
    assert rows[0]["n"] == 0


@pytest.mark.timeout(120)
async def test_purge_under_load_smoke(stack: Stack) -> None:
    """``txn bench --purge``: both kinds of run measure throughput, and every history row the
    bench added is purged while the load runs."""
    from txn_bench import growth, purge

    state = stack.state()
    target = Target.from_state(state, "session stack")
    said: list[str] = []
    report = await purge.purge_under_load(
        target.coordinator_url,
        [lg.name for lg in target.ledgers],
        target.log_dsn,
        300,
        2,
        1.0,
        0.2,
        said.append,
    )
    assert len(report["tps_without"]) == len(report["tps_during"]) == 2
    assert all(t > 0 for t in report["tps_without"] + report["tps_during"]), (report, said)
    assert all(p["deleted"] >= 300 for p in report["purges"])
    assert report["ratio_during_to_without"] > 0
    rows = await fetch(
        target.log_dsn,
        "SELECT count(*) AS n FROM transactions WHERE gid LIKE $1",
        growth.HISTORY_PREFIX + "%",
    )
    assert rows[0]["n"] == 0


@pytest.mark.timeout(120)
async def test_barrier_purge_under_load_smoke(stack: Stack) -> None:
    """``txn bench --barrier-purge``: the ledgers' barrier retention, asking the coordinator,
    deletes every barrier row the bench added while the load runs."""
    from txn_bench import growth, purge

    state = {**stack.state(), "participant_secrets": dict(stack.participant_secrets)}
    target = Target.from_state(state, "session stack")
    barriers = purge.ledger_barriers(state, target)
    report = await purge.purge_under_load(
        target.coordinator_url,
        [lg.name for lg in target.ledgers],
        target.log_dsn,
        300,
        2,
        1.0,
        0.2,
        [].append,
        barriers,
    )
    assert report["purged"] == "barrier rows"
    assert all(t > 0 for t in report["tps_without"] + report["tps_during"])
    assert [p["deleted"] for p in report["purges"]] == [300, 300]  # 100 on each of 3 ledgers
    for barrier in barriers:
        rows = await fetch(
            barrier.dsn,
            "SELECT count(*) AS n FROM txn_barrier WHERE gid LIKE $1",
            growth.HISTORY_PREFIX + "%",
        )
        assert rows[0]["n"] == 0, barrier.name


@pytest.mark.timeout(60)
async def test_scale_out_smoke(stack: Stack) -> None:
    """``txn bench --scale-out``: a run per number of coordinators, clients spread over them
    (here the session's one coordinator, listed twice), with ratios against one."""
    from txn_bench import scaleout

    target = Target.from_state(stack.state(), "session stack")
    url = target.coordinator_url
    report = await scaleout.scale_out(
        [url, url], [lg.name for lg in target.ledgers], 2, 1.0, 0.2, 1, [].append
    )
    assert [r["coordinators"] for r in report["results"]] == [1, 2]
    assert all(r["tps"] > 0 for r in report["results"]) and report["errors"] == 0
    assert report["results"][0]["ratio_to_one"] == 1.0
