"""events table, device MQTT credentials, measurements without a row-by-row foreign key

Revision ID: 3c1e5a7b9d20
Revises: 9291eedc06e8
Create Date: 2026-11-21 08:40:00

- ``events``: what edge BMSs report on their events topic (was logged only).
- ``devices.mqtt_password_hash``: each device's own MQTT password, as a Mosquitto hash.
- ``measurements.cell_id`` loses its foreign key (PostgreSQL checked it row by row, more
  than half of a bulk COPY's time); a trigger on ``cells`` keeps the cascade on delete.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3c1e5a7b9d20"
down_revision: str | None = "9291eedc06e8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite keeps foreign keys unnamed; batch mode names them by this convention to drop one
_SQLITE_FK = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}

_PG_TRIGGER = """
CREATE FUNCTION delete_cell_measurements() RETURNS trigger AS $$
BEGIN
    DELETE FROM measurements WHERE cell_id = OLD.id;
    RETURN OLD;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER cells_delete_measurements AFTER DELETE ON cells
    FOR EACH ROW EXECUTE FUNCTION delete_cell_measurements();
"""

_SQLITE_TRIGGER = """
CREATE TRIGGER cells_delete_measurements AFTER DELETE ON cells
BEGIN
    DELETE FROM measurements WHERE cell_id = OLD.id;
END
"""


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("battery_id", sa.Integer(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=50), nullable=False),
        sa.Column("severity", sa.String(length=10), nullable=False),
        sa.Column("detail", sa.String(length=2000), nullable=False),
        sa.Column("cell_ids", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["battery_id"], ["batteries.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_events_battery_time", "events", ["battery_id", "occurred_at"])
    with op.batch_alter_table("devices") as batch_op:
        batch_op.add_column(sa.Column("mqtt_password_hash", sa.String(length=200), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("measurements", naming_convention=_SQLITE_FK) as batch_op:
            batch_op.drop_constraint("fk_measurements_cell_id_cells", type_="foreignkey")
        op.execute(_SQLITE_TRIGGER)
    else:
        op.drop_constraint("measurements_cell_id_fkey", "measurements", type_="foreignkey")
        op.execute(_PG_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER cells_delete_measurements")
        with op.batch_alter_table("measurements") as batch_op:
            batch_op.create_foreign_key(
                "fk_measurements_cell_id_cells", "cells", ["cell_id"], ["id"], ondelete="CASCADE"
            )
    else:
        op.execute("DROP TRIGGER cells_delete_measurements ON cells")
        op.execute("DROP FUNCTION delete_cell_measurements()")
        op.create_foreign_key(
            "measurements_cell_id_fkey",
            "measurements",
            "cells",
            ["cell_id"],
            ["id"],
            ondelete="CASCADE",
        )
    with op.batch_alter_table("devices") as batch_op:
        batch_op.drop_column("mqtt_password_hash")
    op.drop_index("ix_events_battery_time", table_name="events")
    op.drop_table("events")
