"""A transfer load for the fault tests: closed-loop clients, each with an account of its own on
every ledger, submit 2PC and saga transactions in turn (one in five designed to abort) while a
test injects a fault. ``settle`` then waits for every transaction to be terminal and ``verify``
checks the ledgers against the log: each balance is its opening plus exactly the deltas of the
committed transactions, nothing is prepared, nothing in the log is left live."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.helpers import TERMINAL, adjust_body, fetch, open_accounts, prepared_xacts, unique
from txn_devstack.stack import Stack

LEDGERS = ("ledger1", "ledger2", "ledger3")
OPENING = 10**9
HUGE = -(10**12)  # more than any balance: refused, so the transaction aborts


@dataclass
class Sent:
    gid: str
    account: str
    mode: str
    deltas: tuple[int, ...]
    http_status: int | None = None  # None: no answer (the POST's fate is learned by GET)
    retried_after_503: bool = False
    told: str | None = None  # the status the client was answered with (2xx only)


@dataclass
class TransferLoad:
    stack: Stack
    clients: int
    wait_s: float = 2.0
    run: str = field(default_factory=lambda: unique("load"))
    sent: list[Sent] = field(default_factory=list)
    final: dict[str, str] = field(default_factory=dict)
    # (sent, answered: monotonic times; HTTP status or None) of every submission attempt.
    answers: list[tuple[float, float, int | None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def accounts(self) -> list[str]:
        return [f"{self.run}-c{k}" for k in range(self.clients)]

    async def open(self, client: httpx.AsyncClient) -> None:
        urls = {p.name: p.url for p in self.stack.participants if p.name in LEDGERS}
        for account in self.accounts():
            await open_accounts(client, urls, account, OPENING)

    def stop(self) -> None:
        self._stop.set()

    def back_after(self, at: float) -> float:
        """Seconds from ``at`` (a monotonic time) to the first successful answer (2xx) to a
        request sent after it: how long new work went unserved."""
        ok = [
            answered
            for sent, answered, status in self.answers
            if sent >= at and status in (200, 201)
        ]
        return min(ok, default=float("inf")) - at

    async def drive(self, client: httpx.AsyncClient) -> None:
        """Submit until ``stop()``; coordinators are used in turn."""
        await asyncio.gather(*(self._client(client, k) for k in range(self.clients)))

    async def _client(self, client: httpx.AsyncClient, k: int) -> None:
        account = self.accounts()[k]
        n = 0
        while not self._stop.is_set():
            n += 1
            mode = ("2pc", "saga")[(n + k) % 2]
            deltas = [((n * 7 + i * 3 + k) % 19) - 9 for i in range(len(LEDGERS))]
            if (n + k) % 5 == 0:
                deltas[(n + k) % len(LEDGERS)] = HUGE
            sent = Sent(f"{account}-{n:05d}", account, mode, tuple(deltas))
            self.sent.append(sent)
            await self._submit(client, sent, n + k)

    async def _submit(self, client: httpx.AsyncClient, sent: Sent, turn: int) -> None:
        """As the API asks: on a 503 or no answer, the same gid again (idempotent), a little
        later; a client that stops retrying leaves the outcome to be learned by GET."""
        for attempt in range(50):
            coord = self.stack.coordinators[(turn + attempt) % len(self.stack.coordinators)]
            started = time.monotonic()
            try:
                reply = await client.post(
                    f"{coord.url}/v1/transactions?wait={self.wait_s}", json=_body(sent)
                )
                sent.http_status = reply.status_code
                self.answers.append((started, time.monotonic(), reply.status_code))
                if reply.status_code < 500:
                    if reply.status_code in (200, 201):
                        sent.told = str(reply.json()["status"])
                    return
                sent.retried_after_503 = True
            except httpx.TransportError:
                sent.http_status = None
                self.answers.append((started, time.monotonic(), None))
            if self._stop.is_set():
                return
            await asyncio.sleep(0.2)

    async def settle(self, client: httpx.AsyncClient, bound_s: float) -> float:
        """Wait until every logged transaction is terminal; the seconds it took. A gid every
        coordinator answers 404 for was never logged (its POST got no 201)."""
        started = time.monotonic()
        pending = {s.gid for s in self.sent}
        while pending:
            assert time.monotonic() - started < bound_s, (
                f"{len(pending)} transactions not terminal after {bound_s}s, e.g. "
                f"{sorted(pending)[:3]}"
            )
            for gid in sorted(pending):
                status = await self._status(client, gid)
                if status is not None:
                    self.final[gid] = status
                    pending.discard(gid)
            if pending:
                await asyncio.sleep(0.2)
        return time.monotonic() - started

    async def _status(self, client: httpx.AsyncClient, gid: str) -> str | None:
        for coord in self.stack.coordinators:
            try:
                reply = await client.get(f"{coord.url}/v1/transactions/{gid}")
            except httpx.TransportError:
                continue
            if reply.status_code == 404:
                return "never logged"
            if reply.status_code == 200 and reply.json()["status"] in TERMINAL:
                return str(reply.json()["status"])
            return None
        return None

    async def verify(self) -> dict[str, int]:
        """Ledgers against the log; returns the outcome counts."""
        accepted = [s for s in self.sent if s.http_status in (200, 201)]
        lost = [s.gid for s in accepted if self.final.get(s.gid) not in TERMINAL]
        assert not lost, f"accepted transactions without an outcome: {lost[:5]}"
        for i, ledger in enumerate(LEDGERS):
            dsn = self.stack.service(ledger).dsn
            assert dsn is not None
            assert await prepared_xacts(dsn) == [], f"{ledger} holds prepared transactions"
            rows = await fetch(
                dsn, "SELECT id, balance FROM accounts WHERE id LIKE $1", f"{self.run}-%"
            )
            got = {r["id"]: int(r["balance"]) for r in rows}
            want = {a: OPENING for a in self.accounts()}
            for s in self.sent:
                if self.final.get(s.gid) == "committed":
                    want[s.account] += s.deltas[i]
            assert got == want, f"{ledger}: balances differ from the log's committed deltas"
        live = await fetch(
            self.stack.log_dsn,
            "SELECT gid, status FROM transactions WHERE gid LIKE $1 "
            "AND status NOT IN ('committed', 'aborted')",
            f"{self.run}-%",
        )
        assert live == [], f"live in the log: {live[:5]}"
        # What a client was told is what happened (RPO 0: no told outcome is undone).
        told = [(s.gid, s.told, self.final.get(s.gid)) for s in self.sent if s.told in TERMINAL]
        differ = [t for t in told if t[1] != t[2]]
        assert not differ, f"told one outcome, logged another: {differ[:5]}"
        counts: dict[str, int] = {}
        for s in self.sent:
            key = f"{s.mode} {self.final.get(s.gid)}"
            counts[key] = counts.get(key, 0) + 1
        return counts


def _body(s: Sent) -> dict[str, Any]:
    return adjust_body(s.gid, s.mode, s.account, list(zip(LEDGERS, s.deltas, strict=True)))
