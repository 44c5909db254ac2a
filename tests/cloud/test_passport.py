"""The passport export: values computed from stored data, each with its last update; roles."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from cloud.models import Device, EcmParameterSet, Event, Measurement, SoxEstimate
from tests.cloud.api_fixtures import Api

T0 = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)


def _fill(api: Api, site: dict[str, Any]) -> None:
    cells = site["cells_a"]
    with api.sessions() as session, session.begin():
        from cloud.models import Battery

        battery = session.get(Battery, site["bat_a"])
        battery.capacity = 10_000  # Wh
        battery.max_temperature = 45.0
        battery.min_temperature = 0.0
        device = session.query(Device).filter_by(name="edge-a").one()
        for k, cell in enumerate(cells):
            for soh, day in ((0.9, 0), (0.8 + 0.01 * k, 30)):
                session.add(
                    SoxEstimate(
                        battery_id=site["bat_a"],
                        cell_id=cell,
                        soh=soh,
                        estimated_at=T0 + dt.timedelta(days=day),
                        algorithm="test",
                        algorithm_version="1",
                    )
                )
            for r0, day in ((0.010, 0), (0.012, 30)):
                session.add(
                    EcmParameterSet(
                        battery_id=site["bat_a"],
                        cell_id=cell,
                        r0=r0,
                        created_at=T0 + dt.timedelta(days=day),
                    )
                )
        # one cell: discharge 2 h at 10 A and 3.6 V, charge 2 h at 10 A and 4.0 V -> 90 %
        rows = []
        for minute in range(240):
            current = 10.0 if minute < 120 else -10.0
            voltage = 3.6 if minute < 120 else 4.0
            temperature = 50.0 if minute < 24 else 25.0  # 10 % of the samples above 45
            rows.append(
                Measurement(
                    cell_id=cells[0],
                    measured_at=T0 + dt.timedelta(minutes=minute),
                    voltage=voltage,
                    current=current,
                    temperature=temperature,
                    equivalent_cycles=100.0 + minute / 240,
                )
            )
        session.add_all(rows)
        for kind, n in (("over_voltage", 2), ("under_voltage", 1), ("balancing", 5)):
            for k in range(n):
                session.add(
                    Event(
                        device_id=device.id,
                        battery_id=site["bat_a"],
                        occurred_at=T0 + dt.timedelta(hours=k),
                        kind=kind,
                        severity="alarm",
                    )
                )


def test_passport_values_come_from_the_stored_data(api: Api, site: dict[str, Any]) -> None:
    _fill(api, site)
    response = api.client.get(f"/api/batteries/{site['bat_a']}/passport", headers=site["maker"])
    assert response.status_code == 200, response.text
    doc = response.json()
    general = doc["generalInformation"]
    assert general["batteryIdentifier"] == "A-1" and general["batteryStatus"] == "repurposed"
    assert general["manufacturerIdentification"] == "CellCo"
    perf = doc["performanceAndDurability"]
    soh = sum(0.8 + 0.01 * k for k in range(4)) / 4 * 100.0  # the newest per cell
    assert perf["stateOfHealth"]["value"] == pytest.approx(soh)
    assert perf["capacityFade"]["value"] == pytest.approx(100.0 - soh)
    assert perf["remainingCapacity"]["value"] == pytest.approx(10_000 * soh / 100.0)
    assert perf["stateOfHealth"]["lastUpdate"].startswith("2026-05-31")
    assert perf["internalResistanceIncrease"]["value"] == pytest.approx(20.0)
    assert perf["powerFade"]["value"] == pytest.approx(100.0 * (1 - 0.010 / 0.012))
    assert perf["roundTripEnergyEfficiency"]["value"] == pytest.approx(90.0)
    assert perf["numberOfFullCycles"]["value"] == pytest.approx(100.0 + 239 / 240)
    events = perf["negativeEvents"]
    assert events["numberOfOverchargeEvents"]["value"] == 2
    assert events["numberOfDeepDischargeEvents"]["value"] == 1
    assert events["numberOfThermalRunawayWarnings"] == {
        "value": 0,
        "unit": "events",
        "lastUpdate": None,
    }
    temps = perf["temperatureInformation"]
    assert temps["maximumTemperature"]["value"] == 50.0
    assert temps["timeSpentAboveMaximumTemperature"]["value"] == pytest.approx(10.0)


def test_a_battery_without_data_has_null_values_not_errors(api: Api, site: dict[str, Any]) -> None:
    doc = api.client.get(f"/api/batteries/{site['bat_b']}/passport", headers=site["admin"]).json()
    perf = doc["performanceAndDurability"]
    assert perf["stateOfHealth"] == {"value": None, "unit": "%", "lastUpdate": None}
    assert perf["roundTripEnergyEfficiency"]["value"] is None


def test_passport_access_follows_the_battery(api: Api, site: dict[str, Any]) -> None:
    path = f"/api/batteries/{site['bat_a']}/passport"
    assert api.client.get(path, headers=site["operator"]).status_code == 200
    assert api.client.get(path, headers=site["service"]).status_code == 200
    assert api.client.get(path, headers=site["rival"]).status_code == 404  # not its battery
    assert api.client.get(path, headers=site["device"]).status_code == 403
    assert api.client.get(path).status_code == 401
    assert (
        api.client.get("/api/batteries/999999/passport", headers=site["admin"]).status_code == 404
    )
