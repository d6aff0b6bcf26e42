"""The participant's doubt resolver cannot be fooled (docs/security.md, "verified doubt answers").

A real ledger database holds a real prepared transaction; the resolver asks fake coordinators
(small aiohttp servers on 127.0.0.1 in this process) what became of it. Whatever answers at a
coordinator's URL that is not a 200 signed with this participant's own secret, for this
participant, this gid and this question's nonce (a bare 404, a redirect, an unsigned or
misdirected answer, garbage, nobody, silence) leaves the transaction prepared and is logged
with the reason. Only a verified answer ends the doubt: "unknown" or an abort rolls back, a
commit commits, "preparing" waits.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from participants.ledger.app import adjust
from participants.sdk import Participant, wire
from participants.sdk.ask import question_client
from participants.sdk.db import make_engine
from participants.sdk.resolver import Resolution
from tests.helpers import TEST_SECRET, secured

NAME = "ledger-t"
OPENING, DELTA = 100, 7
ASK_TIMEOUT_S = 0.5  # the resolver's session: a silent coordinator is given up on quickly

Asked = dict[str, Any]
Answer = Callable[[web.Request, Asked], Awaitable[web.StreamResponse]]


@dataclass
class Fake:
    """A coordinator impostor (or a stand-in for the real one): every request, to any path
    with any method, is recorded and answered by ``answer``."""

    answer: Answer
    asked: list[Asked] = field(default_factory=list)
    paths: list[tuple[str, str]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    url: str = ""
    runner: web.AppRunner | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.paths.append((request.method, request.raw_path))
        self.headers.append(dict(request.headers))
        self.raw.append(body)
        try:
            asked = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            asked = {}
        self.asked.append(asked if isinstance(asked, dict) else {})
        return await self.answer(request, self.asked[-1])

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        self.done.set()  # a handler holding its answer back lets go
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def fakes() -> AsyncIterator[Callable[[Answer], Awaitable[Fake]]]:
    started: list[Fake] = []

    async def start(answer: Answer) -> Fake:
        fake = Fake(answer)
        await fake.start()
        started.append(fake)
        return fake

    try:
        yield start
    finally:
        for fake in started:
            await fake.stop()


@pytest.fixture
async def engine(ledger_dsn: str) -> AsyncIterator[AsyncEngine]:
    e = make_engine(ledger_dsn, pool_size=5)
    try:
        yield e
    finally:
        await e.dispose()


async def sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def prepared(dsn: str) -> list[str]:
    rows = await sql(dsn, "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()")
    return [r["gid"] for r in rows]


async def balance(dsn: str, account: str) -> int:
    rows = await sql(dsn, "SELECT balance FROM accounts WHERE id = $1", account)
    return int(rows[0]["balance"])


@dataclass
class InDoubt:
    """One prepared branch on the ledger database, and how to ask about it."""

    engine: AsyncEngine
    dsn: str
    gid: str
    xid: str
    account: str

    def participant(self, *coordinators: str) -> Participant:
        settings = secured(
            name=NAME, dsn=self.dsn, coordinators=list(coordinators), orphan_safety_s=0
        )
        return Participant(settings, self.engine)

    async def resolve_once(self, *coordinators: str) -> Resolution:
        sdk = self.participant(*coordinators)
        resolver = sdk.resolver()
        resolver.timeout_s = ASK_TIMEOUT_S
        client = question_client()
        try:
            return await resolver.resolve_once(client)
        finally:
            await client.close()
            await sdk._drop_spare()

    async def still_prepared(self) -> None:
        assert self.xid in await prepared(self.dsn)
        assert await balance(self.dsn, self.account) == OPENING

    async def committed(self) -> None:
        assert self.xid not in await prepared(self.dsn)
        assert await balance(self.dsn, self.account) == OPENING + DELTA

    async def rolled_back(self) -> None:
        assert self.xid not in await prepared(self.dsn)
        assert await balance(self.dsn, self.account) == OPENING


@pytest.fixture
async def doubt(engine: AsyncEngine, ledger_dsn: str) -> AsyncIterator[InDoubt]:
    account, gid = f"acct-{uuid.uuid4().hex[:8]}", f"doubt-{uuid.uuid4().hex}"
    await sql(ledger_dsn, "INSERT INTO accounts (id, balance) VALUES ($1, $2)", account, OPENING)
    sdk = Participant(secured(name=NAME, dsn=ledger_dsn), engine)
    status, vote = await sdk.prepare(gid, 0, {"account": account, "delta": DELTA}, adjust)
    assert status == 200 and vote["vote"] == "yes", vote
    await sdk._drop_spare()
    case = InDoubt(engine, ledger_dsn, gid, wire.xid(gid, 0), account)
    try:
        yield case
    finally:
        # Never leave a prepared transaction behind in the shared cluster.
        with_xid = await prepared(ledger_dsn)
        if case.xid in with_xid:
            await sql(ledger_dsn, f"ROLLBACK PREPARED '{case.xid}'")


# -- answers -------------------------------------------------------------------------------


def signed(content: bytes, secret: str = TEST_SECRET, status: int = 200) -> web.Response:
    return web.Response(
        body=content,
        status=status,
        content_type="application/json",
        headers={wire.H_SIGNATURE: wire.sign_reply(secret.encode(), content)},
    )


def reply_to(asked: Asked, status: str, /, **override: Any) -> bytes:
    """The body the real coordinator answers ``asked`` with."""
    answer = {"gid": asked.get("gid"), "participant": NAME, "nonce": asked.get("nonce")}
    return orjson.dumps({**answer, "status": status, **override})


def says(
    status: str, /, secret: str = TEST_SECRET, http_status: int = 200, **override: Any
) -> Answer:
    """A signed answer to the very question asked (``override``: fields changed)."""

    async def answer(_request: web.Request, asked: Asked) -> web.StreamResponse:
        return signed(reply_to(asked, status, **override), secret, http_status)

    return answer


def unsigned(status: str) -> Answer:
    async def answer(_request: web.Request, asked: Asked) -> web.StreamResponse:
        return web.Response(body=reply_to(asked, status), content_type="application/json")

    return answer


def fixed(response: Callable[[], web.Response]) -> Answer:
    async def answer(_request: web.Request, _asked: Asked) -> web.StreamResponse:
        return response()

    return answer


NOT_FOUND_HTML = b"<html><head><title>404 Not Found</title></head><body>nginx</body></html>"

# name: (the impostor's answer, what the resolver's log line must say)
LEFT_CASES: dict[str, tuple[Answer, str]] = {
    "bare 404 with an HTML body": (
        fixed(lambda: web.Response(body=NOT_FOUND_HTML, status=404, content_type="text/html")),
        "HTTP 404",
    ),
    "404 signed unknown": (
        # Even a correctly signed body does not count unless the status is 200.
        says("unknown", http_status=404),
        "HTTP 404",
    ),
    "200 unsigned unknown": (unsigned("unknown"), "not signed with this participant's secret"),
    "200 unknown signed with another secret": (
        says("unknown", secret="another-participant-secret"),
        "not signed with this participant's secret",
    ),
    "signed unknown for another gid": (
        says("unknown", gid="another-gid"),
        "for another question",
    ),
    "signed unknown for another participant": (
        says("unknown", participant="ledger-other"),
        "for another question",
    ),
    "signed unknown for another nonce": (
        says("unknown", nonce=wire.new_nonce()),
        "for another question",
    ),
    "signed answer without a status": (says("unknown", status=None), "has no status"),
    "non-JSON 200": (
        fixed(lambda: web.Response(body=b"<html>ok</html>", content_type="text/html")),
        "not signed with this participant's secret",
    ),
    "non-JSON 200 signed": (fixed(lambda: signed(b"<html>ok</html>")), "not JSON"),
    "signed JSON that is not an object": (
        fixed(lambda: signed(b'["unknown"]')),
        "another question",
    ),
}


def usable_answer_warnings(caplog: pytest.LogCaptureFixture, gid: str, url: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "participants.sdk.resolver"
        and r.levelno >= logging.WARNING
        and "no usable answer" in r.getMessage()
        and gid in r.getMessage()
        and url in r.getMessage()
    ]


# -- what the resolver asks ------------------------------------------------------------------


async def test_the_question_is_a_signed_post_with_the_gid_in_its_body(
    doubt: InDoubt, fakes: Callable[[Answer], Awaitable[Fake]]
) -> None:
    fake = await fakes(says("preparing"))
    await doubt.resolve_once(fake.url)
    assert fake.paths == [("POST", wire.RESOLVE_PATH)]  # the gid is in no URL
    assert set(fake.asked[0]) == {"gid", "nonce"} and fake.asked[0]["gid"] == doubt.gid
    assert wire.valid_nonce(fake.asked[0]["nonce"])
    headers = {k.lower(): v for k, v in fake.headers[0].items()}
    assert headers[wire.H_PARTICIPANT.lower()] == NAME
    why = wire.check_call(
        [TEST_SECRET.encode()],
        headers,
        wire.RESOLVE_PATH,
        NAME,
        doubt.gid,
        None,
        "resolve",
        fake.raw[0],
    )
    assert why is None, why
    # A fresh nonce for every question: an old answer is no answer to a new one.
    await doubt.resolve_once(fake.url)
    assert fake.asked[0]["nonce"] != fake.asked[1]["nonce"]


# -- whatever cannot be verified leaves the transaction prepared -----------------------------


@pytest.mark.parametrize("case", list(LEFT_CASES))
async def test_an_unverified_answer_leaves_the_transaction_prepared(
    doubt: InDoubt,
    fakes: Callable[[Answer], Awaitable[Fake]],
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    answer, why = LEFT_CASES[case]
    fake = await fakes(answer)
    with caplog.at_level(logging.WARNING, logger="participants.sdk.resolver"):
        done = await doubt.resolve_once(fake.url)
    assert len(fake.asked) == 1
    assert done == Resolution(left=[doubt.xid])
    await doubt.still_prepared()
    logged = usable_answer_warnings(caplog, doubt.gid, fake.url)
    assert len(logged) == 1 and why in logged[0], caplog.text


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_a_redirect_is_never_followed(
    doubt: InDoubt,
    fakes: Callable[[Answer], Awaitable[Fake]],
    caplog: pytest.LogCaptureFixture,
    code: int,
) -> None:
    """The redirect points at a server that would answer a correctly signed "unknown" (for
    the very nonce asked, whatever method the redirect is followed with): a resolver that
    followed it would roll back."""
    questions: list[Asked] = []

    async def signed_unknown(_request: web.Request, asked: Asked) -> web.StreamResponse:
        return signed(reply_to(asked or questions[-1], "unknown"))

    target = await fakes(signed_unknown)

    async def redirect(_request: web.Request, asked: Asked) -> web.StreamResponse:
        questions.append(asked)
        return web.Response(status=code, headers={"Location": target.url + wire.RESOLVE_PATH})

    origin = await fakes(redirect)
    with caplog.at_level(logging.WARNING, logger="participants.sdk.resolver"):
        done = await doubt.resolve_once(origin.url)
    assert target.asked == [], "the redirect was followed"
    assert done == Resolution(left=[doubt.xid])
    await doubt.still_prepared()
    logged = usable_answer_warnings(caplog, doubt.gid, origin.url)
    assert len(logged) == 1 and f"HTTP {code}" in logged[0], caplog.text
    # The target itself, asked directly, is believed: the test's "unknown" is well signed.
    assert (await doubt.resolve_once(target.url)).rolled_back == [doubt.xid]
    await doubt.rolled_back()


async def test_no_coordinator_listening_leaves_it_prepared(
    doubt: InDoubt, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:  # a port that was free a moment ago, nobody listening now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with caplog.at_level(logging.WARNING, logger="participants.sdk.resolver"):
        done = await doubt.resolve_once(url)
    assert done == Resolution(left=[doubt.xid])
    await doubt.still_prepared()
    logged = usable_answer_warnings(caplog, doubt.gid, url)
    assert len(logged) == 1 and "Connect" in logged[0], caplog.text


async def test_a_silent_coordinator_leaves_it_prepared(
    doubt: InDoubt, fakes: Callable[[Answer], Awaitable[Fake]], caplog: pytest.LogCaptureFixture
) -> None:
    async def silent(_request: web.Request, asked: Asked) -> web.StreamResponse:
        await fake.done.wait()  # until the test ends: far past the resolver's timeout
        return signed(reply_to(asked, "unknown"))

    fake = await fakes(silent)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.WARNING, logger="participants.sdk.resolver"):
        done = await doubt.resolve_once(fake.url)
    assert loop.time() - started < ASK_TIMEOUT_S + 2.0
    assert done == Resolution(left=[doubt.xid])
    await doubt.still_prepared()
    logged = usable_answer_warnings(caplog, doubt.gid, fake.url)
    assert len(logged) == 1 and "no reply within" in logged[0], caplog.text


# -- a verified answer decides -----------------------------------------------------------------


@pytest.mark.parametrize("status", ["unknown", "aborted", "aborting"])
async def test_a_signed_abort_or_unknown_rolls_back(
    doubt: InDoubt, fakes: Callable[[Answer], Awaitable[Fake]], status: str
) -> None:
    fake = await fakes(says(status))
    done = await doubt.resolve_once(fake.url)
    assert done == Resolution(rolled_back=[doubt.xid])
    await doubt.rolled_back()


@pytest.mark.parametrize("status", ["committed", "committing"])
async def test_a_signed_commit_commits(
    doubt: InDoubt, fakes: Callable[[Answer], Awaitable[Fake]], status: str
) -> None:
    fake = await fakes(says(status))
    done = await doubt.resolve_once(fake.url)
    assert done == Resolution(committed=[doubt.xid])
    await doubt.committed()


@pytest.mark.parametrize("status", ["preparing", "reticulating"])
async def test_a_signed_undecided_answer_leaves_it_prepared_and_says_why(
    doubt: InDoubt,
    fakes: Callable[[Answer], Awaitable[Fake]],
    caplog: pytest.LogCaptureFixture,
    status: str,
) -> None:
    fake = await fakes(says(status))
    with caplog.at_level(logging.INFO, logger="participants.sdk.resolver"):
        done = await doubt.resolve_once(fake.url)
    assert done == Resolution(left=[doubt.xid])
    await doubt.still_prepared()
    said = [r.getMessage() for r in caplog.records if doubt.xid in r.getMessage()]
    assert len(said) == 1 and repr(status) in said[0], caplog.text


async def test_an_impostor_first_then_the_coordinator_commits(
    doubt: InDoubt, fakes: Callable[[Answer], Awaitable[Fake]], caplog: pytest.LogCaptureFixture
) -> None:
    """The misrouted URL first (a bare 404, what used to roll a committed branch back), then
    the coordinator: its signed "committed" is what the resolver acts on."""
    impostor = await fakes(
        fixed(lambda: web.Response(body=NOT_FOUND_HTML, status=404, content_type="text/html"))
    )
    coordinator = await fakes(says("committed"))
    with caplog.at_level(logging.WARNING, logger="participants.sdk.resolver"):
        done = await doubt.resolve_once(impostor.url, coordinator.url)
    assert done == Resolution(committed=[doubt.xid])
    await doubt.committed()
    assert len(usable_answer_warnings(caplog, doubt.gid, impostor.url)) == 1, caplog.text
    assert len(impostor.asked) == len(coordinator.asked) == 1
    # Each question had its own nonce: the impostor's could not have been replayed.
    assert impostor.asked[0]["nonce"] != coordinator.asked[0]["nonce"]


async def test_the_resolver_counts_what_is_in_doubt_and_what_it_did(
    doubt: InDoubt, fakes: Callable[[Answer], Awaitable[Fake]]
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    impostor, coordinator = await fakes(unsigned("aborted")), await fakes(says("committed"))
    sdk = doubt.participant(impostor.url)
    resolver = sdk.resolver()
    resolver.timeout_s = ASK_TIMEOUT_S
    client = question_client()
    try:
        assert (await resolver.resolve_once(client)).left == [doubt.xid]
        resolver.coordinators = [coordinator.url]
        assert (await resolver.resolve_once(client)).committed == [doubt.xid]
        assert await resolver.resolve_once(client) == Resolution()
    finally:
        await client.close()
        await sdk._drop_spare()
    samples = {
        (s.name, tuple(s.labels.values())): s.value
        for family in text_string_to_metric_families(sdk.metrics.render().decode())
        for s in family.samples
    }
    assert samples[("txnp_resolver_actions_total", ("left",))] == 1
    assert samples[("txnp_resolver_actions_total", ("committed",))] == 1
    assert samples[("txnp_prepared_in_doubt", ())] == 0  # the last scan found none
    await doubt.committed()
