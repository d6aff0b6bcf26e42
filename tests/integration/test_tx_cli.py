"""``txn tx`` against the session's real stack: list and show a committed saga, the refusals
and their exit codes (409 -> 1, 404 -> 1, 401 -> 3, unreachable -> 4), and an operator abort of
a saga whose first step is held up by a row lock taken in the ledger's database."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from coordinator.cli import main
from tests.helpers import (
    TEST_API_TOKEN,
    api_client,
    balances,
    open_accounts,
    saga_branch,
    unique,
    wait_terminal,
)
from txn_devstack.stack import Stack


async def txn_tx(stack: Stack, *argv: str, token: str | None = TEST_API_TOKEN) -> int:
    """``txn tx --url <the stack's coordinator> [--token T] argv...`` in a thread."""
    auth = ["--token", token] if token else []
    return await asyncio.to_thread(main, ["tx", "--url", stack.coordinator_url, *auth, *argv])


def urls(stack: Stack) -> dict[str, str]:
    return {p.name: p.url for p in stack.participants if p.name.startswith("ledger")}


async def submit(stack: Stack, body: dict[str, Any], wait_s: float) -> dict[str, Any]:
    async with api_client(timeout=30) as client:
        reply = await client.post(
            f"{stack.coordinator_url}/v1/transactions?wait={wait_s}", json=body
        )
    assert reply.status_code == 201, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


@pytest.fixture(scope="module")
async def committed(stack: Stack) -> str:
    """The gid of a committed saga of three steps."""
    account = unique("cli")
    async with api_client(timeout=30) as client:
        await open_accounts(client, urls(stack), account, 100)
    gid = unique("txcli-ok")
    branches = [saga_branch("ledger1", account, -30), saga_branch("ledger2", account, 30)]
    txn = await submit(stack, {"gid": gid, "mode": "saga", "branches": branches}, 20)
    assert txn["status"] == "committed", txn
    return gid


@pytest.fixture(autouse=True)
def no_token_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TXN_TOKEN", raising=False)
    monkeypatch.delenv("TXN_URL", raising=False)


async def test_list_finds_it_by_gid_prefix(
    stack: Stack, committed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await txn_tx(stack, "list", "--gid-prefix", committed) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["GID", "MODE", "STATUS", "AGE", "BRANCHES", "REASON"]
    assert len(lines) == 2, lines
    gid, mode, status, age, branches, reason = lines[1].split()
    assert (gid, mode, status, branches, reason) == (committed, "saga", "committed", "2", "-")
    assert age[-1] in "smhd"

    assert await txn_tx(stack, "list", "--gid-prefix", "txcli-ok-", "--status", "committed") == 0
    assert committed in capsys.readouterr().out
    assert await txn_tx(stack, "list", "--gid-prefix", committed, "--json") == 0
    page = json.loads(capsys.readouterr().out)
    assert [t["gid"] for t in page["items"]] == [committed] and page["next_cursor"] is None


async def test_list_pages_with_the_cursor(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    account, prefix = unique("page"), unique("txcli-page")
    async with api_client(timeout=30) as client:
        await open_accounts(client, urls(stack), account, 100)
    for n in range(3):
        body = {
            "gid": f"{prefix}-{n}",
            "mode": "saga",
            "branches": [saga_branch("ledger1", account, 1)],
        }
        assert (await submit(stack, body, 20))["status"] == "committed"
    argv = ["list", "--gid-prefix", prefix, "--limit", "2"]
    assert await txn_tx(stack, *argv) == 0
    first = capsys.readouterr().out.splitlines()
    assert len(first) == 4 and first[3].startswith("next: "), first
    assert await txn_tx(stack, *argv, "--cursor", first[3].removeprefix("next: ")) == 0
    second = capsys.readouterr().out.splitlines()
    assert len(second) == 2, second
    shown = {line.split()[0] for line in first[1:3] + second[1:]}
    assert shown == {f"{prefix}-{n}" for n in range(3)}
    assert await txn_tx(stack, *argv, "--all") == 0
    every = capsys.readouterr().out.splitlines()
    assert len(every) == 4 and {line.split()[0] for line in every[1:]} == shown


async def test_list_with_a_bad_filter_exits_2(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await txn_tx(stack, "list", "--status", "bogus") == 2
    err = capsys.readouterr().err
    assert err.startswith("txn tx: 422: query.status: ") and "status must be one of" in err


async def test_show_prints_branches_and_timeline(
    stack: Stack, committed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await txn_tx(stack, "show", committed) == 0
    out = capsys.readouterr().out
    assert f"gid:      {committed}" in out
    assert "status:   committed" in out
    lines = out.splitlines()
    at = lines.index("branches:")
    assert lines[at + 1].split()[:5] == ["IDX", "PARTICIPANT", "ACTION", "STATUS", "ATTEMPTS"]
    assert lines[at + 2].split()[:5] == ["0", "ledger1", "/accounts/adjust", "succeeded", "1"]
    assert lines[at + 3].split()[:5] == ["1", "ledger2", "/accounts/adjust", "succeeded", "1"]
    timeline = lines[lines.index("timeline:") + 1 :]
    assert timeline[0].split() == ["AT", "KIND", "BRANCH", "DETAIL"]
    kinds = [line.split()[2] for line in timeline[1:]]
    assert kinds.count("action:succeeded") == 2, timeline

    assert await txn_tx(stack, "show", committed, "--json") == 0
    txn = json.loads(capsys.readouterr().out)
    assert txn["gid"] == committed and txn["events"]


async def test_abort_of_a_committed_transaction_is_refused(
    stack: Stack, committed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await txn_tx(stack, "abort", committed, "--note", "testing the CLI") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"txn tx: 409: transaction {committed} is committed: it is finished\n"
    assert await txn_tx(stack, "resolve", committed, "0", "--note", "testing the CLI") == 1
    assert "409: " in capsys.readouterr().err


async def test_retry_without_a_token_exits_3(
    stack: Stack, committed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await txn_tx(stack, "retry", committed, "--note", "x", token=None) == 3
    assert capsys.readouterr().err.startswith("txn tx: 401: missing credentials")
    assert await txn_tx(stack, "retry", committed, "--note", "x", token="txn_wrong") == 3
    err = capsys.readouterr().err
    assert err == "txn tx: 401: unknown or revoked token\n" and "txn_wrong" not in err


async def test_show_of_an_unknown_gid_exits_1(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    gid = unique("txcli-none")
    assert await txn_tx(stack, "show", gid) == 1
    assert capsys.readouterr().err == f"txn tx: 404: no transaction with gid {gid}\n"


async def test_unreachable_coordinator_exits_4(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    argv = ["tx", "--url", f"http://127.0.0.1:{port}", "--token", TEST_API_TOKEN, "list"]
    assert await asyncio.to_thread(main, argv) == 4
    err = capsys.readouterr().err
    assert err.startswith(f"txn tx: cannot reach http://127.0.0.1:{port}: ")
    assert TEST_API_TOKEN not in err


async def test_stack_file_gives_the_url_and_token(
    stack: Stack, committed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "stack.json"
    state.write_text(json.dumps(stack.state()))
    argv = ["tx", "--stack", str(state), "show", committed]
    assert await asyncio.to_thread(main, argv) == 0
    out, err = capsys.readouterr()
    assert f"gid:      {committed}" in out
    assert TEST_API_TOKEN not in out + err


@pytest.fixture
async def held_account(stack: Stack) -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    """An account on every ledger whose row on ledger1 is locked (FOR UPDATE) until the test
    rolls back the connection's transaction: a step adjusting it there keeps failing (503)."""
    account = unique("held")
    async with api_client(timeout=30) as client:
        await open_accounts(client, urls(stack), account, 100)
    conn = await asyncpg.connect(stack.service("ledger1").dsn)
    try:
        await conn.execute("BEGIN")
        await conn.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", account)
        yield account, conn
    finally:
        await conn.close()


async def _until(check: Any, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def _lock_waiters(conn: asyncpg.Connection) -> int:
    query = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return int(await conn.fetchval(query))


async def test_abort_of_a_running_saga(
    stack: Stack,
    held_account: tuple[str, asyncpg.Connection],
    capsys: pytest.CaptureFixture[str],
) -> None:
    account, lock = held_account
    gid = unique("txcli-held")
    body = {
        "gid": gid,
        "mode": "saga",
        "branches": [saga_branch("ledger1", account, -10), saga_branch("ledger2", account, 10)],
        "retry": {"max_attempts": 100, "initial_s": 0.2, "max_s": 0.5},
        "timeout_s": 120,
    }
    assert (await submit(stack, body, 0))["status"] == "running"
    watcher = await asyncpg.connect(stack.service("ledger1").dsn)
    try:
        await _until(lambda: _lock_waiters(watcher))  # the first step waits for the row
    finally:
        await watcher.close()

    # The driver retries the step in memory, holding the transaction: retry is refused.
    assert await txn_tx(stack, "retry", gid, "--note", "go on") == 1
    err = capsys.readouterr().err
    assert err.startswith("txn tx: 409: instance ") and "is driving transaction" in err, err

    assert await txn_tx(stack, "abort", gid, "--note", "customer cancelled") == 0
    assert capsys.readouterr().out == f"abort: {gid} is now compensating\n"
    assert await txn_tx(stack, "abort", gid, "--note", "again") == 1
    # Refused either way: still compensating, or compensated already (the step it undoes
    # may have given up on the held row and been refused meanwhile).
    again = capsys.readouterr().err
    assert (
        f"409: transaction {gid} is compensating already" in again
        or f"409: transaction {gid} is aborted: it is finished" in again
    ), again

    await lock.execute("ROLLBACK")
    async with api_client(timeout=30) as client:
        txn = await wait_terminal(client, stack.coordinator_url, gid)
    assert txn["status"] == "aborted", txn
    ledger1 = {"ledger1": stack.service("ledger1").dsn or ""}
    assert await balances(ledger1, account) == {"ledger1": 100}
    assert await txn_tx(stack, "show", gid) == 0
    out = capsys.readouterr().out
    assert (
        "status:   aborted" in out and "reason:   aborted by dev-admin: customer cancelled" in out
    )
    abort = next(line for line in out.splitlines() if "operator:abort" in line)
    assert '"note":"customer cancelled"' in abort and '"status":"compensating"' in abort
