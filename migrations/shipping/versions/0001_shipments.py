"""Shipping: shipments and the participant barrier.

Revision ID: 0001_shipments
Revises:
"""

import sqlalchemy as sa
from alembic import op

from participants.sdk.schema import create_barrier_table

revision = "0001_shipments"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shipments",
        sa.Column("order_id", sa.Text, primary_key=True),
        sa.Column("destination", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.CheckConstraint("status IN ('created', 'cancelled')", name="shipments_status_check"),
    )
    create_barrier_table(op)


def downgrade() -> None:
    op.drop_table("txn_barrier")
    op.drop_table("shipments")
