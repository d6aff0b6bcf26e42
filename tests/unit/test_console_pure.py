"""The console's pure parts: the chart's minutes and numbers, the timeline's placement, the
session cookie (signed, bound to a configured token, ended by revoking it), the CSRF and origin
checks, and the sign-in redirect that only ever goes back into the console."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from starlette.requests import Request

from coordinator.console import charts
from coordinator.console.pages import _local, age_text
from coordinator.console.session import COOKIE, Sessions, csrf_ok
from coordinator.console.views import Point
from participants.sdk.tokens import Token, token_hash

NOW = datetime(2026, 12, 1, 13, 30, 20, tzinfo=UTC)


def test_the_chart_has_one_bar_per_minute_and_lines_only_where_something_finished() -> None:
    minute = NOW.replace(second=0)
    points = [Point(minute - timedelta(minutes=2), 120, 0.010, 0.050), Point(minute, 60, 0.02, 0.2)]
    svg = str(charts.throughput_chart(points, NOW, 15))
    assert svg.count("<rect") == 15
    assert "2.0 txn/s" in svg  # the busiest minute: 120 in 60 s
    assert "200 ms" in svg  # the highest p99
    assert svg.count('class="p50"') == 2 and svg.count('class="p99"') == 2
    assert "13:16" in svg and "13:30" in svg


def test_an_empty_window_draws_an_empty_chart() -> None:
    svg = str(charts.throughput_chart([], NOW, 15))
    assert svg.count("<rect") == 15 and "polyline" not in svg


def test_the_timeline_places_events_by_their_offset() -> None:
    start = NOW
    marks = charts.timeline(
        [
            (start, "submitted", None, ""),
            (start + timedelta(milliseconds=5), "operator:abort", None, '{"by":"a"}'),
            (start + timedelta(milliseconds=20), "finished", None, ""),
            (start + timedelta(milliseconds=10), "action:failed", 1, ""),
        ],
        start,
    )
    assert [m.position for m in marks] == [0.0, 25.0, 100.0, 50.0]
    assert [m.tone for m in marks] == ["plain", "operator", "ok", "bad"]
    assert marks[1].offset_ms == 5.0
    assert charts.timeline([], start) == []


def test_ages_read_as_the_largest_whole_unit() -> None:
    assert [age_text(s) for s in (0.004, 2.5, 61, 7200, 90000, -1)] == [
        "4ms",
        "2s",
        "1m",
        "2h",
        "1d",
        "0ms",
    ]


def test_sign_in_goes_back_only_into_the_console() -> None:
    assert _local("/console/transactions?status=aborted") == "/console/transactions?status=aborted"
    for outside in ("https://evil.example/", "//evil.example/console", "/docs", "/console\\..\\x"):
        assert _local(outside) == "/console"


def request(cookie: str | None = None, origin: str | None = None) -> Request:
    headers = []
    if cookie is not None:
        headers.append((b"cookie", f"{COOKIE}={cookie}".encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/console",
        "headers": headers,
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "query_string": b"",
    }
    return Request(scope)


def test_a_session_names_its_token_by_hash_and_ends_when_it_is_revoked() -> None:
    configured = {token_hash("txn_a"): Token("ops", frozenset({"read"}))}
    sessions = Sessions("key", lambda: configured, 3600)
    assert sessions.sign_in("txn_wrong") is None
    signed = sessions.sign_in(" txn_a ")
    assert signed is not None
    session, cookie = signed
    assert (session.name, session.may("read"), session.may("admin")) == ("ops", True, False)
    assert "txn_a" not in cookie
    again = sessions.of(request(cookie))
    assert again is not None and again.csrf == session.csrf
    configured[token_hash("txn_a")] = Token("ops", frozenset({"admin"}))  # a scope change
    upgraded = sessions.of(request(cookie))
    assert upgraded is not None and upgraded.may("admin")
    assert sessions.of(request(cookie[:-3] + "abc")) is None  # tampered
    assert Sessions("other key", lambda: configured, 3600).of(request(cookie)) is None
    del configured[token_hash("txn_a")]  # revoked
    assert sessions.of(request(cookie)) is None
    assert sessions.of(request()) is None


def test_csrf_needs_the_sessions_token_and_this_site() -> None:
    configured = {token_hash("txn_a"): Token("ops", frozenset({"admin"}))}
    signed = Sessions("key", lambda: configured, 3600).sign_in("txn_a")
    assert signed is not None
    session = signed[0]
    assert csrf_ok(session, request(), session.csrf)
    assert csrf_ok(session, request(origin="http://127.0.0.1:8000"), session.csrf)
    assert not csrf_ok(session, request(), None)
    assert not csrf_ok(session, request(), session.csrf + "x")
    assert not csrf_ok(session, request(origin="http://evil.example"), session.csrf)
