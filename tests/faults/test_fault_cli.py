"""`txn fault`, the user-facing fault tools, against a running stack: its control endpoint is
started next to the stack (as `txn dev` does) and named in stack.json; the CLI reads it there."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from coordinator.cli import main
from tests.helpers import AUTH
from txn_devstack.fault_control import FaultControl
from txn_devstack.faults import Injector
from txn_devstack.stack import Stack


@pytest.fixture(scope="module")
def control(fault_stack: Stack) -> Iterator[FaultControl]:
    c = FaultControl(Injector(fault_stack))
    c.start()
    fault_stack.extra_state["fault_control"] = c.url
    fault_stack.write_state()
    try:
        yield c
    finally:
        fault_stack.extra_state.pop("fault_control")
        fault_stack.write_state()
        c.stop()


def fault(stack: Stack, *args: str) -> int:
    return main(["fault", "--state-dir", str(stack.state_dir), *args])


def test_list_names_every_kind_and_its_targets(
    fault_stack: Stack, control: FaultControl, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fault(fault_stack, "list") == 0
    out = capsys.readouterr().out
    assert "crash_db" in out and "ledger1, ledger2, ledger3" in out
    assert "kill" in out and "coord1" in out
    # This stack has no proxies: the proxy faults say what they need.
    assert "blackhole" in out and "needs txn dev --fault-proxies" in out


def test_kill_restarts_the_service_and_it_serves_again(
    fault_stack: Stack, control: FaultControl, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = fault_stack.service("ledger2")
    before, pid = ledger.restarts, ledger.pid
    assert fault(fault_stack, "kill", "ledger2") == 0
    assert "kill ledger2: done" in capsys.readouterr().out
    assert ledger.restarts == before + 1 and ledger.pid not in (None, pid)
    assert httpx.get(f"{ledger.url}/healthz").status_code == 200


def test_terminate_log_backends_cuts_the_coordinators_log_connections(
    fault_stack: Stack, control: FaultControl, capsys: pytest.CaptureFixture[str]
) -> None:
    coord = fault_stack.coordinators[0]
    # At least one log connection.
    assert httpx.get(f"{coord.url}/readyz", headers=AUTH).status_code == 200
    assert fault(fault_stack, "terminate_log_backends", "log") == 0
    out = capsys.readouterr().out
    assert "terminate_log_backends log: done" in out and " connections)" in out
    assert "(0 connections)" not in out
    # The first statement on a terminated pooled connection fails (503, "retry"); SQLAlchemy
    # then invalidates the pool, and the next ones reconnect on their own.
    statuses = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        statuses.append(httpx.get(f"{coord.url}/readyz", headers=AUTH).status_code)
        if statuses[-1] == 200:
            break
        time.sleep(0.1)
    assert statuses[-1] == 200 and set(statuses) <= {200, 503}, statuses
    assert len(statuses) <= 3, f"more than a couple of failures after one disconnect: {statuses}"


def test_bad_requests_are_refused_with_what_to_fix(
    fault_stack: Stack, control: FaultControl, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fault(fault_stack, "crash_db", "nosuch") == 2
    assert "cannot hit 'nosuch'; targets: ledger1, ledger2, ledger3" in capsys.readouterr().out
    assert fault(fault_stack, "kill") == 2
    assert "needs a target" in capsys.readouterr().out
    bad_hold = httpx.post(
        f"{control.url}/faults", json={"kind": "pause", "target": "ledger1", "hold_s": -1}
    )
    assert bad_hold.status_code == 422 and "hold_s" in bad_hold.json()["detail"]
    not_json = httpx.post(f"{control.url}/faults", content=b"{nope")
    assert not_json.status_code == 422 and "JSON" in not_json.json()["detail"]
