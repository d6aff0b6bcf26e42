"""The signature scheme (participants/sdk/wire.py), and each side that signs or verifies with it,
tested so that a broken scheme fails here, in memory, in under a second.

Both ends of every signed exchange call the same wire.py: a scheme that dropped the path, the
participant or the body from what it signs would still round-trip (the coordinator's call
verifies at the participant, the participant's catalogue at the coordinator), and a test that
only checks that a correct call passes and an unsigned one fails could not see it. So:

* the signatures are compared with HMAC-SHA256 computed here without wire.py, over what
  docs/security.md ("The signature") says is signed, in the v1 layout (a version tag and a line
  per field, then the body): the scheme is a protocol between separately deployed coordinators
  and participants, so any change to what it signs, or how, must show up here;
* every field a call signature covers is changed, alone, and the call must then be refused;
  a reply signature must refuse a body changed after signing;
* each user is checked the same way: the coordinator's transport (the calls it signs, the
  catalogue it verifies), the SDK's question to a coordinator (participants/sdk/ask.py, the
  answer it verifies), the coordinator's ``/v1/resolve`` and ``/v1/ended`` (the questions they
  verify, the answers they sign) and the SDK's catalogue endpoint. The SDK's branch calls are
  checked against a real database in tests/integration/test_sdk_signatures.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from coordinator.api import create_app
from coordinator.memlog import MemLog
from coordinator.settings import Settings
from coordinator.transport import HttpTransport, Kind, Reply
from participants.sdk import Participant, ParticipantSettings, wire
from participants.sdk.ask import ask, question_client
from tests.helpers import token_entries

SECRET = b"unit-test-secret"
PREVIOUS = b"unit-test-previous-secret"
OTHER = b"another-participants-secret"
NOW = 1_800_000_000.0
PATH = "/accounts/adjust"
BODY = b'{"account": "acct", "delta": 5}'


# -- the v1 scheme, computed without wire.py ------------------------------------------------------


def reference_call(
    secret: bytes,
    path: str,
    participant: str,
    gid: str,
    branch: int | None,
    op: str,
    timestamp: str,
    body: bytes,
    method: str = "POST",
) -> str:
    """HMAC-SHA256 over a version tag, the method, the logical path, the participant's name,
    gid, branch ("" for none), op and timestamp, a line each, then the body."""
    fields = [method, path, participant, gid, "" if branch is None else str(branch), op]
    text = "".join(f"{line}\n" for line in ("txn-call-v1", *fields, timestamp))
    return hmac.new(secret, text.encode() + body, hashlib.sha256).hexdigest()


def reference_reply(secret: bytes, body: bytes) -> str:
    """HMAC-SHA256 over the version tag, the word "reply", then the body."""
    return hmac.new(secret, b"txn-call-v1\nreply\n" + body, hashlib.sha256).hexdigest()


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


@dataclasses.dataclass(frozen=True)
class Call:
    """One branch call's signed fields: what is signed, or what the receiver verifies."""

    path: str = PATH
    participant: str = "ledger1"
    gid: str = "g-1"
    branch: int | None = 0
    op: str = "prepare"
    body: bytes = BODY

    def headers(self, secret: bytes = SECRET, now: float = NOW) -> dict[str, str]:
        signed = wire.signed_headers(
            secret, self.path, self.participant, self.gid, self.branch, self.op, self.body, now
        )
        return lower(signed)

    def check(
        self, headers: dict[str, str], secrets: list[bytes] | None = None, now: float = NOW
    ) -> str | None:
        return wire.check_call(
            [SECRET] if secrets is None else secrets,
            headers,
            self.path,
            self.participant,
            self.gid,
            self.branch,
            self.op,
            self.body,
            now=now,
        )


SENT = Call()
DOES_NOT_VERIFY = f"header {wire.H_SIGNATURE} does not verify"


# -- the call signature ------------------------------------------------------------------------


def test_a_call_signature_is_hmac_sha256_over_every_field_in_the_v1_layout() -> None:
    headers = SENT.headers()
    assert headers[wire.H_TIMESTAMP.lower()] == "1800000000"
    expected = reference_call(SECRET, PATH, "ledger1", "g-1", 0, "prepare", "1800000000", BODY)
    assert headers[wire.H_SIGNATURE.lower()] == expected
    # The same, for the calls without a branch (catalogue, questions) and for another method.
    assert wire.sign(SECRET, "POST", "/p", "x", "", None, "op", "7", b"") == reference_call(
        SECRET, "/p", "x", "", None, "op", "7", b""
    )
    assert wire.sign(SECRET, "GET", "/p", "x", "g", 3, "op", "7", b"b") == reference_call(
        SECRET, "/p", "x", "g", 3, "op", "7", b"b", method="GET"
    )
    assert SENT.check(headers) is None


# Each verifies a call signed as SENT as if it were another: every one differs in one field.
RECEIVED_AS = {
    "another path": dataclasses.replace(SENT, path="/accounts/adjust/undo"),
    "a sibling path": dataclasses.replace(SENT, path="/accounts/transfer"),
    "the path with a trailing slash": dataclasses.replace(SENT, path=PATH + "/"),
    "the path under a base path (not the logical path)": dataclasses.replace(
        SENT, path="/ledger" + PATH
    ),
    "the commit path": dataclasses.replace(SENT, path=wire.COMMIT_PATH),
    "no path": dataclasses.replace(SENT, path=""),
    "another participant": dataclasses.replace(SENT, participant="ledger2"),
    "another gid": dataclasses.replace(SENT, gid="g-2"),
    "another branch": dataclasses.replace(SENT, branch=1),
    "no branch": dataclasses.replace(SENT, branch=None),
    "another op": dataclasses.replace(SENT, op="action"),
    "another body": dataclasses.replace(SENT, body=BODY.replace(b"5", b"500")),
    "one more byte of body": dataclasses.replace(SENT, body=BODY + b" "),
    "an empty body": dataclasses.replace(SENT, body=b""),
}


@pytest.mark.parametrize("case", list(RECEIVED_AS))
def test_a_call_signed_for_one_thing_is_refused_as_another(case: str) -> None:
    why = RECEIVED_AS[case].check(SENT.headers())
    assert why is not None and DOES_NOT_VERIFY in why, why


def test_commit_and_rollback_signatures_are_not_interchangeable() -> None:
    for op, path, other in (
        ("commit", wire.COMMIT_PATH, wire.ROLLBACK_PATH),
        ("rollback", wire.ROLLBACK_PATH, wire.COMMIT_PATH),
    ):
        sent = Call(path=path, op=op, body=b"")
        assert sent.check(sent.headers()) is None
        # The same op at the other path: only the path tells a commit from a rollback here.
        assert dataclasses.replace(sent, path=other).check(sent.headers()) is not None


def test_the_timestamp_and_the_method_are_signed() -> None:
    headers = SENT.headers()
    moved = {**headers, wire.H_TIMESTAMP.lower(): "1800000001"}
    assert DOES_NOT_VERIFY in (SENT.check(moved) or "")
    as_get = wire.sign(SECRET, "GET", PATH, "ledger1", "g-1", 0, "prepare", "1800000000", BODY)
    assert SENT.check({**headers, wire.H_SIGNATURE.lower(): as_get}) is not None


def test_fields_cannot_slide_into_each_other() -> None:
    """Each field is delimited: what would read the same run together signs differently."""

    def signature(*fields: Any) -> str:
        path, participant, gid, branch, op, timestamp, body = fields
        return wire.sign(SECRET, "POST", path, participant, gid, branch, op, timestamp, body)

    pairs = [
        (("/a", "bc", "g", 0, "o", "1", b""), ("/ab", "c", "g", 0, "o", "1", b"")),
        (("/p", "n", "g1", 0, "o", "1", b""), ("/p", "n", "g", 10, "o", "1", b"")),
        (("/p", "n", "g", 1, "o", "1", b""), ("/p", "n", "g", None, "1o", "1", b"")),
        (
            ("/p", "n", "g", 0, "o", "1800000000", b"5"),
            ("/p", "n", "g", 0, "o", "18000000005", b""),
        ),
    ]
    for one, other in pairs:
        assert signature(*one) != signature(*other), (one, other)


def test_the_replay_window_is_bounded_both_ways() -> None:
    headers = SENT.headers()
    window = wire.REPLAY_WINDOW_S
    for now in (NOW - window, NOW + window):
        assert SENT.check(headers, now=now) is None
    for now in (NOW - window - 1, NOW + window + 1):
        why = SENT.check(headers, now=now)
        assert why is not None and wire.H_TIMESTAMP in why, why


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (wire.H_SIGNATURE, ""),
        (wire.H_SIGNATURE, "abc"),
        (wire.H_SIGNATURE, "0" * 63),
        (wire.H_SIGNATURE, "0" * 65),
        (wire.H_SIGNATURE, "g" * 64),
        (wire.H_SIGNATURE, "é" * 64),
        (wire.H_TIMESTAMP, ""),
        (wire.H_TIMESTAMP, "yesterday"),
        (wire.H_TIMESTAMP, "-1800000000"),
        (wire.H_TIMESTAMP, "1800000000.0"),
        (wire.H_TIMESTAMP, "1" * 13),
    ],
)
def test_a_malformed_header_is_refused_and_says_which(header: str, value: str) -> None:
    why = SENT.check({**SENT.headers(), header.lower(): value})
    assert why is not None and header in why, why


def test_an_upper_case_signature_is_refused() -> None:
    headers = SENT.headers()
    upper = headers[wire.H_SIGNATURE.lower()].upper()
    assert SENT.check({**headers, wire.H_SIGNATURE.lower(): upper}) is not None


def test_during_a_rotation_either_secret_verifies_and_no_other() -> None:
    both = [SECRET, PREVIOUS]
    assert SENT.check(SENT.headers(SECRET), both) is None
    assert SENT.check(SENT.headers(PREVIOUS), both) is None
    assert DOES_NOT_VERIFY in (SENT.check(SENT.headers(OTHER), both) or "")
    assert DOES_NOT_VERIFY in (SENT.check(SENT.headers(SECRET), []) or "")


# -- the reply signature -----------------------------------------------------------------------

ANSWER = orjson.dumps({"gid": "g-1", "participant": "ledger1", "nonce": "n" * 24, "status": "x"})


def test_a_reply_signature_is_hmac_sha256_over_the_body_in_the_v1_layout() -> None:
    signature = wire.sign_reply(SECRET, ANSWER)
    assert signature == reference_reply(SECRET, ANSWER)
    assert wire.check_reply([SECRET], ANSWER, signature)


@pytest.mark.parametrize(
    "tampered",
    [
        ANSWER.replace(b'"x"', b'"y"'),
        ANSWER.replace(b"n" * 24, b"m" * 24),
        ANSWER + b" ",
        ANSWER[:-1],
        b"",
    ],
    ids=["another status", "another nonce", "a byte more", "a byte less", "empty"],
)
def test_a_reply_changed_after_signing_is_refused(tampered: bytes) -> None:
    assert not wire.check_reply([SECRET], tampered, wire.sign_reply(SECRET, ANSWER))


def test_a_reply_verifies_with_either_secret_and_no_other_and_only_well_formed() -> None:
    assert wire.check_reply([SECRET, PREVIOUS], ANSWER, wire.sign_reply(PREVIOUS, ANSWER))
    assert not wire.check_reply([SECRET, PREVIOUS], ANSWER, wire.sign_reply(OTHER, ANSWER))
    assert not wire.check_reply([], ANSWER, wire.sign_reply(SECRET, ANSWER))
    good = wire.sign_reply(SECRET, ANSWER)
    for malformed in ("", good.upper(), good[:-1], good + "0", "é" * 64):
        assert not wire.check_reply([SECRET], ANSWER, malformed), malformed


def test_a_call_signature_is_no_reply_signature_and_the_reverse() -> None:
    """Both are made with the participant's secret: one must never pass for the other (a
    coordinator's captured call passed off as the participant's signed catalogue, say)."""
    empty = Call(path="", participant="", gid="", branch=None, op="", body=ANSWER)
    as_call = empty.headers()[wire.H_SIGNATURE.lower()]
    assert not wire.check_reply([SECRET], ANSWER, as_call)
    as_reply = {**empty.headers(), wire.H_SIGNATURE.lower(): wire.sign_reply(SECRET, ANSWER)}
    assert empty.check(as_reply) is not None


# -- fake peers: an HTTP server that records what it is sent -----------------------------------


@dataclasses.dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


Answer = Callable[[Seen], web.Response]


@dataclasses.dataclass
class Peer:
    url: str
    seen: list[Seen]


@pytest.fixture
async def peer() -> AsyncIterator[Callable[[Answer], Awaitable[Peer]]]:
    """``await peer(answer)``: a server on 127.0.0.1 answering every POST with ``answer``."""
    runners: list[web.AppRunner] = []

    async def start(answer: Answer) -> Peer:
        seen: list[Seen] = []

        async def handle(request: web.Request) -> web.Response:
            seen.append(Seen(request.raw_path, lower(dict(request.headers)), await request.read()))
            return answer(seen[-1])

        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return Peer(f"http://{host}:{port}", seen)

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


def json_reply(content: bytes, signature: str | None = None) -> web.Response:
    headers = {} if signature is None else {wire.H_SIGNATURE: signature}
    return web.Response(body=content, content_type="application/json", headers=headers)


# -- the coordinator signs its calls -----------------------------------------------------------


async def test_the_coordinator_signs_each_call_for_its_logical_path_and_participant(
    peer: Callable[[Answer], Awaitable[Peer]],
) -> None:
    def yes(seen: Seen) -> web.Response:
        gid, branch = seen.headers[wire.H_GID.lower()], seen.headers[wire.H_BRANCH.lower()]
        return json_reply(orjson.dumps({"prepared": f"txn:{gid}:{branch}"}))

    participant = await peer(yes)
    # Mounted under a base path: the signature covers the path the participant declares.
    transport = HttpTransport(
        {"ledger1": participant.url + "/ledger"}, 5.0, {"ledger1": [SECRET, PREVIOUS]}
    )
    try:
        payload = {"account": "acct", "delta": 5}
        prepared = await transport.call("ledger1", PATH, "prepare", "g-1", 3, payload)
        assert prepared.kind is Kind.OK, prepared
        committed = await transport.call("ledger1", wire.COMMIT_PATH, "commit", "g-1", 3, None)
        assert committed.kind is Kind.OK, committed
    finally:
        await transport.close()
    sent = [
        Call(PATH, "ledger1", "g-1", 3, "prepare", orjson.dumps(payload)),
        Call(wire.COMMIT_PATH, "ledger1", "g-1", 3, "commit", b"{}"),
    ]
    assert [s.path for s in participant.seen] == ["/ledger" + PATH, "/ledger" + wire.COMMIT_PATH]
    for call, seen in zip(sent, participant.seen, strict=True):
        assert seen.body == call.body
        assert seen.headers[wire.H_GID.lower()] == call.gid
        assert seen.headers[wire.H_BRANCH.lower()] == str(call.branch)
        assert seen.headers[wire.H_OP.lower()] == call.op
        timestamp = seen.headers[wire.H_TIMESTAMP.lower()]
        expected = reference_call(
            SECRET, call.path, "ledger1", "g-1", 3, call.op, timestamp, call.body
        )
        assert seen.headers[wire.H_SIGNATURE.lower()] == expected, call  # the first secret
        now = float(timestamp)
        assert call.check(seen.headers, now=now) is None
        for other in (
            dataclasses.replace(call, path="/ledger" + call.path),
            dataclasses.replace(call, path=wire.ROLLBACK_PATH),
            dataclasses.replace(call, participant="ledger2"),
        ):
            assert other.check(seen.headers, now=now) is not None, other


# -- the coordinator verifies a participant's catalogue ----------------------------------------

OPERATIONS = [{"path": PATH, "kind": "2pc"}]


def catalogue_of(seen: Seen, operations: list[dict[str, str]] = OPERATIONS, **over: Any) -> bytes:
    """The honest catalogue answering the request ``seen`` (``over``: fields changed)."""
    nonce = orjson.loads(seen.body)["nonce"]
    answer = {"participant": "ledger1", "nonce": nonce, "operations": operations, **over}
    return orjson.dumps(answer)


MORE = [*OPERATIONS, {"path": "/wallets", "kind": "action", "compensation": "/wallets/undo"}]
# name: (how the participant, or whatever answers at its URL, answers; what the coordinator says)
CATALOGUES: dict[str, tuple[Answer, str | None]] = {
    "signed": (
        lambda s: json_reply(catalogue_of(s), wire.sign_reply(SECRET, catalogue_of(s))),
        None,
    ),
    "signed with the previous secret": (
        lambda s: json_reply(catalogue_of(s), wire.sign_reply(PREVIOUS, catalogue_of(s))),
        None,
    ),
    "unsigned": (lambda s: json_reply(catalogue_of(s)), "not signed"),
    "signed with another secret": (
        lambda s: json_reply(catalogue_of(s), wire.sign_reply(OTHER, catalogue_of(s))),
        "not signed",
    ),
    "an operation added after signing": (
        lambda s: json_reply(catalogue_of(s, MORE), wire.sign_reply(SECRET, catalogue_of(s))),
        "not signed",
    ),
    "signed with the call scheme": (
        lambda s: json_reply(
            catalogue_of(s),
            wire.sign(SECRET, "POST", "", "", "", None, "", "", catalogue_of(s)),
        ),
        "not signed",
    ),
    "signed, for an old nonce": (
        lambda s: json_reply(
            catalogue_of(s, nonce="0" * 24),
            wire.sign_reply(SECRET, catalogue_of(s, nonce="0" * 24)),
        ),
        "another question",
    ),
    "signed, for another participant": (
        lambda s: json_reply(
            catalogue_of(s, participant="ledger2"),
            wire.sign_reply(SECRET, catalogue_of(s, participant="ledger2")),
        ),
        "another question",
    ),
}


@pytest.mark.parametrize("case", list(CATALOGUES))
async def test_the_coordinator_believes_only_a_catalogue_signed_over_its_body(
    peer: Callable[[Answer], Awaitable[Peer]], case: str
) -> None:
    answer, why = CATALOGUES[case]
    participant = await peer(answer)
    transport = HttpTransport({"ledger1": participant.url}, 5.0, {"ledger1": [SECRET, PREVIOUS]})
    try:
        read = await transport.catalogue("ledger1")
    finally:
        await transport.close()
    if why is None:
        assert read == OPERATIONS
    else:
        assert isinstance(read, str) and why in read, read
    # The request itself: signed for the catalogue's path, this participant, no gid or branch.
    [seen] = participant.seen
    timestamp = seen.headers[wire.H_TIMESTAMP.lower()]
    expected = reference_call(
        SECRET, wire.CATALOGUE_PATH, "ledger1", "", None, "catalogue", timestamp, seen.body
    )
    assert seen.headers[wire.H_SIGNATURE.lower()] == expected


# -- the SDK's question to a coordinator, and the answer it believes ---------------------------


def answer_of(seen: Seen, **over: Any) -> bytes:
    asked = orjson.loads(seen.body)
    return orjson.dumps({**asked, "participant": "ledger1", "status": "committed", **over})


QUESTIONS = [
    (wire.RESOLVE_PATH, "resolve", {"gid": "g-1"}, "g-1"),
    (wire.ENDED_PATH, "ended", {"gids": ["g-1"]}, ""),
]


@pytest.mark.parametrize(("path", "op", "question", "gid"), QUESTIONS)
async def test_the_sdk_signs_its_question_for_the_path_it_asks(
    peer: Callable[[Answer], Awaitable[Peer]],
    path: str,
    op: str,
    question: dict[str, Any],
    gid: str,
) -> None:
    fake = await peer(lambda s: json_reply(answer_of(s), wire.sign_reply(SECRET, answer_of(s))))
    client = question_client()
    try:
        answer, why = await ask(
            client, 5.0, fake.url, path, "ledger1", [SECRET, PREVIOUS], question, gid
        )
    finally:
        await client.close()
    assert answer is not None and answer["status"] == "committed", why
    [seen] = fake.seen
    assert seen.path == path
    assert seen.headers[wire.H_PARTICIPANT.lower()] == "ledger1"
    timestamp = seen.headers[wire.H_TIMESTAMP.lower()]
    expected = reference_call(SECRET, path, "ledger1", gid, None, op, timestamp, seen.body)
    assert seen.headers[wire.H_SIGNATURE.lower()] == expected


ANSWERS: dict[str, tuple[Answer, str]] = {
    "signed 'preparing', sent as 'unknown'": (
        lambda s: json_reply(
            answer_of(s, status="unknown"),
            wire.sign_reply(SECRET, answer_of(s, status="preparing")),
        ),
        "not signed",
    ),
    "signed, with a byte appended": (
        lambda s: json_reply(answer_of(s) + b" ", wire.sign_reply(SECRET, answer_of(s))),
        "not signed",
    ),
    "signed with another secret": (
        lambda s: json_reply(answer_of(s), wire.sign_reply(OTHER, answer_of(s))),
        "not signed",
    ),
    "signed, for an old nonce": (
        lambda s: json_reply(
            answer_of(s, nonce="0" * 24), wire.sign_reply(SECRET, answer_of(s, nonce="0" * 24))
        ),
        "another question",
    ),
}


@pytest.mark.parametrize("case", list(ANSWERS))
async def test_the_sdk_believes_only_an_answer_signed_over_its_body(
    peer: Callable[[Answer], Awaitable[Peer]], case: str
) -> None:
    respond, expected = ANSWERS[case]
    fake = await peer(respond)
    client = question_client()
    try:
        answer, why = await ask(
            client,
            5.0,
            fake.url,
            wire.RESOLVE_PATH,
            "ledger1",
            [SECRET],
            {"gid": "g-1"},
            "g-1",
        )
    finally:
        await client.close()
    assert answer is None and expected in why, (answer, why)


# -- the coordinator verifies the questions and signs its answers ------------------------------


class NoCalls:
    """The transport of a coordinator that is only asked questions: it calls nobody."""

    async def call(self, *_args: Any) -> Reply:
        raise AssertionError("a question made the coordinator call a participant")

    async def catalogue(self, _participant: str) -> list[dict[str, Any]]:
        return OPERATIONS

    async def close(self) -> None:
        return None


@contextlib.asynccontextmanager
async def in_memory_coordinator() -> AsyncIterator[httpx.AsyncClient]:
    """A coordinator in memory whose ledger1 is mid-rotation (signs with SECRET, accepts
    PREVIOUS too); the client has no API token, as a participant's resolver has none."""
    settings = Settings(
        participants={"ledger1": "http://127.0.0.1:9", "ledger2": "http://127.0.0.1:9"},
        participant_secrets={
            "ledger1": [SECRET.decode(), PREVIOUS.decode()],
            "ledger2": OTHER.decode(),
        },
        api_tokens=token_entries(),
        recovery=False,
    )
    app = create_app(settings, MemLog(), NoCalls())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c") as c,
    ):
        yield c


NONCE = "question-nonce-0123456789"


@dataclasses.dataclass(frozen=True)
class Question:
    path: str
    body: bytes
    gid: str

    @property
    def op(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def headers(
        self,
        secret: bytes = SECRET,
        *,
        path: str | None = None,
        participant: str = "ledger1",
        gid: str | None = None,
        op: str | None = None,
        body: bytes | None = None,
        now: float | None = None,
    ) -> dict[str, str]:
        """Headers that claim to be ledger1's, signed as given (by default, as they should)."""
        signed = wire.signed_headers(
            secret,
            self.path if path is None else path,
            participant,
            self.gid if gid is None else gid,
            None,
            self.op if op is None else op,
            self.body if body is None else body,
            now,
        )
        return {"Content-Type": "application/json", wire.H_PARTICIPANT: "ledger1", **signed}


RESOLVE = Question(wire.RESOLVE_PATH, orjson.dumps({"gid": "g-1", "nonce": NONCE}), "g-1")
ENDED = Question(wire.ENDED_PATH, orjson.dumps({"gids": ["g-1"], "nonce": NONCE}), "")


def refused_questions(q: Question) -> dict[str, dict[str, str]]:
    """Headers for ``q``'s body that must not verify, each wrong in one way."""
    other_path = wire.ENDED_PATH if q.path == wire.RESOLVE_PATH else wire.RESOLVE_PATH
    return {
        "signed for the other question's path": q.headers(path=other_path),
        "signed for the branch call path": q.headers(path=PATH),
        "signed as the other question's op": q.headers(op=other_path.rsplit("/", 1)[-1]),
        "signed for another gid": q.headers(gid="g-2"),
        "signed over another body": q.headers(body=q.body.replace(b"0123", b"3210")),
        "signed in another participant's name": q.headers(participant="ledger2"),
        "signed with another participant's secret": q.headers(OTHER),
        "signed with the reply scheme": {
            **q.headers(),
            wire.H_SIGNATURE: wire.sign_reply(SECRET, q.body),
        },
        "too old": q.headers(now=time.time() - 2 * wire.REPLAY_WINDOW_S),
    }


@pytest.mark.parametrize("q", [RESOLVE, ENDED], ids=["resolve", "ended"])
async def test_the_coordinator_answers_only_a_question_signed_for_that_path_and_signs_it(
    q: Question,
) -> None:
    async with in_memory_coordinator() as c:
        for why, headers in refused_questions(q).items():
            reply = await c.post(q.path, content=q.body, headers=headers)
            assert reply.status_code == 401, (why, reply.status_code, reply.text)
            assert wire.H_SIGNATURE not in reply.headers, why
        for secret in (SECRET, PREVIOUS):
            reply = await c.post(q.path, content=q.body, headers=q.headers(secret))
            assert reply.status_code == 200, (secret, reply.text)
            # Signed over its body, with the first secret whichever the question used.
            signature = reply.headers[wire.H_SIGNATURE]
            assert signature == reference_reply(SECRET, reply.content)
            answer = orjson.loads(reply.content)
            assert (answer["participant"], answer["nonce"]) == ("ledger1", NONCE)


# -- the SDK signs its catalogue ---------------------------------------------------------------


def test_the_sdk_serves_its_catalogue_only_to_a_request_signed_for_it() -> None:
    sdk = Participant(ParticipantSettings(name="ledger1", secret=SECRET.decode()))
    body = orjson.dumps({"nonce": NONCE})
    request = Call(wire.CATALOGUE_PATH, "ledger1", "", None, "catalogue", body)
    # Signed now: the SDK checks the timestamp against its own clock.
    good = lower(wire.signed_headers(SECRET, request.path, "ledger1", "", None, "catalogue", body))
    status, content, headers = sdk.catalogue_reply(good, body)
    assert status == 200, content
    assert headers[wire.H_SIGNATURE] == reference_reply(SECRET, content)
    assert orjson.loads(content)["nonce"] == NONCE
    for other in (
        dataclasses.replace(request, path=PATH),
        dataclasses.replace(request, path=wire.COMMIT_PATH),
        dataclasses.replace(request, participant="ledger2"),
        dataclasses.replace(request, gid="g-1"),
        dataclasses.replace(request, op="prepare"),
    ):
        forged = lower(
            wire.signed_headers(
                SECRET, other.path, other.participant, other.gid, other.branch, other.op, body
            )
        )
        status, content, headers = sdk.catalogue_reply(forged, body)
        assert (status, headers) == (401, {}), (other, content)
