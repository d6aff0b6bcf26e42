"""The bench's pure parts: the minimal floor's one-round-trip prepare text (its literals quoted),
the saga bodies with parallel steps, and the arithmetic of the measured database work."""

from __future__ import annotations

from txn_bench.dbwork import Work
from txn_bench.load import branches, protocol
from txn_bench.minimal_floor import prepare_sql, quote


def test_quote_doubles_single_quotes() -> None:
    assert quote("bench-c1") == "'bench-c1'"
    assert quote("o'neil") == "'o''neil'"


def test_prepare_is_one_string_adjust_check_and_prepare() -> None:
    sql = prepare_sql(-2, "bench-c3", "bench_min:g-3-7:0")
    assert sql.startswith("BEGIN; WITH adjusted AS (UPDATE accounts SET balance = balance + (-2) ")
    assert "WHERE id = 'bench-c3' AND balance + (-2) >= 0 RETURNING balance)" in sql
    assert "SELECT 1 / count(*) FROM adjusted;" in sql
    assert sql.endswith("PREPARE TRANSACTION 'bench_min:g-3-7:0'")
    assert "$" not in sql
    # A quote in an identifier stays inside its literal.
    assert "id = 'x'' OR ''1''=''1'" in prepare_sql(1, "x' OR '1'='1", "bench_min:x")


def test_modes_map_to_protocols() -> None:
    assert protocol("2pc") == ("2pc", False)
    assert protocol("saga") == ("saga", True)
    assert protocol("saga-seq") == ("saga", False)


def test_parallel_saga_steps_depend_on_nothing() -> None:
    ledgers = ["ledger1", "ledger2", "ledger3"]
    parallel = branches("saga", ledgers, 0, 0, parallel=True)
    assert [b["depends_on"] for b in parallel] == [[], [], []]
    assert all("depends_on" not in b for b in branches("saga", ledgers, 0, 0))
    assert all("depends_on" not in b for b in branches("2pc", ledgers, 0, 0, parallel=True))
    assert sum(b["payload"]["delta"] for b in parallel) == 0


def test_work_pools_and_divides() -> None:
    a = Work(transactions=10, log_rows=30, log_wal_bytes=1000, ledger_rows=30)
    b = Work(transactions=30, log_rows=90, log_hot_updates=60, ledger_wal_bytes=4000)
    pooled = a + b
    assert pooled.transactions == 40
    assert pooled.per_txn()["log_rows"] == 3.0
    assert pooled.per_txn()["log_hot_updates"] == 1.5
    assert pooled.per_txn()["ledger_wal_bytes"] == 100.0
    assert Work().per_txn()["log_rows"] is None
