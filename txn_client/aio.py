"""The asyncio client, over the product's own HTTP/1.1 client (txn_client.http11: pooled
keep-alive connections, one total timeout per call). The same methods as ``Client``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

from tenacity import AsyncRetrying

from txn_client import _core, http11
from txn_client._core import NoAnswer, Reply, Request, Retries
from txn_client.builders import Submission
from txn_client.errors import TxnError, Unavailable
from txn_client.results import Page, Transaction

CONNECT_TIMEOUT_S = 10.0  # skip a coordinator that does not answer a connect sooner
# A listing of 500 transactions with their branches is well over http11's default cap.
ANSWER_CAP = 64 * 1024 * 1024


class AsyncClient:
    """The coordinator's API, for asyncio. ``url``: one coordinator, or several to fail over
    between (on no connection, or a 502/503/504 answer, the next is asked). ``timeout_s``: the
    longest a call may take (a submission's ``wait`` is added). ``retries``: see ``Retries``.
    ``connections``: at most this many at once to each coordinator."""

    def __init__(
        self,
        url: str | Sequence[str],
        token: str | None,
        *,
        timeout_s: float = 30.0,
        retries: Retries | None = None,
        connections: int = 16,
    ) -> None:
        self.urls = _core.base_urls(url)
        self.timeout_s = timeout_s
        self.retries = retries or Retries()
        self._targets = [http11.Origin.of(u) for u in self.urls]
        self._http = http11.Client(
            limit=connections,
            cap=ANSWER_CAP,
            headers=_core.headers(token),
            connect_timeout_s=min(timeout_s, CONNECT_TIMEOUT_S),
        )
        self._failover = _core.Failover(len(self.urls))

    # -- the API ----------------------------------------------------------------------------

    async def submit(self, txn: Submission, wait: float | None = None) -> Transaction:
        """Submits ``txn`` (a builder, or a TxnIn body as a mapping). ``wait``: seconds to wait
        for the outcome; an abort within them raises Aborted."""
        request = _core.submit_request(txn, wait, self.timeout_s)
        return _core.submitted(await self._call(request), wait)

    async def get(self, gid: str, events: bool = True) -> Transaction:
        reply = await self._call(_core.get_request(gid, events, self.timeout_s))
        return _core.transaction_of(reply)

    async def list(
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
        return _core.page_of(await self._call(_core.list_request(filters, self.timeout_s)))

    async def pages(self, **filters: Any) -> AsyncIterator[Page]:
        """Every page of a listing (``list``'s filters), fetched as it is reached."""
        cursor = filters.pop("cursor", None)
        while True:
            page = await self.list(**filters, cursor=cursor)
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def transactions(self, **filters: Any) -> AsyncIterator[Transaction]:
        """Every transaction of a listing, page after page."""
        async for page in self.pages(**filters):
            for txn in page.items:
                yield txn

    async def retry(self, gid: str, note: str) -> Transaction:
        """Drives a live transaction again now (admin); Conflict on a finished one."""
        return await self._act(_core.action_request(gid, "retry", note, self.timeout_s))

    async def abort(self, gid: str, note: str) -> Transaction:
        """Aborts a 2PC before its decision, or compensates a running saga (admin)."""
        return await self._act(_core.action_request(gid, "abort", note, self.timeout_s))

    async def resolve_branch(self, gid: str, idx: int, note: str) -> Transaction:
        """Declares a compensating saga's branch compensated by hand (admin)."""
        request = _core.action_request(gid, "resolve", note, self.timeout_s, idx)
        return await self._act(request)

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.close()

    # -- calls ------------------------------------------------------------------------------

    async def _act(self, request: Request) -> Transaction:
        return _core.transaction_of(await self._call(request))

    async def _call(self, request: Request) -> Reply:
        """The answer to ``request`` that is not one to retry (raises what a failure means)."""
        async for attempt in AsyncRetrying(**_core.RetrySchedule(self.retries).kwargs()):
            with attempt:
                reply = await self._each_coordinator(request)
                _core.raise_if_busy(reply)
                return reply
        raise AssertionError("unreachable: tenacity returns or raises")

    async def _each_coordinator(self, request: Request) -> Reply:
        last: Unavailable | None = None
        for i in self._failover.order():
            try:
                reply = await self._exchange(i, request)
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

    async def _exchange(self, i: int, request: Request) -> Reply:
        origin, prefix = self._targets[i]
        headers = {"Content-Type": "application/json"} if request.body is not None else {}
        try:
            answer = await self._http.request(
                request.method,
                origin,
                prefix + request.path,
                headers,
                request.body,
                request.timeout_s,
            )
        except http11.ConnectFailed as e:
            raise NoAnswer(str(e), sent=False) from e
        except http11.HttpError as e:
            raise NoAnswer(str(e), sent=True) from e
        if answer.truncated:
            raise TxnError(f"an answer over {ANSWER_CAP} bytes", answer.status)
        return Reply(answer.status, answer.body, answer.retry_after or None)
