from __future__ import annotations

from sqlalchemy import CheckConstraint, Column, MetaData, Table, Text

from participants.sdk.schema import barrier_table

metadata = MetaData()

shipments = Table(
    "shipments",
    metadata,
    Column("order_id", Text, primary_key=True),
    Column("destination", Text, nullable=False),
    Column("status", Text, nullable=False),
    CheckConstraint("status IN ('created', 'cancelled')", name="shipments_status_check"),
)

barrier = barrier_table(metadata)
