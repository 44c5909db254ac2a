"""test_bench: bench tests and their data chunks (cloud.testbench)

Revision ID: 9d4f6a2b3c85
Revises: 8c3e5f1a2b74
Create Date: 2026-11-25 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9d4f6a2b3c85"
down_revision: str | None = "8c3e5f1a2b74"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bench_tests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("test_type", sa.String(length=30), nullable=False),
        sa.Column("level", sa.String(length=10), nullable=False),
        sa.Column("unit_under_test", sa.String(length=100), nullable=False),
        sa.Column("bench", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("variables", sa.JSON(), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=True),
        sa.Column("outcome", sa.JSON(), nullable=True),
        sa.Column("n_samples", sa.Integer(), nullable=False),
        sa.Column("requested_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["requested_by_id"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("uuid"),
    )
    op.create_index("ix_bench_tests_test_type", "bench_tests", ["test_type"])
    op.create_index("ix_bench_tests_unit_under_test", "bench_tests", ["unit_under_test"])
    op.create_index("ix_bench_tests_status", "bench_tests", ["status"])
    op.create_index("ix_bench_tests_scheduled_at", "bench_tests", ["scheduled_at"])
    op.create_table(
        "bench_test_chunks",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("test_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("t_start_s", sa.Float(), nullable=False),
        sa.Column("t_end_s", sa.Float(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["test_id"], ["bench_tests.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_bench_test_chunks_test_seq", "bench_test_chunks", ["test_id", "seq"], unique=True
    )


def downgrade() -> None:
    op.drop_index("ix_bench_test_chunks_test_seq", table_name="bench_test_chunks")
    op.drop_table("bench_test_chunks")
    op.drop_index("ix_bench_tests_scheduled_at", table_name="bench_tests")
    op.drop_index("ix_bench_tests_status", table_name="bench_tests")
    op.drop_index("ix_bench_tests_unit_under_test", table_name="bench_tests")
    op.drop_index("ix_bench_tests_test_type", table_name="bench_tests")
    op.drop_table("bench_tests")
