"""Payments: a payment row records the branch that made it, (gid, branch), so a compensation
refunds only its own payment; an order has at most one captured payment.

Rows from before this revision get gid ``before-0002:<order_id>`` and branch -1, which no
coordinator branch ever has: upgrade with no saga of the shop in flight (docs/demo.md).

Revision ID: 0002_payment_owner
Revises: 0001_wallets
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_payment_owner"
down_revision = "0001_wallets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("payments", sa.Column("gid", sa.Text))
    op.add_column("payments", sa.Column("branch", sa.Integer))
    op.execute("UPDATE payments SET gid = 'before-0002:' || order_id, branch = -1")
    op.alter_column("payments", "gid", nullable=False)
    op.alter_column("payments", "branch", nullable=False)
    op.drop_constraint("payments_pkey", "payments", type_="primary")
    op.create_primary_key("payments_pkey", "payments", ["gid", "branch"])
    op.create_index(
        "payments_captured_once",
        "payments",
        ["order_id"],
        unique=True,
        postgresql_where=sa.text("status = 'captured'"),
    )


def downgrade() -> None:
    op.drop_index("payments_captured_once", table_name="payments")
    # The old key allows one row per order: keep the captured one, drop refunded history.
    op.execute(
        "DELETE FROM payments WHERE ctid IN (SELECT ctid FROM (SELECT ctid, row_number() "
        "OVER (PARTITION BY order_id ORDER BY status = 'captured' DESC) AS n "
        "FROM payments) AS ranked WHERE n > 1)"
    )
    op.drop_constraint("payments_pkey", "payments", type_="primary")
    op.create_primary_key("payments_pkey", "payments", ["order_id"])
    op.drop_column("payments", "branch")
    op.drop_column("payments", "gid")
