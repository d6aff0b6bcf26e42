"""Ledger: accounts.frozen, the amount TCC tries hold until confirmed or cancelled.

Revision ID: 0003_frozen
Revises: 0002_barrier_retention
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_frozen"
down_revision = "0002_barrier_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting the table.
    op.add_column(
        "accounts",
        sa.Column("frozen", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    )
    op.create_check_constraint(
        "accounts_frozen_check", "accounts", "frozen >= 0 AND balance - frozen >= 0"
    )


def downgrade() -> None:
    op.drop_constraint("accounts_frozen_check", "accounts", type_="check")
    op.drop_column("accounts", "frozen")
