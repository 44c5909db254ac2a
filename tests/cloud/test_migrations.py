"""The migrations build exactly the schema the models describe, and keep its cascades."""

from __future__ import annotations

import datetime as dt

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from cloud.db import Base, make_engine
from cloud.migrate import upgrade
from cloud.models import Battery, Cell, Measurement, Module


def test_migrated_schema_matches_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert differences == []


def test_deleting_a_battery_deletes_its_cells_measurements(database_url: str) -> None:
    """measurements.cell_id has no foreign key (bulk COPY speed); a trigger on cells keeps
    the cascade: battery -> modules -> cells -> measurements."""
    engine = make_engine(database_url)
    upgrade(engine)
    with Session(engine) as session, session.begin():
        batteries = [Battery(serial_number=f"SN-{k}", battery_name=f"b{k}") for k in range(2)]
        session.add_all(batteries)
        session.flush()
        modules = [Module(module_name="m", battery_id=b.id) for b in batteries]
        session.add_all(modules)
        session.flush()
        cells = [Cell(cell_name=f"c{k}", module_id=m.id) for k, m in enumerate(modules)]
        session.add_all(cells)
        session.flush()
        now = dt.datetime.now(dt.UTC)
        session.execute(
            insert(Measurement),
            [
                {"cell_id": c.id, "measured_at": now, "voltage": 3.6}
                for c in cells
                for _ in range(3)
            ],
        )
        doomed, kept = batteries[0].id, cells[1].id
    with Session(engine) as session, session.begin():
        session.execute(delete(Battery).where(Battery.id == doomed))
    with engine.connect() as conn:
        left = conn.execute(select(Measurement.cell_id, func.count()).group_by(Measurement.cell_id))
        assert dict(left.all()) == {kept: 3}
    engine.dispose()
