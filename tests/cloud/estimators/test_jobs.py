"""The estimator jobs on stored data: a twin's EIS sweeps in the database become fitted
ECM parameter sets and an ECM update command for the battery's device."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from cloud.db import make_engine
from cloud.estimators.jobs import DRT_SOURCE_PREFIX, DrtEcmJob
from cloud.estimators.scheduler import Scheduler
from cloud.migrate import upgrade
from cloud.models import Battery, Cell, Command, Device, EcmParameterSet, EisRecord, Module
from cloud.mqtt.contract import EcmUpdateParams
from tests.cloud.api_fixtures import Api
from twin.eis import EisConfig, measure_eis
from twin.models.ecm import CellInit, EcmTwin
from twin.params import load_parameter_set

T0 = dt.datetime(2026, 7, 1, tzinfo=dt.UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def _seed(engine: Engine, twin: EcmTwin) -> tuple[int, list[int]]:
    """A battery with one cell per twin cell, a device, and one sweep per cell stored."""
    records = measure_eis(
        twin,
        event_id="sweep-1",
        config=EisConfig(f_min_hz=1e-3, f_max_hz=1e3, n_points=61, seed=4),
    )
    with Session(engine) as session, session.begin():
        battery = Battery(serial_number="DRT-1", battery_name="hub pack")
        session.add(battery)
        session.flush()
        module = Module(module_name="m0", battery_id=battery.id)
        session.add(module)
        session.flush()
        cells = [Cell(cell_name=f"c{k}", module_id=module.id, position=k) for k in range(2)]
        session.add_all(cells)
        session.add(Device(name="hub-1", battery_id=battery.id, pillar=1))
        session.flush()
        for r in records:
            wire = r.to_dict()
            session.add(
                EisRecord(
                    cell_id=cells[r.cell_id].id,
                    status=wire["status"],
                    event_id=wire["event_id"],
                    frequency=wire["frequency"],
                    amplitude=wire["amplitude"],
                    phase=wire["phase"],
                    current_offset=wire["current_offset"],
                    v_start=wire["v_start"],
                    v_end=wire["v_end"],
                    temperature=wire["temperature"],
                    z_re=wire["Z_re"],
                    z_im=wire["Z_im"],
                    z_mod=wire["Z_mod"],
                    z_phz=wire["Z_phz"],
                    voltage=wire["voltage"],
                    measured_at=T0,
                )
            )
        return battery.id, [c.id for c in cells]


def test_new_sweeps_are_fitted_stored_and_sent_to_the_edge(engine: Engine) -> None:
    params = load_parameter_set("nmc_eis_arc").scaled_to(160.0)
    twin = EcmTwin(params, n_cells=2, init=CellInit(soc=[0.4, 0.7], resistance_factor=[1.1, 1.4]))
    truth = twin.ecm_parameters_now()
    battery_id, cells = _seed(engine, twin)
    scheduler = Scheduler(engine, [DrtEcmJob()], clock=lambda: T0 + dt.timedelta(hours=1))

    (run,) = scheduler.run_due()
    assert run.status == "ok", run.error
    assert run.inputs == {"sweeps": 2, "points": 122}
    with Session(engine) as session:
        sets = session.scalars(select(EcmParameterSet).order_by(EcmParameterSet.cell_id)).all()
        command = session.scalars(select(Command)).one()
    assert [s.cell_id for s in sets] == cells
    assert all(s.source == DRT_SOURCE_PREFIX + "sweep-1" for s in sets)
    for k, fitted in enumerate(sets):  # 1 % noise: R0 close, the total within 5 %
        assert fitted.r0 == pytest.approx(truth["r0_ohm"][k], rel=0.05)
        total = fitted.r0 + sum(getattr(fitted, f"r{j}") or 0.0 for j in range(1, 5))
        true_total = truth["r0_ohm"][k] + sum(truth[f"r{j}_ohm"][k] for j in range(1, 5))
        assert total == pytest.approx(true_total, rel=0.05)
        assert fitted.voltage is not None and 3.4 < fitted.voltage < 4.2
    assert command.kind == "ecm_update" and command.status == "pending"
    update = EcmUpdateParams.model_validate(command.payload)  # what the edge will accept
    assert update.r0 == pytest.approx(np.mean([s.r0 for s in sets]))

    assert scheduler.run_due() == []  # nothing new
    again = scheduler.run_now("drt_ecm", battery_id=battery_id)
    assert again.status == "skipped" and again.outcome == {"reason": "no new EIS sweeps"}


def test_estimators_run_on_demand_over_rest_and_their_runs_are_listed(
    api: Api, site: dict[str, Any]
) -> None:
    """The service's scheduler behind REST: a service runs the DRT job for a battery,
    every role that reads the battery sees the run."""
    path = f"/api/estimators/drt_ecm/run/?battery={site['bat_a']}"
    assert api.client.get("/api/estimators/", headers=site["service"]).json() == [
        "drt_ecm",
        "soh",
        "sow",
    ]
    ran = api.client.post(path, headers=site["service"])
    assert ran.status_code == 200, ran.text
    assert ran.json()["status"] == "skipped" and ran.json()["trigger"] == "request"
    assert api.client.post(path, headers=site["operator"]).status_code == 403
    unknown = api.client.post(
        f"/api/estimators/ghost/run/?battery={site['bat_a']}", headers=site["service"]
    )
    assert unknown.status_code == 404 and "ghost" in unknown.text
    missing = api.client.post("/api/estimators/drt_ecm/run/?battery=999999", headers=site["admin"])
    assert missing.status_code == 404
    runs = api.client.get("/api/estimator_runs/", headers=site["operator"]).json()
    assert [(r["job"], r["battery_id"]) for r in runs] == [("drt_ecm", site["bat_a"])]
    assert api.client.get("/api/estimator_runs/", headers=site["rival"]).json() == []


def test_soh_then_sow_from_stored_telemetry(engine: Engine) -> None:
    """Four days of a Pillar 2 BMS's telemetry in the database: the weekly SoH job
    estimates every cell within 2 points of the twin's truth, and SoW follows it."""
    from cloud.estimators.jobs import SohJob, SowJob
    from cloud.models import DiagnosticParameters, Measurement, SoxEstimate
    from cloud.mqtt.contract import TelemetryMessage
    from virtual_bms.assembly import twin_bms
    from virtual_bms.outbox import Outbox
    from virtual_bms.sources import TwinSource

    n_cells = 8
    outbox = Outbox(":memory:")
    bms = twin_bms(
        device="home-1",
        pillar=2,
        cells=n_cells,
        seed=3,
        outbox=outbox,
        sample_period_s=60.0,
        reporting_interval_s=300.0,
    )
    source = bms.source
    assert isinstance(source, TwinSource)
    for _ in range(4 * 1440):
        source.advance(60.0)
        source.apply(bms.step(source.read()))
    truth_soh = source.truth().capacity_ah / source.pack.cells.params.nominal_capacity_ah
    with Session(engine) as session, session.begin():
        battery = Battery(serial_number="HOME-1", battery_name="home pack")
        session.add(battery)
        session.flush()
        module = Module(module_name="m0", battery_id=battery.id)
        session.add(module)
        session.flush()
        cells = [
            Cell(cell_name=f"h{k}", module_id=module.id, position=k, nominal_capacity=100)
            for k in range(n_cells)
        ]
        session.add_all(cells)
        session.flush()
        for item in outbox.peek(100_000):
            if item.channel != "telemetry":
                continue
            message = TelemetryMessage.model_validate_json(item.payload)
            for k, position in enumerate(message.cell_ids):
                session.add(
                    Measurement(
                        cell_id=cells[position].id,
                        measured_at=message.ts,
                        voltage=message.voltage[k] if message.voltage else None,
                        current=message.current[k] if message.current else None,
                        soc=message.soc[k] if message.soc else None,
                        temperature=message.temperature[k] if message.temperature else None,
                    )
                )
        session.add(
            DiagnosticParameters(
                battery_id=battery.id,
                soh_at_eol=0.6,
                lifespan_years=10.0,
                lifespan_fecs=3650.0,
                fecs_per_day=1.0,
                days_per_year=365.0,
                icha_max=50.0,
                idch_max=100.0,
            )
        )
        battery_id, cell_ids = battery.id, [c.id for c in cells]
    with Session(engine) as session:
        latest = session.scalar(select(func.max(Measurement.measured_at)))
    assert latest is not None
    now = (latest if latest.tzinfo else latest.replace(tzinfo=dt.UTC)) + dt.timedelta(minutes=5)
    runs = Scheduler(engine, [SohJob(), SowJob()], clock=lambda: now).run_due()
    assert [(r.job, r.status) for r in runs] == [("soh", "ok"), ("sow", "ok")], [
        r.error or r.outcome for r in runs
    ]
    with Session(engine) as session:
        estimates = session.scalars(
            select(SoxEstimate)
            .where(SoxEstimate.cell_id.is_not(None))
            .order_by(SoxEstimate.cell_id)
        ).all()
        sow_row = session.scalars(select(SoxEstimate).where(SoxEstimate.sow.is_not(None))).one()
    assert [e.cell_id for e in estimates] == cell_ids
    errors = np.array([e.soh for e in estimates]) - truth_soh
    assert np.max(np.abs(errors)) < 0.02, errors
    assert sow_row.battery_id == battery_id and sow_row.rh is not None and 0 < sow_row.rh <= 1
    assert runs[1].outcome is not None and "message" in runs[1].outcome
    # new operating limits scale with the estimated capacity (rated at 100 Ah)
    limits = runs[0].outcome["power_limits"] if runs[0].outcome else {}
    discharge = np.array(limits["discharge_current_a"])
    assert np.all((discharge > 60.0) & (discharge < 90.0)), discharge


def test_pending_estimator_commands_are_published_to_the_device(engine: Engine) -> None:
    """What the DRT job queued reaches the device's commands topic and is marked sent."""
    import asyncio
    import json

    import aiomqtt

    from cloud.estimators.service import publish_pending
    from cloud.mqtt.broker import EmbeddedBroker
    from cloud.mqtt.commands import MqttEndpoint

    with Session(engine) as session, session.begin():
        battery = Battery(serial_number="PUB-1", battery_name="hub")
        session.add(battery)
        session.flush()
        device = Device(name="hub-pub", battery_id=battery.id, pillar=1)
        session.add(device)
        session.flush()
        params = {"voltage": 3.7, "r0": 0.001, "r1": 0.0005, "c1": 2000.0}
        command = Command(device_id=device.id, kind="ecm_update", payload=params)
        session.add(command)
        session.flush()
        command_id = command.id

    async def scenario() -> list[dict[str, Any]]:
        async with EmbeddedBroker() as broker:
            endpoint = MqttEndpoint(host="127.0.0.1", port=broker.port)
            async with aiomqtt.Client("127.0.0.1", broker.port) as edge:
                await edge.subscribe("batterytwin/v1/devices/hub-pub/commands", qos=1)
                assert await publish_pending(engine, endpoint) == 1
                message = await asyncio.wait_for(anext(edge.messages), 5)
                assert isinstance(message.payload, bytes)
                return [json.loads(message.payload)]

    (received,) = asyncio.run(scenario())
    assert received["command_id"] == command_id and received["params"]["r0"] == 0.001
    with Session(engine) as session:
        assert session.get(Command, command_id).status == "sent"  # type: ignore[union-attr]
    assert asyncio.run(publish_pending(engine, None)) == 0  # MQTT off: nothing to do
