"""One row per transaction: branches and timeline move into the transactions row.

The branches table becomes the ``branches`` jsonb array and the events table the ``timeline``
jsonb array of their transaction's row (the request keeps all but its branches); the partial
indexes test the generated ``live`` column, not the status, so a decision is a HOT update; the
two indexes no statement needs (the owner's live rows, status with creation time) go. Rewrites
the table: on a long history, run it in a quiet hour (docs/operations.md).

Revision ID: 0002_one_row
Revises: 0001_log
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002_one_row"
down_revision = "0001_log"
branch_labels = None
depends_on = None

LIVE = "status NOT IN ('committed', 'aborted')"


def upgrade() -> None:
    op.add_column("transactions", sa.Column("branches", JSONB, nullable=True))
    op.add_column(
        "transactions",
        sa.Column("timeline", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    )
    op.add_column(
        "transactions",
        sa.Column("live", sa.Boolean, sa.Computed(LIVE, persisted=True), nullable=False),
    )
    op.execute(
        """
        UPDATE transactions AS t SET
            request = t.request - 'branches',
            branches = coalesce((
                SELECT jsonb_agg(jsonb_build_object(
                    'participant', b.participant, 'action', b.action,
                    'compensation', b.compensation, 'payload', b.payload, 'status', b.status,
                    'attempts', b.attempts, 'last_error', b.last_error,
                    'updated_at', b.updated_at) ORDER BY b.idx)
                FROM branches AS b WHERE b.gid = t.gid), '[]'),
            timeline = coalesce((
                SELECT jsonb_agg(jsonb_build_object(
                    'id', e.n, 'at', e.at, 'kind', e.kind, 'branch', e.branch,
                    'detail', e.detail) ORDER BY e.n)
                FROM (SELECT *, row_number() OVER (ORDER BY id) AS n
                      FROM events WHERE events.gid = t.gid) AS e), '[]')
        """
    )
    op.alter_column("transactions", "branches", nullable=False)
    op.drop_table("events")
    op.drop_table("branches")
    op.drop_index("transactions_owner_live", table_name="transactions")
    op.drop_index("transactions_status_created", table_name="transactions")
    op.drop_index("transactions_due", table_name="transactions")
    op.create_index(
        "transactions_due", "transactions", ["next_attempt_at"], postgresql_where=sa.text("live")
    )
    op.execute("ALTER TABLE transactions SET (fillfactor = 70)")


def downgrade() -> None:
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
    op.execute(
        """
        INSERT INTO branches (gid, idx, participant, action, compensation, payload, status,
                              attempts, last_error, updated_at)
        SELECT t.gid, CAST(b.ord - 1 AS int), b.value ->> 'participant', b.value ->> 'action',
               b.value ->> 'compensation', b.value -> 'payload', b.value ->> 'status',
               CAST(b.value ->> 'attempts' AS int), b.value ->> 'last_error',
               CAST(b.value ->> 'updated_at' AS timestamptz)
        FROM transactions AS t, jsonb_array_elements(t.branches) WITH ORDINALITY AS b(value, ord)
        """
    )
    op.execute(
        """
        INSERT INTO events (gid, at, kind, branch, detail)
        SELECT t.gid, CAST(e.value ->> 'at' AS timestamptz), e.value ->> 'kind',
               CAST(e.value ->> 'branch' AS int), e.value -> 'detail'
        FROM transactions AS t, jsonb_array_elements(t.timeline) WITH ORDINALITY AS e(value, ord)
        ORDER BY t.gid, e.ord
        """
    )
    op.drop_index("transactions_due", table_name="transactions")
    op.drop_column("transactions", "live")
    op.drop_column("transactions", "timeline")
    op.drop_column("transactions", "branches")
    op.execute("ALTER TABLE transactions RESET (fillfactor)")
    where = sa.text(LIVE)
    op.create_index("transactions_due", "transactions", ["next_attempt_at"], postgresql_where=where)
    op.create_index("transactions_owner_live", "transactions", ["owner"], postgresql_where=where)
    op.create_index("transactions_status_created", "transactions", ["status", "created_at", "gid"])
