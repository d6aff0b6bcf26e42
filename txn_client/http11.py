"""A lean HTTP/1.1 client, the one the product uses for every call it makes: the coordinator's
calls to participants, a participant's signed questions to the coordinator, the orders
service's submissions, the demo and chaos load. Keep-alive connections per origin, replies
parsed by httptools (llhttp, the parser uvicorn serves with), one total timeout per call.

Why not aiohttp or httpx (docs/decisions.md, "One HTTP client"): a call here costs a fraction
of theirs in CPU. What it leaves out, on purpose: redirects (never followed), cookies, proxies,
compression, request streaming, 1xx handling beyond skipping it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import orjson

DEFAULT_CAP = 64 * 1024
_STALE = "stale keep-alive connection"


class HttpError(Exception):
    """The call failed below HTTP: connect, reset, early close, timeout, unparsable reply."""


class ConnectFailed(HttpError):
    """No connection could be made: nothing was sent."""


class NoReply(HttpError):
    """No complete reply within the call's timeout: the request may have been processed."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes  # at most the client's cap
    signature: str  # the reply's Txn-Signature header ("" when it has none)
    truncated: bool  # the body was longer than the cap
    retry_after: str = ""  # the reply's Retry-After header ("" when it has none)

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON (or was cut at the cap)."""
        if self.truncated or not self.body:
            return None
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


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
        self.waiter: asyncio.Future[Answer] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.body = bytearray()
        self.signature = ""  # the reply's Txn-Signature (a signed answer), if any
        self.retry_after = ""  # a 429's or 503's Retry-After, for txn_client's retries
        self.headers_done = False
        self.framed = False  # Content-Length or chunked: the reply does not end at EOF
        self.keep_alive = False
        self.received = False  # any byte of this reply yet
        self.truncated = False

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
        elif lower == b"retry-after":
            self.retry_after = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True

    def on_body(self, chunk: bytes) -> None:
        room = self.cap - len(self.body)
        if room > 0:
            self.body += chunk[:room]
        if len(chunk) > room:
            self.truncated = True

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # an interim reply: the real one follows
            self._reset()
            return
        self.keep_alive = self.parser.should_keep_alive()
        self._done()

    # -- the client's side ---------------------------------------------------------------

    def _done(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            answer = Answer(
                self.status, bytes(self.body), self.signature, self.truncated, self.retry_after
            )
            self.waiter.set_result(answer)

    def _fail(self, error: HttpError) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)

    def send(self, request: bytes) -> asyncio.Future[Answer]:
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
    """Calls a few origins over pooled keep-alive connections (at most ``limit`` each).

    ``headers`` go with every call. ``connect_timeout_s`` bounds making a connection within
    the call's own timeout (a ``ConnectFailed`` when it runs out). ``on_stale_retry`` is
    called each time a call is sent a second time on a fresh connection (see ``request``).
    """

    def __init__(
        self,
        limit: int = 64,
        cap: int = DEFAULT_CAP,
        headers: dict[str, str] | None = None,
        connect_timeout_s: float | None = None,
        on_stale_retry: Callable[[], None] | None = None,
    ) -> None:
        self.limit = limit
        self.cap = cap
        self.headers = dict(headers or {})
        self.connect_timeout_s = connect_timeout_s
        self.on_stale_retry = on_stale_retry
        self.stale_retries = 0
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._slots: dict[Origin, asyncio.Semaphore] = {}
        self._origins: dict[str, tuple[Origin, str]] = {}
        self._ssl: ssl.SSLContext | None = None

    async def post(
        self, origin: Origin, path: str, headers: dict[str, str], body: bytes, timeout_s: float
    ) -> tuple[int, bytes]:
        """(status, at most ``cap`` bytes of the body). Raises HttpError."""
        answer = await self.request("POST", origin, path, headers, body, timeout_s)
        return answer.status, answer.body

    async def post_signed(
        self, origin: Origin, path: str, headers: dict[str, str], body: bytes, timeout_s: float
    ) -> tuple[int, bytes, str]:
        """``post``, with the reply's ``Txn-Signature`` header ("" when it has none)."""
        answer = await self.request("POST", origin, path, headers, body, timeout_s)
        return answer.status, answer.body, answer.signature

    async def call(
        self,
        method: str,
        url: str,
        timeout_s: float,
        json: Any = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Answer:
        """``method`` on an absolute ``url`` with ``body``, or ``json`` (when not None) as
        the body."""
        target = self._origins.get(url)
        if target is None:
            parts = urlsplit(url)
            origin, _ = Origin.of(url)
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            target = self._origins[url] = (origin, path)
            if len(self._origins) > 4096:  # URLs with changing queries: keep the map small
                self._origins.clear()
        sent = dict(headers or {})
        if json is not None:
            body = orjson.dumps(json)
            sent.setdefault("Content-Type", "application/json")
        return await self.request(method, target[0], target[1], sent, body, timeout_s)

    async def request(
        self,
        method: str,
        origin: Origin,
        path: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout_s: float,
    ) -> Answer:
        """One call. Raises HttpError (ConnectFailed, NoReply, or another failure)."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {origin.host_header}"]
        lines += [f"{k}: {v}" for k, v in {**self.headers, **headers}.items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        if any("\r" in line or "\n" in line for line in lines):
            raise ValueError("a line break inside the request line or a header")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
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
                # A kept-alive connection that closed before any byte of the reply came. The
                # server may have closed it idle just as we wrote (nothing was processed), or
                # may have processed the request and died before answering: sending it again
                # is safe only because every call the product makes is idempotent (branch
                # calls by their barrier, questions and submissions by their gid). Counted.
                self.stale_retries += 1
                if self.on_stale_retry is not None:
                    self.on_stale_retry()
                return await self._exchange(origin, request, fresh=True)
        except TimeoutError as e:
            raise NoReply(f"no reply within {timeout_s:g} s") from e

    async def _exchange(self, origin: Origin, request: bytes, fresh: bool = False) -> Answer:
        conn: _Connection | None = None
        try:
            conn, reused = await self._connection(origin, fresh)
            answer = await conn.send(request)
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
        return answer

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
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self.cap),
                    origin.host,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls else None,
                )
        except TimeoutError as e:
            raise ConnectFailed(f"no connection within {self.connect_timeout_s:g} s") from e
        except OSError as e:
            raise ConnectFailed(f"{type(e).__name__}: {e}") from e
        return protocol, False

    async def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()
