"""The digital battery passport of one battery, computed from what the platform stores.

Attribute names follow the Battery Pass data model (DIN DKE SPEC 99100 groups: general
information and identifiers, performance and durability, ...); each dynamic value carries
its unit and the time of the data it was computed from (``lastUpdate``), ``null`` when the
platform has no data for it yet. Where each value comes from:

* ``capacityFade`` / ``remainingCapacity``: the latest SoH estimates of the battery's cells
  (mean), against the rated capacity (``Battery.capacity``, Wh).
* ``internalResistanceIncrease`` / ``powerFade``: the latest ECM parameter sets against the
  first ones stored (mean R0 over the cells): increase = R0_now / R0_first - 1, power fade
  = 1 - R0_first / R0_now (at a fixed voltage window the deliverable power scales with
  1/R).
* ``roundTripEnergyEfficiency``: sum of V*I over discharge samples over the same for
  charge samples, per cell, from the measurements; exact when telemetry is sampled at a
  constant interval, as the edge BMSs report.
* ``numberOfFullCycles``: the largest equivalent-cycle count reported (Pillar 2
  telemetry), else charge throughput over twice the capacity is not attempted: ``null``.
* ``negativeEvents``: counts of the events the edge reported (over-voltage = overcharge,
  under-voltage = deep discharge, over-temperature, thermal-runaway warnings, plating).
* ``temperatureInformation``: min, mean and max of the cell temperatures, and the share of
  samples above the battery's maximum / below its minimum temperature.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Float, case, cast, func, select
from sqlalchemy.orm import Session

from cloud.models import (
    Battery,
    Cell,
    EcmParameterSet,
    Event,
    Manufacturer,
    Measurement,
    SoxEstimate,
)
from cloud.models import Module as BatteryModule

__all__ = ["PASSPORT_SCHEMA_VERSION", "battery_passport"]

PASSPORT_SCHEMA_VERSION = "batterytwin-passport/1 (Battery Pass data model attribute names)"
_EVENT_KINDS = {
    "numberOfOverchargeEvents": ("over_voltage",),
    "numberOfDeepDischargeEvents": ("under_voltage",),
    "numberOfOverTemperatureEvents": ("over_temperature",),
    "numberOfThermalRunawayWarnings": ("thermal_runaway_warning",),
    "numberOfLithiumPlatingDetections": ("lithium_plating",),
}


def _value(value: float | int | None, unit: str, when: dt.datetime | None) -> dict[str, Any]:
    return {
        "value": value,
        "unit": unit,
        "lastUpdate": when.isoformat() if when is not None and value is not None else None,
    }


def _iso(value: dt.date | dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def battery_passport(session: Session, battery: Battery) -> dict[str, Any]:
    """The passport document of ``battery`` (see the module docstring for each value)."""
    cells = (
        select(Cell.id)
        .join(BatteryModule, Cell.module_id == BatteryModule.id)
        .where(BatteryModule.battery_id == battery.id)
    )
    manufacturer = (
        session.get(Manufacturer, battery.manufacturer_id) if battery.manufacturer_id else None
    )
    return {
        "schemaVersion": PASSPORT_SCHEMA_VERSION,
        "generatedAt": dt.datetime.now(dt.UTC).isoformat(),
        "generalInformation": {
            "batteryPassportIdentifier": f"batterytwin:battery:{battery.id}",
            "batteryIdentifier": battery.serial_number,
            "batteryName": battery.battery_name,
            "batteryModel": battery.model,
            "batteryStatus": battery.status.value,
            "manufacturerIdentification": manufacturer.name if manufacturer else None,
            "manufacturingDate": _iso(battery.manufactured_date),
            "batteryWeight": battery.weight,
            "batteryWeightUnit": "kg",
        },
        "batteryComposition": {"batteryChemistry": battery.chemistry},
        "carbonFootprint": {"batteryCarbonFootprint": battery.carbon_footprint},
        "circularity": {"recycledContent": battery.recycled_content},
        "performanceAndDurability": {
            "ratedCapacity": battery.capacity,
            "ratedCapacityUnit": "Wh",
            "nominalVoltage": battery.nominal_voltage,
            "originalPowerCapability": battery.original_power_capability,
            "expectedLifetimeNumberOfCycles": battery.expected_cycle_life,
            **_health(session, battery, cells),
            **_resistance(session, battery),
            "roundTripEnergyEfficiency": _round_trip(session, cells),
            "numberOfFullCycles": _full_cycles(session, cells),
            "negativeEvents": _events(session, battery),
            "temperatureInformation": _temperatures(session, battery, cells),
        },
    }


def _health(session: Session, battery: Battery, cells: Any) -> dict[str, Any]:
    latest = session.scalar(
        select(func.max(SoxEstimate.estimated_at)).where(
            SoxEstimate.battery_id == battery.id, SoxEstimate.soh.is_not(None)
        )
    )
    if latest is None:
        return {
            "stateOfHealth": _value(None, "%", None),
            "capacityFade": _value(None, "%", None),
            "remainingCapacity": _value(None, "Wh", None),
        }
    # the latest estimate of each cell (or the battery-level one)
    newest = (
        select(SoxEstimate.cell_id, func.max(SoxEstimate.estimated_at).label("at"))
        .where(SoxEstimate.battery_id == battery.id, SoxEstimate.soh.is_not(None))
        .group_by(SoxEstimate.cell_id)
        .subquery()
    )
    soh = session.scalar(
        select(func.avg(SoxEstimate.soh)).join(
            newest,
            (SoxEstimate.cell_id.is_not_distinct_from(newest.c.cell_id))
            & (SoxEstimate.estimated_at == newest.c.at),
        )
    )
    soh_pct = float(soh) * (100.0 if soh is not None and soh <= 1.5 else 1.0) if soh else None
    remaining = (
        battery.capacity * soh_pct / 100.0
        if battery.capacity is not None and soh_pct is not None
        else None
    )
    return {
        "stateOfHealth": _value(soh_pct, "%", latest),
        "capacityFade": _value(100.0 - soh_pct if soh_pct is not None else None, "%", latest),
        "remainingCapacity": _value(remaining, "Wh", latest),
    }


def _resistance(session: Session, battery: Battery) -> dict[str, Any]:
    times = session.execute(
        select(func.min(EcmParameterSet.created_at), func.max(EcmParameterSet.created_at)).where(
            EcmParameterSet.battery_id == battery.id
        )
    ).one()
    first_at, last_at = times
    if first_at is None or first_at == last_at:
        return {
            "internalResistanceIncrease": _value(None, "%", None),
            "powerFade": _value(None, "%", None),
        }

    def mean_r0(at: dt.datetime) -> float | None:
        value = session.scalar(
            select(func.avg(EcmParameterSet.r0)).where(
                EcmParameterSet.battery_id == battery.id, EcmParameterSet.created_at == at
            )
        )
        return float(value) if value is not None else None

    r_first, r_last = mean_r0(first_at), mean_r0(last_at)
    if not r_first or not r_last:
        return {
            "internalResistanceIncrease": _value(None, "%", None),
            "powerFade": _value(None, "%", None),
        }
    return {
        "internalResistanceIncrease": _value(100.0 * (r_last / r_first - 1.0), "%", last_at),
        "powerFade": _value(100.0 * (1.0 - r_first / r_last), "%", last_at),
    }


def _round_trip(session: Session, cells: Any) -> dict[str, Any]:
    power = cast(Measurement.voltage * Measurement.current, Float)
    row = session.execute(
        select(
            func.sum(case((Measurement.current > 0, power), else_=0.0)),
            func.sum(case((Measurement.current < 0, -power), else_=0.0)),
            func.max(Measurement.measured_at),
        ).where(Measurement.cell_id.in_(cells), Measurement.voltage.is_not(None))
    ).one()
    out_w, in_w, last = row
    efficiency = 100.0 * float(out_w) / float(in_w) if in_w and out_w else None
    return _value(efficiency, "%", last)


def _full_cycles(session: Session, cells: Any) -> dict[str, Any]:
    row = session.execute(
        select(func.max(Measurement.equivalent_cycles), func.max(Measurement.measured_at)).where(
            Measurement.cell_id.in_(cells), Measurement.equivalent_cycles.is_not(None)
        )
    ).one()
    cycles, last = row
    return _value(float(cycles) if cycles is not None else None, "cycles", last)


def _events(session: Session, battery: Battery) -> dict[str, Any]:
    rows = session.execute(
        select(Event.kind, func.count(), func.max(Event.occurred_at))
        .where(Event.battery_id == battery.id)
        .group_by(Event.kind)
    ).all()
    by_kind = {kind: (int(n), last) for kind, n, last in rows}
    out: dict[str, Any] = {}
    for name, kinds in _EVENT_KINDS.items():
        found = [by_kind[k] for k in kinds if k in by_kind]
        count = sum(n for n, _ in found)
        last = max((t for _, t in found), default=None)
        out[name] = {"value": count, "unit": "events", "lastUpdate": _iso(last)}
    return out


def _temperatures(session: Session, battery: Battery, cells: Any) -> dict[str, Any]:
    high = battery.max_temperature if battery.max_temperature is not None else 45.0
    low = battery.min_temperature if battery.min_temperature is not None else 0.0
    temperature = Measurement.temperature
    row = session.execute(
        select(
            func.min(temperature),
            func.avg(temperature),
            func.max(temperature),
            func.count(temperature),
            func.sum(case((temperature > high, 1), else_=0)),
            func.sum(case((temperature < low, 1), else_=0)),
            func.max(Measurement.measured_at),
        ).where(Measurement.cell_id.in_(cells), temperature.is_not(None))
    ).one()
    t_min, t_mean, t_max, n, above, below, last = row

    def share(k: int | None) -> float | None:
        return 100.0 * float(k or 0) / n if n else None

    return {
        "minimumTemperature": _value(t_min, "degC", last),
        "meanTemperature": _value(float(t_mean) if t_mean is not None else None, "degC", last),
        "maximumTemperature": _value(t_max, "degC", last),
        "timeSpentAboveMaximumTemperature": _value(share(above), "% of samples", last)
        | {"boundary": high},
        "timeSpentBelowMinimumTemperature": _value(share(below), "% of samples", last)
        | {"boundary": low},
    }
