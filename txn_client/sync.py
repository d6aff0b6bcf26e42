"""The blocking client, over the standard library's http.client (a keep-alive connection per
coordinator, reused across calls). Safe to share between threads: each call takes an idle
connection of its own or opens one."""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from tenacity import Retrying

from txn_client import _core
from txn_client._core import NoAnswer, Reply, Request, Retries
from txn_client.builders import Submission
from txn_client.errors import Unavailable
from txn_client.results import Page, Transaction

CONNECT_TIMEOUT_S = 10.0
# What a kept-alive connection the server closed while idle looks like when we write to it.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class _Pool:
    """Idle keep-alive connections of one coordinator."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.idle: list[http.client.HTTPConnection] = []
        self.lock = threading.Lock()
        self.tls: ssl.SSLContext | None = ssl.create_default_context() if self.https else None

    def take(self, timeout_s: float) -> tuple[http.client.HTTPConnection, bool]:
        """A connection and whether it was used before."""
        with self.lock:
            conn = self.idle.pop() if self.idle else None
        if conn is not None:
            if conn.sock is not None:
                conn.sock.settimeout(timeout_s)
            return conn, True
        # A coordinator that does not answer a connect is skipped for the next one sooner.
        connect_s = min(timeout_s, CONNECT_TIMEOUT_S)
        if self.https:
            conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=connect_s, context=self.tls
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=connect_s)
        try:
            conn.connect()
        except OSError as e:
            conn.close()
            raise NoAnswer(f"no connection: {type(e).__name__}: {e}", sent=False) from e
        if conn.sock is not None:
            conn.sock.settimeout(timeout_s)
        return conn, False

    def give_back(self, conn: http.client.HTTPConnection) -> None:
        with self.lock:
            self.idle.append(conn)

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()


class Client:
    """The coordinator's API, blocking. ``url``: one coordinator, or several to fail over
    between (on no connection, or a 502/503/504 answer, the next is asked). ``timeout_s``:
    the longest wait for each read or write of a call (a submission's ``wait`` is added).
    ``retries``: see ``Retries``."""

    def __init__(
        self,
        url: str | Sequence[str],
        token: str | None,
        *,
        timeout_s: float = 30.0,
        retries: Retries | None = None,
    ) -> None:
        self.urls = _core.base_urls(url)
        self.timeout_s = timeout_s
        self.retries = retries or Retries()
        self._headers = _core.headers(token)
        self._pools = [_Pool(u) for u in self.urls]
        self._failover = _core.Failover(len(self.urls))

    # -- the API ----------------------------------------------------------------------------

    def submit(self, txn: Submission, wait: float | None = None) -> Transaction:
        """Submits ``txn`` (a builder, or a TxnIn body as a mapping). ``wait``: seconds to wait
        for the outcome; an abort within them raises Aborted."""
        request = _core.submit_request(txn, wait, self.timeout_s)
        return _core.submitted(self._call(request), wait)

    def get(self, gid: str, events: bool = True) -> Transaction:
        return _core.transaction_of(self._call(_core.get_request(gid, events, self.timeout_s)))

    def list(
        self,
        status: str | None = None,
        mode: str | None = None,
        participant: str | None = None,
        gid_prefix: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page:
        """One page, newest first; pass its ``next_cursor`` as ``cursor`` for the next."""
        filters = {
            "status": status,
            "mode": mode,
            "participant": participant,
            "gid_prefix": gid_prefix,
            "limit": limit,
            "cursor": cursor,
        }
        return _core.page_of(self._call(_core.list_request(filters, self.timeout_s)))

    def pages(self, **filters: Any) -> Iterator[Page]:
        """Every page of a listing (``list``'s filters), fetched as it is reached."""
        cursor = filters.pop("cursor", None)
        while True:
            page = self.list(**filters, cursor=cursor)
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def transactions(self, **filters: Any) -> Iterator[Transaction]:
        """Every transaction of a listing, page after page."""
        for page in self.pages(**filters):
            yield from page.items

    def retry(self, gid: str, note: str) -> Transaction:
        """Drives a live transaction again now (admin); Conflict on a finished one."""
        return self._act(_core.action_request(gid, "retry", note, self.timeout_s))

    def abort(self, gid: str, note: str) -> Transaction:
        """Aborts a 2PC before its decision, or compensates a running saga (admin)."""
        return self._act(_core.action_request(gid, "abort", note, self.timeout_s))

    def resolve_branch(self, gid: str, idx: int, note: str) -> Transaction:
        """Declares a compensating saga's branch compensated by hand (admin)."""
        return self._act(_core.action_request(gid, "resolve", note, self.timeout_s, idx))

    def close(self) -> None:
        for pool in self._pools:
            pool.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    # -- calls ------------------------------------------------------------------------------

    def _act(self, request: Request) -> Transaction:
        return _core.transaction_of(self._call(request))

    def _call(self, request: Request) -> Reply:
        """The answer to ``request`` that is not one to retry (raises what a failure means)."""
        for attempt in Retrying(**_core.RetrySchedule(self.retries).kwargs()):
            with attempt:
                reply = self._each_coordinator(request)
                _core.raise_if_busy(reply)
                return reply
        raise AssertionError("unreachable: tenacity returns or raises")

    def _each_coordinator(self, request: Request) -> Reply:
        last: Unavailable | None = None
        for i in self._failover.order():
            try:
                reply = self._exchange(self._pools[i], request)
            except NoAnswer as e:
                error = _core.Failover.no_answer(request, self.urls[i], e)
                if not error.resendable:
                    raise error from e
                last = _core.Failover.keep(last, error)
                continue
            failure = _core.failed_over(reply)
            if failure is None:
                self._failover.preferred = i
                return reply
            last = _core.Failover.keep(last, failure)
        assert last is not None
        raise last

    def _exchange(self, pool: _Pool, request: Request) -> Reply:
        conn, reused = pool.take(request.timeout_s)
        try:
            return self._send(pool, conn, request)
        except _STALE:
            if not reused:
                raise NoAnswer("the connection closed before the answer", sent=True) from None
        # Closed while idle as we wrote (the server's keep-alive ran out): once more on a new
        # connection. Safe only because nothing of the answer came (nothing was processed),
        # or the request is one to resend anyway.
        conn, _ = pool.take(request.timeout_s)
        try:
            return self._send(pool, conn, request)
        except _STALE as e:
            raise NoAnswer("the connection closed before the answer", sent=True) from e

    def _send(self, pool: _Pool, conn: http.client.HTTPConnection, request: Request) -> Reply:
        headers = dict(self._headers)
        if request.body is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(request.method, pool.prefix + request.path, request.body, headers)
            answer = conn.getresponse()
            body = answer.read()
        except _STALE:
            conn.close()
            raise
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise NoAnswer(f"{type(e).__name__}: {e}", sent=True) from e
        if answer.will_close:
            conn.close()
        else:
            pool.give_back(conn)
        return Reply(answer.status, body, answer.getheader("Retry-After"))
