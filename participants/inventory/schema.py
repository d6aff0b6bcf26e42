from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)

from participants.sdk.schema import barrier_table

metadata = MetaData()

stock = Table(
    "stock",
    metadata,
    Column("sku", Text, primary_key=True),
    Column("available", Integer, nullable=False),
    Column("reserved", Integer, nullable=False),
    CheckConstraint("available >= 0", name="stock_available_check"),
    CheckConstraint("reserved >= 0", name="stock_reserved_check"),
)

# A row belongs to the branch that made it, (gid, branch): its compensation releases exactly
# those rows, never another transaction's reservation of the same order. An order holds at most
# one live reservation per SKU (the partial unique index); released rows stay as history.
reservations = Table(
    "reservations",
    metadata,
    Column("gid", Text, nullable=False),
    Column("branch", Integer, nullable=False),
    Column("order_id", Text, nullable=False),
    Column("sku", Text, nullable=False),
    Column("qty", Integer, nullable=False),
    Column("status", Text, nullable=False),
    PrimaryKeyConstraint("gid", "branch", "sku", name="reservations_pkey"),
    CheckConstraint("qty > 0", name="reservations_qty_check"),
    CheckConstraint("status IN ('reserved', 'released')", name="reservations_status_check"),
    Index(
        "reservations_held_once",
        "order_id",
        "sku",
        unique=True,
        postgresql_where=text("status = 'reserved'"),
    ),
)

barrier = barrier_table(metadata)
