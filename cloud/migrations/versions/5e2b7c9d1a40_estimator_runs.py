"""estimator_runs: the scheduler's log of cloud estimator runs

Revision ID: 5e2b7c9d1a40
Revises: 3c1e5a7b9d20
Create Date: 2026-11-21 09:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5e2b7c9d1a40"
down_revision: str | None = "3c1e5a7b9d20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "estimator_runs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job", sa.String(length=50), nullable=False),
        sa.Column("version", sa.String(length=50), nullable=False),
        sa.Column("battery_id", sa.Integer(), nullable=True),
        sa.Column("trigger", sa.String(length=20), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=True),
        sa.Column("outcome", sa.JSON(), nullable=True),
        sa.Column("error", sa.String(length=2000), nullable=True),
        sa.ForeignKeyConstraint(["battery_id"], ["batteries.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_estimator_runs_battery_id", "estimator_runs", ["battery_id"])
    op.create_index("ix_estimator_runs_job_time", "estimator_runs", ["job", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_estimator_runs_job_time", table_name="estimator_runs")
    op.drop_index("ix_estimator_runs_battery_id", table_name="estimator_runs")
    op.drop_table("estimator_runs")
