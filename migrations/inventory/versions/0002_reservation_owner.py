"""Inventory: a reservation row records the branch that made it, (gid, branch), so a
compensation releases only its own rows; an order holds one live reservation per SKU.

Rows from before this revision get gid ``before-0002:<order_id>`` and branch -1, which no
coordinator branch ever has: upgrade with no saga of the shop in flight (docs/demo.md).

Revision ID: 0002_reservation_owner
Revises: 0001_stock
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_reservation_owner"
down_revision = "0001_stock"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("reservations", sa.Column("gid", sa.Text))
    op.add_column("reservations", sa.Column("branch", sa.Integer))
    op.execute("UPDATE reservations SET gid = 'before-0002:' || order_id, branch = -1")
    op.alter_column("reservations", "gid", nullable=False)
    op.alter_column("reservations", "branch", nullable=False)
    op.drop_constraint("reservations_pkey", "reservations", type_="primary")
    op.create_primary_key("reservations_pkey", "reservations", ["gid", "branch", "sku"])
    op.create_index(
        "reservations_held_once",
        "reservations",
        ["order_id", "sku"],
        unique=True,
        postgresql_where=sa.text("status = 'reserved'"),
    )


def downgrade() -> None:
    op.drop_index("reservations_held_once", table_name="reservations")
    # The old key allows one row per (order, SKU): keep the live one, drop released history.
    op.execute(
        "DELETE FROM reservations WHERE ctid IN (SELECT ctid FROM (SELECT ctid, row_number() "
        "OVER (PARTITION BY order_id, sku ORDER BY status = 'reserved' DESC) AS n "
        "FROM reservations) AS ranked WHERE n > 1)"
    )
    op.drop_constraint("reservations_pkey", "reservations", type_="primary")
    op.create_primary_key("reservations_pkey", "reservations", ["order_id", "sku"])
    op.drop_column("reservations", "branch")
    op.drop_column("reservations", "gid")
