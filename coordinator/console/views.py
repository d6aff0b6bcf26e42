"""What the console's pages read from the log beyond the API's own reads: counts, the recent
throughput and latency, what needs attention, and each participant's recent errors. Each is one
statement through the log's SQLAlchemy engine, written to stay fast with a long history: the
recent window goes through the ``created_at`` index, live rows through the partial index."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

COUNTS = text("SELECT status, mode, count(*) AS n FROM transactions GROUP BY status, mode")

# Finished transactions created in the window, by the minute they finished in: how many, and
# their submission-to-outcome latency (p50, p99), in seconds.
SERIES = text(
    """
SELECT date_trunc('minute', updated_at) AS minute, count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM updated_at - created_at))
           AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM updated_at - created_at))
           AS p99
FROM transactions
WHERE created_at > now() - make_interval(secs => :window_s) AND NOT live
GROUP BY 1 ORDER BY 1
"""
)

# Live transactions that need a person to look: old, rescheduled often, a compensation failing,
# or a branch with many attempts. Oldest first.
ATTENTION = text(
    """
SELECT gid, mode, status, reason, created_at, attempts,
       EXTRACT(EPOCH FROM now() - created_at) AS age_s,
       (SELECT max(CAST(b ->> 'attempts' AS int)) FROM jsonb_array_elements(branches) b)
           AS most_attempts,
       (SELECT b ->> 'last_error' FROM jsonb_array_elements(branches) b
        WHERE b ->> 'last_error' IS NOT NULL LIMIT 1) AS last_error
FROM transactions
WHERE live AND (
    created_at < now() - make_interval(secs => :age_s)
    OR attempts >= :stuck
    OR EXISTS (SELECT 1 FROM jsonb_array_elements(branches) b
               WHERE CAST(b ->> 'attempts' AS int) >= :many
                  OR (status = 'compensating' AND b ->> 'last_error' IS NOT NULL)))
ORDER BY created_at
LIMIT :limit
"""
)

# Per participant, over the branches of transactions created in the window: how many, and how
# many carry an error (their last call failed, or failed before succeeding).
PARTICIPANT_ERRORS = text(
    """
SELECT b ->> 'participant' AS participant, count(*) AS branches,
       count(*) FILTER (WHERE b ->> 'last_error' IS NOT NULL) AS failing
FROM transactions, jsonb_array_elements(branches) b
WHERE created_at > now() - make_interval(secs => :window_s)
GROUP BY 1
"""
)


@dataclass(frozen=True)
class Point:
    minute: datetime
    finished: int
    p50_s: float
    p99_s: float


@dataclass(frozen=True)
class Attention:
    gid: str
    mode: str
    status: str
    reason: str | None
    age_s: float
    attempts: int
    most_attempts: int
    last_error: str | None

    @property
    def why(self) -> str:
        if self.status == "compensating" and self.last_error:
            return "compensation failing"
        if self.attempts or self.most_attempts > 1:
            return f"{max(self.attempts, self.most_attempts)} attempts"
        return "old"


class Views:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def counts(self) -> dict[tuple[str, str], int]:
        async with self.engine.connect() as conn:
            return {(r.status, r.mode): r.n for r in await conn.execute(COUNTS)}

    async def series(self, window_s: float) -> list[Point]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(SERIES, {"window_s": float(window_s)})
            return [Point(r.minute, r.n, float(r.p50), float(r.p99)) for r in rows]

    async def attention(
        self, age_s: float, stuck: int, many: int, limit: int = 50
    ) -> list[Attention]:
        params = {"age_s": float(age_s), "stuck": stuck, "many": many, "limit": limit}
        async with self.engine.connect() as conn:
            rows = await conn.execute(ATTENTION, params)
            return [
                Attention(
                    r.gid,
                    r.mode,
                    r.status,
                    r.reason,
                    float(r.age_s),
                    r.attempts,
                    int(r.most_attempts or 0),
                    r.last_error,
                )
                for r in rows
            ]

    async def participant_errors(self, window_s: float) -> dict[str, tuple[int, int]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(PARTICIPANT_ERRORS, {"window_s": float(window_s)})
            return {r.participant: (r.branches, r.failing) for r in rows}
