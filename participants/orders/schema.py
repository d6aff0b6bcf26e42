from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    MetaData,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

from participants.sdk.schema import barrier_table

metadata = MetaData()

orders = Table(
    "orders",
    metadata,
    Column("id", Text, primary_key=True),
    Column("customer", Text, nullable=False),
    Column("items", JSONB, nullable=False),
    Column("destination", Text, nullable=False),
    Column("mode", Text, nullable=False),
    Column("total", BigInteger, nullable=False),
    Column("status", Text, nullable=False),
    Column("reason", Text),
    Column("gid", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("status IN ('pending', 'confirmed', 'cancelled')", name="orders_status_check"),
    CheckConstraint("mode IN ('2pc', 'saga')", name="orders_mode_check"),
    Index("orders_status_created_idx", "status", "created_at"),
)

barrier = barrier_table(metadata)
