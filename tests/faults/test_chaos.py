"""The chaos soak in its short form (60 s of load and faults by default): the shop's orders in
both modes while faults drawn from the seed hit every process, database and link; afterwards
every transaction is terminal and every invariant holds, read from the databases.

The long form is the same test with other options:
    pytest -m chaos --chaos-seed 7 --chaos-duration 600
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.chaos import ChaosConfig, report, run_chaos

pytestmark = pytest.mark.chaos


def test_chaos_run_settles_with_every_invariant_holding(
    state_root: Path, request: pytest.FixtureRequest
) -> None:
    seed = int(request.config.getoption("--chaos-seed"))
    duration = float(request.config.getoption("--chaos-duration"))
    config = ChaosConfig(state_dir=state_root / f"chaos-{seed}", seed=seed, duration_s=duration)
    result = run_chaos(config, progress=False)
    table = report(result)
    print(table)
    assert result.quiesce_s is not None, f"did not settle within the limit\n{table}"
    assert result.violations == 0, table
    # The run really did something: orders in both modes committed, faults of many kinds hit.
    for mode in ("2pc", "saga"):
        assert result.transactions.get(f"{mode} committed", 0) > 0, table
    assert sum(result.faults.values()) >= duration / 5, table
    assert len(result.faults) >= 4, table
