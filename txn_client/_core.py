"""What the sync and the asyncio client share, free of I/O: the requests each method makes,
how an answer becomes a result or an exception, the retry schedule, and failing over from one
coordinator URL to the next."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import orjson
from tenacity import RetryCallState, retry_if_exception

from txn_client.builders import Submission, submission_body
from txn_client.errors import (
    FAILOVER_STATUSES,
    Aborted,
    TxnError,
    Unavailable,
    error_for,
)
from txn_client.results import Page, Transaction

USER_AGENT = "txn-client/0.1"
MAX_WAIT_S = 300.0  # the longest ?wait= the coordinator takes


@dataclass(frozen=True)
class Retries:
    """How patiently a call is retried on 503, 429, a proxy's 502/504 and on no connection:
    at most ``attempts`` tries within ``max_time_s`` (a wait that would end past it is not
    waited: the call fails then). Between tries: the answer's Retry-After when it has one,
    else an exponential backoff from ``initial_s`` up to ``max_s``, with jitter."""

    attempts: int = 5
    max_time_s: float = 30.0
    initial_s: float = 0.2
    max_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.max_time_s < 0 or self.initial_s < 0 or self.max_s < 0:
            raise ValueError(f"retries must be positive: {self}")


NO_RETRIES = Retries(attempts=1)


class RetrySchedule:
    """tenacity's ``stop``, ``wait`` and ``retry`` for one call. The delay before each retry is
    drawn once, so the stop test (would it end past the deadline?) and the wait agree."""

    def __init__(self, retries: Retries) -> None:
        self.retries = retries
        self.delays: dict[int, float] = {}

    def delay(self, state: RetryCallState) -> float:
        n = state.attempt_number
        if n not in self.delays:
            failure = state.outcome.exception() if state.outcome else None
            asked = failure.retry_after if isinstance(failure, Unavailable) else None
            if asked is not None:
                self.delays[n] = asked
            else:
                backoff = min(self.retries.max_s, self.retries.initial_s * 2 ** (n - 1))
                self.delays[n] = backoff * (0.5 + random.random() / 2)
        return self.delays[n]

    def stop(self, state: RetryCallState) -> bool:
        if state.attempt_number >= self.retries.attempts:
            return True
        elapsed = state.seconds_since_start or 0.0
        return elapsed + self.delay(state) > self.retries.max_time_s

    def kwargs(self) -> dict[str, Any]:
        return {
            "stop": self.stop,
            "wait": self.delay,
            "retry": retry_if_exception(lambda e: isinstance(e, Unavailable) and e.resendable),
            "reraise": True,  # the last Unavailable itself, not tenacity's RetryError
        }


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # from the coordinator's root, with the query
    body: bytes | None
    timeout_s: float
    # Safe to send again when it may have arrived already: reads, and submissions (their gid
    # is fixed). A manual action is resent only when it surely did not arrive.
    idempotent: bool


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    retry_after: str | None


class NoAnswer(Exception):
    """The transports' failure below HTTP; ``sent``: the request may have arrived."""

    def __init__(self, detail: str, sent: bool) -> None:
        super().__init__(detail)
        self.sent = sent


def base_urls(url: str | Sequence[str]) -> list[str]:
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("no coordinator URL")
    for u in urls:
        parts = urlsplit(u)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {u!r}")
    return [u.rstrip("/") for u in urls]


def headers(token: str | None) -> dict[str, str]:
    out = {"Accept": "application/json", "User-Agent": USER_AGENT}
    if token:
        out["Authorization"] = f"Bearer {token}"
    return out


class Failover:
    """Which coordinator to ask: the one that answered last, then each other in turn."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.preferred = 0

    def order(self) -> list[int]:
        return [(self.preferred + k) % self.count for k in range(self.count)]

    @staticmethod
    def no_answer(request: Request, url: str, e: NoAnswer) -> Unavailable:
        resendable = request.idempotent or not e.sent
        return Unavailable(f"{url}: {e}", resendable=resendable)

    @staticmethod
    def keep(last: Unavailable | None, new: Unavailable) -> Unavailable:
        """Of two failures in one pass, the one to raise: an answer's Retry-After wins."""
        if last is not None and last.retry_after is not None and new.retry_after is None:
            return last
        return new


def failed_over(reply: Reply) -> Unavailable | None:
    """The failure that sends the call on to the next coordinator, if ``reply`` is one."""
    if reply.status not in FAILOVER_STATUSES:
        return None
    error = error_for(reply.status, _json(reply.body), reply.retry_after)
    assert isinstance(error, Unavailable)
    return error


def raise_if_busy(reply: Reply) -> None:
    """A 429 (this coordinator drives its most transactions): retried after its Retry-After,
    on the same coordinator (another one is no less busy, and the gid keeps it one
    submission)."""
    if reply.status == 429:
        raise error_for(reply.status, _json(reply.body), reply.retry_after)


def checked(reply: Reply) -> Any:
    """The JSON of a successful answer; raises the error an unsuccessful one means."""
    if 200 <= reply.status < 300:
        body = _json(reply.body)
        if body is None:
            raise TxnError(f"HTTP {reply.status} without a JSON body", reply.status)
        return body
    raise error_for(reply.status, _json(reply.body), reply.retry_after)


def _json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


# -- the requests -------------------------------------------------------------------------


def submit_request(txn: Submission, wait: float | None, timeout_s: float) -> Request:
    path = "/v1/transactions"
    if wait is not None:
        if not 0 <= wait <= MAX_WAIT_S:
            raise ValueError(f"wait is 0-{MAX_WAIT_S:g} s, got {wait}")
        path += f"?wait={wait:g}"
    body = orjson.dumps(submission_body(txn))
    return Request("POST", path, body, timeout_s + (wait or 0), idempotent=True)


def submitted(reply: Reply, wait: float | None) -> Transaction:
    """The submission's result; raises Aborted when it waited for the outcome and got an abort."""
    txn = Transaction.of(checked(reply), created=reply.status == 201)
    if wait and txn.status == "aborted":
        raise Aborted(txn)
    return txn


def get_request(gid: str, events: bool, timeout_s: float) -> Request:
    query = "" if events else "?events=false"
    return Request("GET", f"/v1/transactions/{_seg(gid)}{query}", None, timeout_s, True)


def list_request(filters: dict[str, Any], timeout_s: float) -> Request:
    query = urlencode({k: v for k, v in filters.items() if v is not None})
    path = "/v1/transactions" + (f"?{query}" if query else "")
    return Request("GET", path, None, timeout_s, True)


def action_request(
    gid: str, action: str, note: str, timeout_s: float, idx: int | None = None
) -> Request:
    if idx is None:
        path = f"/v1/transactions/{_seg(gid)}/{action}"
    else:
        path = f"/v1/transactions/{_seg(gid)}/branches/{int(idx)}/resolve"
    body = orjson.dumps({"note": note})
    return Request("POST", path, body, timeout_s, idempotent=False)


def page_of(reply: Reply) -> Page:
    return Page.of(checked(reply))


def transaction_of(reply: Reply) -> Transaction:
    return Transaction.of(checked(reply))


def _seg(value: str) -> str:
    return quote(value, safe="")
