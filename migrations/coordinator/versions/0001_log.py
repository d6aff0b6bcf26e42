"""The durable transaction log: transactions, branches, events.

Revision ID: 0001_log
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001_log"
down_revision = None
branch_labels = None
depends_on = None

LIVE = sa.text("status NOT IN ('committed', 'aborted')")


def upgrade() -> None:
    op.create_table(
        "transactions",
        sa.Column("gid", sa.Text, primary_key=True),
        sa.Column("mode", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("request", JSONB, nullable=False),
        sa.Column("request_hash", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("owner", sa.Text),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
        sa.Column("epoch", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    )
    op.create_index("transactions_due", "transactions", ["next_attempt_at"], postgresql_where=LIVE)
    op.create_index("transactions_owner_live", "transactions", ["owner"], postgresql_where=LIVE)
    op.create_index("transactions_created", "transactions", ["created_at", "gid"])
    op.create_index("transactions_status_created", "transactions", ["status", "created_at", "gid"])
    op.create_table(
        "branches",
        sa.Column("gid", sa.Text, nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("participant", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("compensation", sa.Text),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("gid", "idx", name="branches_pkey"),
        sa.ForeignKeyConstraint(
            ["gid"], ["transactions.gid"], name="branches_gid_fkey", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("gid", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("branch", sa.Integer),
        sa.Column("detail", JSONB),
    )
    op.create_index("events_gid", "events", ["gid", "id"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("branches")
    op.drop_table("transactions")
