"""The participant's doubt resolver (docs/protocol.md, "Participants resolve their own doubt").

Every ``resolver_interval_s`` it lists this database's prepared transactions named
``txn:<gid>:<branch>`` that are older than the orphan safety interval, asks a coordinator
(``POST /v1/resolve``, signed with this participant's secret) what became of each gid, and acts
only on an answer it can verify: signed with this participant's secret, for this participant,
this gid and this question's nonce. ``committing``/``committed`` → COMMIT PREPARED;
``aborting``/``aborted`` or ``unknown`` (never logged: presumed abort) → ROLLBACK PREPARED.
Anything else (``preparing``, a 404 or any other status from whatever answers at that URL, a
redirect, which is never followed, an unsigned or badly signed body, no coordinator answering)
leaves the transaction prepared: a participant that voted yes never decides alone, and a
misrouted question must never roll back a committed branch. A coordinator asked about a
``preparing`` transaction whose owner's lease ran out decides abort first, so the question
itself ends the doubt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from participants.sdk import wire
from participants.sdk.ask import ask, question_client
from participants.sdk.metrics import ParticipantMetrics
from txn_client.http11 import Client

log = logging.getLogger(__name__)

COMMIT = frozenset({"committing", "committed"})
ROLLBACK = frozenset({"aborting", "aborted", "unknown"})

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
        name: str,
        secrets: list[bytes],
        timeout_s: float = 5.0,
        metrics: ParticipantMetrics | None = None,
    ) -> None:
        self.engine = engine
        self.coordinators = [c.rstrip("/") for c in coordinators]
        self.safety_s = safety_s
        self.commit = commit
        self.rollback = rollback
        self.name = name
        self.secrets = secrets
        self.timeout_s = timeout_s
        self._next = 0  # rotate the first coordinator asked, to spread the questions
        self.metrics = metrics or ParticipantMetrics()

    async def run(self, interval_s: float) -> None:
        client = question_client()
        try:
            while True:
                try:
                    await self.resolve_once(client)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("doubt resolution failed; trying again later")
                await asyncio.sleep(interval_s)
        finally:
            await client.close()

    async def resolve_once(self, client: Client) -> Resolution:
        async with self.engine.connect() as conn:
            xids = [r.gid for r in await conn.execute(_IN_DOUBT, {"safety": self.safety_s})]
        self.metrics.in_doubt.set(len(xids))
        done = Resolution()
        for xid in xids:
            parsed = parse_xid(xid)
            if parsed is None:
                continue
            gid, branch = parsed
            status = await self.ask(client, gid)
            if status in COMMIT:
                outcome, _ = await self.commit(gid, branch)
                (done.committed if outcome == 200 else done.left).append(xid)
            elif status in ROLLBACK:
                outcome, _ = await self.rollback(gid, branch)
                (done.rolled_back if outcome == 200 else done.left).append(xid)
            else:
                if status is not None:  # None: ask() has logged why already
                    log.warning(
                        "doubt resolver: %s stays prepared: the coordinator says %r",
                        xid,
                        status,
                        extra={"gid": gid, "branch": branch},
                    )
                done.left.append(xid)
        for action, xids_done in (
            ("committed", done.committed),
            ("rolled_back", done.rolled_back),
            ("left", done.left),
        ):
            if xids_done:
                self.metrics.resolved.labels(action).inc(len(xids_done))
        if done.committed or done.rolled_back:
            log.warning(
                "resolved in-doubt transactions: committed %s, rolled back %s",
                done.committed,
                done.rolled_back,
            )
        return done

    async def ask(self, client: Client, gid: str) -> str | None:
        """The verified status of ``gid`` ("unknown" when never logged) from the first
        coordinator that gives one; None when none does."""
        if not self.secrets:
            # Nothing to verify an answer with: acting on an unverified one could split an
            # outcome, so this participant waits for its coordinator (logged at start).
            log.warning("no TXNP_SECRET: the doubt resolver cannot verify answers; waiting")
            return None
        n = len(self.coordinators)
        for k in range(n):
            base = self.coordinators[(self._next + k) % n]
            status, why = await self._ask_one(client, base, gid)
            if status is not None:
                self._next = (self._next + k) % n
                return status
            log.warning(
                "doubt resolver: no usable answer about %s from %s: %s",
                gid,
                base,
                why,
                extra={"gid": gid},
            )
        self._next = (self._next + 1) % max(n, 1)
        return None

    async def _ask_one(self, client: Client, base: str, gid: str) -> tuple[str | None, str]:
        answer, why = await ask(
            client,
            self.timeout_s,
            base,
            wire.RESOLVE_PATH,
            self.name,
            self.secrets,
            {"gid": gid},
            gid,
        )
        if answer is None:
            return None, why
        if answer.get("gid") != gid:
            return None, "the answer is for another question"
        status = answer.get("status")
        if not isinstance(status, str):
            return None, "the answer has no status"
        return status, ""
