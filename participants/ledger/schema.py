from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Column, MetaData, Table, Text, text

from participants.sdk.schema import barrier_table

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", Text, primary_key=True),
    Column("balance", BigInteger, nullable=False),
    # Held by TCC tries until their confirm spends it or their cancel releases it.
    Column("frozen", BigInteger, nullable=False, server_default=text("0")),
    CheckConstraint("balance >= 0", name="accounts_balance_check"),
    CheckConstraint("frozen >= 0 AND balance - frozen >= 0", name="accounts_frozen_check"),
)

barrier = barrier_table(metadata)
