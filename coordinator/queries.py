"""The log's hard statements, each one round trip. Every driver write carries
``WHERE gid = :gid AND epoch = :epoch`` (rule 5: fencing), and all time is the database's
``now()`` (rule 6).

One row per transaction holds everything (coordinator/schema.py): its status, its branches'
progress (``branches``, a jsonb array) and its timeline (``timeline``, a jsonb array of events),
so a write is one row updated, and a write that touches no indexed column (a decision, saga
progress, a claim, a lease) is a HOT update that writes no index entry."""

from __future__ import annotations

from coordinator.schema import NEXT_STATUS, TIMELINE_HEAD, TIMELINE_MAX


def may_follow(current: str, new: str) -> str:
    """SQL: whether status ``new`` may follow ``current`` (``schema.NEXT_STATUS``)."""
    whens = " ".join(
        f"WHEN '{s}' THEN "
        + (f"{new} IN ({', '.join(repr(n) for n in sorted(allowed))})" if allowed else "false")
        for s, allowed in sorted(NEXT_STATUS.items())
    )
    return f"CASE {current} {whens} ELSE true END"


# pragma: no mutate block (the timeline and branch SQL below is not the status guard)
def capped(timeline: str) -> str:
    """SQL: ``timeline`` kept to TIMELINE_MAX events: the first TIMELINE_HEAD (how it began),
    every operator's action (an audit record is never dropped) and the latest (how it goes
    now), before a write appends its own. A transaction retried for a day stays one small row.
    (``timeline`` is a column: it is repeated here.)"""
    tail = TIMELINE_MAX - TIMELINE_HEAD
    operators = '? (@.kind starts with "operator:")'
    return (
        f"CASE WHEN jsonb_array_length({timeline}) <= {TIMELINE_MAX} THEN {timeline} "
        f"ELSE jsonb_path_query_array({timeline}, '$[0 to {TIMELINE_HEAD - 1}]') "
        f"|| jsonb_path_query_array({timeline}, '$[{TIMELINE_HEAD} to last - {tail}] {operators}') "
        f"|| jsonb_path_query_array({timeline}, '$[last - {tail - 1} to last]') END"
    )


def event(timeline: str, kind: str, branch: str, detail: str, nth: str = "1") -> str:
    """SQL: the ``nth`` event appended to ``timeline`` now; its id follows the last one's. An
    absent branch or detail is left out (the row is rewritten at every write: small is cheap)."""
    return (
        f"(jsonb_build_object('id', coalesce(CAST({timeline} -> -1 ->> 'id' AS bigint), 0) "
        f"+ {nth}, 'at', now(), 'kind', {kind}) "
        f"|| jsonb_strip_nulls(jsonb_build_object('branch', {branch})) "
        f"|| CASE WHEN {detail} IS NULL THEN '{{}}'::jsonb "
        f"ELSE jsonb_build_object('detail', {detail}) END)"
    )


def append(timeline: str, kind: str, branch: str, detail: str) -> str:
    """SQL: ``timeline``, capped, with one event appended."""
    return f"({capped(timeline)} || jsonb_build_array({event(timeline, kind, branch, detail)}))"


def merged(branches: str, progress: str, match: str) -> str:
    """SQL: the ``branches`` array with each branch that ``progress`` (rows with ``status``,
    ``attempts``, ``last_error``, joined on ``match`` against ``b.ord - 1``, the branch index)
    has news of brought up to date, stamped now; the others as they were."""
    return (
        "(SELECT coalesce(jsonb_agg(CASE WHEN p.status IS NULL THEN b.value ELSE b.value || "
        "jsonb_build_object('status', p.status, 'attempts', p.attempts, "
        "'last_error', p.last_error, 'updated_at', now()) END ORDER BY b.ord), '[]') "
        f"FROM jsonb_array_elements({branches}) WITH ORDINALITY AS b(value, ord) "
        f"LEFT JOIN LATERAL ({progress}) AS p ON {match})"
    )


_PROGRESS_ARRAYS = (
    "SELECT u.status, u.attempts, u.last_error FROM unnest(CAST(:idx AS int[]), "
    "CAST(:bstatus AS text[]), CAST(:battempts AS int[]), CAST(:berror AS text[])) "
    "AS u(idx, status, attempts, last_error) WHERE u.idx = b.ord - 1"
)

# Rule 1: the transaction with its branches and its first event, one row, before any
# participant is called. ON CONFLICT keeps a resubmitted gid from changing anything.
INSERT_TXN = """
INSERT INTO transactions (gid, mode, status, request, request_hash, branches, timeline,
                          deadline_at, next_attempt_at, owner, lease_until, epoch)
SELECT :gid, :mode, :status, CAST(:request AS jsonb), :request_hash,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'participant', u.participant, 'action', u.action,
                    'compensation', u.compensation, 'payload', CAST(u.payload AS jsonb),
                    'status', 'pending', 'attempts', 0, 'last_error', NULL,
                    'updated_at', now())
                    || CASE WHEN u.confirm IS NULL THEN CAST('{}' AS jsonb)
                            ELSE jsonb_build_object('confirm', u.confirm) END
                    ORDER BY u.ord), '[]')
        FROM unnest(CAST(:participant AS text[]), CAST(:action AS text[]),
                    CAST(:compensation AS text[]), CAST(:payload AS text[]),
                    CAST(:confirm AS text[]))
             WITH ORDINALITY AS u(participant, action, compensation, payload, confirm, ord)),
       jsonb_build_array(jsonb_build_object('id', 1, 'at', now(), 'kind', 'submitted',
                                            'detail',
                                            jsonb_build_object('owner', CAST(:owner AS text)))),
       now() + make_interval(secs => :timeout_s),
       now() + make_interval(secs => :lease_s),
       :owner, now() + make_interval(secs => :lease_s), 1
ON CONFLICT (gid) DO NOTHING
RETURNING *, now() AS db_now
"""

# Rules 2, 3 and 5: a status change (the commit point among them) and the branches' progress in
# one fenced statement. No row means the epoch moved on, or the logged status may not be left
# for this one (a decision or an outcome): nothing is written.
WRITE_STATUS = (
    """
UPDATE transactions
SET status = :status, reason = :reason, updated_at = now(),
    branches = {merged},
    timeline = {append}
WHERE gid = :gid AND epoch = :epoch AND {may_follow}
RETURNING now() AS at
""".replace("{merged}", merged("branches", _PROGRESS_ARRAYS, "true"))
    .replace(
        "{append}",
        append(
            "timeline",
            "CAST(:event AS text)",
            "NULL",
            "jsonb_build_object('status', CAST(:status AS text), 'reason', CAST(:reason AS text), "
            "'epoch', CAST(:epoch AS bigint))",
        ),
    )
    .replace("{may_follow}", may_follow("status", "CAST(:status AS text)"))
)

# WRITE_STATUS for many transactions in one statement (coordinator/batch.py), each row fenced
# on its own epoch; the branches of every row are flattened into arrays keyed by gid. Used only
# for writes recovery would redo (rule 4): a 2PC outcome after its durable decision.
WRITE_STATUS_MANY = (
    """
WITH i AS (
    SELECT * FROM unnest(
        CAST(:gids AS text[]), CAST(:epochs AS bigint[]), CAST(:statuses AS text[]),
        CAST(:reasons AS text[]), CAST(:events AS text[])
    ) AS i(gid, epoch, status, reason, event)
), p AS (
    SELECT * FROM unnest(CAST(:bgids AS text[]), CAST(:idx AS int[]), CAST(:bstatus AS text[]),
                         CAST(:battempts AS int[]), CAST(:berror AS text[]))
           AS p(gid, idx, status, attempts, last_error)
), locked AS (
    SELECT tx.gid FROM transactions AS tx JOIN i ON tx.gid = i.gid AND tx.epoch = i.epoch
    WHERE {may_follow}
    ORDER BY tx.gid
    FOR UPDATE OF tx
)
UPDATE transactions
SET status = i.status, reason = i.reason, updated_at = now(),
    branches = {merged},
    timeline = {append}
FROM locked JOIN i ON i.gid = locked.gid
WHERE transactions.gid = locked.gid
RETURNING transactions.gid, now() AS at
""".replace("{may_follow}", may_follow("tx.status", "i.status"))
    .replace(
        "{merged}",
        merged(
            "transactions.branches",
            "SELECT p.status, p.attempts, p.last_error FROM p "
            "WHERE p.gid = transactions.gid AND p.idx = b.ord - 1",
            "true",
        ),
    )
    .replace(
        "{append}",
        append(
            "transactions.timeline",
            "i.event",
            "NULL",
            "jsonb_build_object('status', i.status, 'reason', i.reason, 'epoch', i.epoch)",
        ),
    )
)

# Fenced like WRITE_STATUS. Backoff: initial * 2^attempts, capped, with full jitter in [0.5, 1],
# computed by the database so no coordinator clock is involved. The lease is released (set to
# now()) so whichever instance is free claims the transaction when it is due.
RESCHEDULE = """
WITH d AS (
    SELECT least(CAST(:max_s AS float8),
                 CAST(:initial_s AS float8) * power(2, least(attempts, 30)))
           * (0.5 + random() / 2) AS delay
    FROM transactions WHERE gid = :gid AND epoch = :epoch
)
UPDATE transactions
SET attempts = attempts + 1, updated_at = now(), lease_until = now(),
    next_attempt_at = now() + make_interval(secs => (SELECT delay FROM d)),
    branches = {merged},
    timeline = {append}
WHERE gid = :gid AND epoch = :epoch
RETURNING (SELECT delay FROM d) AS delay
""".replace("{merged}", merged("branches", _PROGRESS_ARRAYS, "true")).replace(
    "{append}",
    append(
        "timeline",
        "'rescheduled'",
        "NULL",
        "jsonb_build_object('delay_s', (SELECT delay FROM d))",
    ),
)

# Recovery's claim: one statement takes a batch of due work; "due" and the lease use the
# database clock only (rule 6). SKIP LOCKED lets instances claim
# concurrently without waiting on each other; the epoch bump fences out any previous driver;
# ``own_before`` (at start-up) takes back what this instance id held before it restarted, lease
# or not: only rows last written before this incarnation read the log's clock, never one it has
# just inserted or claimed itself (that would fence out its own driver).
CLAIM = """
WITH due AS (
    SELECT gid FROM transactions
    WHERE live
      AND ((next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now()))
           OR (owner = :owner AND updated_at < CAST(:own_before AS timestamptz)))
    ORDER BY next_attempt_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE transactions AS tx
SET owner = :owner, epoch = tx.epoch + 1, updated_at = now(),
    lease_until = now() + make_interval(secs => :lease_s),
    timeline = {append}
FROM due WHERE tx.gid = due.gid
RETURNING tx.*, now() AS db_now
""".replace(
    "{append}",
    append(
        "tx.timeline",
        "'claimed'",
        "NULL",
        "jsonb_build_object('owner', CAST(:owner AS text), 'epoch', tx.epoch + 1)",
    ),
)

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
    WHERE tx.owner = :owner AND tx.live
    ORDER BY tx.gid
    FOR UPDATE OF tx
)
UPDATE transactions AS tx SET lease_until = now() + make_interval(secs => :lease_s)
FROM locked
-- Only a lease still held: one a reschedule released (lease_until = its now()) or one that
-- lapsed is never extended again, even by a renewal that was already on its way. The clock
-- is read now, after the row lock: a renewal that waited on a reschedule's lock must see the
-- release as past (now() is this statement's start, which may precede it).
WHERE tx.gid = locked.gid AND tx.lease_until > clock_timestamp()
RETURNING tx.gid
"""

# Metrics: live transactions by status; the partial index keeps this cheap with any history.
LIVE_SUMMARY = """
SELECT status, count(*) AS n, count(*) FILTER (WHERE attempts >= :stuck) AS stuck,
       EXTRACT(EPOCH FROM now() - min(created_at)) AS oldest
FROM transactions WHERE live
GROUP BY status
"""

# A saga step's progress: one branch and its event, fenced like every driver write (rule 5).
# Run on a connection with synchronous_commit off (rule 4): if the log's server crashes before
# the WAL is flushed, the write is lost and recovery redoes the step (the barrier dedups it).
# The coordinator sends this one-row form for a lone write and WRITE_PROGRESS_MANY (below) for
# several (coordinator/batch.py); the bench's design floor sends this one for every step.
WRITE_PROGRESS = """
UPDATE transactions
SET updated_at = now(),
    branches = jsonb_set(branches, ARRAY[CAST(CAST(:branch AS int) AS text)],
                         (branches -> CAST(:branch AS int)) || jsonb_build_object(
                             'status', CAST(:status AS text),
                             'attempts', CAST(:attempts AS int),
                             'last_error', CAST(:last_error AS text), 'updated_at', now())),
    timeline = {append}
WHERE gid = :gid AND epoch = :epoch
RETURNING 1
""".replace(
    "{append}",
    append("timeline", "CAST(:event AS text)", "CAST(:branch AS int)", "CAST(:detail AS jsonb)"),
)

# WRITE_PROGRESS for many transactions in one statement (coordinator/batch.py), each row
# fenced on its own epoch; returns the gids found at their epoch. Several rows may be one
# transaction's (parallel saga steps): its branches and timeline take them all, in order.
WRITE_PROGRESS_MANY = """
WITH i AS (
    SELECT * FROM unnest(
        CAST(:gids AS text[]), CAST(:epochs AS bigint[]), CAST(:branches AS int[]),
        CAST(:statuses AS text[]), CAST(:attempts AS int[]), CAST(:last_errors AS text[]),
        CAST(:events AS text[]), CAST(:details AS text[])
    ) WITH ORDINALITY AS i(gid, epoch, branch, status, attempts, last_error, event, detail, ord)
), locked AS (
    SELECT tx.gid FROM transactions AS tx
    WHERE (tx.gid, tx.epoch) IN (SELECT i.gid, i.epoch FROM i)
    ORDER BY tx.gid
    FOR UPDATE OF tx
)
UPDATE transactions
SET updated_at = now(),
    branches = {merged},
    timeline = {appended}
FROM locked WHERE transactions.gid = locked.gid
RETURNING transactions.gid
""".replace(
    "{merged}",
    merged(
        "transactions.branches",
        "SELECT i.status, i.attempts, i.last_error FROM i "
        "WHERE i.gid = transactions.gid AND i.branch = b.ord - 1 ORDER BY i.ord DESC LIMIT 1",
        "true",
    ),
).replace(
    "{appended}",
    "("
    + capped("transactions.timeline")
    + " || (SELECT jsonb_agg("
    + event("transactions.timeline", "i.event", "i.branch", "CAST(i.detail AS jsonb)", "n.nth")
    + " ORDER BY i.ord) FROM i, LATERAL (SELECT count(*) AS nth FROM i AS j "
    "WHERE j.gid = i.gid AND j.ord <= i.ord) AS n WHERE i.gid = transactions.gid))",
)

# Doubt resolution: asked about a 2PC transaction still `preparing` whose owner's lease ran out,
# decide abort (presumed abort) before answering. The epoch bump fences the old driver, should
# it wake up; the asker becomes the owner and drives the rollbacks. Guarded by the lease, so a
# live owner is never overruled.
ABORT_ORPHAN = """
UPDATE transactions
SET status = 'aborting', reason = :reason, epoch = epoch + 1, owner = :owner,
    lease_until = now() + make_interval(secs => :lease_s), updated_at = now(),
    next_attempt_at = now(),
    timeline = {append}
WHERE gid = :gid AND mode = '2pc' AND status = 'preparing'
  AND (lease_until IS NULL OR lease_until < now())
RETURNING *, now() AS db_now
""".replace(
    "{append}",
    append(
        "timeline",
        "'decided'",
        "NULL",
        "jsonb_build_object('status', 'aborting', 'reason', CAST(:reason AS text), "
        "'epoch', epoch + 1, 'owner', CAST(:owner AS text))",
    ),
)

# One transaction, its branches and timeline in its row (the API's reads and waits).
GET_TXN = "SELECT * FROM transactions WHERE gid = :gid"

# An operator's action (coordinator/intervention.py): fenced on the epoch, the status and the
# branch's status it was planned from, and (retry, resolve) on no live lease, so it and a
# driver's write cannot both succeed. Like a claim it moves the epoch on and hands the
# transaction to the acting instance, due now; the event names the operator and the note.
INTERVENE = """
UPDATE transactions
SET status = :new_status, reason = coalesce(CAST(:reason AS text), reason),
    epoch = epoch + 1, owner = :owner, updated_at = now(),
    lease_until = now() + make_interval(secs => :lease_s), next_attempt_at = now(),
    attempts = CASE WHEN CAST(:reset AS boolean) THEN 0 ELSE attempts END,
    branches = CASE WHEN CAST(:branch AS int) IS NULL THEN branches
               ELSE jsonb_set(branches, ARRAY[CAST(CAST(:branch AS int) AS text)],
                              (branches -> CAST(:branch AS int)) || jsonb_build_object(
                                  'status', CAST(:branch_new_status AS text),
                                  'resolved_by', CAST(:by AS text), 'updated_at', now()))
               END,
    timeline = {append}
WHERE gid = :gid AND epoch = :epoch AND status = :status
  AND (NOT CAST(:unleased AS boolean) OR lease_until IS NULL OR lease_until < now())
  AND (CAST(:branch AS int) IS NULL
       OR branches -> CAST(:branch AS int) ->> 'status' = CAST(:branch_status AS text))
RETURNING *, now() AS db_now
""".replace(
    "{append}",
    append(
        "timeline",
        "CAST(:event AS text)",
        "CAST(:branch AS int)",
        "jsonb_build_object('by', CAST(:by AS text), 'note', CAST(:note AS text), "
        "'status', CAST(:new_status AS text), 'epoch', epoch + 1)",
    ),
)

# Retention: finished transactions whose last write is older than the retention, oldest first,
# in one bounded batch. Only while this statement holds the log's retention lock (an advisory
# lock for this transaction only), so one coordinator purges at a time and the others' rounds
# delete nothing. A live transaction is never touched, however old.
PURGE = """
WITH gate AS (SELECT pg_try_advisory_xact_lock(CAST(:lock AS bigint)) AS ok),
victims AS (
    SELECT gid FROM transactions
    WHERE (SELECT ok FROM gate) AND NOT live
      AND created_at < now() - make_interval(secs => :older_than_s)
      AND updated_at < now() - make_interval(secs => :older_than_s)
    ORDER BY created_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
DELETE FROM transactions AS tx USING victims WHERE tx.gid = victims.gid
RETURNING tx.gid
"""

# What PURGE would delete, all batches together (``txn retention --dry-run``).
PURGEABLE = """
SELECT count(*) AS n FROM transactions
WHERE NOT live
  AND created_at < now() - make_interval(secs => :older_than_s)
  AND updated_at < now() - make_interval(secs => :older_than_s)
"""

# Participants' barrier retention asks which of its gids ended, and how long ago (one read).
ENDED = """
SELECT gid, live, EXTRACT(EPOCH FROM now() - updated_at)::float8 AS ago
FROM transactions WHERE gid = ANY(CAST(:gids AS text[]))
"""

# At start: how far the leases of this instance id reach (another live process with the same
# id keeps pushing it forward).
LEASE_HORIZON = "SELECT max(lease_until) FROM transactions WHERE live AND owner = :owner"

# The advisory lock key of the retention round (any constant the application does not use
# elsewhere): "txn-retention" as a number.
RETENTION_LOCK = 0x74786E2D726574
