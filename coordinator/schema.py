"""The durable log's tables (SQLAlchemy Core). Alembic migrations create them; a test checks
that the migrated database matches this metadata."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

TERMINAL = ("committed", "aborted")
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
    # Claims scan only live rows: the partial index keeps them cheap however long the history.
    Index(
        "transactions_due",
        "next_attempt_at",
        postgresql_where=text("status NOT IN ('committed', 'aborted')"),
    ),
    Index(
        "transactions_owner_live",
        "owner",
        postgresql_where=text("status NOT IN ('committed', 'aborted')"),
    ),
    Index("transactions_created", "created_at", "gid"),
    Index("transactions_status_created", "status", "created_at", "gid"),
)

branches = Table(
    "branches",
    metadata,
    Column("gid", Text, nullable=False),
    Column("idx", Integer, nullable=False),
    Column("participant", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("compensation", Text),
    Column("payload", JSONB, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("gid", "idx", name="branches_pkey"),
    ForeignKeyConstraint(
        ["gid"], ["transactions.gid"], name="branches_gid_fkey", ondelete="CASCADE"
    ),
)

events = Table(
    "events",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("gid", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("kind", Text, nullable=False),
    Column("branch", Integer),
    Column("detail", JSONB),
    Index("events_gid", "gid", "id"),
)
