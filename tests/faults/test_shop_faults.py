"""The shop under faults: while orders flow in both modes, the coordinator is killed outright
(and brought back by the restart policy) and the inventory's Postgres crashes (immediate
shutdown) and comes back. Afterwards every invariant holds, read from the databases by the same
checker the demo uses; orders whose answers were lost are settled by the orders service."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_COORDINATOR_ENV
from tests.helpers import TEST_API_TOKEN
from txn_devstack.shop_demo import run_against
from txn_devstack.stack import Stack, StackConfig


@pytest.fixture(scope="module")
def shop(state_root: Path) -> Iterator[Stack]:
    s = Stack(
        StackConfig(
            api_token=TEST_API_TOKEN,
            state_dir=state_root / "shop-faults",
            ledgers=0,
            shop=True,
            fsync=False,
            coordinator_env=dict(TEST_COORDINATOR_ENV),
            participant_env={"TXNP_RECONCILE_INTERVAL_S": "0.5"},
        )
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()


def test_orders_survive_a_killed_coordinator_and_a_crashed_database(
    shop: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    codes: list[int] = []
    orders = threading.Thread(
        target=lambda: codes.append(run_against(shop.state(), n=80, concurrency=8, seed=11))
    )
    orders.start()
    coord = shop.coordinators[0]
    inventory_db = shop.clusters["inventory"]
    try:
        time.sleep(2.0)
        assert coord.pid is not None
        restarts = coord.restarts
        os.kill(coord.pid, signal.SIGKILL)
        shop.wait_restarted(coord.name, restarts + 1)
        time.sleep(1.0)
        inventory_db.crash()
        time.sleep(1.0)
        inventory_db.start()
    finally:
        orders.join(timeout=240)
    assert not orders.is_alive(), "the order run did not finish"
    out = capsys.readouterr().out
    # run_against exits 0 only when every invariant holds (it waits for things to settle).
    assert codes == [0], out
    assert "FAIL" not in out and "80 orders in" in out
