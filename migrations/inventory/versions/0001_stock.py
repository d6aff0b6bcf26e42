"""Inventory: stock, reservations and the participant barrier.

Revision ID: 0001_stock
Revises:
"""

import sqlalchemy as sa
from alembic import op

from participants.sdk.schema import create_barrier_table

revision = "0001_stock"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stock",
        sa.Column("sku", sa.Text, primary_key=True),
        sa.Column("available", sa.Integer, nullable=False),
        sa.Column("reserved", sa.Integer, nullable=False),
        sa.CheckConstraint("available >= 0", name="stock_available_check"),
        sa.CheckConstraint("reserved >= 0", name="stock_reserved_check"),
    )
    op.create_table(
        "reservations",
        sa.Column("order_id", sa.Text, nullable=False),
        sa.Column("sku", sa.Text, nullable=False),
        sa.Column("qty", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("order_id", "sku", name="reservations_pkey"),
        sa.CheckConstraint("qty > 0", name="reservations_qty_check"),
        sa.CheckConstraint("status IN ('reserved', 'released')", name="reservations_status_check"),
    )
    create_barrier_table(op)


def downgrade() -> None:
    op.drop_table("txn_barrier")
    op.drop_table("reservations")
    op.drop_table("stock")
