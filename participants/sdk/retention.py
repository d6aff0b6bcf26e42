"""Barrier retention: the barrier rows of transactions that ended long ago are deleted.

A barrier row answers a duplicate call as the first call was answered; deleted too early, a
late duplicate would run its business code again. Deleting is safe once no call for the
transaction can still be accepted (docs/protocol.md, "Barrier retention"):

- a coordinator sends no call for a transaction after logging its outcome (committed or
  aborted), so every call was signed before that;
- a participant accepts a signed call only within the replay window of its signature time.

So once the outcome is older than the replay window (twice it here, a margin for clocks), no
call for the transaction can arrive. The participant cannot see the outcome, so it asks: a
batch of candidate gids (every row older than ``barrier_retention``) goes to a coordinator
(``POST /v1/ended``, signed), whose signed answer says, per gid, how long ago it ended, or
that the log does not hold it (deleted by the coordinator's own retention, which it states).
Only gids confirmed that way are deleted; a live transaction's rows stay, however old.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from participants.sdk import wire
from participants.sdk.ask import ask, question_client
from participants.sdk.metrics import ParticipantMetrics
from participants.sdk.resolver import parse_xid
from txn_client.http11 import Client

log = logging.getLogger(__name__)

# Old rows in created_at order from where the last batch ended (``after``): each batch reads
# only rows it has not seen, never again the ones deleted before it.
_CANDIDATES = text(
    "SELECT gid, created_at FROM txn_barrier "
    "WHERE created_at < now() - make_interval(secs => :keep) AND created_at >= :after "
    "AND gid <> ALL(:skip) ORDER BY created_at LIMIT :rows"
)
# Gids with a branch prepared here: read once per batch (a prepared branch's own barrier row
# is invisible until it commits; its gid's other rows stay with it).
_PREPARED = text(
    "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE 'txn:%'"
)
# A gid's rows go together, and only when none is younger than the retention.
_PURGE = text(
    "DELETE FROM txn_barrier b WHERE b.gid = ANY(:gids) "
    "AND NOT EXISTS (SELECT 1 FROM txn_barrier n WHERE n.gid = b.gid "
    "AND n.created_at >= now() - make_interval(secs => :keep)) "
    "RETURNING b.gid"
)


# After a batch, wait this many times as long as it took.
PAUSE_FACTOR = 3.0


@dataclass
class Round:
    deleted_rows: int = 0
    purged: list[str] = field(default_factory=list)  # gids whose rows were deleted
    kept: list[str] = field(default_factory=list)  # live, ended too recently, or unconfirmed


class BarrierRetention:
    def __init__(
        self,
        engine: AsyncEngine,
        coordinators: list[str],
        name: str,
        secrets: list[bytes],
        keep_s: float,
        replay_window_s: float,
        batch: int,
        metrics: ParticipantMetrics,
        timeout_s: float = 10.0,
    ) -> None:
        self.engine = engine
        self.coordinators = [c.rstrip("/") for c in coordinators]
        self.name = name
        self.secrets = secrets
        self.keep_s = keep_s
        # How long ago an outcome must have been logged before no call for it can arrive.
        self.quiet_s = 2 * replay_window_s
        self.batch = batch
        self.metrics = metrics
        self.timeout_s = timeout_s

    def usable(self) -> str | None:
        """Why this participant cannot purge (None when it can)."""
        if self.keep_s <= 0:
            return "TXNP_BARRIER_RETENTION is 0"
        if not self.coordinators:
            return "no TXNP_COORDINATORS to confirm that transactions ended"
        if not self.secrets:
            return "no TXNP_SECRET to verify a coordinator's answer"
        return None

    async def run(self, interval_s: float) -> None:
        why = self.usable()
        if why is not None:
            log.warning("barrier rows are kept for ever: %s", why)
            return
        client = question_client()
        try:
            while True:
                # A round after each interval, not at start: a service starting is busy enough.
                await asyncio.sleep(interval_s)
                try:
                    await self.round(client)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("barrier retention failed; trying again later")
        finally:
            await client.close()

    async def round(self, client: Client, max_batches: int = 100, pause: bool = True) -> Round:
        """Batches until no candidate is left (or ``max_batches``): ask, then delete. With
        ``pause``, after each batch it waits three times as long as the batch took, so a
        backlog (retention turned on over a long history) drains at a quarter of full speed
        instead of competing with branch calls for the database all the time (measured:
        docs/operations.md, "Participants' barrier rows")."""
        done = Round()
        after = datetime.min.replace(tzinfo=UTC)
        for _ in range(max_batches):
            started = time.perf_counter()
            async with self.engine.connect() as conn:
                params = {"keep": self.keep_s, "after": after, "skip": done.kept}
                rows = (await conn.execute(_CANDIDATES, {**params, "rows": self.batch})).all()
                prepared = {
                    parsed[0] for r in await conn.execute(_PREPARED) if (parsed := parse_xid(r.gid))
                }
            if not rows:
                break
            # The next batch starts at this one's last time (>=: rows sharing it come again,
            # unless deleted or skipped).
            after = rows[-1].created_at
            gids = list(dict.fromkeys(r.gid for r in rows))
            quiet = [g for g in await self.confirmed(client, gids) if g not in prepared]
            done.kept += [g for g in gids if g not in quiet]
            if not quiet:
                continue
            async with self.engine.begin() as conn:
                params = {"gids": quiet, "keep": self.keep_s}
                rows_gone = (await conn.execute(_PURGE, params)).all()
            gone = {r.gid for r in rows_gone}
            # A confirmed gid with a row younger than the retention stays: skip it from now on,
            # or every batch would read it again.
            done.kept += [g for g in quiet if g not in gone]
            done.deleted_rows += len(rows_gone)
            done.purged += [g for g in quiet if g in gone]
            self.metrics.barrier_purged.inc(len(rows_gone))
            if pause:
                await asyncio.sleep(PAUSE_FACTOR * (time.perf_counter() - started))
        if done.deleted_rows:
            log.info(
                "barrier retention deleted %d rows of %d transactions",
                done.deleted_rows,
                len(done.purged),
            )
        return done

    async def confirmed(self, client: Client, gids: list[str]) -> list[str]:
        """Those of ``gids`` a coordinator confirms ended at least ``quiet_s`` ago."""
        for base in self.coordinators:
            answer, why = await ask(
                client,
                self.timeout_s,
                base,
                wire.ENDED_PATH,
                self.name,
                self.secrets,
                {"gids": gids},
            )
            if answer is None:
                log.warning("barrier retention: no usable answer from %s: %s", base, why)
                continue
            ended, retention_s = answer.get("ended"), answer.get("retention_s")
            if not isinstance(ended, dict) or not isinstance(retention_s, int | float):
                log.warning("barrier retention: %s answered without ended/retention_s", base)
                continue
            # A gid the log does not hold was deleted by its retention, after ending at least
            # retention_s ago; with retention off (0) it was never logged there: keep it.
            gone_quiet = retention_s >= self.quiet_s
            return [
                gid
                for gid in gids
                if gid in ended
                and (
                    (ended[gid] is None and gone_quiet)
                    or (isinstance(ended[gid], int | float) and ended[gid] >= self.quiet_s)
                )
            ]
        return []
