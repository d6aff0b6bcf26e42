"""The participant SDK's saga barrier against a real Postgres: duplicate actions and
compensations run business code once and answer as the first; a refused action stays refused;
a compensation before its action (null compensation) succeeds without business code and refuses
the late action; racing calls serialize on the barrier key. Races are held at the barrier by the
SDK's ``barrier_hook`` and released by explicit events, never by sleeping."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from participants.ledger.app import adjust, undo_adjust
from participants.sdk import BusinessError, Participant, ParticipantSettings, wire
from participants.sdk.base import BarrierHook, _Transient
from participants.sdk.db import make_engine
from tests.helpers import TEST_SECRET, Counting, api_client, branch_headers, ledger_app, secured

GUARD_S = 10  # a failure guard on every wait: a broken race fails instead of hanging

MakeSdk = Callable[..., Participant]


@pytest.fixture
async def make_sdk(ledger_dsn: str) -> AsyncIterator[MakeSdk]:
    engine = make_engine(ledger_dsn, pool_size=5)

    def make(lock_timeout_ms: int = 5000, hook: BarrierHook | None = None) -> Participant:
        settings = ParticipantSettings(name="t", dsn=ledger_dsn, lock_timeout_ms=lock_timeout_ms)
        return Participant(settings, engine, barrier_hook=hook)

    try:
        yield make
    finally:
        await engine.dispose()


@pytest.fixture
def sdk(make_sdk: MakeSdk) -> Participant:
    return make_sdk()


async def sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def balance(dsn: str, account: str) -> int:
    rows = await sql(dsn, "SELECT balance FROM accounts WHERE id = $1", account)
    return int(rows[0]["balance"])


async def open_account(dsn: str, account: str, amount: int) -> None:
    await sql(dsn, "INSERT INTO accounts (id, balance) VALUES ($1, $2)", account, amount)


async def barrier(dsn: str, g: str) -> list[tuple[str, str, str | None]]:
    rows = await sql(
        dsn, "SELECT op, outcome, reason FROM txn_barrier WHERE gid = $1 ORDER BY op", g
    )
    return [(r["op"], r["outcome"], r["reason"]) for r in rows]


def gid() -> str:
    return f"saga-{uuid.uuid4().hex}"


class Gate:
    """A barrier hook holding the first call of ``op`` at the barrier (its key written, its
    transaction open) until ``release`` is set; ``reached`` says it got there."""

    def __init__(self, op: str) -> None:
        self.op = op
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def hook(self, op: str, gid: str, branch: int) -> None:
        if op == self.op and not self.reached.is_set():
            self.reached.set()
            await self.release.wait()


async def wait_until_blocked(dsn: str) -> None:
    """Until a backend of this database waits on a lock another backend holds: the second call
    is parked on the barrier key. Polls the server's lock state (a condition, not a delay)."""
    conn = await asyncpg.connect(dsn)
    try:
        query = (
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND cardinality(pg_blocking_pids(pid)) > 0"
        )
        # The condition lives in the server's lock table: no client-side event can signal it.
        async with asyncio.timeout(GUARD_S):
            while not await conn.fetchval(query):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        await conn.close()


async def test_duplicate_action_runs_once_and_answers_as_the_first(
    sdk: Participant, ledger_dsn: str
) -> None:
    await open_account(ledger_dsn, "a", 100)
    g, action = gid(), Counting(adjust)
    first = await sdk.run_action(g, 0, {"account": "a", "delta": -30}, action)
    assert first == (200, {"done": True, "result": {"account": "a", "delta": -30}})
    again = await sdk.run_action(g, 0, {"account": "a", "delta": -30}, action)
    assert again == (200, {"done": True, "repeat": True})
    assert action.calls == 1
    assert await balance(ledger_dsn, "a") == 70
    assert await barrier(ledger_dsn, g) == [("action", "done", None)]


async def test_duplicate_compensation_runs_once(sdk: Participant, ledger_dsn: str) -> None:
    await open_account(ledger_dsn, "a", 100)
    g, undo = gid(), Counting(undo_adjust)
    payload = {"account": "a", "delta": -30}
    assert (await sdk.run_action(g, 2, payload, adjust))[0] == 200
    first = await sdk.run_compensation(g, 2, payload, undo)
    assert first == (200, {"compensated": True, "result": {"account": "a", "delta": 30}})
    again = await sdk.run_compensation(g, 2, payload, undo)
    assert again == (200, {"compensated": True, "repeat": True})
    assert undo.calls == 1
    assert await balance(ledger_dsn, "a") == 100
    assert await barrier(ledger_dsn, g) == [("action", "done", None), ("compensate", "done", None)]


async def test_failed_action_repeats_the_same_409_without_running(
    sdk: Participant, ledger_dsn: str
) -> None:
    await open_account(ledger_dsn, "a", 5)
    g = gid()
    first = await sdk.run_action(g, 0, {"account": "a", "delta": -6}, adjust)
    reason = "account a has 5; adding -6 would make it negative"
    assert first == (409, {"reason": reason})

    async def refusing(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
        raise BusinessError("a different reason")

    again = Counting(refusing)
    assert await sdk.run_action(g, 0, {"account": "a", "delta": -6}, again) == first
    assert again.calls == 0
    assert await balance(ledger_dsn, "a") == 5
    assert await barrier(ledger_dsn, g) == [("action", "failed", reason)]


async def test_null_compensation_then_the_late_action_is_refused(
    sdk: Participant, ledger_dsn: str
) -> None:
    await open_account(ledger_dsn, "a", 100)
    g, action, undo = gid(), Counting(adjust), Counting(undo_adjust)
    payload = {"account": "a", "delta": 25}
    null = await sdk.run_compensation(g, 1, payload, undo)
    assert null == (200, {"compensated": True, "null": True})
    assert undo.calls == 0
    assert await barrier(ledger_dsn, g) == [
        ("action", "null_compensated", None),
        ("compensate", "done", None),
    ]
    late = await sdk.run_action(g, 1, payload, action)
    assert late[0] == 409 and "compensated before it ran" in late[1]["reason"]
    assert action.calls == 0
    assert await sdk.run_action(g, 1, payload, action) == late  # and stays refused
    assert await sdk.run_compensation(g, 1, payload, undo) == (
        200,
        {"compensated": True, "repeat": True},
    )
    assert (action.calls, undo.calls) == (0, 0)
    assert await balance(ledger_dsn, "a") == 100


async def test_compensation_after_a_failed_action_runs_no_business_code(
    sdk: Participant, ledger_dsn: str
) -> None:
    await open_account(ledger_dsn, "a", 10)
    g, undo = gid(), Counting(undo_adjust)
    payload = {"account": "a", "delta": -50}
    assert (await sdk.run_action(g, 0, payload, adjust))[0] == 409
    done = await sdk.run_compensation(g, 0, payload, undo)
    assert done == (200, {"compensated": True, "nothing_to_undo": True})
    assert undo.calls == 0
    assert await balance(ledger_dsn, "a") == 10  # an undo of -50 would have made it 60
    reason = "account a has 10; adding -50 would make it negative"
    assert await barrier(ledger_dsn, g) == [
        ("action", "failed", reason),
        ("compensate", "done", None),
    ]


async def test_refused_compensation_is_retried_until_it_applies_once(
    sdk: Participant, ledger_dsn: str
) -> None:
    await open_account(ledger_dsn, "a", 100)
    g, undo = gid(), Counting(undo_adjust)
    payload = {"account": "a", "delta": 50}
    assert (await sdk.run_action(g, 0, payload, adjust))[0] == 200
    await sql(ledger_dsn, "UPDATE accounts SET balance = 20 WHERE id = 'a'")  # money spent
    refused = await sdk.run_compensation(g, 0, payload, undo)
    assert refused == (409, {"reason": "account a has 20; undoing +50 would make it negative"})
    # Everything rolled back, barrier row included: the retry runs the compensation again.
    assert await barrier(ledger_dsn, g) == [("action", "done", None)]
    assert await balance(ledger_dsn, "a") == 20
    await sql(ledger_dsn, "UPDATE accounts SET balance = 70 WHERE id = 'a'")  # condition fixed
    assert (await sdk.run_compensation(g, 0, payload, undo))[0] == 200
    assert (await sdk.run_compensation(g, 0, payload, undo))[1].get("repeat") is True
    assert undo.calls == 2  # refused once, applied once, the duplicate skipped
    assert await balance(ledger_dsn, "a") == 20
    assert await barrier(ledger_dsn, g) == [("action", "done", None), ("compensate", "done", None)]
    # A compensation for a missing account is refused too (and so stays retried and visible).
    async with sdk.engine.begin() as conn:
        with pytest.raises(BusinessError, match="account ghost does not exist"):
            await undo_adjust(conn, {"account": "ghost", "delta": 1})


async def test_race_compensation_waits_for_the_action_holding_the_barrier(
    make_sdk: MakeSdk, ledger_dsn: str
) -> None:
    """(a) The action holds the key; the compensation arrives and waits on it; once the action
    commits, the compensation finds it done and undoes it: applied, then compensated, once."""
    await open_account(ledger_dsn, "a", 100)
    gate = Gate("action")
    sdk = make_sdk(hook=gate.hook)
    g, action, undo = gid(), Counting(adjust), Counting(undo_adjust)
    payload = {"account": "a", "delta": -40}
    acting = asyncio.create_task(sdk.run_action(g, 0, payload, action))
    await asyncio.wait_for(gate.reached.wait(), GUARD_S)
    compensating = asyncio.create_task(sdk.run_compensation(g, 0, payload, undo))
    await wait_until_blocked(ledger_dsn)
    assert not compensating.done()
    assert await barrier(ledger_dsn, g) == []  # nothing committed yet
    gate.release.set()
    assert (await acting)[0] == 200
    compensated = await asyncio.wait_for(compensating, GUARD_S)
    assert compensated == (200, {"compensated": True, "result": {"account": "a", "delta": 40}})
    assert (action.calls, undo.calls) == (1, 1)
    assert await balance(ledger_dsn, "a") == 100
    assert await barrier(ledger_dsn, g) == [("action", "done", None), ("compensate", "done", None)]


async def test_race_action_waits_for_a_null_compensation_and_is_refused(
    make_sdk: MakeSdk, ledger_dsn: str
) -> None:
    """(b) A null compensation holds the key; the action arrives and waits on it; once the
    compensation commits, the action finds its key taken and is refused without running."""
    await open_account(ledger_dsn, "a", 100)
    gate = Gate("compensate")
    sdk = make_sdk(hook=gate.hook)
    g, action, undo = gid(), Counting(adjust), Counting(undo_adjust)
    payload = {"account": "a", "delta": -40}
    compensating = asyncio.create_task(sdk.run_compensation(g, 3, payload, undo))
    await asyncio.wait_for(gate.reached.wait(), GUARD_S)
    acting = asyncio.create_task(sdk.run_action(g, 3, payload, action))
    await wait_until_blocked(ledger_dsn)
    assert not acting.done()
    gate.release.set()
    assert await compensating == (200, {"compensated": True, "null": True})
    refused = await asyncio.wait_for(acting, GUARD_S)
    assert refused[0] == 409 and "compensated before it ran" in refused[1]["reason"]
    assert (action.calls, undo.calls) == (0, 0)
    assert await balance(ledger_dsn, "a") == 100
    assert await barrier(ledger_dsn, g) == [
        ("action", "null_compensated", None),
        ("compensate", "done", None),
    ]


async def test_lock_timeout_at_the_barrier_is_transient(make_sdk: MakeSdk, ledger_dsn: str) -> None:
    """A compensation that cannot get the key within the lock timeout answers transient (503
    over HTTP) and leaves nothing behind; retried after the action commits, it undoes it."""
    await open_account(ledger_dsn, "a", 100)
    gate = Gate("action")
    sdk = make_sdk(lock_timeout_ms=200, hook=gate.hook)
    g, undo = gid(), Counting(undo_adjust)
    payload = {"account": "a", "delta": 7}
    acting = asyncio.create_task(sdk.run_action(g, 0, payload, adjust))
    await asyncio.wait_for(gate.reached.wait(), GUARD_S)
    with pytest.raises(_Transient):
        await sdk.run_compensation(g, 0, payload, undo)
    assert undo.calls == 0
    gate.release.set()
    assert (await acting)[0] == 200
    assert await balance(ledger_dsn, "a") == 107
    assert (await sdk.run_compensation(g, 0, payload, undo))[0] == 200
    assert undo.calls == 1
    assert await balance(ledger_dsn, "a") == 100


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "routes-only"])
async def test_http_dispatch_on_txn_op(ledger_dsn: str, fast_path: bool) -> None:
    app = ledger_app(secured(name="t", dsn=ledger_dsn), fast_path)
    await open_account(ledger_dsn, "h", 10)
    g = gid()

    def headers(
        op: str,
        body: bytes,
        branch: int = 0,
        signed_as: str | None = None,
        path: str = "/accounts/adjust",
    ) -> Any:
        signed = branch_headers(TEST_SECRET, "t", path, g, branch, signed_as or op, body)
        return {**signed, wire.H_OP: op}

    body = b'{"account": "h", "delta": 5}'
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with api_client(transport=transport, base_url="http://ledger") as client:

            async def post(path: str, hdrs: dict[str, str]) -> httpx.Response:
                return await client.post(path, content=body, headers=hdrs)

            # The signature covers the op: one signed as a prepare cannot run as an action.
            forged = await post("/accounts/adjust", headers("action", body, signed_as="prepare"))
            assert forged.status_code == 401
            done = await post("/accounts/adjust", headers("action", body))
            assert done.status_code == 200 and done.json()["done"] is True
            repeat = await post("/accounts/adjust", headers("action", body))
            assert repeat.status_code == 200 and repeat.json()["repeat"] is True
            assert await balance(ledger_dsn, "h") == 15
            undo = "/accounts/adjust/undo"
            undone = await post(undo, headers("compensate", body, path=undo))
            assert undone.status_code == 200
            assert undone.json()["result"] == {"account": "h", "delta": -5}
            again = await post(undo, headers("compensate", body, path=undo))
            assert again.status_code == 200 and again.json()["repeat"] is True
            assert await balance(ledger_dsn, "h") == 10
            # The same path still serves the 2PC prepare.
            prepared = await post("/accounts/adjust", headers("prepare", body, branch=1))
            assert prepared.status_code == 200 and prepared.json()["vote"] == "yes"
            commit_headers = headers("commit", b"", branch=1, path=wire.COMMIT_PATH)
            del commit_headers[wire.H_OP]
            committed = await client.post(wire.COMMIT_PATH, headers=commit_headers)
            assert committed.status_code == 200
            assert await balance(ledger_dsn, "h") == 15
            # Ops a path does not serve, and unknown ops, are refused before any work.
            for path, op, expected in [
                ("/accounts/adjust", "bogus", "unknown Txn-Op 'bogus'"),
                ("/accounts/adjust", "compensate", "has no compensate handler"),
                ("/accounts/adjust/undo", "prepare", "has no prepare handler"),
                ("/accounts/adjust/undo", "action", "has no action handler"),
                ("/accounts/adjust", "commit", f"goes to {wire.COMMIT_PATH}"),
            ]:
                refused = await post(path, headers(op, body, branch=2, path=path))
                assert refused.status_code == 400, (path, op)
                assert expected in refused.json()["detail"], refused.text
    assert await balance(ledger_dsn, "h") == 15
    assert await barrier(ledger_dsn, g) == [
        ("2pc", "prepared", None),
        ("action", "done", None),
        ("compensate", "done", None),
    ]
    rows = await sql(ledger_dsn, "SELECT DISTINCT branch FROM txn_barrier WHERE gid = $1", g)
    assert sorted(r["branch"] for r in rows) == [0, 1]  # the refused ops wrote nothing
