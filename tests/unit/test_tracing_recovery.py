"""A drive resumed by recovery joins the trace of the transaction's submission: the submission
span's context is kept with the transaction in the log, so another instance (here a fresh
coordinator over the same in-memory log) continues it. And with tracing off, no span is made
and OpenTelemetry is never asked for one."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from coordinator.memlog import MemLog
from coordinator.records import BranchSpec, NewTxn
from coordinator.service import Coordinator
from coordinator.settings import Settings
from coordinator.transport import Kind, Reply
from participants.sdk import tracing
from tests.helpers import token_entries

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SUBMISSION_SPAN = "00f067aa0ba902b7"


class YesTransport:
    def __init__(self) -> None:
        self.headers: list[dict[str, str] | None] = []

    async def call(self, *args: Any) -> Reply:
        # (participant, path, op, gid, branch, payload[, extra headers])
        self.headers.append(args[6] if len(args) > 6 else None)
        return Reply(Kind.OK, 200, "")

    async def catalogue(self, _participant: str) -> list[dict[str, Any]]:
        return []

    async def close(self) -> None:
        return None


def settings(mode: str) -> Settings:
    return Settings(
        participants={"a": "http://127.0.0.1:9", "b": "http://127.0.0.1:9"},
        participant_secrets={"a": "sa", "b": "sb"},
        api_tokens=token_entries(),
        recovery=False,
        instance_id="survivor",
        tracing=mode,
    )


async def orphan(store: MemLog, gid: str) -> None:
    """A 2PC transaction logged by an instance that died before driving it."""
    new = NewTxn(
        gid=gid,
        mode="2pc",
        request={"mode": "2pc", tracing.TRACEPARENT: f"00-{TRACE}-{SUBMISSION_SPAN}-01"},
        request_hash="h",
        branches=(BranchSpec("a", "/x", None, {}), BranchSpec("b", "/x", None, {})),
        timeout_s=10,
    )
    await store.insert(new, "gone", lease_s=0.01)
    await asyncio.sleep(0.05)  # its lease runs out


async def recover(mode: str, transport: YesTransport) -> None:
    store = MemLog()
    await orphan(store, "g-orphan")
    c = Coordinator(settings(mode), store, transport)
    try:
        assert await c.recover_once(own=False) == 1
        done = await c.wait("g-orphan", 5)
        # Presumed abort: a `preparing` transaction found by recovery is rolled back.
        assert done is not None and done.status == "aborted", done
    finally:
        await c.stop()  # shuts tracing down: its spans are exported


async def test_a_recovered_drive_joins_the_submissions_trace(
    exporters: list[InMemorySpanExporter],
) -> None:
    transport = YesTransport()
    await recover("console", transport)
    (exporter,) = exporters
    spans = exporter.get_finished_spans()
    assert {s.context.trace_id for s in spans} == {int(TRACE, 16)}
    (drive,) = [s for s in spans if s.name == "drive 2pc"]
    assert drive.parent is not None and drive.parent.span_id == int(SUBMISSION_SPAN, 16)
    assert drive.attributes is not None and drive.attributes["txn.recovered"] is True
    calls = sorted(s.name for s in spans if s.kind is SpanKind.CLIENT)
    assert calls == ["rollback a", "rollback b"]
    assert all(
        s.parent and s.parent.span_id == drive.context.span_id
        for s in spans
        if s.kind is SpanKind.CLIENT
    )
    # Each call carried its own span's context to the participant.
    sent = {h["traceparent"].split("-")[2] for h in transport.headers if h}
    assert sent == {f"{s.context.span_id:016x}" for s in spans if s.kind is SpanKind.CLIENT}


async def test_off_makes_no_span_and_sends_no_header(
    exporters: list[InMemorySpanExporter],
) -> None:
    transport = YesTransport()
    await recover("off", transport)
    assert exporters == []  # no tracer provider was ever built
    assert transport.headers == [None, None]


def test_tracing_on_without_the_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if not installed
    with pytest.raises(tracing.TracingUnavailable) as refused:
        tracing.start("otlp", "ledger1", "TXNP_TRACING")
    assert str(refused.value) == (
        "tracing is on (TXNP_TRACING=otlp) but OpenTelemetry is not installed: "
        "pip install 'txn-coordinator[tracing]', or set TXNP_TRACING=off"
    )
