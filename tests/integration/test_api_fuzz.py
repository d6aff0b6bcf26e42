"""Schema-driven fuzzing of the REST API (Hypothesis) against the real coordinator over HTTP.

Acceptance: no request gets a 5xx; every rejection is a 4xx whose JSON body carries a
``detail`` (a message, or a list of errors each with ``loc`` and ``msg``); a rejected
submission writes nothing to the log. Afterwards the coordinator is ready and commits a normal
2PC transfer.

A fixed corpus of edge requests (one test each) backs the random search up, so every class of
input known to have broken the API is tried on every run.

Bodies the coordinator would accept (predicted locally with the API's own models) start real
transactions on the shared session stack; their time knobs are clamped (timeout, retry policy,
a compensation the ledgers serve) so they end within seconds instead of lingering.
"""

from __future__ import annotations

import base64
import json
import math
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeGuard
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from coordinator.declared import Operations, undeclared
from coordinator.models import STATUSES, TxnIn
from coordinator.normalize import Invalid, normalize
from participants.sdk.wire import GID_PATTERN
from tests.helpers import AUTH, fetch
from txn_devstack.stack import Stack, run_sync

FUZZ = settings(
    deadline=None,
    database=None,  # no .hypothesis/ example database written by this file
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
LEDGERS = ("ledger1", "ledger2", "ledger3")
UNDO = "/accounts/adjust/undo"
VALID_WAITS = ("0", "0.1", "0.5")
MISSING = object()  # a key left out of the body


# -- checks --------------------------------------------------------------------------------


def check_rejection(r: httpx.Response, sent: object) -> None:
    """A 4xx is a problem (RFC 9457) with a detail, and for a 422 errors naming each field."""
    assert 400 <= r.status_code < 500
    assert r.headers.get("content-type") == "application/problem+json", (sent, r.text)
    problem = r.json()
    assert problem["status"] == r.status_code and problem["title"], (sent, r.text)
    assert isinstance(problem.get("detail"), str) and problem["detail"], (sent, r.text)
    for err in problem.get("errors") or []:
        assert isinstance(err, dict), (sent, r.text)
        assert isinstance(err.get("field"), str) and err["field"], (sent, r.text)
        assert isinstance(err.get("message"), str) and err["message"], (sent, r.text)


def check_reply(r: httpx.Response, sent: object) -> None:
    assert r.status_code < 500, f"{r.status_code} for {sent!r}: {r.text[:500]}"
    if r.status_code >= 400:
        check_rejection(r, sent)


def is_valid_gid(gid: object) -> TypeGuard[str]:
    return isinstance(gid, str) and GID_PATTERN.fullmatch(gid) is not None


# What every ledger declares (participants/ledger/app.py).
LEDGER_OPERATIONS: Operations = {
    ("/accounts/adjust", "2pc"): None,
    ("/accounts/adjust", "action"): "/accounts/adjust/undo",
    ("/accounts/adjust/undo", "compensation"): None,
}


def predict(body: object, registry: dict[str, str]) -> bool | None:
    """Would the coordinator accept ``body``? None: the API's own code cannot tell (it raises
    something else; the request must still not get a 5xx)."""
    if not isinstance(body, dict):
        return False
    try:
        plan = normalize(TxnIn.model_validate(body), registry)
    except (ValidationError, Invalid):
        return False
    except Exception:
        return None
    # Only the branch operations the ledgers declare in their catalogues.
    return all(undeclared(plan.mode, b, LEDGER_OPERATIONS) is None for b in plan.branches)


def clamp(body: dict[str, Any]) -> dict[str, Any]:
    """An acceptable body, made quick to finish: short deadline, tight retries, and a
    compensation every ledger serves (null when its action never ran)."""
    body = {**body, "timeout_s": 2}
    saga = body.get("mode") == "saga" or body.get("saga") is not None
    if saga:
        body["retry"] = {"max_attempts": 2, "initial_s": 0.05, "max_s": 0.1}
        if isinstance(body.get("branches"), list):
            body["branches"] = [{**b, "compensation": UNDO} for b in body["branches"]]
    return body


# -- strategies ----------------------------------------------------------------------------

LEAF = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON = st.recursive(
    LEAF,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def weighted(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``options``, each drawn in proportion to its weight (st.one_of flattens nested
    one_ofs into equally likely alternatives, which would drown the ones that matter)."""
    slots = [strategy for weight, strategy in options for _ in range(weight)]
    return st.integers(0, len(slots) - 1).flatmap(lambda i: slots[i])


def long_text(min_size: int = 200, max_size: int = 2000) -> st.SearchStrategy[str]:
    return st.builds(
        lambda c, n: c * n, st.characters(codec="utf-8"), st.integers(min_size, max_size)
    )


TEXT = st.one_of(
    st.just(""),
    st.text(max_size=30),
    st.text(st.characters(min_codepoint=0x80, codec="utf-8"), max_size=10),  # non-ASCII only
    long_text(),
)
NUMBER = st.one_of(
    st.sampled_from([0, -1, 1, 0.5, 1e-300, 86_400, 86_401, 1e308, -1e308, 2**63, 10**30]),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
)
WRONG = st.one_of(JSON, TEXT, NUMBER)  # anything, mostly the wrong type


def nested(depth: int) -> Any:
    value: Any = "deep"
    for i in range(depth):
        value = [value] if i % 2 else {"n": value}
    return value


def cursor_of(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


PAYLOAD_DICT = st.one_of(  # payloads of the right type: a JSON object
    st.fixed_dictionaries({"account": st.one_of(TEXT, st.just("acct-nope")), "delta": NUMBER}),
    st.dictionaries(st.text(max_size=10), JSON, max_size=5),
    st.dictionaries(st.text(max_size=3), LEAF, min_size=1, max_size=3),
    st.builds(lambda d: {"deep": nested(d)}, st.integers(1, 400)),
    st.builds(lambda n: {"pad": "x" * n}, st.integers(60_000, 70_000)),
    st.sampled_from(
        [{}, {"n": 2**64}, {"n": -(2**63) - 1}, {"s": "a\x00b"}, {"k\x00": 1}, {"f": -0.0}]
    ),
)
PAYLOAD = st.one_of(PAYLOAD_DICT, WRONG)
PATH_CHARS = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789._~/-"), max_size=40
)
ACTION = st.one_of(
    st.sampled_from(["/accounts/adjust", "accounts/adjust", UNDO, "/", "http://127.0.0.1:9/x"]),
    st.builds(lambda p: "/" + p, PATH_CHARS),
    PATH_CHARS,
    st.builds(lambda n: "/" + "a" * n, st.integers(500, 600)),
    TEXT,
    WRONG,
)
PARTICIPANT = st.one_of(
    st.sampled_from(LEDGERS),
    st.sampled_from(LEDGERS),  # twice: registry names are the interesting ones
    st.sampled_from(
        ["ledger9", "", "Ledger1", "ledger1 ", "http://127.0.0.1:1/", "ledger1/x", "x" * 65]
    ),
    TEXT,
    WRONG,
)
DEPENDS_ON = st.one_of(
    st.none(),
    st.lists(st.integers(-3, 70), max_size=6),
    st.lists(st.integers(), max_size=3),
    st.lists(WRONG, max_size=3),
    WRONG,
)


def optional(strategies: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts with any subset of ``strategies``' keys, sometimes one unknown key more."""
    return st.builds(
        lambda d, extra: {**d, **extra},
        st.fixed_dictionaries({}, optional=strategies),
        st.one_of(st.just({}), st.dictionaries(st.text(max_size=10), JSON, max_size=1)),
    )


BRANCH = st.one_of(
    optional(
        {
            "participant": PARTICIPANT,
            "action": ACTION,
            "compensation": st.one_of(st.none(), st.just(UNDO), ACTION),
            "payload": PAYLOAD,
            "depends_on": DEPENDS_ON,
        }
    ),
    st.fixed_dictionaries(  # well formed, so the body gets as far as normalize()
        {"participant": st.sampled_from(LEDGERS), "action": st.just("/accounts/adjust")},
        optional={
            "compensation": st.just(UNDO),
            "payload": PAYLOAD,
            "depends_on": st.lists(st.integers(-1, 5), max_size=3),
        },
    ),
    WRONG,
)
BRANCHES = st.one_of(
    st.lists(BRANCH, max_size=5),
    st.builds(lambda b, n: [b] * n, BRANCH, st.integers(0, 70)),
    WRONG,
)
RETRY = st.one_of(
    st.none(),
    optional(
        {
            "max_attempts": NUMBER,
            "initial_s": NUMBER,
            "multiplier": NUMBER,
            "max_s": NUMBER,
            "jitter": NUMBER,
        }
    ),
    WRONG,
)
TRANSFER_INPUT = optional(
    {
        "from_ledger": st.one_of(st.sampled_from(LEDGERS), TEXT),
        "from_account": st.one_of(st.just("acct-nope"), TEXT),
        "to_ledger": st.one_of(st.sampled_from(LEDGERS), TEXT),
        "to_account": st.one_of(st.just("acct-nope2"), TEXT),
        "amount": NUMBER,
    }
)


def body_strategy(prefix: str) -> st.SearchStrategy[Any]:
    gid = st.one_of(
        st.builds(
            lambda s: prefix + s,
            st.from_regex(r"[A-Za-z0-9._:-]{0,24}", fullmatch=True),
        ),
        st.sampled_from([prefix + " x", prefix + "/x", prefix + "é", prefix + "a" * 128, "", " "]),
        st.builds(lambda s: prefix + s, TEXT),
        st.none(),
        WRONG,
    )
    fields = {
        "gid": gid,
        "mode": st.one_of(st.sampled_from(["2pc", "saga", "3pc", "", "2PC", " saga"]), WRONG),
        "branches": BRANCHES,
        "saga": st.one_of(st.sampled_from(["transfer", "place_order", "nope", ""]), TEXT, WRONG),
        "input": st.one_of(TRANSFER_INPUT, WRONG),
        "retry": RETRY,
        "timeout_s": st.one_of(st.none(), NUMBER, WRONG),
    }
    two_pc = st.fixed_dictionaries(
        {"gid": gid, "mode": st.just("2pc"), "branches": BRANCHES},
        optional={"timeout_s": fields["timeout_s"]},
    )
    saga = st.fixed_dictionaries(
        {"gid": gid, "mode": st.just("saga"), "branches": BRANCHES},
        optional={"retry": RETRY, "timeout_s": fields["timeout_s"]},
    )
    named = st.fixed_dictionaries(
        {"gid": gid, "saga": st.just("transfer"), "input": TRANSFER_INPUT},
        optional={"mode": fields["mode"], "retry": RETRY},
    )
    nearly = near_valid(prefix)
    return weighted((5, nearly), (2, optional(fields)), (1, two_pc), (1, saga), (1, named))


def good_branch(saga: bool) -> st.SearchStrategy[dict[str, Any]]:
    required = {
        "participant": st.sampled_from(LEDGERS),
        "action": st.sampled_from(["/accounts/adjust", "/accounts/adjust", UNDO, "/nope"]),
        "payload": st.one_of(
            st.fixed_dictionaries(
                {"account": st.just("acct-nope"), "delta": st.integers(-100, 100)}
            ),
            PAYLOAD_DICT,
        ),
    }
    if saga:
        required["compensation"] = st.just(UNDO)
    return st.fixed_dictionaries(required)


def near_valid(prefix: str) -> st.SearchStrategy[Any]:
    """A body the coordinator accepts, then (mostly) one field broken or left out."""
    gid = st.one_of(
        st.none(),
        st.builds(lambda s: prefix + s, st.from_regex(r"[A-Za-z0-9._:-]{0,24}", fullmatch=True)),
    )
    timeout = st.floats(0.1, 5)
    two_pc = st.fixed_dictionaries(
        {
            "gid": gid,
            "mode": st.just("2pc"),
            "branches": st.lists(good_branch(False), min_size=1, max_size=4),
        },
        optional={"timeout_s": timeout},
    )
    saga = st.fixed_dictionaries(
        {
            "gid": gid,
            "mode": st.just("saga"),
            "branches": st.lists(good_branch(True), min_size=1, max_size=4),
        },
        optional={"timeout_s": timeout, "retry": st.just({"max_attempts": 2})},
    )
    named = st.fixed_dictionaries(
        {
            "gid": gid,
            "saga": st.just("transfer"),
            "input": st.fixed_dictionaries(
                {
                    "from_ledger": st.sampled_from(LEDGERS),
                    "from_account": st.just("acct-nope"),
                    "to_ledger": st.sampled_from(LEDGERS),
                    "to_account": st.just("acct-nope2"),
                    "amount": st.integers(1, 10**6),
                }
            ),
        },
        optional={"mode": st.just("saga"), "timeout_s": timeout},
    )
    value = st.one_of(st.just(MISSING), WRONG, TEXT, DEPENDS_ON, PAYLOAD)
    top = ["gid", "mode", "branches", "saga", "input", "retry", "timeout_s", "extra"]
    inner = ["participant", "action", "compensation", "payload", "depends_on", "extra"]
    keys = ["from_ledger", "from_account", "to_ledger", "to_account", "amount", "extra"]
    change = weighted(
        (3, st.none()),
        (3, st.tuples(st.just("top"), st.sampled_from(top), value)),
        (3, st.tuples(st.integers(0, 3), st.sampled_from(inner), value)),
        (1, st.tuples(st.just("input"), st.sampled_from(keys), value)),
    )
    return st.builds(broken, st.one_of(two_pc, saga, named), change)


def broken(body: dict[str, Any], change: tuple[Any, str, Any] | None) -> dict[str, Any]:
    body = json.loads(json.dumps(body))  # a deep copy
    if change is None:
        return body
    where, key, value = change
    target: dict[str, Any]
    if where == "top":
        target = body
    elif where == "input":
        target = body["input"] if isinstance(body.get("input"), dict) else body
    else:
        branches = body.get("branches") or [body]
        target = branches[where % len(branches)]
    if value is MISSING:
        target.pop(key, None)
    else:
        target[key] = value
    return body


RAW_BODIES = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [
            b"",
            b"{",
            b"null",
            b"[]",
            b'{"mode": "2pc", "timeout_s": NaN}',
            b'{"mode": "2pc", "timeout_s": Infinity}',
            b'{"mode": "\\ud800"}',
            b'{"gid": "\\udfff"}',
            b"\xff\xfe{}",
            b'{"mode": "2pc"} trailing',
            b'\xef\xbb\xbf{"mode": "2pc"}',
        ]
    ),
    st.builds(lambda v: json.dumps(v).encode("utf-16"), JSON),
)
CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=latin-1",
        "application/problem+json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "",
        "garbage",
    ]
)
WAITS = st.one_of(
    st.sampled_from(
        ["0", "0.5", "1", "-1", "-0.001", "300.001", "1e308", "1e400", "nan", "inf", "-inf"]
    ),
    st.sampled_from(["", "abc", " 1 ", "0x10", "true", "1,5", "٣", "10**9"]),
    st.text(max_size=12).filter(lambda s: not _long_wait(s)),
    st.integers(-(10**9), -1).map(str),
    st.integers(301, 10**30).map(str),
)


def _long_wait(s: str) -> bool:
    """A query text Python would read as a wait over a second: not worth the time here."""
    try:
        value = float(s)
    except ValueError:
        return False
    return not math.isnan(value) and value > 1


# One request: ("json", body, wait) or ("raw", bytes, content type, wait); wait may be MISSING.
def request_strategy(prefix: str) -> st.SearchStrategy[tuple[Any, ...]]:
    # Mostly no wait or a valid one: a refused wait hides what the body would have got.
    wait = weighted((5, st.just(MISSING)), (2, st.sampled_from(VALID_WAITS)), (3, WAITS))
    return weighted(
        (7, st.tuples(st.just("json"), body_strategy(prefix), wait)),
        (1, st.tuples(st.just("json"), JSON, wait)),
        (2, st.tuples(st.just("raw"), RAW_BODIES, CONTENT_TYPES, wait)),
    )


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    # A fresh connection per request: after a 500 uvicorn drops the connection, and a reused
    # one would pin the failure on the next, innocent request.
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(
        base_url=stack.coordinator_url, timeout=30, limits=no_reuse, headers=AUTH
    ) as client:
        yield client


@pytest.fixture(scope="module")
def registry(stack: Stack) -> dict[str, str]:
    names = {p.name: p.url for p in stack.participants}
    assert set(LEDGERS) <= set(names), names
    return names


def count_rows(dsn: str, prefix: str) -> tuple[int, set[str]]:
    """Rows in the log, and the gids with ``prefix`` (a transaction's branches and events are in
    its row: nothing of it can be logged elsewhere)."""

    async def go() -> tuple[int, set[str]]:
        total = (await fetch(dsn, "SELECT count(*) AS n FROM transactions"))[0]["n"]
        query = "SELECT gid FROM transactions WHERE starts_with(gid, $1)"
        return int(total), {r["gid"] for r in await fetch(dsn, query, prefix)}

    result: tuple[int, set[str]] = run_sync(go)
    return result


# -- (a) submissions -----------------------------------------------------------------------


def test_fuzzed_submissions_get_no_5xx_and_rejections_write_nothing(
    http: httpx.Client, stack: Stack, registry: dict[str, str]
) -> None:
    prefix = f"fz.{uuid.uuid4().hex[:10]}."
    total_before, *_ = count_rows(stack.log_dsn, prefix)
    created: set[str] = set()  # gids this test created (201)
    created_count = 0

    def submit(req: tuple[Any, ...]) -> None:
        nonlocal created_count
        kind, wait = req[0], req[-1]
        params = {} if wait is MISSING else {"wait": wait}
        if kind == "json":
            body = req[1]
            accepted = predict(body, registry)
            if accepted:
                body = clamp(body)
                accepted = predict(body, registry)
            r = http.post("/v1/transactions", params=params, json=body)
            sent: object = (body, params)
        else:
            raw, content_type = req[1], req[2]
            headers = {} if content_type is None else {"content-type": content_type}
            r = http.post("/v1/transactions", params=params, content=raw, headers=headers)
            sent = (raw, content_type, params)
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            accepted = None
        check_reply(r, sent)
        gid = body.get("gid") if isinstance(body, dict) else None
        if accepted is False:
            assert r.status_code >= 400, (sent, r.status_code, r.text)
        if accepted and wait in (MISSING, *VALID_WAITS):
            assert r.status_code in (200, 201) or (r.status_code == 409 and gid in created), (
                sent,
                r.status_code,
                r.text,
            )
        if r.status_code in (200, 201):
            txn = r.json()
            assert isinstance(txn.get("gid"), str) and txn["gid"], (sent, txn)
            assert txn.get("status") in STATUSES, (sent, txn)
            assert txn.get("mode") in ("2pc", "saga"), (sent, txn)
            assert isinstance(txn.get("branches"), list) and txn["branches"], (sent, txn)
            if gid is not None:
                assert txn["gid"] == gid, (sent, txn)
            if r.status_code == 201:
                created_count += 1
                created.add(txn["gid"])
            else:
                assert txn["gid"] in created, (sent, txn)
            return
        assert r.status_code >= 400, (sent, r.status_code, r.text)
        if is_valid_gid(gid) and gid.startswith(prefix) and gid not in created:
            got = http.get(f"/v1/transactions/{gid}")
            assert got.status_code == 404, (sent, got.status_code, got.text)

    @settings(FUZZ, max_examples=300)
    @given(request_strategy(prefix))
    def fuzz(req: tuple[Any, ...]) -> None:
        submit(req)

    fuzz()

    total_after, in_log = count_rows(stack.log_dsn, prefix)
    assert total_after - total_before == created_count, "a rejected request wrote to the log"
    mine = {g for g in created if g.startswith(prefix)}
    assert in_log == mine


# -- a fixed corpus of edge requests (each a test of its own) ------------------------------

CORPUS_PREFIX = f"fz.edge.{uuid.uuid4().hex[:10]}."
JSON_CT = {"content-type": "application/json"}


def _twopc(payload: Any, gid: str, **extra: Any) -> dict[str, Any]:
    branch = {"participant": "ledger1", "action": "/accounts/adjust", "payload": payload}
    return {"gid": CORPUS_PREFIX + gid, "mode": "2pc", "branches": [branch], **extra}


RAW_GIDS = [CORPUS_PREFIX + s for s in ("sur", "surp", "nan", "inf")]


def _raw(body: str) -> bytes:
    return body.replace("GID", CORPUS_PREFIX).encode()


# name -> (method, path, query params, request kwargs)
EDGE_REQUESTS: dict[str, tuple[str, str, dict[str, str], dict[str, Any]]] = {
    "non-utf8 body, no content type": ("POST", "/v1/transactions", {}, {"content": b"\x80"}),
    "non-utf8 body, text/plain": (
        "POST",
        "/v1/transactions",
        {},
        {"content": b"\x80", "headers": {"content-type": "text/plain"}},
    ),
    "non-utf8 body, json": (
        "POST",
        "/v1/transactions",
        {},
        {"content": b"\x80", "headers": JSON_CT},
    ),
    "utf-16 body, no content type": (
        "POST",
        "/v1/transactions",
        {},
        {"content": json.dumps({"mode": "2pc"}).encode("utf-16")},
    ),
    "lone surrogate in mode": (
        "POST",
        "/v1/transactions",
        {},
        {"content": _raw('{"gid": "GIDsur", "mode": "\\ud800"}'), "headers": JSON_CT},
    ),
    "lone surrogate in a payload": (
        "POST",
        "/v1/transactions",
        {},
        {
            "content": _raw(
                '{"gid": "GIDsurp", "mode": "2pc", "branches": [{"participant": "ledger1", '
                '"action": "/accounts/adjust", "payload": {"s": "\\udfff"}}]}'
            ),
            "headers": JSON_CT,
        },
    ),
    "NaN timeout": (
        "POST",
        "/v1/transactions",
        {},
        {
            "content": _raw(
                '{"gid": "GIDnan", "mode": "2pc", "timeout_s": NaN, "branches": '
                '[{"participant": "ledger1", "action": "/accounts/adjust"}]}'
            ),
            "headers": JSON_CT,
        },
    ),
    "Infinity in a payload": (
        "POST",
        "/v1/transactions",
        {},
        {
            "content": _raw(
                '{"gid": "GIDinf", "mode": "2pc", "timeout_s": 2, "branches": [{"participant": '
                '"ledger1", "action": "/nope", "payload": {"x": Infinity}}]}'
            ),
            "headers": JSON_CT,
        },
    ),
    "payload int over 64 bits": (
        "POST",
        "/v1/transactions",
        {},
        {"json": _twopc({"n": 2**64}, "big", timeout_s=2)},
    ),
    "payload int under -2**63": (
        "POST",
        "/v1/transactions",
        {},
        {"json": _twopc({"n": -(2**63) - 1}, "small", timeout_s=2)},
    ),
    "payload nested 300 deep": (
        "POST",
        "/v1/transactions",
        {},
        {"json": _twopc({"deep": nested(300)}, "deep", timeout_s=2)},
    ),
    "NUL in a payload string": (
        "POST",
        "/v1/transactions",
        {},
        {"json": _twopc({"s": "a\x00b"}, "nul", timeout_s=2)},
    ),
    "NUL in a payload key": (
        "POST",
        "/v1/transactions",
        {},
        {"json": _twopc({"k\x00": 1}, "nulkey", timeout_s=2)},
    ),
    "wait nan": ("POST", "/v1/transactions", {"wait": "nan"}, {"json": _twopc({}, "wn")}),
    "wait 1e400": ("POST", "/v1/transactions", {"wait": "1e400"}, {"json": _twopc({}, "wi")}),
    "cursor before year 1 in UTC": (
        "GET",
        "/v1/transactions",
        {"cursor": cursor_of(["0001-01-01T00:00:00+01:00", ""])},
        {},
    ),
    "cursor after year 9999 in UTC": (
        "GET",
        "/v1/transactions",
        {"cursor": cursor_of(["9999-12-31T23:59:59-01:00", ""])},
        {},
    ),
    "cursor with a NUL gid": (
        "GET",
        "/v1/transactions",
        {"cursor": cursor_of(["2020-01-01T00:00:00+00:00", "\x00"])},
        {},
    ),
    "cursor with a naive time": (
        "GET",
        "/v1/transactions",
        {"cursor": cursor_of(["2020-01-01T00:00:00", "x"])},
        {},
    ),
    "gid path with a NUL": ("GET", "/v1/transactions/a%00b", {}, {}),
}


@pytest.mark.parametrize("case", list(EDGE_REQUESTS))
def test_edge_request_gets_no_5xx(http: httpx.Client, case: str) -> None:
    method, path, params, kwargs = EDGE_REQUESTS[case]
    r = http.request(method, path, params=params, **kwargs)
    check_reply(r, case)
    if method == "POST" and r.status_code >= 400:
        body = kwargs.get("json")
        gids = [body["gid"]] if isinstance(body, dict) else RAW_GIDS
        for gid in gids:
            got = http.get(f"/v1/transactions/{gid}")
            assert got.status_code == 404, (case, gid, got.text)


# -- (b) reading ---------------------------------------------------------------------------


OFFSETS = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-24 * 60 + 1, 24 * 60 - 1)
)
ISO_TIMES = st.one_of(
    st.datetimes(timezones=st.one_of(st.none(), st.just(UTC), OFFSETS)).map(datetime.isoformat),
    st.dates().map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "0001-01-01T00:00:00",
            "9999-12-31T23:59:59.999999+00:00",
            "2020-01-01T00:00:00+00:00",
        ]
    ),
    TEXT,
)
CURSORS = st.one_of(
    TEXT,
    long_text(500, 600),
    st.builds(cursor_of, st.tuples(ISO_TIMES, st.one_of(TEXT, JSON)).map(list)),
    st.builds(cursor_of, JSON),
    st.binary(max_size=60).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
)
LIST_PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "status": st.one_of(st.sampled_from(STATUSES), TEXT),
        "mode": st.one_of(st.sampled_from(["2pc", "saga", "xa", "2PC"]), TEXT),
        "limit": st.one_of(
            st.integers(-10, 1000).map(str),
            st.sampled_from(["0", "1", "500", "501", "1e3", "nan", "", "10**9", str(2**70)]),
            TEXT,
        ),
        "cursor": CURSORS,
    },
)


@settings(FUZZ, max_examples=250)
@given(params=LIST_PARAMS)
def test_fuzzed_listing_gets_no_5xx(http: httpx.Client, params: dict[str, str]) -> None:
    r = http.get("/v1/transactions", params=params)
    check_reply(r, params)
    if r.status_code == 200:
        page = r.json()
        assert isinstance(page["items"], list), page
        assert page["next_cursor"] is None or isinstance(page["next_cursor"], str), page


GET_PREFIX = f"fz.get.{uuid.uuid4().hex[:10]}."
PATH_TEXT = st.one_of(
    TEXT,
    st.builds(lambda s: GET_PREFIX + s, st.from_regex(r"[A-Za-z0-9._:-]{0,40}", fullmatch=True)),
    st.sampled_from(["", ".", "..", "%", "%00", "a/b", "a" * 128, "a" * 129, "\x00", "\n"]),
    long_text(100, 300),
)
EVENTS = st.one_of(
    st.just(MISSING), st.sampled_from(["true", "false", "1", "0", "yes", "off", "", "maybe"]), TEXT
)


@settings(FUZZ, max_examples=250)
@given(path=PATH_TEXT, events=EVENTS)
def test_fuzzed_reads_get_no_5xx(http: httpx.Client, path: str, events: Any) -> None:
    params = {} if events is MISSING else {"events": events}
    r = http.get(f"/v1/transactions/{quote(path, safe='')}", params=params)
    check_reply(r, (path, params))
    if path.startswith(GET_PREFIX) and is_valid_gid(path):
        assert r.status_code in (404, 422), (path, params, r.status_code, r.text)
    if r.status_code == 200 and is_valid_gid(path) and path not in (".", ".."):
        txn = r.json()
        assert txn["gid"] == path and txn["status"] in STATUSES, txn


# -- (c) afterwards ------------------------------------------------------------------------


def test_zz_still_ready_and_commits_a_transfer(http: httpx.Client, stack: Stack) -> None:
    assert http.get("/healthz").status_code == 200
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text

    # What the fuzzing started has finished (its deadlines were clamped): nothing lingers.
    query = (
        "SELECT gid, status FROM transactions WHERE starts_with(gid, 'fz.') "
        "AND status NOT IN ('committed', 'aborted')"
    )
    deadline = time.monotonic() + 30
    live = run_sync(lambda: fetch(stack.log_dsn, query))
    while live and time.monotonic() < deadline:
        time.sleep(0.5)
        live = run_sync(lambda: fetch(stack.log_dsn, query))
    assert not live, [tuple(row) for row in live]

    account = f"fz-{uuid.uuid4().hex[:12]}"
    for name in ("ledger1", "ledger2"):
        r = httpx.post(
            f"{stack.service(name).url}/accounts",
            json={"id": account, "balance": 100},
            timeout=10,
            headers=AUTH,
        )
        assert r.status_code == 201, r.text
    gid = f"fz.after.{uuid.uuid4().hex[:12]}"
    body = {
        "gid": gid,
        "mode": "2pc",
        "branches": [
            {
                "participant": "ledger1",
                "action": "/accounts/adjust",
                "payload": {"account": account, "delta": -25},
            },
            {
                "participant": "ledger2",
                "action": "/accounts/adjust",
                "payload": {"account": account, "delta": 25},
            },
        ],
    }
    r = http.post("/v1/transactions", params={"wait": 10}, json=body)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "committed", r.json()
    for name, expected in (("ledger1", 75), ("ledger2", 125)):
        rows = httpx.get(f"{stack.service(name).url}/accounts", timeout=10, headers=AUTH).json()
        assert [a["balance"] for a in rows if a["id"] == account] == [expected], name
