"""Orders: the index barrier retention reads (txn_barrier.created_at).

Revision ID: 0002_barrier_retention
Revises: 0001_orders
"""

from alembic import op

from participants.sdk.schema import create_barrier_retention_index, drop_barrier_retention_index

revision = "0002_barrier_retention"
down_revision = "0001_orders"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_barrier_retention_index(op)


def downgrade() -> None:
    drop_barrier_retention_index(op)
