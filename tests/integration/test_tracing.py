"""Traces with OpenTelemetry: a coordinator and three ledgers, each its own uvicorn server on
loopback (real HTTP between them) with its own tracer provider, exporting to an in-memory
exporter. A submission carrying a W3C ``traceparent`` is continued through every participant
call: one trace holds the submission, the drive, a client span per call and the participants'
server spans, each participant's span a child of the coordinator's call span."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from coordinator.api import create_app
from coordinator.settings import Settings
from tests.conftest import create_db
from tests.helpers import (
    TEST_SECRET,
    adjust_body,
    api_client,
    catalogues_read,
    fetch,
    ledger_app,
    secured,
    serving,
    token_entries,
    unique,
)

LEDGERS = ("ledger1", "ledger2", "ledger3")
# A caller's trace: the coordinator's spans must join it.
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


@dataclass
class Traced:
    coordinator: str
    ledgers: dict[str, str]  # name -> database
    exporters: list[InMemorySpanExporter]

    def spans(self) -> list[ReadableSpan]:
        return [s for e in self.exporters for s in e.get_finished_spans()]


@asynccontextmanager
async def traced_stack(
    log_dsn: str, ledger_dsns: dict[str, str], exporters: list[InMemorySpanExporter]
) -> AsyncIterator[Traced]:
    async with AsyncExitStack() as stack:
        urls = {}
        for name, dsn in ledger_dsns.items():
            app = ledger_app(secured(name=name, dsn=dsn, tracing="console"))
            urls[name] = await stack.enter_async_context(serving(app))
        settings = Settings(
            log_dsn=log_dsn,
            participants=urls,
            participant_secrets={name: TEST_SECRET for name in urls},
            api_tokens=token_entries(),
            tracing="console",
            recovery=False,
        )
        coordinator = await stack.enter_async_context(serving(create_app(settings)))
        traced = Traced(coordinator, ledger_dsns, exporters)
        async with api_client(base_url=coordinator, timeout=30) as client:
            await catalogues_read(client, coordinator)
            for url in urls.values():
                reply = await client.post(f"{url}/accounts", json={"id": "acct", "balance": 5})
                assert reply.status_code == 201, reply.text
        yield traced
    # Every service has shut down here: their batched spans are exported.


async def test_one_trace_spans_the_coordinator_and_three_participants(
    log_dsn: str, pg: Any, exporters: list[InMemorySpanExporter]
) -> None:
    dsns = {name: await create_db(pg, "ledger") for name in LEDGERS}
    gid_2pc, gid_saga = unique("trace-2pc"), unique("trace-saga")
    async with (
        traced_stack(log_dsn, dsns, exporters) as stack,
        api_client(base_url=stack.coordinator, timeout=30) as client,
    ):
        moves = [(name, 1) for name in LEDGERS]
        for gid, mode in ((gid_2pc, "2pc"), (gid_saga, "saga")):
            reply = await client.post(
                "/v1/transactions?wait=20",
                json=adjust_body(gid, mode, "acct", moves),
                headers={"traceparent": CALLER},
            )
            assert reply.status_code == 201, reply.text
            assert reply.json()["status"] == "committed", reply.text
        # A saga whose third step is refused: it is compensated.
        gid_undone = unique("trace-undone")
        failing = [("ledger1", 1), ("ledger2", 1), ("ledger3", -99)]
        body = adjust_body(gid_undone, "saga", "acct", failing)
        reply = await client.post("/v1/transactions?wait=20", json=body)
        assert reply.json()["status"] == "aborted", reply.text
    for name, dsn in dsns.items():
        rows = await fetch(dsn, "SELECT balance FROM accounts WHERE id = 'acct'")
        assert rows[0]["balance"] == 7, name  # 5, +1 twice, the undone saga's +1 taken back

    spans = stack.spans()
    services = {s.resource.attributes["service.name"] for s in spans}
    assert services == {"txn-coordinator", *LEDGERS}, services

    by_id = {s.context.span_id: s for s in spans}
    for gid, mode, ops in (
        (gid_2pc, "2pc", ("prepare", "commit")),
        (gid_saga, "saga", ("action",)),
    ):
        mine = [s for s in spans if s.attributes and s.attributes.get("txn.gid") == gid]
        # One trace, the caller's, across all four services.
        assert {s.context.trace_id for s in mine} == {int(CALLER_TRACE, 16)}, gid
        assert {s.resource.attributes["service.name"] for s in mine} == services
        submit = one(mine, "submit")
        assert submit.kind is SpanKind.SERVER and submit.parent is not None
        assert submit.parent.span_id == int(CALLER.split("-")[2], 16)
        drive = one(mine, f"drive {mode}")
        assert parent_of(drive, by_id) is submit
        for op in ops:
            calls = [s for s in mine if s.name.startswith(f"{op} ledger")]
            assert sorted(s.attributes["txn.participant"] for s in calls) == list(LEDGERS), op
            for call in calls:
                assert call.kind is SpanKind.CLIENT and parent_of(call, by_id) is drive
                served = [s for s in mine if s.parent and s.parent.span_id == call.context.span_id]
                # The participant continued the trace: its server span is the call's child.
                assert len(served) == 1, call.name
                assert served[0].kind is SpanKind.SERVER
                assert (
                    served[0].resource.attributes["service.name"]
                    == call.attributes["txn.participant"]
                )
                assert served[0].attributes["txn.operation"] == op
        assert one(mine, "log finish").status.status_code is not StatusCode.ERROR

    # The failed saga: a refused action (an error span on both sides), then a compensation for
    # every branch whose action was sent (ledger3's finds no action to undo).
    undone = [s for s in spans if s.attributes and s.attributes.get("txn.gid") == gid_undone]
    assert len({s.context.trace_id for s in undone}) == 1
    refused = one(undone, "action ledger3")
    assert refused.status.status_code is StatusCode.ERROR
    refused_served = [
        s for s in undone if s.kind is SpanKind.SERVER and s.name.startswith("action")
    ]
    assert [
        s.status.status_code
        for s in refused_served
        if s.resource.attributes["service.name"] == "ledger3"
    ] == [StatusCode.ERROR]
    assert sorted(s.name for s in undone if s.name.startswith("compensate ledger")) == [
        f"compensate {name}" for name in LEDGERS
    ]
    served = [s for s in undone if s.kind is SpanKind.SERVER and s.name.startswith("compensate")]
    assert sorted(s.resource.attributes["service.name"] for s in served) == list(LEDGERS)


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{name}: {[s.name for s in spans]}"
    return found[0]


def parent_of(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> ReadableSpan | None:
    return by_id.get(span.parent.span_id) if span.parent else None
