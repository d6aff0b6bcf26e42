"""A lean HTTP/1.1 client for participant calls: one POST, keep-alive connections per origin,
responses parsed by httptools (llhttp, the parser uvicorn serves with).

Why not aiohttp (docs/decisions.md, "Participant calls on a lean HTTP/1.1 client"): the six
participant calls of a 2PC transaction were the largest share of the coordinator's CPU, and a
call here costs a fraction of aiohttp's. What it leaves out, on purpose: redirects (the
coordinator never follows one), cookies, proxies, compression, request streaming, 1xx
handling beyond skipping it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

DEFAULT_CAP = 64 * 1024
_STALE = "stale keep-alive connection"


class HttpError(Exception):
    """The call failed below HTTP: connect, reset, early close, timeout, unparsable reply."""


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @staticmethod
    def of(url: str) -> tuple[Origin, str]:
        """The origin of ``url`` and its path (without a trailing slash)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return Origin(parts.scheme, parts.hostname, port), parts.path.rstrip("/")

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight on it."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.waiter: asyncio.Future[tuple[int, bytes, str]] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.body = bytearray()
        self.signature = ""  # the reply's Txn-Signature (a signed answer), if any
        self.headers_done = False
        self.framed = False  # Content-Length or chunked: the reply does not end at EOF
        self.keep_alive = False
        self.received = False  # any byte of this reply yet

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(HttpError(f"unparsable reply: {e}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.framed:
            self._done()  # a reply delimited by the end of the connection
        else:
            why = f": {exc}" if exc else ""
            self._fail(HttpError(f"connection closed before the reply was complete{why}"))

    # -- httptools callbacks -------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower in (b"content-length", b"transfer-encoding"):
            self.framed = True
        elif lower == b"txn-signature":
            self.signature = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True

    def on_body(self, chunk: bytes) -> None:
        room = self.cap - len(self.body)
        if room > 0:
            self.body += chunk[:room]

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # an interim reply: the real one follows
            self._reset()
            return
        self.keep_alive = self.parser.should_keep_alive()
        self._done()

    # -- the client's side ---------------------------------------------------------------

    def _done(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.status, bytes(self.body), self.signature))

    def _fail(self, error: HttpError) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes, str]]:
        assert self.transport is not None
        self._reset()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter

    def reusable(self) -> bool:
        return not self.closed and self.keep_alive and self.transport is not None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Client:
    """POSTs to a few origins over pooled keep-alive connections (at most ``limit`` each)."""

    def __init__(self, limit: int = 64, cap: int = DEFAULT_CAP) -> None:
        self.limit = limit
        self.cap = cap
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._slots: dict[Origin, asyncio.Semaphore] = {}
        self._ssl: ssl.SSLContext | None = None

    async def post(
        self, origin: Origin, path: str, headers: dict[str, str], body: bytes, timeout_s: float
    ) -> tuple[int, bytes]:
        """(status, at most ``cap`` bytes of the body). Raises HttpError."""
        status, raw, _ = await self.post_signed(origin, path, headers, body, timeout_s)
        return status, raw

    async def post_signed(
        self, origin: Origin, path: str, headers: dict[str, str], body: bytes, timeout_s: float
    ) -> tuple[int, bytes, str]:
        """``post``, with the reply's ``Txn-Signature`` header ("" when it has none)."""
        lines = [f"POST {path} HTTP/1.1", f"Host: {origin.host_header}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        if any("\r" in line or "\n" in line for line in lines):
            raise ValueError("a line break inside the request line or a header")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        slots = self._slots.get(origin)
        if slots is None:
            slots = self._slots[origin] = asyncio.Semaphore(self.limit)
        try:
            async with slots, asyncio.timeout(timeout_s):
                try:
                    return await self._exchange(origin, request)
                except HttpError as e:
                    if not e.args or e.args[0] != _STALE:
                        raise
                # A kept-alive connection the server had closed just as we wrote to it:
                # nothing reached the handler, so one more try on a fresh connection is safe.
                return await self._exchange(origin, request, fresh=True)
        except TimeoutError as e:
            raise HttpError(f"no reply within {timeout_s:g} s") from e

    async def _exchange(
        self, origin: Origin, request: bytes, fresh: bool = False
    ) -> tuple[int, bytes, str]:
        conn: _Connection | None = None
        try:
            conn, reused = await self._connection(origin, fresh)
            status, raw, signature = await conn.send(request)
        except OSError as e:
            raise HttpError(f"{type(e).__name__}: {e}") from e
        except HttpError as e:
            if conn is not None and reused and not conn.received:
                raise HttpError(_STALE) from e
            raise
        finally:
            if conn is not None and (conn.waiter is None or not conn.waiter.done()):
                conn.close()  # cut off mid-call (timeout, cancellation): never reused
        if conn.reusable():
            self._idle.setdefault(origin, deque()).append(conn)
        else:
            conn.close()
        return status, raw, signature

    async def _connection(self, origin: Origin, fresh: bool) -> tuple[_Connection, bool]:
        """A connection to ``origin`` and whether it was used before."""
        idle = self._idle.get(origin)
        while idle and not fresh:
            conn = idle.pop()
            if not conn.closed:
                return conn, True
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        _, protocol = await loop.create_connection(
            lambda: _Connection(self.cap),
            origin.host,
            origin.port,
            ssl=tls,
            server_hostname=origin.host if tls else None,
        )
        return protocol, False

    async def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()
