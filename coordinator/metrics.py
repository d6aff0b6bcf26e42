"""Prometheus text exposition, without a client library: a few counters kept in process and
gauges read from the log at scrape time (so every instance reports the same live picture)."""

from __future__ import annotations

from collections import defaultdict

from coordinator.records import LiveSummary

_HELP = {
    "txn_submitted_total": ("counter", "Transactions accepted by this instance."),
    "txn_finished_total": ("counter", "Transactions this instance drove to a terminal status."),
    "txn_participant_calls_total": ("counter", "Calls to participants, by outcome."),
    "txn_rescheduled_total": ("counter", "Phase-two bursts that gave up and were rescheduled."),
    "txn_recovered_total": ("counter", "Transactions claimed by recovery."),
    "txn_claim_batches_total": ("counter", "Claim statements that returned work."),
    "txn_interventions_total": ("counter", "Operators' manual actions taken, by action."),
    "txn_live": ("gauge", "Live (non-terminal) transactions in the log, by status."),
    "txn_stuck": ("gauge", "Live transactions rescheduled at least TXN_STUCK_ATTEMPTS times."),
    "txn_oldest_live_seconds": ("gauge", "Age of the oldest live transaction, by status."),
}

Labels = tuple[tuple[str, str], ...]


class Metrics:
    def __init__(self) -> None:
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))

    def inc(self, name: str, **labels: str) -> None:
        self._counters[name][tuple(sorted(labels.items()))] += 1

    def value(self, name: str, **labels: str) -> float:
        return self._counters[name].get(tuple(sorted(labels.items())), 0.0)

    def render(self, live: dict[str, LiveSummary]) -> str:
        series: dict[str, dict[Labels, float]] = {n: dict(v) for n, v in self._counters.items()}
        series["txn_live"] = {(("status", s),): v.count for s, v in live.items()}
        series["txn_stuck"] = {(("status", s),): v.stuck for s, v in live.items()}
        series["txn_oldest_live_seconds"] = {
            (("status", s),): v.oldest_age_s for s, v in live.items()
        }
        lines: list[str] = []
        for name, (kind, text) in _HELP.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for labels, value in sorted(series.get(name, {}).items()):
                rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                lines.append(f"{name}{{{rendered}}} {value:g}" if rendered else f"{name} {value:g}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
