"""analytics_results: Battery Analytics results attached to a battery

Revision ID: 7a4d2f8e6b13
Revises: 5e2b7c9d1a40
Create Date: 2026-11-21 09:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7a4d2f8e6b13"
down_revision: str | None = "5e2b7c9d1a40"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "analytics_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("battery_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("produced_by_id", sa.Integer(), nullable=True),
        sa.Column("cell_id", sa.String(length=255), nullable=True),
        sa.Column("source", sa.String(length=500), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["battery_id"], ["batteries.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["produced_by_id"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_analytics_results_battery_time", "analytics_results", ["battery_id", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_analytics_results_battery_time", table_name="analytics_results")
    op.drop_table("analytics_results")
