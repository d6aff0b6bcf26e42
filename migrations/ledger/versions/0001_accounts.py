"""Ledger: accounts and the participant barrier.

Revision ID: 0001_accounts
Revises:
"""

import sqlalchemy as sa
from alembic import op

from participants.sdk.schema import create_barrier_table

revision = "0001_accounts"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("balance", sa.BigInteger, nullable=False),
        sa.CheckConstraint("balance >= 0", name="accounts_balance_check"),
    )
    create_barrier_table(op)


def downgrade() -> None:
    op.drop_table("txn_barrier")
    op.drop_table("accounts")
