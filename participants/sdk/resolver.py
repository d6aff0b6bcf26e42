"""The participant's doubt resolver (DESIGN.md "Participants resolve their own doubt").

Every ``resolver_interval_s`` it lists this database's prepared transactions named
``txn:<gid>:<branch>`` that are older than the orphan safety interval, asks a coordinator what
became of each gid, and acts only on an answer: ``committing``/``committed`` → COMMIT PREPARED;
``aborting``/``aborted`` or 404 (never logged: presumed abort) → ROLLBACK PREPARED. Anything
else (``preparing``, no coordinator answering) leaves the transaction prepared: a participant
that voted yes never decides alone. A coordinator asked about a ``preparing`` transaction whose
owner's lease ran out decides abort first, so the question itself ends the doubt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

COMMIT = frozenset({"committing", "committed"})
ROLLBACK = frozenset({"aborting", "aborted"})

_IN_DOUBT = text(
    "SELECT gid FROM pg_prepared_xacts "
    "WHERE database = current_database() AND gid LIKE 'txn:%' "
    "AND prepared < now() - make_interval(secs => :safety) ORDER BY prepared"
)

Finish = Callable[[str, int], Awaitable[tuple[int, dict[str, object]]]]


def parse_xid(xid: str) -> tuple[str, int] | None:
    """``txn:<gid>:<branch>`` → (gid, branch); the gid may itself contain colons."""
    if not xid.startswith("txn:"):
        return None
    gid, sep, branch = xid[4:].rpartition(":")
    if not sep or not gid or not branch.isdigit():
        return None
    return gid, int(branch)


@dataclass
class Resolution:
    committed: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


class DoubtResolver:
    def __init__(
        self,
        engine: AsyncEngine,
        coordinators: list[str],
        safety_s: float,
        commit: Finish,
        rollback: Finish,
        timeout_s: float = 5.0,
    ) -> None:
        self.engine = engine
        self.coordinators = [c.rstrip("/") for c in coordinators]
        self.safety_s = safety_s
        self.commit = commit
        self.rollback = rollback
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._next = 0  # rotate the first coordinator asked, to spread the questions

    async def run(self, interval_s: float) -> None:
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            while True:
                try:
                    await self.resolve_once(session)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("doubt resolution failed; trying again later")
                await asyncio.sleep(interval_s)

    async def resolve_once(self, session: aiohttp.ClientSession) -> Resolution:
        async with self.engine.connect() as conn:
            xids = [r.gid for r in await conn.execute(_IN_DOUBT, {"safety": self.safety_s})]
        done = Resolution()
        for xid in xids:
            parsed = parse_xid(xid)
            if parsed is None:
                continue
            gid, branch = parsed
            known, status = await self.ask(session, gid)
            if known and status in COMMIT:
                outcome, _ = await self.commit(gid, branch)
                (done.committed if outcome == 200 else done.left).append(xid)
            elif (known and status in ROLLBACK) or (known and status is None):
                outcome, _ = await self.rollback(gid, branch)
                (done.rolled_back if outcome == 200 else done.left).append(xid)
            else:
                done.left.append(xid)
        if done.committed or done.rolled_back:
            log.warning(
                "resolved in-doubt transactions: committed %s, rolled back %s",
                done.committed,
                done.rolled_back,
            )
        return done

    async def ask(self, session: aiohttp.ClientSession, gid: str) -> tuple[bool, str | None]:
        """(True, status) from the first coordinator that answers; (True, None) for a 404;
        (False, None) when none answers."""
        n = len(self.coordinators)
        for k in range(n):
            base = self.coordinators[(self._next + k) % n]
            try:
                url = f"{base}/v1/transactions/{gid}"
                async with session.get(url, params={"events": "false"}) as reply:
                    if reply.status == 404:
                        return True, None
                    if reply.status == 200:
                        body = await reply.json()
                        self._next = (self._next + k) % n
                        return True, str(body["status"])
            except (TimeoutError, aiohttp.ClientError, ValueError, KeyError):
                continue
        self._next = (self._next + 1) % max(n, 1)
        return False, None
