"""The operator's actions through the API, on the in-memory log with a scripted transport:
who may act, what each action does to a transaction in each state, the note and the name kept
in the timeline, and the refusals (404, 409, 422) that change nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from coordinator.api import create_app
from coordinator.memlog import MemLog
from coordinator.transport import Kind, Reply
from tests.unit.test_api_auth import bearer, client_of, settings
from tests.unit.test_submit_fastpath import YesTransport

ADMIN = bearer("admin")
BRANCH = {"participant": "a", "action": "/x", "compensation": "/undo"}


class Scripted(YesTransport):
    """Prepares and actions wait for ``go``; compensations are refused while ``refuse``."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.refuse = True
        self.calls: list[tuple[str, str]] = []

    async def call(self, participant: str, path: str, op: str, *_rest: Any) -> Reply:
        self.calls.append((op, path))
        if op in ("prepare", "action"):
            await self.go.wait()
        if op == "compensate" and self.refuse:
            return Reply(Kind.REFUSED, 409, "would go negative")
        return Reply(Kind.OK, 200, "")


def app_of(transport: Scripted, store: MemLog) -> Any:
    fast = {
        "reschedule_initial_s": 0.05,
        "reschedule_max_s": 0.05,
        "retry_initial_s": 0.001,
        "retry_max_s": 0.001,
        "burst_attempts": 1,
    }
    return create_app(settings(**fast), store, transport)


async def act(
    client: httpx.AsyncClient, gid: str, action: str, note: str = "ops ticket 42", **kw: Any
) -> httpx.Response:
    return await client.post(
        f"/v1/transactions/{gid}/{action}", json={"note": note}, headers=ADMIN, **kw
    )


async def until(client: httpx.AsyncClient, gid: str, status: str) -> dict[str, Any]:
    for _ in range(300):
        txn: dict[str, Any] = (await client.get(f"/v1/transactions/{gid}", headers=ADMIN)).json()
        if txn["status"] == status:
            return txn
        await asyncio.sleep(0.02)
    raise AssertionError(f"{gid} never reached {status}: {txn}")


async def submit(client: httpx.AsyncClient, gid: str, mode: str, n: int = 2) -> None:
    branch = BRANCH if mode == "saga" else {"participant": "a", "action": "/x"}
    body = {"gid": gid, "mode": mode, "branches": [branch] * n}
    reply = await client.post("/v1/transactions", json=body, headers=ADMIN)
    assert reply.status_code == 201, reply.text


async def test_abort_a_preparing_2pc_rolls_it_back_and_says_who_and_why() -> None:
    transport, store = Scripted(), MemLog()
    async with client_of(app_of(transport, store)) as client:
        await submit(client, "t1", "2pc")
        reply = await act(client, "t1", "abort", "participant b is gone for good")
        assert reply.status_code == 200, reply.text
        assert reply.json()["reason"] == "aborted by admin: participant b is gone for good"
        txn = await until(client, "t1", "aborted")
        event = next(e for e in txn["events"] if e["kind"] == "operator:abort")
        assert event["detail"]["by"] == "admin"
        assert event["detail"]["note"] == "participant b is gone for good"
        assert [op for op, _ in transport.calls].count("rollback") == 2
        transport.go.set()  # the old driver's late votes change nothing
        await asyncio.sleep(0.1)
        assert (await until(client, "t1", "aborted"))["status"] == "aborted"
        refused = await act(client, "t1", "abort")
        assert refused.status_code == 409 and "finished" in refused.json()["detail"]


async def test_abort_after_the_commit_decision_is_refused_and_changes_nothing() -> None:
    transport, store = Scripted(), MemLog()
    transport.go.set()
    async with client_of(app_of(transport, store)) as client:
        await submit(client, "t1", "2pc")
        await until(client, "t1", "committed")
        before = (await client.get("/v1/transactions/t1", headers=ADMIN)).json()
        reply = await act(client, "t1", "abort")
        assert reply.status_code == 409 and "finished" in reply.json()["detail"]
        retry = await act(client, "t1", "retry")
        assert retry.status_code == 409
        assert (await client.get("/v1/transactions/t1", headers=ADMIN)).json() == before


async def test_a_compensating_saga_resolved_by_hand_ends_aborted() -> None:
    transport, store = Scripted(), MemLog()
    async with client_of(app_of(transport, store)) as client:
        await submit(client, "s1", "saga", n=1)
        reply = await act(client, "s1", "abort", "customer cancelled")
        assert reply.status_code == 200 and reply.json()["status"] == "compensating"
        # Its one branch may have run: its compensation is refused again and again.
        for _ in range(300):
            txn = (await client.get("/v1/transactions/s1", headers=ADMIN)).json()
            if txn["branches"][0]["attempts"] >= 3 and txn["branches"][0]["last_error"]:
                break
            await asyncio.sleep(0.02)
        assert txn["status"] == "compensating", txn
        again = await act(client, "s1", "abort")
        assert again.status_code == 409 and "resolved by hand" in again.json()["detail"]
        bad = await client.post(
            "/v1/transactions/s1/branches/5/resolve", json={"note": "x"}, headers=ADMIN
        )
        assert bad.status_code == 404 and "no branch 5" in bad.json()["detail"]
        resolved = None
        for _ in range(300):  # between two attempts: no driver holds it
            resolved = await client.post(
                "/v1/transactions/s1/branches/0/resolve",
                json={"note": "refunded by bank transfer"},
                headers=ADMIN,
            )
            if resolved.status_code == 200:
                break
            assert "driving" in resolved.json()["detail"], resolved.text
            await asyncio.sleep(0.01)
        assert resolved is not None and resolved.status_code == 200, resolved.text
        txn = await until(client, "s1", "aborted")
        assert txn["branches"][0]["status"] == "compensated"
        assert txn["branches"][0]["resolved_by"] == "admin"
        assert "compensated by hand by admin" in txn["reason"]
        kinds = [e["kind"] for e in txn["events"]]
        assert kinds.index("operator:resolve") < kinds.index("finished")


async def test_refusals_change_nothing() -> None:
    transport, store = Scripted(), MemLog()
    async with client_of(app_of(transport, store)) as client:
        missing = await act(client, "nope", "retry")
        assert missing.status_code == 404 and "no transaction" in missing.json()["detail"]
        await submit(client, "t1", "2pc")
        before = (await client.get("/v1/transactions/t1", headers=ADMIN)).json()
        for body in ({}, {"note": ""}, {"note": "   "}, {"note": "x" * 1001}, {"why": "x"}):
            reply = await client.post("/v1/transactions/t1/abort", json=body, headers=ADMIN)
            assert reply.status_code == 422, (body, reply.text)
        reader = await client.post(
            "/v1/transactions/t1/abort", json={"note": "x"}, headers=bearer("read")
        )
        assert reader.status_code == 403
        # Driven again, a 2PC without its decision would be aborted: ask for an abort.
        preparing = await act(client, "t1", "retry")
        assert preparing.status_code == 409 and "abort it" in preparing.json()["detail"]
        # A saga whose driver holds it (its step in flight): a retry would race that driver.
        await submit(client, "s1", "saga", n=1)
        busy = await act(client, "s1", "retry")
        assert busy.status_code == 409 and "driving" in busy.json()["detail"]
        twopc = await client.post(
            "/v1/transactions/t1/branches/0/resolve", json={"note": "x"}, headers=ADMIN
        )
        assert twopc.status_code == 409 and "saga branches" in twopc.json()["detail"]
        assert (await client.get("/v1/transactions/t1", headers=ADMIN)).json() == before
        transport.go.set()
        await until(client, "t1", "committed")
        await until(client, "s1", "committed")


async def test_retry_drives_a_waiting_saga_again_at_once() -> None:
    transport, store = Scripted(), MemLog()
    async with client_of(app_of(transport, store)) as client:
        await submit(client, "s1", "saga", n=1)
        await act(client, "s1", "abort", "stop it")
        await until(client, "s1", "compensating")
        seen = 0
        reply = None
        for _ in range(300):
            reply = await act(client, "s1", "retry", "try the refund again")
            if reply.status_code == 200:
                break
            await asyncio.sleep(0.01)
        assert reply is not None and reply.status_code == 200, reply.text
        seen = len([c for c in transport.calls if c[0] == "compensate"])
        transport.refuse = False
        txn = await until(client, "s1", "aborted")
        assert len([c for c in transport.calls if c[0] == "compensate"]) > seen
        retry = next(e for e in txn["events"] if e["kind"] == "operator:retry")
        assert retry["detail"]["note"] == "try the refund again"
