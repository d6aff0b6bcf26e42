"""A participant's Prometheus metrics (``prometheus-client``, one registry per participant):
its branch calls by operation and outcome, what its barrier absorbed, and its doubt resolver's
view. Served at ``GET /metrics`` (scope ``metrics``)."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# No `*_created` series: they double every counter and histogram and no query here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# What a branch call's answer says about the barrier (participants.sdk.twopc, .saga, .tcc).
REFUSED_LATE = frozenset(
    {
        "this branch was compensated before it ran: the action is refused",
        "this branch was rolled back before it could be prepared",
        "this branch was cancelled before it ran: the try is refused",
    }
)


def outcome_of(status: int) -> str:
    if status == 200:
        return "ok"
    if status == 409:
        return "refused"
    if status in (401, 403):
        return "unauthenticated"
    return "invalid" if status < 500 else "unavailable"


def barrier_hit(status: int, answer: dict[str, Any]) -> str | None:
    """Which of the barrier's cases answered this call, if one did."""
    if status == 200 and answer.get("repeat"):
        return "duplicate"
    if status == 200 and answer.get("null"):
        return "null_compensation"
    if status == 200 and answer.get("marker"):
        return "null_rollback"
    if status == 409 and answer.get("reason") in REFUSED_LATE:
        return "late_refused"
    return None


class Children:
    """Labelled children of metrics, each looked up once: ``labels()`` takes a lock and checks
    its arguments on every call, which on the hot path (several per transaction) adds up."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found


class ParticipantMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.calls = Counter(
            "txnp_branch_calls",
            "Branch calls answered, by operation and outcome "
            "(ok, refused, unauthenticated, invalid, unavailable).",
            ["op", "outcome"],
            registry=r,
        )
        self.call_seconds = Histogram(
            "txnp_branch_call_seconds",
            "Time to answer a branch call, by operation.",
            ["op"],
            buckets=BUCKETS,
            registry=r,
        )
        self.barrier = Counter(
            "txnp_barrier_hits",
            "Calls the barrier answered without business code: duplicate, null_compensation, "
            "null_rollback, late_refused.",
            ["kind"],
            registry=r,
        )
        self.in_doubt = Gauge(
            "txnp_prepared_in_doubt",
            "Prepared transactions older than the safety margin, at the resolver's last scan.",
            registry=r,
        )
        self.resolved = Counter(
            "txnp_resolver_actions",
            "What the doubt resolver did with a prepared transaction: committed, rolled_back, "
            "left (no verified decision yet).",
            ["action"],
            registry=r,
        )
        self.barrier_purged = Counter(
            "txnp_barrier_purged_rows",
            "Barrier rows deleted by retention (their transactions confirmed ended).",
            registry=r,
        )
        self._child = Children().child

    def answered(self, op: str, status: int, answer: dict[str, Any], seconds: float) -> None:
        self._child(self.calls, op, outcome_of(status)).inc()
        self._child(self.call_seconds, op).observe(seconds)
        hit = barrier_hit(status, answer)
        if hit is not None:
            self._child(self.barrier, hit).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
