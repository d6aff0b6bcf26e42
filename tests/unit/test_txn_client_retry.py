"""txn_client's retries against a tiny scripted HTTP server (stdlib http.server in a thread):
Retry-After is waited for, the retried submission is the same one (same gid, same body), a 4xx
other than 429 is never retried, the bounds hold, and the next coordinator URL is tried."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from txn_client import (
    AsyncClient,
    Client,
    Invalid,
    Retries,
    TwoPhase,
    Unavailable,
)

NOW = "2026-01-01T00:00:00Z"


@dataclass
class Script:
    """The answers to give, in order (the last one repeats), and what came."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    seen: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)


def txn_out(body: dict[str, Any]) -> dict[str, Any]:
    branches = [
        {
            "idx": i,
            "participant": b["participant"],
            "action": b["action"],
            "compensation": None,
            "status": "prepared",
            "attempts": 1,
            "last_error": None,
        }
        for i, b in enumerate(body.get("branches", []))
    ]
    return {
        "gid": body["gid"],
        "mode": body.get("mode", "saga"),
        "status": "preparing",
        "reason": None,
        "created_at": NOW,
        "updated_at": NOW,
        "branches": branches,
    }


class Scripted:
    """A scripted coordinator on a loopback port, serving from a thread."""

    def __init__(self, close_after_each: bool = False) -> None:
        self.script = script = Script()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the coordinator serves

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = json.loads(raw)
                script.seen.append((time.monotonic(), self.path, body))
                status, headers = script.answers[min(len(script.seen), len(script.answers)) - 1]
                if status < 300:
                    answer = json.dumps(txn_out(body)).encode()
                    kind = "application/json"
                else:
                    problem = {"type": "about:blank", "title": "x", "status": status}
                    answer = json.dumps({**problem, "detail": "busy"}).encode()
                    kind = "application/problem+json"
                self.send_response(status)
                for name, value in {**headers, "Content-Type": kind}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                # Like a server whose keep-alive ran out: closed without saying so.
                self.close_connection = close_after_each

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    scripted = Scripted()
    try:
        yield scripted.url, scripted.script
    finally:
        scripted.stop()


def closed_port_url() -> str:
    """A URL nothing listens on (a port bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def transfer() -> TwoPhase:
    return TwoPhase().branch("ledger1", "/accounts/adjust", {"account": "a", "delta": 1})


async def submit_both_ways(
    kind: str, url: str | list[str], txn: TwoPhase, retries: Retries | None = None
) -> Any:
    if kind == "sync":
        with Client(url, "t0ken", retries=retries) as client:
            return client.submit(txn)
    async with AsyncClient(url, "t0ken", retries=retries) as aclient:
        return await aclient.submit(txn)


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("busy", [503, 429])
async def test_retry_after_is_waited_and_the_submission_is_one(
    server: tuple[str, Script], kind: str, busy: int
) -> None:
    url, script = server
    script.answers = [(busy, {"Retry-After": "1"}), (201, {})]
    txn = transfer()
    result = await submit_both_ways(kind, url, txn)
    assert result.gid == txn.gid and result.created is True
    assert len(script.seen) == 2
    (first_at, first_path, first), (second_at, second_path, second) = script.seen
    assert first == second == txn.body()  # the same logical submission, gid included
    assert first_path == second_path == "/v1/transactions"
    assert 1.0 <= second_at - first_at < 2.5  # Retry-After: 1, honoured


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_4xx_is_never_retried(server: tuple[str, Script], kind: str) -> None:
    url, script = server
    script.answers = [(422, {}), (201, {})]
    with pytest.raises(Invalid) as caught:
        await submit_both_ways(kind, url, transfer())
    assert caught.value.status == 422 and caught.value.detail == "busy"
    assert len(script.seen) == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_attempts_are_bounded(server: tuple[str, Script], kind: str) -> None:
    url, script = server
    script.answers = [(503, {"Retry-After": "0"})]
    with pytest.raises(Unavailable) as caught:
        await submit_both_ways(kind, url, transfer(), Retries(attempts=3))
    assert caught.value.status == 503
    assert len(script.seen) == 3


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_wait_past_the_time_bound_is_not_waited(
    server: tuple[str, Script], kind: str
) -> None:
    url, script = server
    script.answers = [(503, {"Retry-After": "60"})]
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        await submit_both_ways(kind, url, transfer(), Retries(max_time_s=5))
    assert time.monotonic() - started < 2
    assert caught.value.retry_after == 60 and len(script.seen) == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_the_next_coordinator_is_tried(server: tuple[str, Script], kind: str) -> None:
    url, script = server
    script.answers = [(201, {})]
    txn = transfer()
    result = await submit_both_ways(kind, [closed_port_url(), url], txn)
    assert result.gid == txn.gid and len(script.seen) == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_no_coordinator_at_all_is_unavailable(kind: str) -> None:
    with pytest.raises(Unavailable) as caught:
        await submit_both_ways(kind, closed_port_url(), transfer(), Retries(attempts=2))
    assert caught.value.status == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("failing", [502, 503, 504])
async def test_a_failing_coordinator_hands_over_to_the_next(
    server: tuple[str, Script], kind: str, failing: int
) -> None:
    url, script = server
    script.answers = [(201, {})]
    other = Scripted()
    other.script.answers = [(failing, {})]
    try:
        txn = transfer()
        result = await submit_both_ways(kind, [other.url, url], txn)
    finally:
        other.stop()
    assert result.gid == txn.gid
    assert len(other.script.seen) == 1 and len(script.seen) == 1  # one pass, no backoff


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_connection_closed_while_idle_is_replaced(kind: str) -> None:
    closing = Scripted(close_after_each=True)
    closing.script.answers = [(201, {})]
    try:
        if kind == "sync":
            with Client(closing.url, "t0ken", retries=Retries(attempts=1)) as client:
                gids = [client.submit(transfer()).gid for _ in range(3)]
        else:
            async with AsyncClient(closing.url, "t0ken", retries=Retries(attempts=1)) as aclient:
                gids = [(await aclient.submit(transfer())).gid for _ in range(3)]
    finally:
        closing.stop()
    assert [body["gid"] for _, _, body in closing.script.seen] == gids
