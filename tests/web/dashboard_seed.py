"""Realistic data for the fleet and battery pages, written straight into the served cloud's
database: a Pillar 1 hub and a Pillar 2 home battery with 16 cells each, an hour of
telemetry, weekly SoH estimates, SoW states, ECM sets fitted from EIS sweeps synthesised
from a known circuit, events (an alarm on the hub) and an estimator's pending command.

Every name starts with ``prefix``, so tests that share the session's database find their
own rows (search the fleet for the prefix).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloud.models import (
    Battery,
    BatteryStatus,
    Cell,
    Command,
    Device,
    EcmParameterSet,
    EisRecord,
    Event,
    Measurement,
    Module,
    SoxEstimate,
    User,
)

N_CELLS = 16
HUB_ECM = {"r0": 0.0012, "r1": 0.0004, "c1": 120.0, "r2": 0.0007, "c2": 9_000.0}  # ohm, F
FREQUENCIES_HZ = np.logspace(3, -2, 36)  # 1 kHz .. 10 mHz


@dataclass(frozen=True)
class Site:
    hub_id: int
    home_id: int
    hub_device: int
    home_device: int
    hub_cells: list[int]
    home_cells: list[int]
    newest_at: dt.datetime
    """measured_at of the newest telemetry sample."""
    sweep: str


def ecm_z(params: dict[str, float], f_hz: np.ndarray) -> np.ndarray:
    """``R0 + sum Rk / (1 + j w Rk Ck)``."""
    w = 2 * np.pi * f_hz
    z = np.full(f_hz.shape, params["r0"], dtype=complex)
    for k in (1, 2, 3, 4):
        if f"r{k}" in params:
            r, c = params[f"r{k}"], params[f"c{k}"]
            z += r / (1 + 1j * w * r * c)
    return z


def _battery(session: Session, **fields: Any) -> tuple[Battery, list[int]]:
    battery = Battery(status=BatteryStatus.repurposed, **fields)
    session.add(battery)
    session.flush()
    module = Module(module_name=f"{fields['serial_number']}-m0", battery_id=battery.id, position=0)
    session.add(module)
    session.flush()
    cells = [
        Cell(
            cell_name=f"{fields['serial_number']}-c{k:02d}",
            position=k,
            module_id=module.id,
            nominal_capacity=50,
            nominal_voltage=3.6,
        )
        for k in range(N_CELLS)
    ]
    session.add_all(cells)
    session.flush()
    return battery, [c.id for c in cells]


def telemetry(
    cells: list[int], at: dt.datetime, *, pillar: int, device_id: int, step: int
) -> list[Measurement]:
    """One sample of every cell: a gentle voltage and temperature pattern across the pack."""
    rows = []
    for k, cell in enumerate(cells):
        extra: dict[str, float] = {}
        if pillar == 2:
            extra = {"soh": 0.86 - 0.002 * k, "sot": 0.95 - 0.01 * (k % 4), "sos": 0.98}
        rows.append(
            Measurement(
                cell_id=cell,
                device_id=device_id,
                measured_at=at,
                voltage=3.30 + 0.004 * k + 0.001 * (step % 5),
                temperature=24.0 + 0.6 * (k % 8) + (6.0 if k == 7 else 0.0),
                current=12.0,
                soc=0.62 - 0.002 * step - 0.001 * k,
                **extra,
            )
        )
    return rows


def seed_site(sessions: sessionmaker[Session], prefix: str) -> Site:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with sessions() as session, session.begin():
        operator_id = session.scalar(select(User.id).where(User.username == "operator"))
        hub, hub_cells = _battery(
            session,
            serial_number=f"{prefix}HUB-001",
            battery_name=f"{prefix} hub",
            chemistry="NMC",
            model="SL-Hub 50",
            capacity=50_000,
            nominal_voltage=51.2,
            weight=380.0,
            max_temperature=55.0,
            min_temperature=0.0,
        )
        home, home_cells = _battery(
            session,
            serial_number=f"{prefix}HOME-001",
            battery_name=f"{prefix} home",
            chemistry="LFP",
            model="SL-Home 10",
            capacity=10_000,
            nominal_voltage=51.2,
            operator_id=operator_id,
        )
        hub_dev = Device(
            name=f"{prefix}hub-bms", battery_id=hub.id, pillar=1, online=True, last_seen=now
        )
        home_dev = Device(
            name=f"{prefix}home-bms",
            battery_id=home.id,
            pillar=2,
            online=False,
            last_seen=now - dt.timedelta(hours=2),
            reporting_interval_s=5.0,
        )
        session.add_all([hub_dev, home_dev])
        session.flush()

        for step in range(60):  # an hour, one sample a minute
            at = now - dt.timedelta(minutes=59 - step)
            session.add_all(telemetry(hub_cells, at, pillar=1, device_id=hub_dev.id, step=step))
            session.add_all(telemetry(home_cells, at, pillar=2, device_id=home_dev.id, step=step))

        for week in range(10):  # the cloud's weekly SoH of the hub's cells
            at = now - dt.timedelta(weeks=9 - week, hours=1)
            session.add_all(
                SoxEstimate(
                    battery_id=hub.id,
                    cell_id=cell,
                    estimated_at=at,
                    soh=0.92 - 0.004 * week - 0.001 * k,
                    algorithm="cloud-soh (coulomb counting + dQ/dV)",
                    algorithm_version="1.0",
                )
                for k, cell in enumerate(hub_cells)
            )
        for battery, (rw, rh, ruw), age_h in (
            (hub, (0.8, 0.9, 0.8), 1),  # correct: green
            (home, (0.6, 0.6, 0.45), 3),  # middle advice: orange
        ):
            from cloud.estimators.sow import classify_sow

            session.add(
                SoxEstimate(
                    battery_id=battery.id,
                    estimated_at=now - dt.timedelta(hours=age_h),
                    sow=str(classify_sow(rw, rh, ruw).state),
                    rw=rw,
                    rh=rh,
                    ruw=ruw,
                    algorithm="cloud-sow (D1.2 table)",
                    algorithm_version="1.0",
                )
            )

        # Four monthly sweeps of the hub, each fitted (R0 grows as the cells age).
        sweep = ""
        for month in range(4):
            sweep = f"{prefix}sweep-{month}"
            swept_at = now - dt.timedelta(days=30 * (3 - month), hours=6)
            params = {**HUB_ECM, "r0": HUB_ECM["r0"] * (1 + 0.05 * month)}
            for k, cell in enumerate(hub_cells):
                cell_params = {**params, "r0": params["r0"] * (1 + 0.01 * k)}
                session.add(
                    EcmParameterSet(
                        battery_id=hub.id,
                        cell_id=cell,
                        created_at=swept_at + dt.timedelta(minutes=10),
                        voltage=3.6,
                        source=f"eis-drt:{sweep}",
                        **cell_params,
                    )
                )
                if month == 3:  # the spectra of the newest sweep
                    z = ecm_z(cell_params, FREQUENCIES_HZ)
                    session.add_all(
                        EisRecord(
                            cell_id=cell,
                            status="ok",
                            event_id=sweep,
                            frequency=float(f),
                            z_re=float(zk.real),
                            z_im=float(zk.imag),
                            voltage=3.6,
                            measured_at=swept_at,
                        )
                        for f, zk in zip(FREQUENCIES_HZ, z, strict=True)
                    )

        for battery, device, age_h, severity, kind, detail in (
            (hub, hub_dev, 1, "alarm", "over_temperature", "cell 7 at 58.2 degC (limit 55)"),
            (hub, hub_dev, 5, "info", "contactor_closed", "main contactor closed"),
            (home, home_dev, 2, "warning", "over_voltage", "cell 3 at 3.62 V, near the limit"),
        ):
            session.add(
                Event(
                    device_id=device.id,
                    battery_id=battery.id,
                    occurred_at=now - dt.timedelta(hours=age_h),
                    kind=kind,
                    severity=severity,
                    detail=detail,
                    cell_ids=[7] if battery is hub else [3],
                )
            )
        session.add(  # queued by the drt_ecm estimator, not sent yet (no broker)
            Command(
                device_id=hub_dev.id,
                kind="ecm_update",
                payload={"voltage": 3.6, **HUB_ECM},
                created_at=now - dt.timedelta(minutes=30),
            )
        )
        return Site(
            hub_id=hub.id,
            home_id=home.id,
            hub_device=hub_dev.id,
            home_device=home_dev.id,
            hub_cells=hub_cells,
            home_cells=home_cells,
            newest_at=now,
            sweep=sweep,
        )
