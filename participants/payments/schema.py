from __future__ import annotations

from sqlalchemy import (
    BigInteger,
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

wallets = Table(
    "wallets",
    metadata,
    Column("customer", Text, primary_key=True),
    Column("balance", BigInteger, nullable=False),
    CheckConstraint("balance >= 0", name="wallets_balance_check"),
)

# A payment belongs to the branch that made it, (gid, branch): its compensation refunds exactly
# that row. An order has at most one captured payment (the partial unique index); refunded rows
# stay as history.
payments = Table(
    "payments",
    metadata,
    Column("gid", Text, nullable=False),
    Column("branch", Integer, nullable=False),
    Column("order_id", Text, nullable=False),
    Column("customer", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("status", Text, nullable=False),
    PrimaryKeyConstraint("gid", "branch", name="payments_pkey"),
    CheckConstraint("amount > 0", name="payments_amount_check"),
    CheckConstraint("status IN ('captured', 'refunded')", name="payments_status_check"),
    Index(
        "payments_captured_once",
        "order_id",
        unique=True,
        postgresql_where=text("status = 'captured'"),
    ),
)

barrier = barrier_table(metadata)
