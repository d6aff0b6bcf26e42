from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Column, MetaData, Table, Text

from participants.sdk.schema import barrier_table

metadata = MetaData()

wallets = Table(
    "wallets",
    metadata,
    Column("customer", Text, primary_key=True),
    Column("balance", BigInteger, nullable=False),
    CheckConstraint("balance >= 0", name="wallets_balance_check"),
)

payments = Table(
    "payments",
    metadata,
    Column("order_id", Text, primary_key=True),
    Column("customer", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("status", Text, nullable=False),
    CheckConstraint("amount > 0", name="payments_amount_check"),
    CheckConstraint("status IN ('captured', 'refunded')", name="payments_status_check"),
)

barrier = barrier_table(metadata)
