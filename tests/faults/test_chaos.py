"""The chaos soak in its short form (40 s of load and faults by default): the shop's orders in
both modes while faults drawn from the seed hit every process, database and link; afterwards
every transaction is terminal and every invariant holds, read from the databases.

The long form is the same test with other options:
    pytest -m chaos --chaos-seed 7 --chaos-duration 600
"""

from __future__ import annotations

from pathlib import Path

import pytest

from txn_devstack.chaos import ChaosConfig, ChaosResult, report, run_chaos
from txn_devstack.faults import KINDS

pytestmark = pytest.mark.chaos

SHORT_S = 40.0  # --chaos-duration's default: the short form
# The replicated log's short form: its failovers among a few other faults.
SHORT_HA_KINDS = (
    "kill_log_primary",
    "log_switchover",
    "kill",
    "crash_db",
    "terminate_log_backends",
)


def settled(config: ChaosConfig) -> tuple[ChaosResult, str]:
    """Run it; it settled, with no violation, and committed orders in both modes."""
    result = run_chaos(config, progress=False)
    table = report(result)
    print(table)
    assert result.quiesce_s is not None, f"did not settle within the limit\n{table}"
    assert result.violations == 0, table
    for mode in ("2pc", "saga"):
        assert result.transactions.get(f"{mode} committed", 0) > 0, table
    return result, table


def test_chaos_run_settles_with_every_invariant_holding(
    state_root: Path, request: pytest.FixtureRequest
) -> None:
    seed = int(request.config.getoption("--chaos-seed"))
    duration = float(request.config.getoption("--chaos-duration"))
    config = ChaosConfig(state_dir=state_root / f"chaos-{seed}", seed=seed, duration_s=duration)
    result, table = settled(config)
    assert sum(result.faults.values()) >= duration / 5, table
    assert len(result.faults) >= 4, table


def test_chaos_on_a_replicated_log_settles_with_every_invariant_holding(
    state_root: Path, request: pytest.FixtureRequest
) -> None:
    """The same on the log of `txn dev --log-ha` (three nodes under Patroni), its primary
    killed and switched over among the other faults; the short form draws from a few kinds so
    that the log's failovers are among them. The long form: `txn chaos --log-ha`."""
    seed = int(request.config.getoption("--chaos-seed"))
    given = float(request.config.getoption("--chaos-duration"))
    short = given == SHORT_S
    duration = 20.0 if short else given
    kinds = SHORT_HA_KINDS if short else KINDS
    config = ChaosConfig(
        state_dir=state_root / f"chaos-ha-{seed}",
        seed=seed,
        duration_s=duration,
        kinds=kinds,
        log_ha=True,
    )
    result, table = settled(config)
    failovers = result.faults.get("kill_log_primary", 0) + result.faults.get("log_switchover", 0)
    assert failovers >= 1, table
