from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
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

reservations = Table(
    "reservations",
    metadata,
    Column("order_id", Text, nullable=False),
    Column("sku", Text, nullable=False),
    Column("qty", Integer, nullable=False),
    Column("status", Text, nullable=False),
    PrimaryKeyConstraint("order_id", "sku", name="reservations_pkey"),
    CheckConstraint("qty > 0", name="reservations_qty_check"),
    CheckConstraint("status IN ('reserved', 'released')", name="reservations_status_check"),
)

barrier = barrier_table(metadata)
