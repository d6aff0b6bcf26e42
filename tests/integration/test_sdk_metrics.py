"""A participant's /metrics (prometheus-client), parsed with its parser after a known sequence
of signed branch calls to a real ledger database: calls by operation and outcome, and each of
the barrier's cases counted once (a duplicate, a null compensation and the late action it
refuses, a rollback before its prepare and the late prepare it refuses)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from participants.sdk import wire
from participants.sdk.metrics import barrier_hit, outcome_of
from tests.helpers import api_client, branch_call, fetch, ledger_app, secured, unique

ADJUST, UNDO = "/accounts/adjust", "/accounts/adjust/undo"


@pytest.fixture
async def ledger(ledger_dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    await fetch(ledger_dsn, "INSERT INTO accounts (id, balance) VALUES ('acct', 100)")
    app = ledger_app(secured(name="ledger1", dsn=ledger_dsn))
    async with (
        app.router.lifespan_context(app),
        api_client(transport=httpx.ASGITransport(app=app), base_url="http://ledger") as client,
    ):
        yield client


def counts(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_calls_and_barrier_hits_are_counted(ledger: httpx.AsyncClient) -> None:
    move = {"account": "acct", "delta": 1}
    g1, g2, g3 = unique("m1"), unique("m2"), unique("m3")
    statuses = [
        # A 2PC branch prepared, prepared again (a duplicate), committed, committed again.
        (await branch_call(ledger, "ledger1", ADJUST, "prepare", g1, 0, move)).status_code,
        (await branch_call(ledger, "ledger1", ADJUST, "prepare", g1, 0, move)).status_code,
        (await branch_call(ledger, "ledger1", wire.COMMIT_PATH, "commit", g1, 0)).status_code,
        (await branch_call(ledger, "ledger1", wire.COMMIT_PATH, "commit", g1, 0)).status_code,
        # A rollback before its prepare, then the late prepare: refused.
        (await branch_call(ledger, "ledger1", wire.ROLLBACK_PATH, "rollback", g2, 0)).status_code,
        (await branch_call(ledger, "ledger1", ADJUST, "prepare", g2, 0, move)).status_code,
        # A saga compensation before its action (null), then the late action: refused.
        (await branch_call(ledger, "ledger1", UNDO, "compensate", g3, 0, move)).status_code,
        (await branch_call(ledger, "ledger1", ADJUST, "action", g3, 0, move)).status_code,
        # A refused action (would go negative).
        (
            await branch_call(
                ledger, "ledger1", ADJUST, "action", g3, 1, {"account": "acct", "delta": -999}
            )
        ).status_code,
    ]
    assert statuses == [200, 200, 200, 200, 200, 409, 200, 409, 409]
    unsigned = await ledger.post(ADJUST, content=b"{}", headers={wire.H_OP: "prepare"})
    assert unsigned.status_code in (401, 422)
    anonymous = await ledger.get("/metrics", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    reply = await ledger.get("/metrics")  # the test token (admin) includes scope metrics
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    c = counts(reply.text)

    def calls(op: str, outcome: str) -> float:
        return c.get(("txnp_branch_calls_total", (("op", op), ("outcome", outcome))), 0.0)

    def hits(kind: str) -> float:
        return c.get(("txnp_barrier_hits_total", (("kind", kind),)), 0.0)

    assert calls("prepare", "ok") == 2 and calls("prepare", "refused") == 1
    assert calls("commit", "ok") == 2 and calls("rollback", "ok") == 1
    assert calls("compensate", "ok") == 1 and calls("action", "refused") == 2
    assert hits("duplicate") == 2  # the second prepare, the second commit
    assert hits("null_rollback") == 1 and hits("null_compensation") == 1
    assert hits("late_refused") == 2  # the late prepare, the late action
    assert calls("prepare", "invalid") == 1  # the unsigned call, refused before any work
    assert c[("txnp_branch_call_seconds_count", (("op", "prepare"),))] == 4


def test_outcomes_and_barrier_cases_from_answers() -> None:
    assert [outcome_of(s) for s in (200, 409, 401, 403, 422, 503)] == [
        "ok",
        "refused",
        "unauthenticated",
        "unauthenticated",
        "invalid",
        "unavailable",
    ]
    assert barrier_hit(200, {"done": True}) is None
    assert barrier_hit(409, {"reason": "would go negative"}) is None
    assert barrier_hit(200, {"compensated": True, "repeat": True}) == "duplicate"
