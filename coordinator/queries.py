"""The log's hard statements, each one round trip. Every driver write carries
``WHERE gid = :gid AND epoch = :epoch`` (rule 5: fencing), and all time is the database's
``now()`` (rule 6)."""

from __future__ import annotations

from coordinator.schema import NEXT_STATUS


def may_follow(current: str, new: str) -> str:
    """SQL: whether status ``new`` may follow ``current`` (``schema.NEXT_STATUS``)."""
    whens = " ".join(
        f"WHEN '{s}' THEN "
        + (f"{new} IN ({', '.join(repr(n) for n in sorted(allowed))})" if allowed else "false")
        for s, allowed in sorted(NEXT_STATUS.items())
    )
    return f"CASE {current} {whens} ELSE true END"


# Rule 1: the transaction, its branches and the first event are logged in one statement, before
# any participant is called. ON CONFLICT keeps a resubmitted gid from changing anything.
INSERT_TXN = """
WITH t AS (
    INSERT INTO transactions (gid, mode, status, request, request_hash, deadline_at,
                              next_attempt_at, owner, lease_until, epoch)
    VALUES (:gid, :mode, :status, CAST(:request AS jsonb), :request_hash,
            now() + make_interval(secs => :timeout_s),
            now() + make_interval(secs => :lease_s),
            :owner, now() + make_interval(secs => :lease_s), 1)
    ON CONFLICT (gid) DO NOTHING
    RETURNING *
), b AS (
    INSERT INTO branches (gid, idx, participant, action, compensation, payload, status)
    SELECT t.gid, u.idx, u.participant, u.action, u.compensation, CAST(u.payload AS jsonb),
           'pending'
    FROM t, unnest(CAST(:idx AS int[]), CAST(:participant AS text[]), CAST(:action AS text[]),
                   CAST(:compensation AS text[]), CAST(:payload AS text[]))
         AS u(idx, participant, action, compensation, payload)
    RETURNING 1
), e AS (
    INSERT INTO events (gid, kind, detail)
    SELECT t.gid, 'submitted', jsonb_build_object('owner', t.owner) FROM t
    RETURNING 1
)
SELECT t.*, now() AS db_now, (SELECT count(*) FROM b) AS n_branches FROM t
"""

# Rules 2, 3 and 5: a status change (the commit point among them) and the branches' progress in
# one fenced statement. Zero rows from ``t`` means the epoch moved on, or the logged status may
# not be left for this one (a decision or an outcome): nothing is written.
WRITE_STATUS = """
WITH t AS (
    UPDATE transactions SET status = :status, reason = :reason, updated_at = now()
    WHERE gid = :gid AND epoch = :epoch AND {may_follow}
    RETURNING gid
), b AS (
    UPDATE branches SET status = u.status, attempts = u.attempts, last_error = u.last_error,
                        updated_at = now()
    FROM t, unnest(CAST(:idx AS int[]), CAST(:bstatus AS text[]), CAST(:battempts AS int[]),
                   CAST(:berror AS text[])) AS u(idx, status, attempts, last_error)
    WHERE branches.gid = t.gid AND branches.idx = u.idx
    RETURNING 1
), e AS (
    INSERT INTO events (gid, kind, detail)
    SELECT t.gid, :event, jsonb_build_object('status', CAST(:status AS text),
                                             'reason', CAST(:reason AS text),
                                             'epoch', CAST(:epoch AS bigint))
    FROM t
    RETURNING 1
)
SELECT count(*) AS n, now() AS at FROM t
""".replace("{may_follow}", may_follow("status", "CAST(:status AS text)"))

# WRITE_STATUS for many transactions in one statement (coordinator/batch.py), each row fenced
# on its own epoch; the branches of every row are flattened into arrays keyed by gid. Used only
# for writes recovery would redo (rule 4): a 2PC outcome after its durable decision.
WRITE_STATUS_MANY = """
WITH i AS (
    SELECT * FROM unnest(
        CAST(:gids AS text[]), CAST(:epochs AS bigint[]), CAST(:statuses AS text[]),
        CAST(:reasons AS text[]), CAST(:events AS text[])
    ) AS i(gid, epoch, status, reason, event)
), locked AS (
    SELECT tx.gid FROM transactions AS tx JOIN i ON tx.gid = i.gid AND tx.epoch = i.epoch
    WHERE {may_follow}
    ORDER BY tx.gid
    FOR UPDATE OF tx
), t AS (
    UPDATE transactions SET status = i.status, reason = i.reason, updated_at = now()
    FROM locked JOIN i ON i.gid = locked.gid WHERE transactions.gid = locked.gid
    RETURNING transactions.gid, i.status, i.reason, i.epoch, i.event
), b AS (
    UPDATE branches SET status = u.status, attempts = u.attempts, last_error = u.last_error,
                        updated_at = now()
    FROM t, unnest(CAST(:bgids AS text[]), CAST(:idx AS int[]), CAST(:bstatus AS text[]),
                   CAST(:battempts AS int[]), CAST(:berror AS text[]))
            AS u(gid, idx, status, attempts, last_error)
    WHERE u.gid = t.gid AND branches.gid = t.gid AND branches.idx = u.idx
    RETURNING 1
), e AS (
    INSERT INTO events (gid, kind, detail)
    SELECT t.gid, t.event, jsonb_build_object('status', t.status, 'reason', t.reason,
                                              'epoch', t.epoch)
    FROM t
    RETURNING 1
)
SELECT t.gid, now() AS at FROM t
""".replace("{may_follow}", may_follow("tx.status", "i.status"))

# Fenced like WRITE_STATUS. Backoff: initial * 2^attempts, capped, with full jitter in [0.5, 1],
# computed by the database so no coordinator clock is involved. The lease is released (set to
# now()) so whichever instance is free claims the transaction when it is due.
RESCHEDULE = """
WITH d AS (
    SELECT least(CAST(:max_s AS float8),
                 CAST(:initial_s AS float8) * power(2, least(attempts, 30)))
           * (0.5 + random() / 2) AS delay
    FROM transactions WHERE gid = :gid AND epoch = :epoch
), t AS (
    UPDATE transactions
    SET attempts = attempts + 1, updated_at = now(), lease_until = now(),
        next_attempt_at = now() + make_interval(secs => (SELECT delay FROM d))
    WHERE gid = :gid AND epoch = :epoch
    RETURNING gid
), b AS (
    UPDATE branches SET status = u.status, attempts = u.attempts, last_error = u.last_error,
                        updated_at = now()
    FROM t, unnest(CAST(:idx AS int[]), CAST(:bstatus AS text[]), CAST(:battempts AS int[]),
                   CAST(:berror AS text[])) AS u(idx, status, attempts, last_error)
    WHERE branches.gid = t.gid AND branches.idx = u.idx
    RETURNING 1
), e AS (
    INSERT INTO events (gid, kind, detail)
    SELECT t.gid, 'rescheduled', jsonb_build_object('delay_s', (SELECT delay FROM d)) FROM t
    RETURNING 1
)
SELECT (SELECT delay FROM d) AS delay, (SELECT count(*) FROM t) AS n
"""

# Recovery's claim: one statement takes a batch of due work; "due" and the lease use the
# database clock only (rule 6). SKIP LOCKED lets instances claim
# concurrently without waiting on each other; the epoch bump fences out any previous driver;
# ``own_before`` (at start-up) takes back what this instance id held before it restarted, lease
# or not: only rows last written before this incarnation read the log's clock, never one it has
# just inserted or claimed itself (that would fence out its own driver).
CLAIM = """
WITH due AS (
    SELECT gid FROM transactions
    WHERE status NOT IN ('committed', 'aborted')
      AND ((next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now()))
           OR (owner = :owner AND updated_at < CAST(:own_before AS timestamptz)))
    ORDER BY next_attempt_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
), c AS (
    UPDATE transactions AS tx
    SET owner = :owner, epoch = tx.epoch + 1, updated_at = now(),
        lease_until = now() + make_interval(secs => :lease_s)
    FROM due WHERE tx.gid = due.gid
    RETURNING tx.*
), e AS (
    INSERT INTO events (gid, kind, detail)
    SELECT c.gid, 'claimed', jsonb_build_object('owner', c.owner, 'epoch', c.epoch) FROM c
    RETURNING 1
)
SELECT c.*, now() AS db_now FROM c
"""

# Lease renewal for everything a live instance drives, in one statement.
# Every statement that updates several transactions rows (this one, WRITE_PROGRESS_MANY,
# WRITE_STATUS_MANY) locks them in gid order first: two of them locking in whatever order their
# plans chose could deadlock each other (Postgres would break the cycle after deadlock_timeout
# by failing one: a lease not renewed, a batch of writes refused). The claim skips locked rows.
RENEW = """
WITH locked AS (
    SELECT tx.gid
    FROM transactions AS tx
    JOIN unnest(CAST(:gids AS text[]), CAST(:epochs AS bigint[])) AS u(gid, epoch)
      ON tx.gid = u.gid AND tx.epoch = u.epoch
    WHERE tx.owner = :owner AND tx.status NOT IN ('committed', 'aborted')
    ORDER BY tx.gid
    FOR UPDATE OF tx
)
UPDATE transactions AS tx SET lease_until = now() + make_interval(secs => :lease_s)
FROM locked
WHERE tx.gid = locked.gid
RETURNING tx.gid
"""

# Metrics: live transactions by status; the partial index keeps this cheap with any history.
LIVE_SUMMARY = """
SELECT status, count(*) AS n, count(*) FILTER (WHERE attempts >= :stuck) AS stuck,
       EXTRACT(EPOCH FROM now() - min(created_at)) AS oldest
FROM transactions WHERE status NOT IN ('committed', 'aborted')
GROUP BY status
"""

# A saga step's progress: one branch and its event, fenced like every driver write (rule 5).
# Run on a connection with synchronous_commit off (rule 4): if the log's server crashes before
# the WAL is flushed, the write is lost and recovery redoes the step (the barrier dedups it).
# The coordinator sends this one-row form for a lone write and WRITE_PROGRESS_MANY (below) for
# several (coordinator/batch.py); the bench's floor sends this one for every step.
WRITE_PROGRESS = """
WITH t AS (
    UPDATE transactions SET updated_at = now()
    WHERE gid = :gid AND epoch = :epoch
    RETURNING gid
), b AS (
    UPDATE branches SET status = :status, attempts = :attempts, last_error = :last_error,
                        updated_at = now()
    FROM t WHERE branches.gid = t.gid AND branches.idx = :branch
    RETURNING 1
), e AS (
    INSERT INTO events (gid, kind, branch, detail)
    SELECT t.gid, :event, :branch, CAST(:detail AS jsonb) FROM t
    RETURNING 1
)
SELECT count(*) AS n FROM t
"""

# WRITE_PROGRESS for many transactions in one statement (coordinator/batch.py), each row
# fenced on its own epoch; returns the gids found at their epoch. One row per transaction.
WRITE_PROGRESS_MANY = """
WITH i AS (
    SELECT * FROM unnest(
        CAST(:gids AS text[]), CAST(:epochs AS bigint[]), CAST(:branches AS int[]),
        CAST(:statuses AS text[]), CAST(:attempts AS int[]), CAST(:last_errors AS text[]),
        CAST(:events AS text[]), CAST(:details AS text[])
    ) AS i(gid, epoch, branch, status, attempts, last_error, event, detail)
), locked AS (
    SELECT tx.gid FROM transactions AS tx JOIN i ON tx.gid = i.gid AND tx.epoch = i.epoch
    ORDER BY tx.gid
    FOR UPDATE OF tx
), t AS (
    UPDATE transactions SET updated_at = now()
    FROM locked WHERE transactions.gid = locked.gid
    RETURNING transactions.gid
), b AS (
    UPDATE branches SET status = i.status, attempts = i.attempts, last_error = i.last_error,
                        updated_at = now()
    FROM i JOIN t ON t.gid = i.gid
    WHERE branches.gid = i.gid AND branches.idx = i.branch
    RETURNING 1
), e AS (
    INSERT INTO events (gid, kind, branch, detail)
    SELECT i.gid, i.event, i.branch, CAST(i.detail AS jsonb) FROM i JOIN t ON t.gid = i.gid
    RETURNING 1
)
SELECT gid FROM t
"""

# Doubt resolution: asked about a 2PC transaction still `preparing` whose owner's lease ran out,
# decide abort (presumed abort) before answering. The epoch bump fences the old driver, should
# it wake up; the asker becomes the owner and drives the rollbacks. Guarded by the lease, so a
# live owner is never overruled.
ABORT_ORPHAN = """
WITH t AS (
    UPDATE transactions
    SET status = 'aborting', reason = :reason, epoch = epoch + 1, owner = :owner,
        lease_until = now() + make_interval(secs => :lease_s), updated_at = now(),
        next_attempt_at = now()
    WHERE gid = :gid AND mode = '2pc' AND status = 'preparing'
      AND (lease_until IS NULL OR lease_until < now())
    RETURNING *
), e AS (
    INSERT INTO events (gid, kind, detail)
    SELECT t.gid, 'decided', jsonb_build_object('status', t.status, 'reason', t.reason,
                                                'epoch', t.epoch, 'owner', t.owner)
    FROM t
    RETURNING 1
)
SELECT t.*, now() AS db_now FROM t
"""

# One transaction with its branches, in one round trip (the API's reads and waits).
GET_TXN = """
SELECT t.*,
       (SELECT coalesce(json_agg(b ORDER BY b.idx), '[]') FROM branches AS b WHERE b.gid = t.gid)
       AS branch_rows
FROM transactions AS t WHERE t.gid = :gid
"""
