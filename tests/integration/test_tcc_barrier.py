"""The SDK's TCC barrier (participants/sdk/tcc.py) and the ledger's TCC adjust, by direct calls
against a real Postgres (the shared participant database, tests/shared_pg.py), then over HTTP
through the ledger's app. No coordinator: the calls are the ones it will send.

Each case pins the answer (status and body), the barrier rows, the account's balance and
frozen amount, and how often the business code ran: try then confirm moves the money once; try
then cancel moves nothing; a cancel before its try is null and the late try is refused; every
duplicate answers as the first without business code; a confirm without a successful try is
refused and records nothing; a racing try and cancel end consistent either way."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.declared import _operations
from participants.ledger.app import (
    adjust,
    tcc_cancel_adjust,
    tcc_confirm_adjust,
    tcc_try_adjust,
)
from participants.sdk import BusinessError, Participant, ParticipantSettings, wire
from participants.sdk.base import _Transient, current_branch
from participants.sdk.tcc import CANCELLED_FIRST, CONFIRM_WITHOUT_TRY
from tests.helpers import (
    TEST_SECRET,
    Counting,
    api_client,
    branch_call,
    ledger_app,
    secured,
)
from tests.helpers import fetch as sql
from tests.shared_pg import dsn, engine, make, sdk, shared_dbs

# The fixtures, imported so that pytest finds them here.
__all__ = ["dsn", "engine", "make", "sdk", "shared_dbs"]

GUARD_S = 5  # a failure guard on every wait: a broken race fails instead of hanging
TRY_PATH, CONFIRM_PATH, CANCEL_PATH = "/tcc/adjust", "/tcc/adjust/confirm", "/tcc/adjust/cancel"


async def account(dsn: str, amount: int) -> str:
    name = f"tcc-{uuid.uuid4().hex}"
    await sql(dsn, "INSERT INTO accounts (id, balance) VALUES ($1, $2)", name, amount)
    return name


async def holds(dsn: str, name: str) -> tuple[int, int]:
    """(balance, frozen) of the account."""
    row = (await sql(dsn, "SELECT balance, frozen FROM accounts WHERE id = $1", name))[0]
    return int(row["balance"]), int(row["frozen"])


async def rows(dsn: str, g: str) -> list[tuple[int, str, str, str | None]]:
    found = await sql(
        dsn,
        "SELECT branch, op, outcome, reason FROM txn_barrier WHERE gid = $1 ORDER BY branch, op",
        g,
    )
    return [(r["branch"], r["op"], r["outcome"], r["reason"]) for r in found]


def gid() -> str:
    return f"tcc-{uuid.uuid4().hex}"


class Ledger:
    """The ledger's three TCC handlers, each counting its runs."""

    def __init__(self) -> None:
        self.try_ = Counting(tcc_try_adjust)
        self.confirm = Counting(tcc_confirm_adjust)
        self.cancel = Counting(tcc_cancel_adjust)

    @property
    def calls(self) -> tuple[int, int, int]:
        return self.try_.calls, self.confirm.calls, self.cancel.calls


def refusing(reason: str) -> Counting:
    async def handler(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
        raise BusinessError(reason)

    return Counting(handler)


class Gate:
    """Holds the first call of ``op`` at the barrier (its key written, its local transaction
    open) until ``release`` is set."""

    def __init__(self, op: str) -> None:
        self.op = op
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def hook(self, op: str, g: str, branch: int) -> None:
        if op == self.op and not self.reached.is_set():
            self.reached.set()
            await self.release.wait()


# --- the three phases ------------------------------------------------------------------------


async def test_try_then_confirm_moves_the_money_once(sdk: Participant, dsn: str) -> None:
    a, g, h = await account(dsn, 100), gid(), Ledger()
    payload = {"account": a, "delta": -30}
    tried = await sdk.run_try(g, 2, payload, h.try_)
    assert tried == (200, {"done": True, "result": {"account": a, "delta": -30, "frozen": 30}})
    assert await holds(dsn, a) == (100, 30)  # held, not yet spent
    confirmed = await sdk.run_confirm(g, 2, payload, h.confirm)
    assert confirmed == (
        200,
        {"confirmed": True, "result": {"account": a, "delta": -30, "released": 30}},
    )
    assert await holds(dsn, a) == (70, 0)
    # Duplicates of both answer as the first did, without business code.
    assert await sdk.run_try(g, 2, payload, h.try_) == (200, {"done": True, "repeat": True})
    assert await sdk.run_confirm(g, 2, payload, h.confirm) == (
        200,
        {"confirmed": True, "repeat": True},
    )
    assert h.calls == (1, 1, 0) and await holds(dsn, a) == (70, 0)
    assert await rows(dsn, g) == [(2, "confirm", "done", None), (2, "try", "done", None)]


async def test_a_credit_freezes_nothing_and_its_confirm_credits(sdk: Participant, dsn: str) -> None:
    a, g, h = await account(dsn, 10), gid(), Ledger()
    payload = {"account": a, "delta": 25}
    tried = await sdk.run_try(g, 0, payload, h.try_)
    assert tried == (200, {"done": True, "result": {"account": a, "delta": 25, "frozen": 0}})
    assert await holds(dsn, a) == (10, 0)
    assert (await sdk.run_confirm(g, 0, payload, h.confirm))[0] == 200
    assert await holds(dsn, a) == (35, 0)
    # A credit's cancel releases nothing (another branch: tried, then cancelled).
    g2 = gid()
    assert (await sdk.run_try(g2, 0, payload, h.try_))[0] == 200
    cancelled = await sdk.run_cancel(g2, 0, payload, h.cancel)
    assert cancelled == (
        200,
        {"cancelled": True, "result": {"account": a, "delta": 0, "released": 0}},
    )
    assert await holds(dsn, a) == (35, 0)


async def test_try_then_cancel_moves_nothing(sdk: Participant, dsn: str) -> None:
    a, g, h = await account(dsn, 100), gid(), Ledger()
    payload = {"account": a, "delta": -40}
    assert (await sdk.run_try(g, 1, payload, h.try_))[0] == 200
    assert await holds(dsn, a) == (100, 40)
    cancelled = await sdk.run_cancel(g, 1, payload, h.cancel)
    assert cancelled == (
        200,
        {"cancelled": True, "result": {"account": a, "delta": 0, "released": 40}},
    )
    assert await sdk.run_cancel(g, 1, payload, h.cancel) == (
        200,
        {"cancelled": True, "repeat": True},
    )
    assert await holds(dsn, a) == (100, 0) and h.calls == (1, 0, 1)
    assert await rows(dsn, g) == [(1, "cancel", "done", None), (1, "try", "done", None)]


async def test_cancel_before_try_is_null_and_the_late_try_is_refused(
    sdk: Participant, dsn: str
) -> None:
    a, g, h = await account(dsn, 100), gid(), Ledger()
    payload = {"account": a, "delta": -50}
    assert await sdk.run_cancel(g, 3, payload, h.cancel) == (200, {"cancelled": True, "null": True})
    assert await rows(dsn, g) == [
        (3, "cancel", "done", None),
        (3, "try", "null_cancelled", None),
    ]
    late = (409, {"reason": CANCELLED_FIRST})
    assert await sdk.run_try(g, 3, payload, h.try_) == late
    assert await sdk.run_try(g, 3, payload, h.try_) == late
    assert await sdk.run_cancel(g, 3, payload, h.cancel) == (
        200,
        {"cancelled": True, "repeat": True},
    )
    # And a confirm of that branch (never sent by the coordinator) is refused.
    assert await sdk.run_confirm(g, 3, payload, h.confirm) == (409, {"reason": CONFIRM_WITHOUT_TRY})
    assert h.calls == (0, 0, 0) and await holds(dsn, a) == (100, 0)
    assert "cancelled before it ran" in CANCELLED_FIRST


async def test_insufficient_funds_is_refused_and_remembered(sdk: Participant, dsn: str) -> None:
    a, h = await account(dsn, 50), Ledger()
    # Another transaction holds 30 of the 50: 20 are available.
    assert (await sdk.run_try(gid(), 0, {"account": a, "delta": -30}, h.try_))[0] == 200
    g, payload = gid(), {"account": a, "delta": -30}
    reason = f"account {a} has 20 (30 frozen); cannot freeze 30"
    assert await sdk.run_try(g, 0, payload, h.try_) == (409, {"reason": reason})
    assert await sdk.run_try(g, 0, payload, h.try_) == (409, {"reason": reason})
    assert h.try_.calls == 2  # the first try of each branch only
    assert await rows(dsn, g) == [(0, "try", "failed", reason)]
    # A failed try's cancel has nothing to undo; its confirm is refused.
    assert await sdk.run_cancel(g, 0, payload, h.cancel) == (
        200,
        {"cancelled": True, "nothing_to_undo": True},
    )
    assert await sdk.run_confirm(g, 0, payload, h.confirm) == (409, {"reason": CONFIRM_WITHOUT_TRY})
    assert (h.confirm.calls, h.cancel.calls) == (0, 0)
    assert await holds(dsn, a) == (50, 30)
    # An unknown account is refused with its own reason.
    missing = await sdk.run_try(gid(), 0, {"account": "no-such", "delta": 5}, h.try_)
    assert missing == (409, {"reason": "account no-such does not exist"})


async def test_saga_and_2pc_debits_respect_what_is_frozen(sdk: Participant, dsn: str) -> None:
    """The available balance is balance - frozen: an ordinary debit of frozen money is a
    refusal (409 with the reason), never a check-constraint error (which would be a 503)."""
    a = await account(dsn, 100)
    assert (await sdk.run_try(gid(), 0, {"account": a, "delta": -80}, tcc_try_adjust))[0] == 200
    reason = f"account {a} has 20 (80 frozen); adding -30 would make it negative"
    assert await sdk.run_action(gid(), 0, {"account": a, "delta": -30}, adjust) == (
        409,
        {"reason": reason},
    )
    assert (await sdk.run_action(gid(), 0, {"account": a, "delta": -20}, adjust))[0] == 200
    assert await holds(dsn, a) == (80, 80)


async def test_confirm_without_a_successful_try_is_refused_and_records_nothing(
    sdk: Participant, dsn: str
) -> None:
    a, g, h = await account(dsn, 100), gid(), Ledger()
    payload = {"account": a, "delta": -10}
    assert await sdk.run_confirm(g, 0, payload, h.confirm) == (409, {"reason": CONFIRM_WITHOUT_TRY})
    assert await rows(dsn, g) == []
    # The try still runs afterwards (the refused confirm took no key), then a confirm applies.
    assert (await sdk.run_try(g, 0, payload, h.try_))[0] == 200
    assert (await sdk.run_confirm(g, 0, payload, h.confirm))[0] == 200
    assert h.calls == (1, 1, 0) and await holds(dsn, a) == (90, 0)


async def test_refused_confirm_and_cancel_record_nothing_and_are_retried(
    sdk: Participant, dsn: str
) -> None:
    a, h = await account(dsn, 100), Ledger()
    payload = {"account": a, "delta": -10}
    g1, g2 = gid(), gid()
    for g in (g1, g2):
        assert (await sdk.run_try(g, 0, payload, h.try_))[0] == 200
    no = refusing("not now")
    assert await sdk.run_confirm(g1, 0, payload, no) == (409, {"reason": "not now"})
    assert await sdk.run_cancel(g2, 0, payload, no) == (409, {"reason": "not now"})
    for g in (g1, g2):
        assert await rows(dsn, g) == [(0, "try", "done", None)]
    assert (await sdk.run_confirm(g1, 0, payload, h.confirm))[0] == 200
    assert (await sdk.run_cancel(g2, 0, payload, h.cancel))[0] == 200
    assert no.calls == 2 and h.calls == (2, 1, 1) and await holds(dsn, a) == (90, 0)


async def test_database_errors_are_transient_and_leave_no_row(sdk: Participant, dsn: str) -> None:
    async def broken(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
        await conn.execute(text("SELECT * FROM no_such_table"))
        return {}

    g = gid()
    with pytest.raises(_Transient, match=rf"^try {g}/0 failed: 42P01$"):
        await sdk.run_try(g, 0, {}, broken)
    assert await rows(dsn, g) == []
    assert (await sdk.run_try(g, 1, {}, fine))[0] == 200
    with pytest.raises(_Transient, match=rf"^confirm {g}/1 failed: 42P01$"):
        await sdk.run_confirm(g, 1, {}, broken)
    with pytest.raises(_Transient, match=rf"^cancel {g}/1 failed: 42P01$"):
        await sdk.run_cancel(g, 1, {}, broken)
    assert await rows(dsn, g) == [(1, "try", "done", None)]


async def fine(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    return {}


# --- races ---------------------------------------------------------------------------------


async def test_a_cancel_racing_a_running_try_undoes_it(engine: AsyncEngine, dsn: str) -> None:
    """The try holds its key (stopped at the barrier, its freeze not yet made): the cancel
    waits for it, then finds it done and releases what it froze."""
    gate, h = Gate("try"), Ledger()
    sdk = make(engine, hook=gate.hook)
    a, g = await account(dsn, 100), gid()
    payload = {"account": a, "delta": -60}
    try:
        trying = asyncio.create_task(sdk.run_try(g, 0, payload, h.try_))
        async with asyncio.timeout(GUARD_S):
            await gate.reached.wait()
            cancelling = asyncio.create_task(sdk.run_cancel(g, 0, payload, h.cancel))
            await asyncio.sleep(0.1)
            assert not cancelling.done()  # waiting on the try's key
            gate.release.set()
            assert (await trying)[0] == 200
            cancelled = await cancelling
    finally:
        gate.release.set()
        await sdk._drop_spare()
    assert cancelled[0] == 200 and cancelled[1]["result"]["released"] == 60
    assert h.calls == (1, 0, 1) and await holds(dsn, a) == (100, 0)


async def test_a_try_racing_a_running_null_cancel_is_refused(engine: AsyncEngine, dsn: str) -> None:
    gate, h = Gate("cancel"), Ledger()
    sdk = make(engine, hook=gate.hook)
    a, g = await account(dsn, 100), gid()
    payload = {"account": a, "delta": -60}
    try:
        cancelling = asyncio.create_task(sdk.run_cancel(g, 0, payload, h.cancel))
        async with asyncio.timeout(GUARD_S):
            await gate.reached.wait()
            trying = asyncio.create_task(sdk.run_try(g, 0, payload, h.try_))
            await asyncio.sleep(0.1)
            assert not trying.done()  # waiting on the key the cancel took
            gate.release.set()
            assert await cancelling == (200, {"cancelled": True, "null": True})
            assert await trying == (409, {"reason": CANCELLED_FIRST})
    finally:
        gate.release.set()
        await sdk._drop_spare()
    assert h.calls == (0, 0, 0) and await holds(dsn, a) == (100, 0)


async def test_concurrent_try_and_cancel_end_consistent(sdk: Participant, dsn: str) -> None:
    """Unsynchronised: whichever wins, nothing stays frozen and the cancel either undid the
    try or was null and refused it."""
    a, h = await account(dsn, 1000), Ledger()
    seen: set[str] = set()
    for _ in range(12):
        g, payload = gid(), {"account": a, "delta": -7}
        async with asyncio.timeout(GUARD_S):
            tried, cancelled = await asyncio.gather(
                sdk.run_try(g, 0, payload, h.try_), sdk.run_cancel(g, 0, payload, h.cancel)
            )
        assert cancelled[0] == 200
        if cancelled[1].get("null"):
            assert tried == (409, {"reason": CANCELLED_FIRST})
            assert await rows(dsn, g) == [
                (0, "cancel", "done", None),
                (0, "try", "null_cancelled", None),
            ]
            seen.add("null")
        else:
            assert tried[0] == 200 and cancelled[1]["result"]["released"] == 7
            assert await rows(dsn, g) == [(0, "cancel", "done", None), (0, "try", "done", None)]
            seen.add("undone")
        assert await holds(dsn, a) == (1000, 0)
    assert h.try_.calls == h.cancel.calls  # every try that ran was cancelled by its handler
    assert seen  # (either order may win every time: both are checked by the gated tests)


# --- registration and HTTP ---------------------------------------------------------------------


def test_registration_declares_the_three_and_refuses_another_pair() -> None:
    sdk = Participant(ParticipantSettings(name="t", dsn="postgresql://x/y"))
    sdk.tcc_try("/hold", confirm="/hold/confirm", cancel="/hold/cancel")(tcc_try_adjust)
    with pytest.raises(ValueError, match=r"^/hold already declares confirm /hold/confirm"):
        sdk.tcc_try("/hold", confirm="/other", cancel="/hold/cancel")
    with pytest.raises(ValueError, match=r"which has no @sdk.tcc_confirm handler$"):
        sdk.check_declarations()
    sdk.tcc_confirm("/hold/confirm")(tcc_confirm_adjust)
    with pytest.raises(ValueError, match=r"which has no @sdk.tcc_cancel handler$"):
        sdk.check_declarations()
    sdk.tcc_cancel("/hold/cancel")(tcc_cancel_adjust)
    sdk.check_declarations()
    assert sdk.catalogue() == [
        {"path": "/hold", "kind": "tcc_try", "confirm": "/hold/confirm", "cancel": "/hold/cancel"},
        {"path": "/hold/cancel", "kind": "tcc_cancel"},
        {"path": "/hold/confirm", "kind": "tcc_confirm"},
    ]
    # The coordinator's catalogue reader takes the try with its pair, and the other two.
    declared: list[dict[str, object]] = [dict(o) for o in sdk.catalogue()]
    declared.append({"path": "/x", "kind": "2pc"})
    assert _operations(declared) == {
        ("/hold", "tcc_try"): ("/hold/confirm", "/hold/cancel"),
        ("/hold/cancel", "tcc_cancel"): None,
        ("/hold/confirm", "tcc_confirm"): None,
        ("/x", "2pc"): None,
    }


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "routes-only"])
async def test_http_routes_the_three_ops_by_txn_op(dsn: str, fast_path: bool) -> None:
    app = ledger_app(secured(name="t", dsn=dsn), fast_path)
    a = await account(dsn, 100)
    g, payload = gid(), {"account": a, "delta": -25}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with api_client(transport=transport, base_url="http://ledger") as client:

            async def call(path: str, op: str, branch: int = 0) -> httpx.Response:
                return await branch_call(client, "t", path, op, g, branch, payload)

            async def shown() -> tuple[int, int]:
                listed = (await client.get("/accounts")).json()
                got = next(o for o in listed if o["id"] == a)
                return got["balance"], got["frozen"]

            tried = await call(TRY_PATH, "try")
            assert tried.status_code == 200, tried.text
            assert tried.json()["result"]["frozen"] == 25
            assert await shown() == (100, 25)
            confirmed = await call(CONFIRM_PATH, "confirm")
            assert confirmed.status_code == 200 and confirmed.json()["confirmed"] is True
            again = await call(CONFIRM_PATH, "confirm")
            assert again.json() == {"confirmed": True, "repeat": True}
            assert await shown() == (75, 0)
            # Branch 1: a cancel before its try, then the late try.
            null = await call(CANCEL_PATH, "cancel", branch=1)
            assert null.status_code == 200 and null.json() == {"cancelled": True, "null": True}
            late = await call(TRY_PATH, "try", branch=1)
            assert late.status_code == 409 and CANCELLED_FIRST in late.text
            # Ops a path does not serve, and unknown ops, are refused before any work.
            for path, op, expected in [
                (TRY_PATH, "bogus", "unknown Txn-Op 'bogus'"),
                (TRY_PATH, "confirm", "has no confirm handler"),
                (CONFIRM_PATH, "try", "has no try handler"),
                (CANCEL_PATH, "confirm", "has no confirm handler"),
            ]:
                refused = await call(path, op, branch=2)
                assert refused.status_code == 400, (path, op)
                assert expected in refused.json()["detail"], refused.text
            # The signature covers the op: a call signed as a try cannot run as a confirm.
            body = orjson.dumps(payload)
            forged = wire.signed_headers(TEST_SECRET.encode(), CONFIRM_PATH, "t", g, 3, "try", body)
            forged.update({wire.H_GID: g, wire.H_BRANCH: "3", wire.H_OP: "confirm"})
            assert (
                await client.post(CONFIRM_PATH, content=body, headers=forged)
            ).status_code == 401
            # The catalogue declares the three operations, signed.
            nonce = wire.new_nonce()
            request = orjson.dumps({"nonce": nonce})
            signed = wire.signed_headers(
                TEST_SECRET.encode(), wire.CATALOGUE_PATH, "t", "", None, "catalogue", request
            )
            listed = await client.post(wire.CATALOGUE_PATH, content=request, headers=signed)
            assert listed.status_code == 200
            tcc = [o for o in listed.json()["operations"] if o["kind"].startswith("tcc_")]
            assert tcc == [
                {
                    "path": TRY_PATH,
                    "kind": "tcc_try",
                    "confirm": CONFIRM_PATH,
                    "cancel": CANCEL_PATH,
                },
                {"path": CANCEL_PATH, "kind": "tcc_cancel"},
                {"path": CONFIRM_PATH, "kind": "tcc_confirm"},
            ]
            # The OpenAPI document names each path's ops.
            spec = (await client.get("/openapi.json")).json()
            for path, ops in [
                (TRY_PATH, ["try"]),
                (CONFIRM_PATH, ["confirm"]),
                (CANCEL_PATH, ["cancel"]),
            ]:
                params = spec["paths"][path]["post"]["parameters"]
                op_header = next(p for p in params if p["name"] == wire.H_OP)
                assert op_header["schema"]["enum"] == ops
    assert await holds(dsn, a) == (75, 0)
    assert await rows(dsn, g) == [
        (0, "confirm", "done", None),
        (0, "try", "done", None),
        (1, "cancel", "done", None),
        (1, "try", "null_cancelled", None),
    ]


async def test_each_phase_runs_its_handler_as_its_own_branch(engine: AsyncEngine, dsn: str) -> None:
    """The barrier hook hears each op with its gid and branch, and each handler runs with
    current_branch() set to them (a handler that keys its own rows by branch relies on it)."""
    heard: list[tuple[str, str, int]] = []

    async def hook(op: str, g: str, branch: int) -> None:
        heard.append((op, g, branch))

    seen: list[tuple[str, tuple[str, int] | None]] = []

    def seeing(phase: str, handler: Any) -> Any:
        async def run(conn: AsyncConnection, payload: dict[str, Any]) -> Any:
            seen.append((phase, current_branch()))
            return await handler(conn, payload)

        return run

    sdk = make(engine, hook=hook)
    try:
        a, b = await account(dsn, 100), await account(dsn, 100)
        kept, dropped = gid(), gid()
        debit = {"account": a, "delta": -5}
        await sdk.run_try(kept, 3, debit, seeing("try", tcc_try_adjust))
        await sdk.run_confirm(kept, 3, debit, seeing("confirm", tcc_confirm_adjust))
        other = {"account": b, "delta": -5}
        await sdk.run_try(dropped, 1, other, seeing("try", tcc_try_adjust))
        await sdk.run_cancel(dropped, 1, other, seeing("cancel", tcc_cancel_adjust))
    finally:
        await sdk._drop_spare()
    assert heard == [
        ("try", kept, 3),
        ("confirm", kept, 3),
        ("try", dropped, 1),
        ("cancel", dropped, 1),
    ]
    assert seen == [
        ("try", (kept, 3)),
        ("confirm", (kept, 3)),
        ("try", (dropped, 1)),
        ("cancel", (dropped, 1)),
    ]
    assert await holds(dsn, a) == (95, 0) and await holds(dsn, b) == (100, 0)
