"""The durable log's table (SQLAlchemy Core). Alembic migrations create it; a test checks that
the migrated database matches this metadata."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Computed,
    DateTime,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

TERMINAL = ("committed", "aborted")
LIVE_SQL = "status NOT IN ('committed', 'aborted')"
FILLFACTOR = 70
# Where a status write may go from a decided or terminal status: a decision is never undone, an
# outcome never changed. A write of anything else is refused like a fenced one (the driver
# stops). Statuses not listed (preparing, running) are not restricted.
NEXT_STATUS: dict[str, frozenset[str]] = {
    "committed": frozenset(),
    "aborted": frozenset(),
    "committing": frozenset({"committing", "committed"}),
    "aborting": frozenset({"aborting", "aborted"}),
    "compensating": frozenset({"compensating", "aborted"}),
}

# The timeline a row keeps (coordinator/queries.py, ``capped``): the first TIMELINE_HEAD events
# and the latest ones, TIMELINE_MAX in all.
TIMELINE_HEAD = 16
TIMELINE_MAX = 64

# One row per transaction: its status, its branches' specs and progress (``branches``: a jsonb
# array, one object per branch in index order) and its timeline (``timeline``: a jsonb array of
# events), so each log write is one row updated. ``live`` (generated from the status) is what
# the partial index tests, not the status itself: a status change between two live statuses (a
# decision) then touches no indexed column, and Postgres makes it a HOT update that writes no
# index entry. fillfactor leaves each page room for those updates.
transactions = Table(
    "transactions",
    metadata,
    Column("gid", Text, primary_key=True),
    Column("mode", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("request", JSONB, nullable=False),
    Column("request_hash", Text, nullable=False),
    Column("reason", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("deadline_at", DateTime(timezone=True), nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("owner", Text),
    Column("lease_until", DateTime(timezone=True)),
    Column("epoch", BigInteger, nullable=False, server_default=text("0")),
    Column("branches", JSONB, nullable=False),
    Column("timeline", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("live", Boolean, Computed(LIVE_SQL, persisted=True), nullable=False),
    # Claims scan only live rows: the partial index keeps them cheap however long the history.
    Index("transactions_due", "next_attempt_at", postgresql_where=text("live")),
    Index("transactions_created", "created_at", "gid"),
    postgresql_with={"fillfactor": FILLFACTOR},
)
