"""The embedded dev stack: binaries found or a clear error, servers as an unprivileged user
with prepared transactions enabled, stack.json kept current, a restart policy for services,
and everything stopped by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import TEST_API_TOKEN, fetch
from txn_devstack.postgres import PostgresNotFound, candidate_bindirs, find_bindir
from txn_devstack.stack import Stack, StackConfig


def test_missing_binaries_give_an_error_that_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(PostgresNotFound) as caught:
        find_bindir([tmp_path / "nowhere", tmp_path])
    message = str(caught.value)
    assert "apt-get install postgresql" in message
    assert "txn-coordinator[pgbinaries]" in message
    assert "TXN_PG_BINDIR" in message


def test_txn_pg_bindir_is_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("initdb", "postgres"):
        (tmp_path / name).write_text("#!/bin/sh\n")
    monkeypatch.setenv("TXN_PG_BINDIR", str(tmp_path))
    assert candidate_bindirs()[0] == tmp_path
    assert find_bindir() == tmp_path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    status = Path(f"/proc/{pid}/status").read_text()
    return "State:\tZ" not in status


def _wait(predicate: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_stack_lifecycle_restart_policy_and_stop_by_pid(state_root: Path) -> None:
    state_dir = state_root / "lifecycle"
    stack = Stack(
        StackConfig(api_token=TEST_API_TOKEN, state_dir=state_dir, ledgers=2, fsync=False)
    )
    stack.start()
    try:
        state = json.loads((state_dir / "stack.json").read_text())
        assert set(state) == {"coordinators", "participants", "log_dsn", "clusters", "api_token"}
        assert state["api_token"] == TEST_API_TOKEN
        assert [c["name"] for c in state["clusters"]] == ["log", "ledger1", "ledger2"]
        assert [p["name"] for p in state["participants"]] == ["ledger1", "ledger2"]
        assert all(set(c) >= {"url", "pid"} for c in state["coordinators"])
        assert all(set(p) >= {"name", "url", "pid", "dsn"} for p in state["participants"])
        assert all(set(c) >= {"name", "port", "pid", "data_dir"} for c in state["clusters"])
        pids = [c["pid"] for c in state["clusters"]] + [
            s["pid"] for s in state["coordinators"] + state["participants"]
        ]
        assert all(_alive(pid) for pid in pids)
        for cluster in stack.clusters.values():
            assert cluster.pid is not None
            uid = os.stat(f"/proc/{cluster.pid}").st_uid
            if os.geteuid() == 0:
                assert uid != 0, "postgres must not run as root"
            rows = await fetch(cluster.dsn("postgres"), "SHOW max_prepared_transactions")
            assert int(rows[0][0]) > 0
        # Each participant has a cluster of its own.
        ports = {p["dsn"].split("@")[1].split("/")[0] for p in state["participants"]}
        assert len(ports) == 2

        # Restart policy: a participant killed outright comes back, and stack.json follows.
        ledger = stack.service("ledger1")
        old_pid = ledger.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        stack.wait_restarted("ledger1", 1)
        new_pid = ledger.pid
        assert new_pid is not None and new_pid != old_pid
        _wait(
            lambda: (
                json.loads((state_dir / "stack.json").read_text())["participants"][0]["pid"]
                == new_pid
            )
        )
        assert ledger.exits == [-signal.SIGKILL]
    finally:
        stack.stop()
    pids.append(new_pid)
    assert not [pid for pid in pids if _alive(pid)], "something was left running"
    after = json.loads((state_dir / "stack.json").read_text())
    assert all(c["pid"] is None for c in after["clusters"])


async def test_stack_keeps_its_data_across_restarts(state_root: Path) -> None:
    state_dir = state_root / "persist"
    config = StackConfig(
        api_token=TEST_API_TOKEN, state_dir=state_dir, ledgers=1, cluster_per_participant=False
    )
    with Stack(config) as stack:
        dsn = stack.participants[0].dsn
        assert dsn is not None
        await fetch(dsn, "INSERT INTO accounts (id, balance) VALUES ('kept', 7)")
        port = stack.clusters["log"].port
    with Stack(config) as stack:
        assert stack.clusters["log"].port == port
        dsn = stack.participants[0].dsn
        assert dsn is not None
        rows = await fetch(dsn, "SELECT balance FROM accounts WHERE id = 'kept'")
        assert rows[0]["balance"] == 7


def _dev_pids(state_dir: Path) -> list[int]:
    state = json.loads((state_dir / "stack.json").read_text())
    entries = state["clusters"] + state["coordinators"] + state["participants"]
    return [e["pid"] for e in entries if e["pid"] is not None]


def _start_txn_dev(state_dir: Path) -> subprocess.Popen[bytes]:
    state_dir.mkdir(parents=True, exist_ok=True)
    output = state_dir / "txn-dev.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "coordinator.cli",
                "dev",
                "--state-dir",
                str(state_dir),
                "--no-shop",
                "--ledgers",
                "1",
                "--no-fsync",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if b"Ctrl-C stops everything" in output.read_bytes():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise AssertionError(f"txn dev did not come up: {output.read_text()}")


def _stop_txn_dev(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, so it stops what it started even when the test failed; kill only if stuck."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_txn_dev_stops_everything_on_ctrl_c_and_reaps_leftovers(state_root: Path) -> None:
    state_dir = state_root / "txn-dev"
    proc = _start_txn_dev(state_dir)
    try:
        pids = _dev_pids(state_dir)
        assert len(pids) == 4  # log and ledger1 clusters, coordinator, ledger1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        _stop_txn_dev(proc)
    assert not [pid for pid in pids if _alive(pid)], "Ctrl-C left processes running"

    # `txn dev` killed outright cannot clean up; the next start of the same state folder stops
    # what it left, by the PIDs it recorded, and takes over the same data.
    proc = _start_txn_dev(state_dir)
    first = _dev_pids(state_dir)
    proc.kill()
    proc.wait()
    assert all(_alive(pid) for pid in first)
    proc = _start_txn_dev(state_dir)
    try:
        assert not [pid for pid in first if _alive(pid)], "leftovers were not stopped"
        second = _dev_pids(state_dir)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        _stop_txn_dev(proc)
    assert not [pid for pid in second if _alive(pid)]
