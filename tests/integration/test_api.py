"""The REST API against the real coordinator over HTTP, on the session's embedded stack.

The stack is shared by the whole session, so every test uses its own account ids and gids.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.helpers import api_client
from txn_devstack.stack import Stack

LEDGERS = ("ledger1", "ledger2", "ledger3")
ADJUST = "/accounts/adjust"


# -- helpers -------------------------------------------------------------------------------


def uid(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def branch(participant: str, account: str, delta: int, **extra: Any) -> dict[str, Any]:
    return {
        "participant": participant,
        "action": ADJUST,
        "payload": {"account": account, "delta": delta, **extra},
    }


def participant_url(stack: Stack, name: str) -> str:
    return stack.service(name).url


async def open_account(stack: Stack, ledger: str, balance: int) -> str:
    account = uid("acct")
    async with api_client(base_url=participant_url(stack, ledger), timeout=10) as c:
        r = await c.post("/accounts", json={"id": account, "balance": balance})
    assert r.status_code == 201, r.text
    return account


async def balance_of(stack: Stack, ledger: str, account: str) -> int:
    async with api_client(base_url=participant_url(stack, ledger), timeout=10) as c:
        r = await c.get("/accounts")
    assert r.status_code == 200, r.text
    found = [a["balance"] for a in r.json() if a["id"] == account]
    assert len(found) == 1, f"account {account} not on {ledger}"
    return int(found[0])


async def prepared_xacts(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT gid FROM pg_prepared_xacts ORDER BY gid")
    finally:
        await conn.close()
    return [r["gid"] for r in rows]


async def wait_nothing_prepared(stack: Stack, timeout_s: float = 30.0) -> None:
    """Every ledger's pg_prepared_xacts becomes empty within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    left: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        left = {}
        for p in stack.participants:
            assert p.dsn is not None
            xacts = await prepared_xacts(p.dsn)
            if xacts:
                left[p.name] = xacts
        if not left:
            return
        await asyncio.sleep(0.2)
    pytest.fail(f"prepared transactions left after {timeout_s}s: {left}")


async def wait_status(
    api: httpx.AsyncClient, gid: str, statuses: set[str], timeout_s: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = await api.get(f"/v1/transactions/{gid}")
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in statuses:
            return body
        await asyncio.sleep(0.1)
    pytest.fail(f"{gid} not in {statuses} after {timeout_s}s: {body}")


def assert_invalid(r: httpx.Response, loc: list[Any], *msg_parts: str) -> None:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json", r.headers
    errors = r.json()["errors"]
    assert isinstance(errors, list) and errors, r.text
    first = errors[0]
    assert first["field"] == ".".join(str(part) for part in loc), errors
    for part in msg_parts:
        assert part.lower() in first["message"].lower(), first["message"]


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(base_url=stack.coordinator_url, timeout=60) as client:
        yield client


@pytest.fixture
async def accounts(stack: Stack) -> dict[str, str]:
    """One fresh account with balance 100 on each ledger."""
    return {name: await open_account(stack, name, 100) for name in LEDGERS}


# -- submitting: outcomes ------------------------------------------------------------------


async def test_commit_moves_money_on_every_ledger(
    api: httpx.AsyncClient, stack: Stack, accounts: dict[str, str]
) -> None:
    gid = uid("commit")
    deltas = {"ledger1": -30, "ledger2": 10, "ledger3": 20}
    body = {
        "gid": gid,
        "mode": "2pc",
        "branches": [branch(name, accounts[name], d) for name, d in deltas.items()],
    }
    r = await api.post("/v1/transactions", params={"wait": 10}, json=body)
    assert r.status_code == 201, r.text
    txn = r.json()
    assert txn["gid"] == gid
    assert txn["mode"] == "2pc"
    assert txn["status"] == "committed", txn
    assert txn["reason"] is None
    assert [b["status"] for b in txn["branches"]] == ["committed"] * 3
    for name, delta in deltas.items():
        assert await balance_of(stack, name, accounts[name]) == 100 + delta


@pytest.mark.parametrize("mode", ["2pc", "saga"])
@pytest.mark.parametrize("outcome", ["committed", "aborted"])
async def test_the_waited_answer_is_what_the_log_holds(
    api: httpx.AsyncClient, accounts: dict[str, str], mode: str, outcome: str
) -> None:
    """The answer to ``?wait`` is built from the driver's terminal write, not read back: it
    must be, field for field, what a later GET reads from the log (rule 3)."""
    gid = uid(f"waited-{mode}")
    refused = -(10**9) if outcome == "aborted" else 1
    branches = [
        branch("ledger1", accounts["ledger1"], -1),
        branch("ledger2", accounts["ledger2"], refused),
    ]
    if mode == "saga":
        for b in branches:
            b["compensation"] = "/accounts/adjust/undo"
    body = {"gid": gid, "mode": mode, "branches": branches}
    r = await api.post("/v1/transactions", params={"wait": 10}, json=body)
    assert r.status_code == 201, r.text
    waited = r.json()
    assert waited["status"] == outcome, waited
    read = (await api.get(f"/v1/transactions/{gid}", params={"events": "false"})).json()
    assert waited == read


async def test_generated_gid_when_absent(api: httpx.AsyncClient, accounts: dict[str, str]) -> None:
    body = {"mode": "2pc", "branches": [branch("ledger1", accounts["ledger1"], 1)]}
    r = await api.post("/v1/transactions", params={"wait": 10}, json=body)
    assert r.status_code == 201, r.text
    gid = r.json()["gid"]
    assert gid and len(gid) <= 128
    assert r.json()["status"] == "committed"
    assert (await api.get(f"/v1/transactions/{gid}")).status_code == 200


async def test_no_vote_aborts_and_changes_nothing(
    api: httpx.AsyncClient, stack: Stack, accounts: dict[str, str]
) -> None:
    gid = uid("novote")
    body = {
        "gid": gid,
        "mode": "2pc",
        "branches": [
            branch("ledger1", accounts["ledger1"], -10),
            branch("ledger2", accounts["ledger2"], -500),  # would go negative: votes no
            branch("ledger3", accounts["ledger3"], 5),
        ],
    }
    r = await api.post("/v1/transactions", params={"wait": 10}, json=body)
    assert r.status_code == 201, r.text
    txn = r.json()
    assert txn["status"] == "aborted", txn
    assert "ledger2" in txn["reason"], txn["reason"]
    assert "negative" in txn["reason"], txn["reason"]
    # The refusing branch keeps its refusal as last_error (it is then rolled back too, which
    # leaves a marker against a late duplicate prepare).
    assert "negative" in (txn["branches"][1]["last_error"] or ""), txn["branches"][1]
    assert {b["status"] for b in txn["branches"]} <= {"rolled_back", "voted_no"}
    for name in LEDGERS:
        assert await balance_of(stack, name, accounts[name]) == 100
    await wait_nothing_prepared(stack)


async def test_same_gid_same_body_is_idempotent_different_body_conflicts(
    api: httpx.AsyncClient, stack: Stack, accounts: dict[str, str]
) -> None:
    gid = uid("idem")
    body = {
        "gid": gid,
        "mode": "2pc",
        "branches": [
            branch("ledger1", accounts["ledger1"], -7),
            branch("ledger2", accounts["ledger2"], 7),
        ],
    }
    first = await api.post("/v1/transactions", params={"wait": 10}, json=body)
    assert first.status_code == 201, first.text
    assert first.json()["status"] == "committed"

    again = await api.post("/v1/transactions", params={"wait": 10}, json=body)
    assert again.status_code == 200, again.text
    a, b = first.json(), again.json()
    for key in ("gid", "mode", "status", "created_at", "branches"):
        assert a[key] == b[key], key
    # Without waiting too: still the existing transaction, not a new one.
    third = await api.post("/v1/transactions", json=body)
    assert third.status_code == 200, third.text
    assert third.json()["created_at"] == a["created_at"]

    changed = {**body, "branches": [branch("ledger1", accounts["ledger1"], -8)]}
    conflict = await api.post("/v1/transactions", params={"wait": 10}, json=changed)
    assert conflict.status_code == 409, conflict.text
    assert gid in conflict.json()["detail"]

    # Applied exactly once.
    assert await balance_of(stack, "ledger1", accounts["ledger1"]) == 93
    assert await balance_of(stack, "ledger2", accounts["ledger2"]) == 107
    got = (await api.get(f"/v1/transactions/{gid}")).json()
    assert got["status"] == "committed" and len(got["branches"]) == 2


async def test_gid_of_128_characters_is_accepted(
    api: httpx.AsyncClient, accounts: dict[str, str]
) -> None:
    gid = (uid("long") + "." * 128)[:128]
    body = {"gid": gid, "mode": "2pc", "branches": [branch("ledger1", accounts["ledger1"], 1)]}
    r = await api.post("/v1/transactions", params={"wait": 10}, json=body)
    assert r.status_code == 201, r.text
    assert r.json()["gid"] == gid and r.json()["status"] == "committed"


# -- submitting: validation ----------------------------------------------------------------


def _valid_body(gid: str) -> dict[str, Any]:
    return {"gid": gid, "mode": "2pc", "branches": [branch("ledger1", "nobody", 1)]}


INVALID_CASES: dict[str, tuple[Any, list[Any], tuple[str, ...]]] = {
    # name: (mutation of a valid body, expected loc, parts of the message)
    "unknown participant": (
        lambda b: b["branches"][0].update(participant="ledger9"),
        ["body", "branches", 0, "participant"],
        ("unknown participant", "'ledger9' is not in this coordinator's registry"),
    ),
    "raw url participant": (
        lambda b: b["branches"][0].update(participant="http://127.0.0.1:9/evil"),
        ["body", "branches", 0, "participant"],
        ("raw URLs are not accepted",),
    ),
    "second branch unknown": (
        lambda b: b["branches"].append(branch("nope", "x", 1)),
        ["body", "branches", 1, "participant"],
        ("unknown participant: 'nope'",),
    ),
    "gid with a space": (
        lambda b: b.update(gid="has space"),
        ["body", "gid"],
        ("pattern",),
    ),
    "gid of 129 characters": (
        lambda b: b.update(gid="a" * 129),
        ["body", "gid"],
        ("pattern",),
    ),
    "empty gid": (
        lambda b: b.update(gid=""),
        ["body", "gid"],
        ("pattern",),
    ),
    "no branches": (
        lambda b: b.update(branches=[]),
        ["body", "branches"],
        ("at least 1",),
    ),
    "65 branches": (
        lambda b: b.update(branches=[branch("ledger1", f"a{i}", 1) for i in range(65)]),
        ["body", "branches"],
        ("at most 64",),
    ),
    "payload over 64 KiB": (
        lambda b: b["branches"][0]["payload"].update(pad="x" * (64 * 1024)),
        ["body", "branches", 0, "payload"],
        ("64 KiB", "65536"),
    ),
    "unknown mode": (
        lambda b: b.update(mode="3pc"),
        ["body", "mode"],
        ("2pc", "saga"),
    ),
    "saga branch without compensation": (
        lambda b: b.update(mode="saga"),
        ["body", "branches", 0, "compensation"],
        ("needs a compensation",),
    ),
    "2pc branch with a compensation": (
        lambda b: b["branches"][0].update(compensation="/undo"),
        ["body", "branches", 0, "compensation"],
        ("2pc branches have no compensation",),
    ),
    "2pc branch with depends_on": (
        lambda b: b["branches"][0].update(depends_on=[]),
        ["body", "branches", 0, "depends_on"],
        ("depends_on is for sagas",),
    ),
    "saga dependency out of range": (
        lambda b: (
            b.update(mode="saga"),
            b["branches"][0].update(compensation="/undo", depends_on=[3]),
        ),
        ["body", "branches", 0, "depends_on"],
        ("0..0", "got 3"),
    ),
    "saga dependency cycle": (
        lambda b: (
            b.update(mode="saga"),
            b["branches"][0].update(compensation="/undo", depends_on=[1]),
            b["branches"].append(
                {**branch("ledger2", "x", 1), "compensation": "/undo", "depends_on": [0]}
            ),
        ),
        ["body", "branches", 0, "depends_on"],
        ("cycle",),
    ),
    "unknown named saga": (
        lambda b: (b.pop("mode"), b.pop("branches"), b.update(saga="nope", input={})),
        ["body", "saga"],
        ("unknown saga 'nope'", "transfer"),
    ),
    "named saga with a bad input": (
        lambda b: (
            b.pop("mode"),
            b.pop("branches"),
            b.update(saga="transfer", input={"from_ledger": "ledger1", "amount": 0}),
        ),
        ["body", "input", "from_account"],
        ("Field required",),
    ),
    "named saga on an unknown ledger": (
        lambda b: (
            b.pop("mode"),
            b.pop("branches"),
            b.update(
                saga="transfer",
                input={
                    "from_ledger": "ledger1",
                    "from_account": "a",
                    "to_ledger": "ledger9",
                    "to_account": "b",
                    "amount": 1,
                },
            ),
        ),
        ["body", "input"],
        ("unknown participant", "ledger9"),
    ),
    "missing mode": (
        lambda b: b.pop("mode"),
        ["body", "mode"],
        ("mode is required",),
    ),
    "retry policy on 2pc": (
        lambda b: b.update(retry={"max_attempts": 2}),
        ["body", "retry"],
        ("not for 2pc",),
    ),
    "bad retry policy": (
        lambda b: b.update(mode="saga", retry={"max_attempts": 0}),
        ["body", "retry", "max_attempts"],
        ("greater than or equal to 1",),
    ),
    "action that is a URL": (
        lambda b: b["branches"][0].update(action="http://evil/x"),
        ["body", "branches", 0, "action"],
        ("pattern",),
    ),
    "non-positive timeout": (
        lambda b: b.update(timeout_s=0),
        ["body", "timeout_s"],
        ("greater than 0",),
    ),
    "unknown field": (
        lambda b: b.update(extra=1),
        ["body", "extra"],
        ("not permitted",),
    ),
}


@pytest.mark.parametrize("case", list(INVALID_CASES))
async def test_invalid_submission_is_422_naming_the_field(
    api: httpx.AsyncClient, case: str
) -> None:
    mutate, loc, parts = INVALID_CASES[case]
    gid = uid("bad")
    body = _valid_body(gid)
    mutate(body)
    r = await api.post("/v1/transactions", params={"wait": 1}, json=body)
    assert_invalid(r, loc, *parts)
    if "participant" in loc:
        # The answer names the participant given, never the others the coordinator knows.
        assert not any(other in r.text for other in ("ledger2", "ledger3")), r.text
    # Nothing was logged for a refused request.
    assert (await api.get(f"/v1/transactions/{gid}")).status_code == 404


async def test_wait_out_of_range_is_422(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/transactions", params={"wait": -1}, json=_valid_body(uid("w")))
    assert_invalid(r, ["query", "wait"])


# -- reading one transaction ---------------------------------------------------------------


async def test_get_unknown_gid_is_404(api: httpx.AsyncClient) -> None:
    gid = uid("missing")
    r = await api.get(f"/v1/transactions/{gid}")
    assert r.status_code == 404, r.text
    assert gid in r.json()["detail"]


@pytest.mark.parametrize("gid", ["has space", "a" * 129, "semi;colon"])
async def test_get_bad_gid_is_422(api: httpx.AsyncClient, gid: str) -> None:
    r = await api.get(f"/v1/transactions/{gid}")
    assert_invalid(r, ["path", "gid"], "pattern")


async def test_get_shows_branches_and_timeline(
    api: httpx.AsyncClient, accounts: dict[str, str]
) -> None:
    gid = uid("get")
    body = {
        "gid": gid,
        "mode": "2pc",
        "branches": [
            branch("ledger1", accounts["ledger1"], -1),
            branch("ledger3", accounts["ledger3"], 1),
        ],
    }
    assert (await api.post("/v1/transactions", params={"wait": 10}, json=body)).status_code == 201
    r = await api.get(f"/v1/transactions/{gid}")
    assert r.status_code == 200, r.text
    txn = r.json()
    assert txn["gid"] == gid and txn["mode"] == "2pc" and txn["status"] == "committed"
    assert txn["created_at"] <= txn["updated_at"]
    assert [b["idx"] for b in txn["branches"]] == [0, 1]
    assert [b["participant"] for b in txn["branches"]] == ["ledger1", "ledger3"]
    for b in txn["branches"]:
        assert b["action"] == ADJUST
        assert b["status"] == "committed"
        assert b["attempts"] >= 2  # at least a prepare and a commit
        assert "last_error" in b and b["last_error"] is None
    events = txn["events"]
    assert isinstance(events, list) and events
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "submitted", kinds
    assert "decided" in kinds and kinds[-1] == "finished", kinds
    decided = events[kinds.index("decided")]
    assert decided["detail"]["status"] == "committing"
    assert events[-1]["detail"]["status"] == "committed"
    stamps = [e["at"] for e in events]
    assert stamps == sorted(stamps)

    without = (await api.get(f"/v1/transactions/{gid}", params={"events": "false"})).json()
    assert without["events"] is None
    assert without["branches"] == txn["branches"]


# -- listing -------------------------------------------------------------------------------


async def test_list_pages_newest_first_without_duplicates(
    api: httpx.AsyncClient, accounts: dict[str, str]
) -> None:
    mine: list[str] = []
    for i in range(5):
        gid = uid(f"list{i}")
        body = {"gid": gid, "mode": "2pc", "branches": [branch("ledger2", accounts["ledger2"], 1)]}
        r = await api.post("/v1/transactions", params={"wait": 10}, json=body)
        assert r.status_code == 201 and r.json()["status"] == "committed", r.text
        mine.append(gid)

    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):
        params: dict[str, Any] = {"status": "committed", "limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        r = await api.get("/v1/transactions", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 2
        assert all(t["status"] == "committed" for t in page["items"])
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(page["items"]) == 2  # a non-final page is full
    else:
        pytest.fail("the listing did not end")

    gids = [t["gid"] for t in seen]
    assert len(gids) == len(set(gids)), "a transaction appeared on two pages"
    keys = [(t["created_at"], t["gid"]) for t in seen]
    assert keys == sorted(keys, reverse=True), "not newest first"
    # Mine are the newest committed ones, newest first.
    positions = [gids.index(g) for g in mine]
    assert positions == sorted(positions, reverse=True)
    assert gids[: len(mine)] == list(reversed(mine))


async def test_list_filters_by_mode_and_status(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/transactions", params={"mode": "2pc", "status": "aborted", "limit": 5})
    assert r.status_code == 200, r.text
    assert all(t["mode"] == "2pc" and t["status"] == "aborted" for t in r.json()["items"])


@pytest.mark.parametrize(
    ("params", "loc", "part"),
    [
        ({"status": "done"}, ["query", "status"], "committed"),
        ({"cursor": "not-a-cursor!"}, ["query", "cursor"], "pattern"),
        ({"cursor": "WzEsMl0"}, ["query", "cursor"], "pattern"),  # the old base64 form
        ({"cursor": "1_"}, ["query", "cursor"], "pattern"),  # no gid
        ({"limit": 0}, ["query", "limit"], "greater than"),
        ({"limit": 501}, ["query", "limit"], "less than"),
        ({"mode": "xa"}, ["query", "mode"], "pattern"),
    ],
)
async def test_list_bad_query_is_422(
    api: httpx.AsyncClient, params: dict[str, Any], loc: list[str], part: str
) -> None:
    r = await api.get("/v1/transactions", params=params)
    assert_invalid(r, loc, part)


# -- operations ----------------------------------------------------------------------------


async def test_health_and_readiness(api: httpx.AsyncClient) -> None:
    h = await api.get("/healthz")
    assert h.status_code == 200 and h.json()["status"] == "ok"
    ready = await api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


async def test_docs_and_openapi(api: httpx.AsyncClient) -> None:
    docs = await api.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "swagger" in docs.text.lower()
    spec = await api.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert "/v1/transactions" in paths and "post" in paths["/v1/transactions"]
    assert "get" in paths["/v1/transactions"]
    assert "/v1/transactions/{gid}" in paths


# -- deadlines -----------------------------------------------------------------------------


async def test_timeout_aborts_while_a_ledger_is_frozen(
    api: httpx.AsyncClient, stack: Stack, accounts: dict[str, str]
) -> None:
    gid = uid("timeout")
    body = {
        "gid": gid,
        "mode": "2pc",
        "timeout_s": 1,
        "branches": [branch(name, accounts[name], 3) for name in LEDGERS],
    }
    frozen = stack.service("ledger3")
    frozen.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        r = await api.post("/v1/transactions", params={"wait": 4}, json=body)
        assert r.status_code == 201, r.text
        txn = r.json()
        # The deadline decided abort; the frozen ledger's rollback is still owed, so the
        # outcome is logged as the decision, not yet as the terminal status.
        assert txn["status"] == "aborting", txn
        assert "timed out" in (txn["reason"] or ""), txn
        assert time.monotonic() - started < 30
    finally:
        frozen.signal(signal.SIGCONT)
    txn = await wait_status(api, gid, {"aborted"}, timeout_s=60)
    assert "timed out" in txn["reason"]
    assert {b["status"] for b in txn["branches"]} == {"rolled_back"}
    await wait_nothing_prepared(stack, timeout_s=30)
    for name in LEDGERS:
        assert await balance_of(stack, name, accounts[name]) == 100
    # The ledger serves again.
    again = {**body, "gid": uid("after"), "timeout_s": 10}
    r = await api.post("/v1/transactions", params={"wait": 10}, json=again)
    assert r.status_code == 201 and r.json()["status"] == "committed", r.text


# -- last: nothing left behind -------------------------------------------------------------


async def test_zz_nothing_left_prepared(stack: Stack) -> None:
    await wait_nothing_prepared(stack, timeout_s=30)
