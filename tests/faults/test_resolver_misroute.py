"""A participant's doubt resolver asks a URL that is not a coordinator (a misconfigured list, a
proxy answering 404 for everything) while the coordinator's commit to that participant is late.
Before resolver answers were verified, the 404 read as "never logged": the branch was rolled
back while the others committed, a split outcome. Now nothing but a signed answer decides.

Real processes: the fault stack's coordinator and ledgers; ledger2 restarted with the pause
point ``before_commit_prepared`` armed (the coordinator's COMMIT PREPARED is held inside the
call, the branch stays prepared past the resolver's safety interval), a short safety interval,
and ``TXNP_COORDINATORS`` listing first a server in this test process that answers 404 with an
HTML page to everything. Outcomes are read from the ledgers' own databases.

* The real coordinator second in the list: the resolver logs the 404, then acts on the
  coordinator's signed "committing" (its own COMMIT PREPARED reaches the pause point too);
  once released, every ledger has committed and nothing is left prepared.
* Every URL wrong (the 404 server and the ledger's own URL): the branch stays prepared, round
  after round, until the coordinator's held commit is released and commits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from tests.conftest import TEST_COORDINATOR_ENV
from tests.helpers import (
    api_client,
    balances,
    barrier_rows,
    fetch,
    open_accounts,
    prepared_xacts,
    twopc_transfer,
    unique,
)
from txn_devstack.services import Service
from txn_devstack.stack import Stack

OPENING = 100
MOVES = {"ledger1": -30, "ledger2": 20, "ledger3": 10}
HELD = "ledger2"
HELD_BRANCH = list(MOVES).index(HELD)
PATIENT_S = 60  # the coordinator's call timeout: its held call is never retried meanwhile
BOUND_S = 30.0
RESOLVER = {"TXNP_ORPHAN_SAFETY_S": "1", "TXNP_RESOLVER_INTERVAL_S": "0.3"}
REACHED = "pause point before_commit_prepared reached"
NOT_FOUND_HTML = b"<html><head><title>404 Not Found</title></head><body>nginx</body></html>"


@pytest.fixture(scope="module", autouse=True)
def patient_coordinator(fault_stack: Stack) -> Iterator[None]:
    coord = fault_stack.coordinators[0].name
    fault_stack.restart(coord, env={"TXN_CALL_TIMEOUT_S": str(PATIENT_S)})
    try:
        yield
    finally:
        fault_stack.restart(
            coord, env={"TXN_CALL_TIMEOUT_S": TEST_COORDINATOR_ENV["TXN_CALL_TIMEOUT_S"]}
        )


@dataclass
class NotFound:
    """Answers 404 with an HTML page to every request, and counts them."""

    url: str = ""
    asked: int = 0

    async def handle(self, _request: web.Request) -> web.Response:
        self.asked += 1
        return web.Response(body=NOT_FOUND_HTML, status=404, content_type="text/html")


@contextlib.asynccontextmanager
async def not_found_server() -> AsyncIterator[NotFound]:
    server = NotFound()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.url = f"http://{host}:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


@dataclass
class Held:
    """ledger2 as armed for the test: its log since the restart, and the pause handshake."""

    service: Service
    file: Path
    log_offset: int

    def log(self) -> str:
        with open(self.service.log_file, "rb") as f:
            f.seek(self.log_offset)
            return f.read().decode(errors="replace")

    def release(self) -> None:
        Path(f"{self.file}.release").write_text("go\n")


@contextlib.asynccontextmanager
async def held_commits(
    stack: Stack, coordinators: list[str], tmp_path: Path
) -> AsyncIterator[Held]:
    """ledger2 restarted with its COMMIT PREPARED held, a short safety interval and
    ``coordinators`` as its resolver's list; restarted as it was afterwards."""
    service = stack.service(HELD)
    before = dict(service.env)
    file = tmp_path / "pause"
    env = {
        **RESOLVER,
        "TXNP_PAUSE_AT": "before_commit_prepared",
        "TXNP_PAUSE_FILE": str(file),
        "TXNP_COORDINATORS": ",".join(coordinators),
    }
    await asyncio.to_thread(stack.restart, HELD, env)
    held = Held(service, file, service.log_file.stat().st_size)
    try:
        yield held
    finally:
        held.release()  # a call still held (the test failed early) ends before the restart
        service.env.clear()
        service.env.update(before)
        await asyncio.to_thread(stack.restart, HELD)


def dsns(stack: Stack) -> dict[str, str]:
    return {p.name: p.dsn for p in stack.participants if p.dsn}


Check = Callable[[], Awaitable[bool]]


async def wait_until(
    what: str, check: Check, timeout_s: float = BOUND_S, held: tuple[Stack, str] | None = None
) -> None:
    """Poll ``check``; with ``held`` (stack, gid): fail at once if ledger2's branch is no longer
    prepared meanwhile (its commit is still held: anything else ended it, i.e. rolled it back)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if held is not None:
            assert await held_prepared(*held), "ledger2's branch ended while its commit was held"
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        await asyncio.sleep(0.1)


async def held_prepared(stack: Stack, gid: str) -> bool:
    return f"txn:{gid}:{HELD_BRANCH}" in await prepared_xacts(dsns(stack)[HELD])


async def start_transfer(stack: Stack, client: httpx.AsyncClient) -> tuple[str, str]:
    account, gid = unique("misroute"), unique("misroute")
    await open_accounts(client, {p.name: p.url for p in stack.participants}, account, OPENING)
    body = {**twopc_transfer(gid, account, MOVES), "timeout_s": PATIENT_S}
    reply = await client.post(f"{stack.coordinators[0].url}/v1/transactions", json=body)
    assert reply.status_code == 201, reply.text
    return account, gid


async def ends_committed_everywhere(stack: Stack, held: Held, account: str, gid: str) -> None:
    async def drained() -> bool:
        xids = [x for dsn in dsns(stack).values() for x in await prepared_xacts(dsn)]
        return not any(gid in x for x in xids)

    await wait_until("nothing prepared on any ledger", drained)
    # Counted from every ledger's own database: the transfer applied once on each.
    assert await balances(dsns(stack), account) == {n: OPENING + d for n, d in MOVES.items()}
    rows = await barrier_rows(dsns(stack)[HELD], gid)
    assert all(outcome != "rolled_back" for _, _, outcome in rows), rows

    async def logged_committed() -> bool:
        rows = await fetch(stack.log_dsn, "SELECT status FROM transactions WHERE gid = $1", gid)
        return bool(rows) and rows[0]["status"] == "committed"

    await wait_until("the log to say committed", logged_committed)
    assert f"rolled back ['txn:{gid}" not in held.log(), held.log()


async def test_a_misrouted_404_then_the_coordinator_commits_the_late_branch(
    fault_stack: Stack, tmp_path: Path
) -> None:
    stack = fault_stack
    coordinator = stack.coordinators[0].url
    async with (
        not_found_server() as wrong,
        held_commits(stack, [wrong.url, coordinator], tmp_path) as held,
        api_client(timeout=10) as client,
    ):
        account, gid = await start_transfer(stack, client)
        # The coordinator decided commit; its COMMIT PREPARED on ledger2 is held.
        await wait_until("the coordinator's commit to reach the pause", _count(held, 1))
        assert await held_prepared(stack, gid)
        # Past the safety interval the resolver asks: the 404 first, logged, nothing done...
        misrouted = f"no usable answer about {gid} from {wrong.url}: HTTP 404"
        await wait_until("the resolver to log the 404", _logs(held, misrouted), held=(stack, gid))
        assert wrong.asked >= 1
        # ...then the coordinator, whose signed "committing" it acts on: its own COMMIT
        # PREPARED reaches the pause point (the coordinator's call is patient: no retry).
        await wait_until(
            "the resolver's commit to reach the pause", _count(held, 2), held=(stack, gid)
        )
        assert await held_prepared(stack, gid), "the branch left prepared state while held"
        held.release()
        await ends_committed_everywhere(stack, held, account, gid)


async def test_every_url_wrong_the_branch_waits_for_the_coordinators_commit(
    fault_stack: Stack, tmp_path: Path
) -> None:
    stack = fault_stack
    own = stack.service(HELD).url  # a ledger is no coordinator: its guard answers 401
    async with (
        not_found_server() as wrong,
        held_commits(stack, [wrong.url, own], tmp_path) as held,
        api_client(timeout=10) as client,
    ):
        account, gid = await start_transfer(stack, client)
        await wait_until("the coordinator's commit to reach the pause", _count(held, 1))
        # Round after round of wrong answers, each logged: the branch stays prepared.
        asked_before = wrong.asked

        async def several_rounds() -> bool:
            return wrong.asked >= asked_before + 4

        await wait_until("several rounds of questions", several_rounds, held=(stack, gid))
        log = held.log()
        assert f"no usable answer about {gid} from {wrong.url}: HTTP 404" in log, log
        assert f"no usable answer about {gid} from {own}: HTTP 4" in log, log
        assert await held_prepared(stack, gid), "rolled back on a wrong URL's answer"
        assert log.count(REACHED) == 1, "the resolver acted on an unverified answer"
        # The other ledgers have committed; ledger2 is in doubt, its change not applied.
        others = {n: d for n, d in dsns(stack).items() if n != HELD}

        async def others_committed() -> bool:
            got = await balances(others, account)
            return got == {n: OPENING + MOVES[n] for n in others}

        await wait_until("the other ledgers to commit", others_committed, held=(stack, gid))
        assert (await balances({HELD: dsns(stack)[HELD]}, account))[HELD] == OPENING
        # The coordinator's commit arrives: the outcome is whole.
        held.release()
        await ends_committed_everywhere(stack, held, account, gid)


def _count(held: Held, n: int) -> Check:
    async def check() -> bool:
        return held.log().count(REACHED) >= n

    return check


def _logs(held: Held, text: str) -> Check:
    async def check() -> bool:
        return text in held.log()

    return check
