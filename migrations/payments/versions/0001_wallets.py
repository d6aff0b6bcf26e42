"""Payments: wallets, payments and the participant barrier.

Revision ID: 0001_wallets
Revises:
"""

import sqlalchemy as sa
from alembic import op

from participants.sdk.schema import create_barrier_table

revision = "0001_wallets"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "wallets",
        sa.Column("customer", sa.Text, primary_key=True),
        sa.Column("balance", sa.BigInteger, nullable=False),
        sa.CheckConstraint("balance >= 0", name="wallets_balance_check"),
    )
    op.create_table(
        "payments",
        sa.Column("order_id", sa.Text, primary_key=True),
        sa.Column("customer", sa.Text, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.CheckConstraint("amount > 0", name="payments_amount_check"),
        sa.CheckConstraint("status IN ('captured', 'refunded')", name="payments_status_check"),
    )
    create_barrier_table(op)


def downgrade() -> None:
    op.drop_table("txn_barrier")
    op.drop_table("payments")
    op.drop_table("wallets")
