"""The barrier table every participant keeps in its own database, in the same transaction as its
business change (DTM learned the hard way that it must not live anywhere else: dtm#559)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
)

BARRIER = "txn_barrier"
# Barrier retention walks old rows in created_at order, batch after batch, each batch starting
# where the last ended (a BRIN index cannot order, so every batch re-read the rows deleted
# before it; docs/decisions.md, "Barrier retention's index").
RETENTION_INDEX = "txn_barrier_created_at"


def _columns() -> list[Any]:
    """``op``: '2pc' for two-phase branches (one row per branch: prepared, rolled back or voted
    no); the saga ops get rows of their own. The primary key serializes racing calls."""
    return [
        Column("gid", Text, nullable=False),
        Column("branch", Integer, nullable=False),
        Column("op", Text, nullable=False),
        Column("outcome", Text, nullable=False),
        Column("reason", Text),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        PrimaryKeyConstraint("gid", "branch", "op", name="txn_barrier_pkey"),
    ]


def barrier_table(metadata: MetaData) -> Table:
    table = Table(BARRIER, metadata, *_columns())
    Index(RETENTION_INDEX, table.c.created_at)
    return table


def create_barrier_table(op: Any) -> None:
    """For a participant's Alembic migration: ``create_barrier_table(op)``, then
    ``create_barrier_retention_index(op)``."""
    op.create_table(BARRIER, *_columns())


def create_barrier_retention_index(op: Any) -> None:
    """For a participant's Alembic migration: the index barrier retention reads."""
    op.create_index(RETENTION_INDEX, BARRIER, ["created_at"])


def drop_barrier_retention_index(op: Any) -> None:
    op.drop_index(RETENTION_INDEX, table_name=BARRIER)
