"""The lean HTTP/1.1 client against a scripted server on loopback: keep-alive reuse, the ways a
reply can be framed, the reply cap, timeouts, a kept-alive connection the server closed, and
refusals of what it must not send."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from txn_client.http11 import Client, ConnectFailed, HttpError, NoReply, Origin

# What the scripted server does with one request: write to the writer, or not.
Script = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


class Server:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                await self.script(head + body, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def origin(self) -> Origin:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return Origin("http", "127.0.0.1", port)


Serve = Callable[[Script], Awaitable[Server]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[Server] = []

    async def start(script: Script) -> Server:
        server = Server(script)
        server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0)
        servers.append(server)
        return server

    yield start
    for s in servers:
        assert s.server is not None
        s.server.close()


def reply(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def ok(_request: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(reply(b'{"ok":true}'))


async def test_kept_alive_connection_is_reused(
    serve: Serve,
) -> None:
    server = await serve(ok)
    client = Client()
    for _ in range(3):
        status, body = await client.post(server.origin, "/p", {"Txn-Gid": "g"}, b"{}", 5)
        assert (status, body) == (200, b'{"ok":true}')
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /p HTTP/1.1\r\n")
    assert b"\r\nTxn-Gid: g\r\n" in first and b"\r\nContent-Length: 2\r\n" in first
    await client.close()


async def test_chunked_reply(serve: Serve) -> None:
    async def chunked(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'5\r\n{"rea\r\nc\r\nson": "no mo\r\n4\r\nney"\r\n1\r\n}\r\n0\r\n\r\n'
        )

    server = await serve(chunked)
    client = Client()
    assert await client.post(server.origin, "/p", {}, b"{}", 5) == (409, b'{"reason": "no money"}')
    assert await client.post(server.origin, "/p", {}, b"{}", 5) == (409, b'{"reason": "no money"}')
    assert server.connections == 1
    await client.close()


async def test_reply_delimited_by_closing_the_connection(
    serve: Serve,
) -> None:
    async def until_close(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\n\r\nit broke")
        await writer.drain()
        writer.close()

    server = await serve(until_close)
    client = Client()
    assert await client.post(server.origin, "/p", {}, b"{}", 5) == (500, b"it broke")
    assert await client.post(server.origin, "/p", {}, b"{}", 5) == (500, b"it broke")
    assert server.connections == 2  # a closed connection is not reused
    await client.close()


async def test_interim_reply_is_skipped(serve: Serve) -> None:
    async def interim(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + reply(b"{}"))

    server = await serve(interim)
    client = Client()
    assert await client.post(server.origin, "/p", {}, b"{}", 5) == (200, b"{}")
    await client.close()


async def test_reply_body_is_capped(serve: Serve) -> None:
    async def huge(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(reply(b"x" * 100_000, "409 Conflict"))

    server = await serve(huge)
    client = Client(cap=1000)
    status, body = await client.post(server.origin, "/p", {}, b"{}", 5)
    assert status == 409 and body == b"x" * 1000
    await client.close()


async def test_timeout_is_an_http_error_and_the_connection_is_dropped(
    serve: Serve,
) -> None:
    calls = 0

    async def slow_first(_request: bytes, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(1.0)
        writer.write(reply(b"{}"))

    server = await serve(slow_first)
    client = Client()
    with pytest.raises(NoReply, match="no reply within"):
        await client.post(server.origin, "/p", {}, b"{}", 0.2)
    # The late reply to the first call must not be taken for the second call's.
    assert await client.post(server.origin, "/p", {}, b"{}", 5) == (200, b"{}")
    assert server.connections == 2
    await client.close()


async def test_a_kept_alive_connection_the_server_closed_is_replaced(
    serve: Serve,
) -> None:
    async def answer_then_close(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(reply(b"{}"))  # says nothing about closing, then closes
        await writer.drain()
        writer.close()

    server = await serve(answer_then_close)
    client = Client()
    for _ in range(3):
        assert await client.post(server.origin, "/p", {}, b"{}", 5) == (200, b"{}")
    assert server.connections == 3
    await client.close()


async def test_a_resend_after_a_silent_close_is_counted_and_may_repeat_the_request(
    serve: Serve,
) -> None:
    """The server processes the second request on a kept-alive connection, then closes it
    without answering: the client sends it again on a fresh connection (safe only because the
    product's calls are idempotent) and counts the resend."""
    seen = 0

    async def die_after_second(_request: bytes, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        seen += 1
        if seen == 2:
            writer.close()
            return
        writer.write(reply(b"{}"))

    server = await serve(die_after_second)
    resends: list[int] = []
    client = Client(on_stale_retry=lambda: resends.append(1))
    assert await client.post(server.origin, "/p", {}, b"{}", 5) == (200, b"{}")
    assert await client.post(server.origin, "/p", {}, b"{}", 5) == (200, b"{}")
    assert len(server.requests) == 3  # the second request reached the server twice
    assert client.stale_retries == 1 and resends == [1]
    await client.close()


async def test_call_by_url_with_a_query_and_json(serve: Serve) -> None:
    async def echo(request: bytes, writer: asyncio.StreamWriter) -> None:
        line = request.split(b"\r\n", 1)[0]
        writer.write(reply(b'{"line": "' + line + b'"}'))

    server = await serve(echo)
    origin = server.origin
    client = Client(headers={"Authorization": "Bearer t"})
    base = f"http://{origin.host}:{origin.port}"
    got = await client.call("GET", base + "/v1/x?limit=2", 5)
    assert got.status == 200 and got.json() == {"line": "GET /v1/x?limit=2 HTTP/1.1"}
    got = await client.call("POST", base + "/v1/y", 5, json={"a": 1})
    assert got.json() == {"line": "POST /v1/y HTTP/1.1"}
    get_request, post_request = server.requests
    assert b"Authorization: Bearer t" in get_request and b"Content-Length" not in get_request
    assert post_request.endswith(b'\r\n\r\n{"a":1}')
    assert b"Content-Type: application/json" in post_request
    await client.close()


async def test_a_capped_body_says_so_and_is_not_json(serve: Serve) -> None:
    async def big(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(reply(b'{"x": "' + b"y" * 5000 + b'"}'))

    server = await serve(big)
    client = Client(cap=100)
    got = await client.request("GET", server.origin, "/", {}, None, 5)
    assert got.truncated and len(got.body) == 100 and got.json() is None
    await client.close()


async def test_refused_connection_and_garbage_are_http_errors(
    serve: Serve,
) -> None:
    async def garbage(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"this is not http\r\n\r\n")

    server = await serve(garbage)
    client = Client()
    with pytest.raises(HttpError, match="unparsable"):
        await client.post(server.origin, "/p", {}, b"{}", 5)
    origin = server.origin
    assert server.server is not None
    server.server.close()
    await server.server.wait_closed()
    with pytest.raises(ConnectFailed, match="ConnectionRefusedError"):
        await client.post(origin, "/p", {}, b"{}", 5)
    await client.close()


async def test_a_line_break_in_a_header_is_refused_before_sending(
    serve: Serve,
) -> None:
    server = await serve(ok)
    client = Client()
    with pytest.raises(ValueError, match="line break"):
        await client.post(server.origin, "/p", {"Txn-Gid": "g\r\nX-Evil: 1"}, b"{}", 5)
    with pytest.raises(ValueError, match="line break"):
        await client.post(server.origin, "/p\nq", {}, b"{}", 5)
    assert server.requests == []
    await client.close()


def test_origins_of_urls() -> None:
    assert Origin.of("http://127.0.0.1:8001/base/") == (Origin("http", "127.0.0.1", 8001), "/base")
    assert Origin.of("https://pay.example") == (Origin("https", "pay.example", 443), "")
    assert Origin("https", "pay.example", 443).host_header == "pay.example"
    assert Origin("http", "::1", 8080).host_header == "[::1]:8080"
    for bad in ("ftp://x", "http://", "127.0.0.1:80"):
        with pytest.raises(ValueError):
            Origin.of(bad)


def test_the_same_on_uvloop() -> None:
    """The coordinator runs on uvloop, whose transports are not asyncio's classes."""
    import uvloop

    async def scenario() -> None:
        server = Server(ok)
        server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0)
        client = Client()
        try:
            for _ in range(2):
                assert await client.post(server.origin, "/p", {}, b"{}", 5) == (
                    200,
                    b'{"ok":true}',
                )
            assert server.connections == 1
        finally:
            await client.close()
            server.server.close()

    uvloop.run(scenario())
