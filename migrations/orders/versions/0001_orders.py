"""Orders: the shop's orders and the participant barrier.

Revision ID: 0001_orders
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from participants.sdk.schema import create_barrier_table

revision = "0001_orders"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("customer", sa.Text, nullable=False),
        sa.Column("items", JSONB, nullable=False),
        sa.Column("destination", sa.Text, nullable=False),
        sa.Column("mode", sa.Text, nullable=False),
        sa.Column("total", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("gid", sa.Text, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'confirmed', 'cancelled')", name="orders_status_check"
        ),
        sa.CheckConstraint("mode IN ('2pc', 'saga')", name="orders_mode_check"),
    )
    op.create_index("orders_status_created_idx", "orders", ["status", "created_at"])
    create_barrier_table(op)


def downgrade() -> None:
    op.drop_table("txn_barrier")
    op.drop_index("orders_status_created_idx", table_name="orders")
    op.drop_table("orders")
