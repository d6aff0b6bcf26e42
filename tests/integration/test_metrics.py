"""GET /metrics: Prometheus text from prometheus-client, parsed with its own parser. Counters and
histograms of this instance after a known workload on the real stack; the log-wide gauges are
sampled in the background, so a scrape never reads the log and answers while it is down."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from coordinator.api import create_app
from coordinator.memlog import MemLog
from coordinator.metrics import Metrics
from coordinator.records import LiveSummary
from tests.helpers import api_client, open_accounts, participant_urls, saga_branch, unique
from tests.unit.test_api_auth import bearer, client_of, settings
from tests.unit.test_submit_fastpath import YesTransport
from txn_devstack.stack import Stack

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_exposition_parses_and_large_counts_stay_exact() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.finished.labels("2pc", "committed").inc()
    metrics.submitted.labels("saga").inc(123_456_789)
    metrics.calls.labels('we"ird', "prepare", "ok").inc()
    metrics.call_seconds.labels("ledger1", "commit").observe(0.003)
    metrics.sampled({"committing": LiveSummary(3, 1, 12.5), "running": LiveSummary(2, 0, 1.0)})
    metrics.sampled({"committing": LiveSummary(1, 0, 2.0)})  # nothing running any more
    text = metrics.render().decode()
    assert "_created" not in text  # no creation-time series: they double every counter
    samples = parse(text)
    assert value(samples, "txn_finished_total", mode="2pc", status="committed") == 3
    assert value(samples, "txn_submitted_total", mode="saga") == 123_456_789  # every digit
    assert (
        value(
            samples, "txn_participant_calls_total", participant='we"ird', op="prepare", result="ok"
        )
        == 1
    )
    assert (
        value(samples, "txn_participant_call_seconds_count", participant="ledger1", op="commit")
        == 1
    )
    assert (
        value(
            samples,
            "txn_participant_call_seconds_bucket",
            participant="ledger1",
            op="commit",
            le="0.005",
        )
        == 1
    )
    assert value(samples, "txn_log_live", status="committing") == 1
    assert value(samples, "txn_log_live", status="running") == 0
    assert value(samples, "txn_log_oldest_live_seconds", status="committing") == 2.0
    assert value(samples, "txn_log_sampled_timestamp_seconds") > 0


class DownLog(MemLog):
    async def live_summary(self, stuck_attempts: int) -> dict[str, LiveSummary]:
        raise ConnectionRefusedError("the log is down")


async def test_a_scrape_never_reads_the_log_and_answers_while_it_is_down() -> None:
    app = create_app(settings(), DownLog(), YesTransport())
    async with client_of(app) as client:
        reply = await client.get("/metrics", headers=bearer("metrics"))
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"].startswith("text/plain")
        samples = parse(reply.text)
        assert value(samples, "txn_driving") == 0
        assert value(samples, "txn_log_sampled_timestamp_seconds") == 0  # never sampled


async def scrape(client: httpx.AsyncClient, url: str) -> Samples:
    reply = await client.get(f"{url}/metrics")
    assert reply.status_code == 200
    return parse(reply.text)


async def test_counts_after_a_known_workload(stack: Stack) -> None:
    url = stack.coordinator_url
    account = unique("m")
    moves = [("ledger1", -1), ("ledger2", 1)]

    def body(mode: str, delta: int) -> dict[str, Any]:
        branches = [saga_branch(n, account, d * delta) for n, d in moves]
        if mode == "2pc":
            for b in branches:
                del b["compensation"]
        return {"mode": mode, "branches": branches}

    async with api_client(timeout=30) as client:
        await open_accounts(client, participant_urls(stack), account, 10)
        before = await scrape(client, url)
        outcomes = []
        for mode, delta in (("2pc", 1), ("2pc", 1), ("2pc", 100), ("saga", 1), ("saga", 100)):
            done = await client.post(f"{url}/v1/transactions?wait=20", json=body(mode, delta))
            outcomes.append((mode, done.json()["status"]))
        after = await scrape(client, url)
    assert outcomes == [
        ("2pc", "committed"),
        ("2pc", "committed"),
        ("2pc", "aborted"),
        ("saga", "committed"),
        ("saga", "aborted"),
    ]

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("txn_submitted_total", mode="2pc") == 3
    assert delta("txn_submitted_total", mode="saga") == 2
    assert delta("txn_finished_total", mode="2pc", status="committed") == 2
    assert delta("txn_finished_total", mode="2pc", status="aborted") == 1
    assert delta("txn_finished_total", mode="saga", status="committed") == 1
    assert delta("txn_finished_total", mode="saga", status="aborted") == 1
    assert delta("txn_outcome_seconds_count", mode="2pc") == 3
    assert delta("txn_outcome_seconds_count", mode="saga") == 2
    # Two committed 2PC transfers: a commit to each ledger each.
    assert (
        delta("txn_participant_calls_total", participant="ledger1", op="commit", result="ok") == 2
    )
    assert delta("txn_participant_call_seconds_count", participant="ledger1", op="commit") == 2
    # The aborted 2PC: ledger1 (-100 of 10) votes no.
    assert (
        delta("txn_participant_calls_total", participant="ledger1", op="prepare", result="refused")
        == 1
    )
    assert delta("txn_log_write_seconds_count", statement="insert") == 5
    assert delta("txn_log_write_seconds_count", statement="finish") == 5


async def test_the_log_gauges_are_sampled_in_the_background(stack: Stack) -> None:
    async with api_client(timeout=30) as client:
        first = value(
            await scrape(client, stack.coordinator_url), "txn_log_sampled_timestamp_seconds"
        )
        assert first > 0
        for _ in range(100):  # TXN_METRICS_INTERVAL_S is 5 s by default
            await asyncio.sleep(0.2)
            later = value(
                await scrape(client, stack.coordinator_url), "txn_log_sampled_timestamp_seconds"
            )
            if later > first:
                return
    raise AssertionError("the log gauges were not sampled again")


class UnreachableLog(MemLog):
    async def ping(self) -> None:
        raise ConnectionRefusedError("connect to 10.1.2.3:5432 as txn_owner failed: secret-ish")


async def test_readiness_names_the_dependency_down_not_its_error() -> None:
    app = create_app(settings(), UnreachableLog(), YesTransport())
    async with client_of(app) as client:
        reply = await client.get("/readyz", headers=bearer("metrics"))
        assert reply.status_code == 503
        assert reply.headers["content-type"] == "application/problem+json"
        assert reply.json()["detail"] == "the log is unreachable"
        assert "10.1.2.3" not in reply.text and "txn_owner" not in reply.text
