from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Column, MetaData, Table, Text

from participants.sdk.schema import barrier_table

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", Text, primary_key=True),
    Column("balance", BigInteger, nullable=False),
    CheckConstraint("balance >= 0", name="accounts_balance_check"),
)

barrier = barrier_table(metadata)
