"""TCC end to end over real HTTP and real Postgres (the session stack's ledgers, whose
``/tcc/adjust`` freezes a debit on try, applies it on confirm and releases it on cancel): a
transfer confirmed everywhere, a refused try and a deadline cancelling every branch, the
validation of TCC branches against the catalogues, and txn_client's ``Tcc`` builder. Every
outcome is counted from the ledgers' databases: balances, frozen amounts and barrier rows."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
import pytest

from tests.helpers import TEST_API_TOKEN, api_client, barrier_rows, fetch, open_accounts, unique
from txn_client import AsyncClient, Tcc
from txn_devstack.stack import Stack

TRY, CONFIRM, CANCEL = "/tcc/adjust", "/tcc/adjust/confirm", "/tcc/adjust/cancel"
OPENING = 100
MOVES = [("ledger1", -30), ("ledger2", 20), ("ledger3", 10)]


def tcc_branch(ledger: str, account: str, delta: int) -> dict[str, Any]:
    return {
        "participant": ledger,
        "try": TRY,
        "confirm": CONFIRM,
        "cancel": CANCEL,
        "payload": {"account": account, "delta": delta},
    }


def tcc_body(gid: str, account: str, moves: list[tuple[str, int]], **extra: Any) -> dict[str, Any]:
    branches = [tcc_branch(ledger, account, delta) for ledger, delta in moves]
    return {"gid": gid, "mode": "tcc", "branches": branches, **extra}


def dsns(stack: Stack) -> dict[str, str]:
    return {p.name: p.dsn for p in stack.participants if p.dsn}


async def holdings(stack: Stack, account: str) -> dict[str, tuple[int, int]]:
    """(balance, frozen) of ``account`` on every ledger, from its database."""
    out = {}
    for name, dsn in dsns(stack).items():
        rows = await fetch(dsn, "SELECT balance, frozen FROM accounts WHERE id = $1", account)
        out[name] = (int(rows[0]["balance"]), int(rows[0]["frozen"]))
    return out


async def opened(stack: Stack, prefix: str) -> str:
    account = unique(prefix)
    async with api_client(timeout=30) as client:
        await open_accounts(client, {p.name: p.url for p in stack.participants}, account, OPENING)
    return account


async def get(client: httpx.AsyncClient, stack: Stack, gid: str) -> dict[str, Any]:
    reply = await client.get(f"{stack.coordinator_url}/v1/transactions/{gid}")
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


async def wait_status(
    client: httpx.AsyncClient, stack: Stack, gid: str, status: str, timeout_s: float = 60
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        txn = await get(client, stack, gid)
        if txn["status"] == status:
            return txn
        assert asyncio.get_running_loop().time() < deadline, txn
        await asyncio.sleep(0.1)


async def test_a_tcc_transfer_confirms_every_branch(stack: Stack) -> None:
    account = await opened(stack, "tcc-ok")
    gid = unique("tcc-ok")
    async with api_client(timeout=30) as client:
        reply = await client.post(
            f"{stack.coordinator_url}/v1/transactions?wait=20",
            json=tcc_body(gid, account, MOVES),
        )
        assert reply.status_code == 201, reply.text
        txn = await get(client, stack, gid)
    assert (txn["mode"], txn["status"], txn["reason"]) == ("tcc", "committed", None), txn
    assert [b["status"] for b in txn["branches"]] == ["committed"] * 3
    assert [(b["action"], b["confirm"], b["compensation"]) for b in txn["branches"]] == [
        (TRY, CONFIRM, CANCEL)
    ] * 3
    assert await holdings(stack, account) == {
        "ledger1": (70, 0),
        "ledger2": (120, 0),
        "ledger3": (110, 0),
    }
    for idx, (ledger, _) in enumerate(MOVES):
        assert await barrier_rows(dsns(stack)[ledger], gid) == [
            (idx, "confirm", "done"),
            (idx, "try", "done"),
        ]
    # The same body again is the same transaction: nothing moves twice.
    async with api_client(timeout=30) as client:
        again = await client.post(
            f"{stack.coordinator_url}/v1/transactions?wait=5",
            json=tcc_body(gid, account, MOVES),
        )
    assert again.status_code == 200 and again.json()["status"] == "committed", again.text
    assert (await holdings(stack, account))["ledger1"] == (70, 0)


async def test_a_refused_try_cancels_every_branch(stack: Stack) -> None:
    account = await opened(stack, "tcc-no")
    gid = unique("tcc-no")
    moves = [("ledger1", -30), ("ledger2", 20), ("ledger3", -500)]  # ledger3 cannot freeze 500
    async with api_client(timeout=30) as client:
        reply = await client.post(
            f"{stack.coordinator_url}/v1/transactions?wait=20", json=tcc_body(gid, account, moves)
        )
        assert reply.status_code == 201, reply.text
        txn = await wait_status(client, stack, gid, "aborted")
    assert txn["reason"].startswith("ledger3: "), txn
    assert "cannot freeze 500" in txn["reason"], txn
    assert [b["status"] for b in txn["branches"]] == ["rolled_back"] * 3
    assert await holdings(stack, account) == {name: (OPENING, 0) for name in dsns(stack)}
    for idx, (ledger, _) in enumerate(moves):
        rows = await barrier_rows(dsns(stack)[ledger], gid)
        ops = {op: outcome for _, op, outcome in rows}
        assert ops.get("cancel") == "done", (ledger, rows)
        assert "confirm" not in ops, (ledger, rows)
        assert {i for i, _, _ in rows} == {idx}
    assert ops["try"] == "failed"  # ledger3's refusal, remembered


async def test_a_try_past_the_deadline_cancels_every_branch(stack: Stack) -> None:
    """ledger3 is frozen (SIGSTOP) while the tries run: the deadline cancels every branch,
    the frozen ledger's cancel once it is back; its late try (if it ran first) is released,
    or refused (if the cancel came first)."""
    account = await opened(stack, "tcc-late")
    gid = unique("tcc-late")
    frozen = stack.service("ledger3")
    async with api_client(timeout=30) as client:
        frozen.signal(signal.SIGSTOP)
        try:
            reply = await client.post(
                f"{stack.coordinator_url}/v1/transactions?wait=4",
                json=tcc_body(gid, account, MOVES, timeout_s=1),
            )
            assert reply.status_code == 201, reply.text
            txn = reply.json()
            assert txn["status"] == "aborting", txn  # the cancel is owed to ledger3
            assert "timed out" in (txn["reason"] or ""), txn
        finally:
            frozen.signal(signal.SIGCONT)
        txn = await wait_status(client, stack, gid, "aborted")
    assert "timed out" in txn["reason"], txn
    assert [b["status"] for b in txn["branches"]] == ["rolled_back"] * 3
    assert await holdings(stack, account) == {name: (OPENING, 0) for name in dsns(stack)}
    for ledger, _ in MOVES:
        ops = {op: outcome for _, op, outcome in await barrier_rows(dsns(stack)[ledger], gid)}
        assert ops.get("cancel") == "done" and "confirm" not in ops, (ledger, ops)
        assert ops.get("try") in ("done", "null_cancelled"), (ledger, ops)


def _first_error(reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 422, reply.text
    errors = reply.json()["errors"]
    assert errors, reply.text
    first: dict[str, Any] = errors[0]
    return first


@pytest.mark.parametrize(
    ("change", "field", "part"),
    [
        (
            {"try": "/accounts/adjust"},
            "body.branches.0",
            "/accounts/adjust is not a TCC try (a 2PC operation)",
        ),
        ({"try": "/nowhere"}, "body.branches.0", "/nowhere is not a TCC try (not declared)"),
        (
            {"confirm": CANCEL},
            "body.branches.0",
            f"{TRY} is confirmed by {CONFIRM} and cancelled by {CANCEL}",
        ),
        ({"cancel": None}, "body.branches.0.cancel", "every TCC branch gives try"),
        ({"action": TRY}, "body.branches.0.action", "TCC branches have no action"),
        ({"depends_on": []}, "body.branches.0.depends_on", "TCC branches have no depends_on"),
    ],
)
async def test_tcc_branches_are_checked_against_the_catalogue(
    stack: Stack, change: dict[str, Any], field: str, part: str
) -> None:
    gid = unique("tcc-bad")
    body = tcc_body(gid, "nobody", [("ledger1", 1)])
    body["branches"][0].update(change)
    async with api_client(timeout=30) as client:
        reply = await client.post(f"{stack.coordinator_url}/v1/transactions", json=body)
        first = _first_error(reply)
        assert first["field"] == field, first
        assert part in first["message"], first
        # Nothing was logged.
        assert (
            await client.get(f"{stack.coordinator_url}/v1/transactions/{gid}")
        ).status_code == 404


async def test_2pc_branches_take_no_tcc_paths(stack: Stack) -> None:
    body = {
        "mode": "2pc",
        "branches": [{"participant": "ledger1", "action": "/accounts/adjust", "confirm": CONFIRM}],
    }
    async with api_client(timeout=30) as client:
        reply = await client.post(f"{stack.coordinator_url}/v1/transactions", json=body)
    first = _first_error(reply)
    assert first["field"] == "body.branches.0.confirm", first
    assert "for TCC branches" in first["message"]


async def test_the_tcc_builder_end_to_end(stack: Stack) -> None:
    account = await opened(stack, "tcc-client")
    builder = (
        Tcc(timeout_s=20)
        .branch("ledger1", TRY, CONFIRM, CANCEL, {"account": account, "delta": -7})
        .branch("ledger2", TRY, CONFIRM, CANCEL, {"account": account, "delta": 7})
    )
    client = AsyncClient(stack.coordinator_url, TEST_API_TOKEN)
    try:
        done = await client.submit(builder, wait=20)
        listed = [t async for t in client.transactions(mode="tcc", gid_prefix=builder.gid)]
    finally:
        await client.close()
    assert (done.gid, done.mode, done.status) == (builder.gid, "tcc", "committed"), done
    assert [(b.participant, b.action, b.confirm, b.compensation) for b in done.branches] == [
        ("ledger1", TRY, CONFIRM, CANCEL),
        ("ledger2", TRY, CONFIRM, CANCEL),
    ]
    assert [t.gid for t in listed] == [builder.gid]
    held = await holdings(stack, account)
    assert (held["ledger1"], held["ledger2"], held["ledger3"]) == ((93, 0), (107, 0), (100, 0))
