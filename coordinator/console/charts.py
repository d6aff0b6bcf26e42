"""The console's drawings, as inline SVG and plain numbers (no JavaScript, nothing fetched):
throughput and latency per minute, and a transaction's events on a time axis. Only numbers
and fixed words go into the markup; anything from the log is escaped by the templates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from markupsafe import Markup

from coordinator.console.views import Point

WIDTH, HEIGHT, PAD = 720, 180, 36


def _minutes(points: list[Point], now: datetime, window_min: int) -> list[Point]:
    """One point per minute of the window, the empty minutes filled with zeros."""
    end = now.replace(second=0, microsecond=0)
    by_minute = {p.minute: p for p in points}
    out = []
    for i in range(window_min - 1, -1, -1):
        minute = end - timedelta(minutes=i)
        out.append(by_minute.get(minute, Point(minute, 0, 0.0, 0.0)))
    return out


def throughput_chart(points: list[Point], now: datetime, window_min: int) -> Markup:
    """Bars: transactions finished per minute (left axis, per second); lines: p50 and p99 of
    submission-to-outcome latency (right axis, ms)."""
    series = _minutes(points, now, window_min)
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    top_rate = max((p.finished / 60 for p in series), default=0.0) or 1.0
    top_ms = max((p.p99_s * 1000 for p in series), default=0.0) or 1.0
    step = inner_w / max(len(series), 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        'aria-label="throughput and latency per minute">',
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" '
        'class="axis"/>',
        f'<text x="{PAD}" y="{PAD - 10}" class="label">{top_rate:.1f} txn/s</text>',
        f'<text x="{WIDTH - PAD}" y="{PAD - 10}" class="label end">{top_ms:.0f} ms</text>',
    ]
    p50: list[tuple[float, float]] = []
    p99: list[tuple[float, float]] = []
    for i, p in enumerate(series):
        x = PAD + i * step
        h = inner_h * (p.finished / 60) / top_rate
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{HEIGHT - PAD - h:.1f}" width="{max(step - 2, 1):.1f}" '
            f'height="{h:.1f}" class="bar"><title>{p.minute:%H:%M} {p.finished} finished, '
            f"p50 {p.p50_s * 1000:.1f} ms, p99 {p.p99_s * 1000:.1f} ms</title></rect>"
        )
        if p.finished:
            cx = x + step / 2
            p50.append((cx, HEIGHT - PAD - inner_h * p.p50_s * 1000 / top_ms))
            p99.append((cx, HEIGHT - PAD - inner_h * p.p99_s * 1000 / top_ms))
    for name, line in (("p50", p50), ("p99", p99)):
        if line:
            points_text = " ".join(f"{x:.1f},{y:.1f}" for x, y in line)
            parts.append(f'<polyline points="{points_text}" class="line {name}"/>')
            parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" class="{name}"/>' for x, y in line]
    first, last = series[0].minute, series[-1].minute
    parts += [
        f'<text x="{PAD}" y="{HEIGHT - PAD + 16}" class="label">{first:%H:%M}</text>',
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - PAD + 16}" class="label end">{last:%H:%M}</text>',
        "</svg>",
    ]
    return Markup("".join(parts))


@dataclass(frozen=True)
class Mark:
    """An event placed on the transaction's time axis."""

    offset_ms: float  # since the transaction was submitted
    position: float  # 0..100, its place along the drawn axis
    kind: str
    branch: int | None
    detail: str
    tone: str  # how it is drawn: ok, bad, operator, plain


def tone_of(kind: str) -> str:
    if kind.startswith("operator:"):
        return "operator"
    if kind in ("action:failed", "compensation:deferred", "rescheduled"):
        return "bad"
    if kind in ("finished", "action:succeeded", "compensation:done"):
        return "ok"
    return "plain"


def timeline(events: list[tuple[datetime, str, int | None, str]], start: datetime) -> list[Mark]:
    """(at, kind, branch, detail) → marks along an axis from ``start`` to the last event."""
    if not events:
        return []
    span = max((at - start).total_seconds() for at, *_ in events) or 1.0
    return [
        Mark(
            (at - start).total_seconds() * 1000,
            max(0.0, min(100.0, 100 * (at - start).total_seconds() / span)),
            kind,
            branch,
            detail,
            tone_of(kind),
        )
        for at, kind, branch, detail in events
    ]
