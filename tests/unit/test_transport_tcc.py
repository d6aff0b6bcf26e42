"""The transport's reading of a TCC try's answer: a 2xx is a done try only when it says so
(``{"done": true}``, as the SDK answers); anything else that is 2xx refuses it, so a
participant that is no TCC branch (a proxy's page, another endpoint) aborts cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from coordinator.transport import HttpTransport, Kind


async def _serve_with(
    body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    await reader.readexactly(length)
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    writer.close()


@pytest.fixture(params=[b'{"done": true, "result": {}}', b'{"ok": true}', b"<html></html>"])
async def answering(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, bytes]]:
    body: bytes = request.param
    server = await asyncio.start_server(lambda r, w: _serve_with(body, r, w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", body
    finally:
        server.close()
        await server.wait_closed()


async def test_a_try_is_done_only_when_its_answer_says_so(answering: tuple[str, bytes]) -> None:
    url, body = answering
    transport = HttpTransport({"p": url}, timeout_s=5)
    try:
        tried = await transport.call("p", "/t", "try", "g", 0, {"a": 1})
        confirmed = await transport.call("p", "/t/confirm", "confirm", "g", 0, {"a": 1})
    finally:
        await transport.close()
    done = body.startswith(b"{") and orjson.loads(body).get("done") is True
    assert tried.kind is (Kind.OK if done else Kind.REFUSED), tried
    if not done:
        assert "without saying the try is done" in tried.reason
    assert confirmed.kind is Kind.OK  # phase two: any 2xx is an acknowledgement
