"""GET /metrics: Prometheus text with counters of this instance and live gauges from the log."""

from __future__ import annotations

from coordinator.metrics import Metrics
from coordinator.records import LiveSummary
from devstack.stack import Stack
from tests.helpers import api_client, unique


def test_render_is_prometheus_text() -> None:
    metrics = Metrics()
    metrics.inc("txn_finished_total", status="committed")
    metrics.inc("txn_finished_total", status="committed")
    metrics.inc("txn_participant_calls_total", participant='we"ird', op="prepare", result="ok")
    text = metrics.render({"committing": LiveSummary(3, 1, 12.5)})
    assert "# TYPE txn_finished_total counter" in text
    assert 'txn_finished_total{status="committed"} 2' in text
    assert 'participant="we\\"ird"' in text
    assert 'txn_live{status="committing"} 3' in text
    assert 'txn_stuck{status="committing"} 1' in text
    assert 'txn_oldest_live_seconds{status="committing"} 12.5' in text


async def test_metrics_count_a_committed_transaction(stack: Stack) -> None:
    ledger = stack.service("ledger1")
    account = unique("m")
    async with api_client(timeout=15) as client:
        await client.post(f"{ledger.url}/accounts", json={"id": account, "balance": 5})
        before = (await client.get(f"{stack.coordinator_url}/metrics")).text
        body = {
            "mode": "2pc",
            "branches": [
                {
                    "participant": "ledger1",
                    "action": "/accounts/adjust",
                    "payload": {"account": account, "delta": 1},
                }
            ],
        }
        done = await client.post(f"{stack.coordinator_url}/v1/transactions?wait=10", json=body)
        assert done.json()["status"] == "committed"
        reply = await client.get(f"{stack.coordinator_url}/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")

    def value(text: str, series: str) -> float:
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        return 0.0

    after = reply.text
    committed = 'txn_finished_total{status="committed"}'
    assert value(after, committed) == value(before, committed) + 1
    calls = 'txn_participant_calls_total{op="commit",participant="ledger1",result="ok"}'
    assert value(after, calls) >= value(before, calls) + 1
    assert value(after, 'txn_submitted_total{mode="2pc"}') >= 1
