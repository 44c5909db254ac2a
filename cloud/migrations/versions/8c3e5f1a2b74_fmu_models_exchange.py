"""fmu_models_exchange: FMU models exchange (fmu_models, fmu_files, users.models_access)

Revision ID: 8c3e5f1a2b74
Revises: 7a4d2f8e6b13
Create Date: 2026-11-24 10:00:00

- ``fmu_models``: one row per FMU version with its folder (category, level, chemistry,
  kind), test name, version, checksum and parsed modelDescription. A deleted version
  keeps its row (``deleted_at``) so that its number is never reused.
- ``fmu_files``: the FMU's bytes, one row per version, deleted with it.
- ``users.models_access``: ``read`` (browse, download) or ``write`` (also upload, delete);
  existing users get ``read``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "8c3e5f1a2b74"
down_revision: str | None = "7a4d2f8e6b13"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(
            sa.Column(
                "models_access",
                sa.Enum("read", "write", name="modelsaccess", native_enum=False, length=10),
                server_default="read",
                nullable=False,
            )
        )
    op.create_table(
        "fmu_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "category",
            sa.Enum(
                "performance_ageing",
                "safety_reliability",
                name="fmucategory",
                native_enum=False,
                length=30,
            ),
            nullable=False,
        ),
        sa.Column(
            "level",
            sa.Enum("cell", "module", "pack", name="fmulevel", native_enum=False, length=10),
            nullable=False,
        ),
        sa.Column("chemistry", sa.String(length=50), nullable=False),
        sa.Column(
            "kind",
            sa.Enum("physics_based", "data_driven", name="fmukind", native_enum=False, length=20),
            nullable=False,
        ),
        sa.Column("test_name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("note", sa.String(length=2000), nullable=True),
        sa.Column("fmi_version", sa.String(length=10), nullable=False),
        sa.Column("model_name", sa.String(length=255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("model_description", sa.JSON(), nullable=False),
        sa.Column("uploaded_by_id", sa.Integer(), nullable=True),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["deleted_by_id"], ["users.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["uploaded_by_id"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "category",
            "level",
            "chemistry",
            "kind",
            "test_name",
            "version",
            name="uq_fmu_models_folder_test_version",
        ),
    )
    op.create_table(
        "fmu_files",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["fmu_models.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("model_id"),
    )


def downgrade() -> None:
    op.drop_table("fmu_files")
    op.drop_table("fmu_models")
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("models_access")
