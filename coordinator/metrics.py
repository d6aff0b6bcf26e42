"""The coordinator's Prometheus metrics, with ``prometheus-client``: one registry per instance
(an app, a test), counters and histograms updated where things happen, and the log-wide gauges
sampled by a background loop, so a scrape never touches the log and answers while it is down.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from coordinator.records import LiveSummary

# Importing the SDK's metrics also turns off the `*_created` series, for both.
from participants.sdk.metrics import CONTENT_TYPE, Children

__all__ = ["CONTENT_TYPE", "Metrics"]

# Seconds: a participant call or a log statement (milliseconds), a transaction (up to minutes).
FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class _Timed:
    """Observes the time spent in a ``with`` block (a class, not a generator: cheaper)."""

    __slots__ = ("histogram", "started")

    def __init__(self, histogram: Any) -> None:
        self.histogram = histogram
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *_exc: object) -> None:
        self.histogram.observe(time.perf_counter() - self.started)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.submitted = Counter(
            "txn_submitted", "Transactions accepted by this instance.", ["mode"], registry=r
        )
        self.finished = Counter(
            "txn_finished",
            "Transactions this instance drove to an outcome, by mode and outcome.",
            ["mode", "status"],
            registry=r,
        )
        self.outcome_seconds = Histogram(
            "txn_outcome_seconds",
            "From submission to the logged outcome (the log's clock), by mode.",
            ["mode"],
            buckets=SLOW,
            registry=r,
        )
        self.calls = Counter(
            "txn_participant_calls",
            "Calls to participants, by outcome: ok, refused (409), transient.",
            ["participant", "op", "result"],
            registry=r,
        )
        self.call_seconds = Histogram(
            "txn_participant_call_seconds",
            "Participant call latency, by participant and operation.",
            ["participant", "op"],
            buckets=FAST,
            registry=r,
        )
        self.retries = Counter(
            "txn_participant_call_retries",
            "Participant calls sent again within one drive (a retry after a failure).",
            ["participant", "op"],
            registry=r,
        )
        self.stale_resent = Counter(
            "txn_participant_stale_resends",
            "Participant calls sent again on a fresh connection after a kept-alive one closed "
            "before any reply (the participant may have processed the first; branch calls are "
            "idempotent).",
            registry=r,
        )
        self.log_write_seconds = Histogram(
            "txn_log_write_seconds",
            "Log write latency, by statement.",
            ["statement"],
            buckets=FAST,
            registry=r,
        )
        self.rescheduled = Counter(
            "txn_rescheduled", "Bursts that gave up and were rescheduled.", registry=r
        )
        self.recovered = Counter(
            "txn_recovered",
            "Transactions claimed by recovery (restart, takeover, reschedule).",
            registry=r,
        )
        self.claim_batches = Counter(
            "txn_claim_batches", "Claim statements that returned work.", registry=r
        )
        self.leases_lost = Counter(
            "txn_leases_lost",
            "Transactions this instance was driving that another instance took over.",
            registry=r,
        )
        self.fenced = Counter(
            "txn_fenced_writes",
            "Driver writes refused because the transaction moved to another epoch.",
            registry=r,
        )
        self.interventions = Counter(
            "txn_interventions", "Operators' manual actions, by action.", ["action"], registry=r
        )
        self.retention_deleted = Counter(
            "txn_retention_deleted",
            "Finished transactions this instance deleted from the log (retention).",
            registry=r,
        )
        self.driving = Gauge(
            "txn_driving", "Transactions this instance drives now (holds a lease on).", registry=r
        )
        self.log_live = Gauge(
            "txn_log_live",
            "Live transactions in the whole log, by status (sampled; the same on every instance).",
            ["status"],
            registry=r,
        )
        self.log_stuck = Gauge(
            "txn_log_stuck",
            "Live transactions rescheduled at least TXN_STUCK_ATTEMPTS times (sampled).",
            ["status"],
            registry=r,
        )
        self.log_oldest = Gauge(
            "txn_log_oldest_live_seconds",
            "Age of the oldest live transaction, by status (sampled).",
            ["status"],
            registry=r,
        )
        self.log_sampled = Gauge(
            "txn_log_sampled_timestamp_seconds",
            "When the log gauges were last read (Unix time); stale while the log is down.",
            registry=r,
        )
        self._statuses: set[str] = set()
        self._child = Children().child

    def driving_now(self, count: Callable[[], int]) -> None:
        self.driving.set_function(lambda: float(count()))

    def call_done(self, participant: str, op: str, result: str, seconds: float) -> None:
        self._child(self.call_seconds, participant, op).observe(seconds)
        self._child(self.calls, participant, op, result).inc()

    def call_retried(self, participant: str, op: str) -> None:
        self._child(self.retries, participant, op).inc()

    def finished_one(self, mode: str, status: str, seconds: float) -> None:
        self._child(self.finished, mode, status).inc()
        self._child(self.outcome_seconds, mode).observe(seconds)

    def log_write(self, statement: str) -> _Timed:
        """``with metrics.log_write("insert"): ...`` times the statement."""
        return _Timed(self._child(self.log_write_seconds, statement))

    def sampled(self, live: dict[str, LiveSummary]) -> None:
        """The log-wide gauges, from one read of the log; a status no longer live reads 0."""
        for status in self._statuses | set(live):
            summary = live.get(status, LiveSummary(0, 0, 0.0))
            self.log_live.labels(status).set(summary.count)
            self.log_stuck.labels(status).set(summary.stuck)
            self.log_oldest.labels(status).set(summary.oldest_age_s)
        self._statuses |= set(live)
        self.log_sampled.set(time.time())

    def render(self) -> bytes:
        return generate_latest(self.registry)
