"""How long a surviving coordinator takes to finish a killed one's work, with the default lease
and claim settings: the scenario of tests/faults/test_takeover.py (a stream of 2PC and saga
transactions to two coordinators, coord1 SIGKILLed in the middle), run several times on one
embedded stack, each run's invariants checked. Prints each run's takeover time and the median.

Usage: .venv/bin/python txn_bench/takeover.py [--runs 3] [--accounts 1] [--seed N]

``--accounts N`` spreads the client tasks over N accounts per ledger (the test uses 1, where
every transaction contends for the same row on each ledger).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

from txn_devstack.stack import Stack, StackConfig, auth_headers

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 240.0  # one run: stream, settle (bounded inside), checks, coord1 restart


async def bench(stack: Stack, runs: int, accounts: int, seed: int | None) -> list[float]:
    from tests.faults import test_takeover as scenario

    print(
        f"defaults: lease_s={scenario.LEASE_S} claim_interval_s={scenario.CLAIM_INTERVAL_S}; "
        f"bound {scenario.BOUND_S}s; {scenario.CLIENTS} clients for {scenario.STREAM_S}s, "
        f"coord1 killed after {scenario.KILL_AFTER_S}s",
        flush=True,
    )
    coord1 = stack.service("coord1")
    times: list[float] = []
    async with httpx.AsyncClient(timeout=10, headers=auth_headers(stack.api_token)) as client:
        for i in range(1, runs + 1):
            run_seed = None if seed is None else seed + i
            try:
                outcome = await asyncio.wait_for(
                    scenario.run_scenario(stack, client, seed=run_seed, accounts=accounts),
                    RUN_TIMEOUT_S,
                )
                await scenario.check_invariants(stack, outcome)
            finally:
                coord1.restart = True
                await asyncio.to_thread(stack.restart, "coord1")
            times.append(outcome.takeover_s)
            verdict = "within" if outcome.takeover_s <= scenario.BOUND_S else "OVER"
            print(f"run {i}: {verdict} bound; {outcome.summary()}", flush=True)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--accounts", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # for tests.faults.test_takeover (the scenario)
    from tests.faults.test_takeover import TAKEOVER_ENV

    with tempfile.TemporaryDirectory(prefix="txn-takeover-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # the clusters' server account must be able to enter it
        config = StackConfig(
            state_dir=root / "stack",
            coordinators=2,
            ledgers=3,
            fsync=False,
            coordinator_env=dict(TAKEOVER_ENV),
        )
        with Stack(config) as stack:
            times = asyncio.run(bench(stack, args.runs, args.accounts, args.seed))
    print("takeover times: " + ", ".join(f"{t:.2f}s" for t in times))
    print(f"median takeover: {statistics.median(times):.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
