"""The dashboard's read views: fleet rows, cell snapshots, the live stream, trends, EIS.

Seeds the shared ``site`` (battery A with 4 cells and device edge-a, battery B of another
manufacturer) straight into the database, then reads through the API as each role.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from cloud.api import dashboard
from cloud.estimators.sow import classify_sow
from cloud.models import (
    Device,
    EcmParameterSet,
    EisRecord,
    Event,
    Measurement,
    SoxEstimate,
)
from tests.cloud.api_fixtures import Api

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
ECM = {"r0": 0.010, "r1": 0.004, "c1": 50.0, "r2": 0.006, "c2": 2_000.0}  # ohm, F
FREQUENCIES_HZ = np.logspace(4, -2, 31)


def _ecm_z(params: dict[str, float], f_hz: np.ndarray) -> np.ndarray:
    w = 2 * np.pi * f_hz
    z = np.full(f_hz.shape, params["r0"], dtype=complex)
    for k in (1, 2):
        r, c = params[f"r{k}"], params[f"c{k}"]
        z += r / (1 + 1j * w * r * c)
    return z


@pytest.fixture
def seeded(api: Api, site: dict[str, Any]) -> dict[str, Any]:
    """Battery A: telemetry (SoC in percent), SoH estimates, a SoW, events, an EIS sweep
    fitted by the estimator (linked by source) on cell 0 and one matched by time on
    cell 1; battery B: one measurement."""
    cells = site["cells_a"]
    with api.sessions() as session, session.begin():
        device = session.query(Device).filter_by(name="edge-a").one()
        device.online = True
        device.last_seen = NOW
        device.pillar = 2
        for k, cell in enumerate(cells):
            for age_min, volts in ((10, 3.5), (0, 3.6 + 0.01 * k)):
                session.add(
                    Measurement(
                        cell_id=cell,
                        measured_at=NOW - dt.timedelta(minutes=age_min),
                        voltage=volts,
                        temperature=25.0 + k,
                        current=2.0,
                        soc=50.0 + k,  # percent, as some edges send it
                    )
                )
            session.add(
                SoxEstimate(
                    battery_id=site["bat_a"],
                    cell_id=cell,
                    soh=0.90 + 0.01 * k,
                    estimated_at=NOW - dt.timedelta(days=1),
                    algorithm="test",
                    algorithm_version="1",
                )
            )
        rw, rh, ruw = 0.6, 0.6, 0.45
        session.add(
            SoxEstimate(
                battery_id=site["bat_a"],
                estimated_at=NOW - dt.timedelta(hours=1),
                sow=str(classify_sow(rw, rh, ruw).state),
                rw=rw,
                rh=rh,
                ruw=ruw,
                algorithm="cloud-sow",
                algorithm_version="1",
            )
        )
        for age_h, severity, detail in (
            (30, "alarm", "old alarm outside the window"),
            (3, "alarm", "cell 2 over-temperature 61 degC"),
            (2, "warning", "cell 1 voltage high"),
            (1, "info", "contactor closed"),
        ):
            session.add(
                Event(
                    device_id=device.id,
                    battery_id=site["bat_a"],
                    occurred_at=NOW - dt.timedelta(hours=age_h),
                    kind="over_temperature" if severity == "alarm" else "note",
                    severity=severity,
                    detail=detail,
                )
            )
        swept_at = NOW - dt.timedelta(hours=5)
        z = _ecm_z(ECM, FREQUENCIES_HZ)
        for cell in cells[:2]:
            for f, zk in zip(FREQUENCIES_HZ, z, strict=True):
                session.add(
                    EisRecord(
                        cell_id=cell,
                        status="ok",
                        event_id="sweep-1",
                        frequency=float(f),
                        z_re=float(zk.real),
                        z_im=float(zk.imag),
                        measured_at=swept_at,
                    )
                )
        session.add(
            EcmParameterSet(
                battery_id=site["bat_a"],
                cell_id=cells[0],
                created_at=swept_at + dt.timedelta(minutes=5),
                source="eis-drt:sweep-1",
                **ECM,
            )
        )
        session.add(  # fitted elsewhere, no link: matched by time
            EcmParameterSet(
                battery_id=site["bat_a"],
                cell_id=cells[1],
                created_at=swept_at + dt.timedelta(minutes=7),
                source="lab",
                **{**ECM, "r0": 0.011},
            )
        )
        session.add(Measurement(cell_id=site["cell_b"], measured_at=NOW, voltage=3.3))
    return site


def _get(api: Api, path: str, headers: dict[str, str], expect: int = 200) -> Any:
    response = api.client.get(path, headers=headers)
    assert response.status_code == expect, response.text
    return response.json()


def test_the_fleet_has_a_row_per_battery_with_its_latest_state(
    api: Api, seeded: dict[str, Any]
) -> None:
    fleet = _get(api, "/api/dashboard/fleet/", seeded["admin"])
    rows = {r["battery_id"]: r for r in fleet["rows"]}
    assert set(rows) == {seeded["bat_a"], seeded["bat_b"]}
    a = rows[seeded["bat_a"]]
    assert a["device_name"] == "edge-a" and a["online"] is True and a["pillar"] == 2
    assert a["soc"] == pytest.approx(np.mean([0.50, 0.51, 0.52, 0.53]))  # percent -> fraction
    assert a["soh"] == pytest.approx(np.mean([0.90, 0.91, 0.92, 0.93]))
    assert a["sow"]["state"] == "middle_advice"
    assert (a["sow"]["severity"], a["sow"]["colour"]) == ("attention", "orange")
    assert "ATTENTION" in a["sow"]["message"]
    assert (a["alarms"], a["warnings"]) == (1, 1)  # the 30 h old alarm is outside 24 h
    assert a["newest_event"]["detail"] == "cell 2 over-temperature 61 degC"
    assert dt.datetime.fromisoformat(a["last_seen"]) == NOW  # UTC, also from SQLite
    b = rows[seeded["bat_b"]]
    assert b["device_name"] is None and b["online"] is None and b["sow"] is None
    assert (b["alarms"], b["warnings"], b["newest_event"]) == (0, 0, None)
    wider = _get(api, "/api/dashboard/fleet/?window_hours=48", seeded["admin"])
    assert next(r for r in wider["rows"] if r["battery_id"] == seeded["bat_a"])["alarms"] == 2


def test_each_role_sees_only_its_batteries(api: Api, seeded: dict[str, Any]) -> None:
    def ids(who: str) -> set[int]:
        return {r["battery_id"] for r in _get(api, "/api/dashboard/fleet/", seeded[who])["rows"]}

    assert ids("maker") == {seeded["bat_a"]}
    assert ids("rival") == {seeded["bat_b"]}
    assert ids("operator") == {seeded["bat_a"]}
    assert ids("service") == {seeded["bat_a"], seeded["bat_b"]}
    # manufacturers may not read devices: no online status for them
    (row,) = _get(api, "/api/dashboard/fleet/", seeded["maker"])["rows"]
    assert row["online"] is None and row["device_id"] is None and row["soc"] is not None
    forbidden = _get(api, "/api/dashboard/fleet/", seeded["device"], expect=403)
    assert forbidden["detail"] == "role 'device' may not read the dashboard's battery data"
    for path in ("", "cells/", "trends/", "eis/"):
        url = f"/api/dashboard/batteries/{seeded['bat_b']}/{path}"
        assert "not found" in _get(api, url, seeded["operator"], expect=404)["detail"]
    page = _get(api, f"/api/dashboard/batteries/{seeded['bat_a']}/", seeded["operator"])
    assert page["can_command"] is True and page["device_list"][0]["name"] == "edge-a"
    page = _get(api, f"/api/dashboard/batteries/{seeded['bat_a']}/", seeded["maker"])
    assert page["can_command"] is False and page["device_list"] == []
    assert page["cells"] == 4


def test_an_unknown_battery_is_a_404_that_says_so(api: Api, seeded: dict[str, Any]) -> None:
    body = _get(api, "/api/dashboard/batteries/999999/cells/", seeded["admin"], expect=404)
    assert body["detail"] == "battery 999999 not found (or not one you may read)"
    assert api.client.get("/api/dashboard/fleet/").status_code == 401


def test_cells_are_the_newest_reading_of_each_cell_in_position_order(
    api: Api, seeded: dict[str, Any]
) -> None:
    snap = _get(api, f"/api/dashboard/batteries/{seeded['bat_a']}/cells/", seeded["admin"])
    assert [c["cell_id"] for c in snap["cells"]] == seeded["cells_a"]
    assert [c["position"] for c in snap["cells"]] == [0, 1, 2, 3]
    assert [c["voltage"] for c in snap["cells"]] == pytest.approx([3.60, 3.61, 3.62, 3.63])
    assert snap["cells"][3]["soc"] == pytest.approx(0.53)
    assert dt.datetime.fromisoformat(snap["updated_at"]) == NOW


@pytest.fixture
def fast_stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(dashboard, "LIVE_POLL_S", 0.05)
    monkeypatch.setattr(dashboard, "KEEPALIVE_S", 0.3)
    yield


def _events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(name, data) per event; comments come as ("comment", text)."""
    name = "message"
    for line in lines:
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            yield name, json.loads(line[5:])
            name = "message"


def test_the_live_stream_sends_the_cells_at_once_then_each_newer_measurement(
    api: Api, seeded: dict[str, Any], fast_stream: None
) -> None:
    url = f"/api/dashboard/batteries/{seeded['bat_a']}/live"
    cell = seeded["cells_a"][2]
    with api.client.stream("GET", url, headers=seeded["operator"]) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response.iter_lines())
        name, first = next(events)
        assert name == "cells" and first["cells"][2]["voltage"] == pytest.approx(3.62)
        assert next(events) == ("comment", "keepalive")  # nothing new for KEEPALIVE_S

        def insert() -> None:
            time.sleep(0.2)
            with api.sessions() as session, session.begin():
                session.add(
                    Measurement(
                        cell_id=cell,
                        measured_at=NOW + dt.timedelta(seconds=5),
                        voltage=3.99,
                        temperature=31.0,
                    )
                )

        writer = threading.Thread(target=insert)
        writer.start()
        name, data = next(e for e in events if e[0] == "cells")
        writer.join()
        assert data["cells"][2]["voltage"] == pytest.approx(3.99)
        assert dt.datetime.fromisoformat(data["updated_at"]) == NOW + dt.timedelta(seconds=5)


def test_the_live_stream_is_refused_like_the_other_views(api: Api, seeded: dict[str, Any]) -> None:
    url = f"/api/dashboard/batteries/{seeded['bat_b']}/live"
    assert api.client.get(url, headers=seeded["operator"]).status_code == 404
    assert api.client.get(url, headers=seeded["device"]).status_code == 403


def test_trends_are_downsampled_to_the_limit(api: Api, seeded: dict[str, Any]) -> None:
    cell = seeded["cells_a"][0]
    start = NOW - dt.timedelta(days=2)
    with api.sessions() as session, session.begin():
        session.add_all(
            Measurement(
                cell_id=cell,
                measured_at=start + dt.timedelta(seconds=20 * k),
                soc=0.2 + 0.6 * k / 3000,
                sot=0.9,
            )
            for k in range(3000)
        )
    url = f"/api/dashboard/batteries/{seeded['bat_a']}/trends/"
    full = _get(api, url, seeded["admin"])
    assert full["telemetry_rows"] == 3000 + 8  # plus the seed's two samples per cell
    assert full["downsampled"] is True and 0 < len(full["telemetry"]) <= 2000
    small = _get(api, url + "?limit=100", seeded["admin"])
    points = small["telemetry"]
    assert len(points) <= 100 and sum(p["n"] for p in points) == small["telemetry_rows"]
    times = [p["at"] for p in points]
    assert times == sorted(times)
    assert points[0]["soc"] == pytest.approx(0.2, abs=0.02)
    assert points[0]["sot"] == pytest.approx(0.9)
    # the cloud's SoH estimates: one point per estimate time, mean over the cells
    (soh_point,) = small["estimates"]
    assert soh_point["soh"] == pytest.approx(0.915) and soh_point["n"] == 4
    assert [s["state"] for s in small["sow"]] == ["middle_advice"]
    recent = _get(
        api,
        url + f"?since={(NOW - dt.timedelta(hours=1)).isoformat()}".replace("+", "%2B"),
        seeded["admin"],
    )
    assert recent["telemetry_rows"] == 8 and recent["estimates"] == []
    assert _get(api, url + "?limit=5000", seeded["admin"], expect=422)


def test_eis_returns_the_sweep_with_the_fitted_model_at_the_same_frequencies(
    api: Api, seeded: dict[str, Any]
) -> None:
    url = f"/api/dashboard/batteries/{seeded['bat_a']}/eis/"
    view = _get(api, url, seeded["operator"])
    assert view["event_id"] == "sweep-1"
    assert view["available"] == [
        {"event_id": "sweep-1", "measured_at": view["available"][0]["measured_at"], "cells": 2}
    ]
    first, second = view["sweeps"]
    assert first["cell_id"] == seeded["cells_a"][0] and len(first["frequency_hz"]) == 31
    assert first["fit"]["linked_by"] == "source"
    assert first["fit"]["z_re_ohm"] == pytest.approx(first["z_re_ohm"], rel=1e-9)
    assert first["fit"]["z_im_ohm"] == pytest.approx(first["z_im_ohm"], rel=1e-9)
    assert second["fit"]["linked_by"] == "time"
    assert second["fit"]["parameters"]["r0"] == pytest.approx(0.011)
    one = _get(api, url + f"?cell={seeded['cells_a'][1]}", seeded["operator"])
    assert [s["cell_id"] for s in one["sweeps"]] == [seeded["cells_a"][1]]
    missing = _get(api, url + "?event_id=nope", seeded["operator"], expect=404)
    assert missing["detail"] == f"no EIS sweep 'nope' of battery {seeded['bat_a']}"
    empty = _get(api, f"/api/dashboard/batteries/{seeded['bat_b']}/eis/", seeded["admin"])
    assert empty == {"battery_id": seeded["bat_b"], "event_id": None, "sweeps": [], "available": []}
