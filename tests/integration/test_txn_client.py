"""txn_client, both Client and AsyncClient, against the session stack's coordinator over real
HTTP, with the real ledgers: outcomes, typed errors, idempotent resubmission, reads, paging
and the manual actions. The blocking client runs in a worker thread (asyncio.to_thread) so
each test reads the same for both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.helpers import TEST_API_TOKEN, api_client, balances, open_accounts, unique
from txn_client import (
    Aborted,
    AsyncClient,
    Client,
    Conflict,
    Invalid,
    NamedSaga,
    NotFound,
    RetryPolicy,
    Saga,
    Step,
    Transaction,
    TwoPhase,
    Unauthorised,
)
from txn_devstack.stack import Stack

ADJUST, UNDO = "/accounts/adjust", "/accounts/adjust/undo"
OPENING = 100
WAIT = 20


class Either:
    """The same calls over Client or AsyncClient."""

    def __init__(self, kind: str, url: str, token: str) -> None:
        self.kind = kind
        self.sync = Client(url, token) if kind == "sync" else None
        self.aio = AsyncClient(url, token) if kind == "async" else None

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.sync is not None:
            return await asyncio.to_thread(getattr(self.sync, method), *args, **kwargs)
        assert self.aio is not None
        return await getattr(self.aio, method)(*args, **kwargs)

    async def every(self, **filters: Any) -> list[Transaction]:
        """The iterator over all pages, drained."""
        sync = self.sync
        if sync is not None:
            return await asyncio.to_thread(lambda: list(sync.transactions(**filters)))
        assert self.aio is not None
        return [txn async for txn in self.aio.transactions(**filters)]

    async def close(self) -> None:
        if self.sync is not None:
            self.sync.close()
        if self.aio is not None:
            await self.aio.close()


@pytest.fixture(params=["sync", "async"])
async def txn(request: pytest.FixtureRequest, stack: Stack) -> AsyncIterator[Either]:
    either = Either(request.param, stack.coordinator_url, TEST_API_TOKEN)
    try:
        yield either
    finally:
        await either.close()


@pytest.fixture
async def account(stack: Stack) -> str:
    """A fresh account holding OPENING on every ledger."""
    name = unique("client")
    async with api_client(timeout=30) as http:
        await open_accounts(http, urls(stack), name, OPENING)
    return name


def urls(stack: Stack) -> dict[str, str]:
    return {p.name: p.url for p in stack.participants}


def dsns(stack: Stack) -> dict[str, str]:
    return {p.name: p.dsn for p in stack.participants if p.dsn}


def transfer(account: str, amount: int, gid: str | None = None) -> TwoPhase:
    return (
        TwoPhase(gid)
        .branch("ledger1", ADJUST, {"account": account, "delta": -amount})
        .branch("ledger2", ADJUST, {"account": account, "delta": amount})
    )


async def test_a_2pc_transfer_commits(txn: Either, stack: Stack, account: str) -> None:
    builder = transfer(account, 30)
    done = await txn("submit", builder, wait=WAIT)
    assert (done.gid, done.mode, done.status, done.reason) == (
        builder.gid,
        "2pc",
        "committed",
        None,
    )
    assert done.created is True and done.finished
    assert [(b.participant, b.status) for b in done.branches] == [
        ("ledger1", "committed"),
        ("ledger2", "committed"),
    ]
    assert await balances(dsns(stack), account) == {"ledger1": 70, "ledger2": 130, "ledger3": 100}


async def test_a_saga_with_parallel_steps_commits(txn: Either, stack: Stack, account: str) -> None:
    saga = Saga(retry=RetryPolicy(max_attempts=3, initial_s=0.1), timeout_s=30)
    roots = saga.parallel(
        Step("ledger1", ADJUST, UNDO, {"account": account, "delta": 1}),
        Step("ledger2", ADJUST, UNDO, {"account": account, "delta": 2}),
    )
    saga.step("ledger3", ADJUST, UNDO, {"account": account, "delta": 3}, depends_on=roots)
    done = await txn("submit", saga, wait=WAIT)
    assert done.status == "committed" and done.mode == "saga", done
    assert [b.depends_on for b in done.branches] == [(), (), (0, 1)]
    assert [b.status for b in done.branches] == ["succeeded"] * 3
    assert await balances(dsns(stack), account) == {"ledger1": 101, "ledger2": 102, "ledger3": 103}


async def test_a_named_saga_commits(txn: Either, stack: Stack, account: str) -> None:
    moves = {
        "from_ledger": "ledger1",
        "from_account": account,
        "to_ledger": "ledger3",
        "to_account": account,
        "amount": 7,
    }
    done = await txn("submit", NamedSaga("transfer", moves), wait=WAIT)
    assert done.status == "committed", done
    assert await balances(dsns(stack), account) == {"ledger1": 93, "ledger2": 100, "ledger3": 107}


async def test_an_abort_raises_aborted_with_the_reason(
    txn: Either, stack: Stack, account: str
) -> None:
    saga = (
        Saga()
        .step("ledger1", ADJUST, UNDO, {"account": account, "delta": 5})
        .step("ledger2", ADJUST, UNDO, {"account": account, "delta": -1000})  # goes negative
    )
    with pytest.raises(Aborted) as caught:
        await txn("submit", saga, wait=WAIT)
    assert "ledger2" in caught.value.reason and "negative" in caught.value.reason
    assert caught.value.transaction.gid == saga.gid
    assert caught.value.transaction.status == "aborted"
    assert await balances(dsns(stack), account) == {n: OPENING for n in urls(stack)}
    # Without wait, the same submission is answered as it stands, with no exception.
    assert (await txn("submit", saga)).status == "aborted"


async def test_invalid_names_the_field(txn: Either) -> None:
    bad = TwoPhase().branch("ledger1", "not a path", {"account": "x", "delta": 1})
    with pytest.raises(Invalid) as caught:
        await txn("submit", bad)
    assert caught.value.status == 422
    assert "body.branches.0.action" in caught.value.fields
    assert caught.value.errors[0].message


async def test_a_bad_token_is_unauthorised(txn: Either, stack: Stack, account: str) -> None:
    stranger = Either(txn.kind, stack.coordinator_url, "txn_not-a-token-of-this-coordinator")
    try:
        with pytest.raises(Unauthorised) as caught:
            await stranger("submit", transfer(account, 1))
        assert caught.value.status == 401
        with pytest.raises(Unauthorised):
            await stranger("list", limit=1)
    finally:
        await stranger.close()


async def test_the_same_gid_with_another_body_conflicts(txn: Either, account: str) -> None:
    first = await txn("submit", transfer(account, 1), wait=WAIT)
    with pytest.raises(Conflict) as caught:
        await txn("submit", transfer(account, 2, gid=first.gid))
    assert caught.value.status == 409 and first.gid in caught.value.detail


async def test_the_same_builder_twice_is_one_transaction(
    txn: Either, stack: Stack, account: str
) -> None:
    builder = transfer(account, 10)
    first = await txn("submit", builder, wait=WAIT)
    again = await txn("submit", builder, wait=WAIT)
    assert first.created is True and again.created is False
    assert again.gid == first.gid == builder.gid and again.status == "committed"
    assert again.branches == first.branches
    assert await balances(dsns(stack), account) == {"ledger1": 90, "ledger2": 110, "ledger3": 100}


async def test_get_reads_the_transaction(txn: Either, account: str) -> None:
    done = await txn("submit", transfer(account, 3), wait=WAIT)
    read = await txn("get", done.gid)
    assert (read.gid, read.status, read.branches) == (done.gid, "committed", done.branches)
    assert read.events and any(e.kind for e in read.events)
    assert (await txn("get", done.gid, events=False)).events is None
    with pytest.raises(NotFound):
        await txn("get", unique("absent"))


async def test_list_pages_through_every_match(txn: Either, account: str) -> None:
    prefix = unique("page")
    gids = set()
    for i in range(5):
        done = await txn("submit", transfer(account, 1, gid=f"{prefix}-{i}"), wait=WAIT)
        gids.add(done.gid)
    first = await txn("list", gid_prefix=prefix, mode="2pc", limit=2)
    assert len(first.items) == 2 and first.next_cursor is not None
    second = await txn("list", gid_prefix=prefix, limit=2, cursor=first.next_cursor)
    assert {t.gid for t in first.items}.isdisjoint({t.gid for t in second.items})
    every = await txn.every(gid_prefix=prefix, status="committed", limit=2)
    assert len(every) == 5 and {t.gid for t in every} == gids
    assert await txn.every(gid_prefix=prefix, participant="ledger3") == []


async def test_a_manual_action_on_a_finished_transaction_conflicts(
    txn: Either, account: str
) -> None:
    done = await txn("submit", transfer(account, 1), wait=WAIT)
    assert done.status == "committed"
    for action, args in (
        ("abort", (done.gid, "too late")),
        ("retry", (done.gid, "nothing to drive")),
        ("resolve_branch", (done.gid, 0, "2pc has no compensation")),
    ):
        with pytest.raises(Conflict) as caught:
            await txn(action, *args)
        assert caught.value.status == 409, action
    with pytest.raises(NotFound):
        await txn("abort", unique("absent"), "no such")
