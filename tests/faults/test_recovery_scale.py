"""Recovery at scale, short form (the full 1,000-transaction run is bench/recovery_at_scale.py):
transactions left in flight by a killed coordinator are all driven to a terminal status by the
restarted one, claimed in batches rather than one row at a time."""

from __future__ import annotations

from bench.recovery_at_scale import run
from devstack.stack import Stack, run_sync
from tests.helpers import fetch, prepared_xacts


def test_killed_under_load_then_everything_recovered_in_batches(fault_stack: Stack) -> None:
    coord = fault_stack.coordinators[0]
    fault_stack.restart(coord.name, env={"TXN_CLAIM_BATCH": "20"})
    try:
        result = run(fault_stack, n=60, concurrency=8, timeout_s=120)
    finally:
        fault_stack.restart(coord.name, env={"TXN_CLAIM_BATCH": "100"})
    assert result["recovered"] >= 60
    assert 3 <= result["claim_statements"] <= 10, result  # batches of 20, not 60 single rows
    rows = run_sync(
        lambda: fetch(
            fault_stack.log_dsn,
            "SELECT status, count(*) AS n FROM transactions WHERE gid LIKE 'crash-%' "
            "GROUP BY status",
        )
    )
    statuses = {r["status"]: r["n"] for r in rows}
    assert set(statuses) <= {"committed", "aborted"} and sum(statuses.values()) >= 60
    for p in fault_stack.participants:
        assert p.dsn is not None
        dsn = p.dsn
        assert run_sync(lambda dsn=dsn: prepared_xacts(dsn)) == []
