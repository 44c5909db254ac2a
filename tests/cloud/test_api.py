"""REST API: tokens, CRUD of every resource, permissions per role, invalid input."""

from __future__ import annotations

import datetime as dt
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient

from cloud.main import create_app
from cloud.models import Device
from cloud.settings import CloudSettings
from tests.cloud.api_fixtures import SECRET, Api


def test_token_and_refresh_flow(api: Api) -> None:
    api.user("alice", "service")
    tokens = api.client.post(
        "/api/token/", json={"username": "alice", "password": "password-123"}
    ).json()
    assert set(tokens) == {"access", "refresh"}
    access = jwt.decode(tokens["access"], SECRET, algorithms=["HS256"])
    refresh = jwt.decode(tokens["refresh"], SECRET, algorithms=["HS256"])
    assert access["exp"] - access["iat"] == 3600 and refresh["exp"] - refresh["iat"] == 86400
    renewed = api.client.post("/api/token/refresh/", json={"refresh": tokens["refresh"]})
    assert renewed.status_code == 200 and set(renewed.json()) == {"access"}
    # An access token is not a refresh token, and garbage is refused.
    assert (
        api.client.post("/api/token/refresh/", json={"refresh": tokens["access"]}).status_code
        == 401
    )
    assert (
        api.client.post(
            "/api/token/", json={"username": "alice", "password": "wrong-pass"}
        ).status_code
        == 401
    )
    assert api.client.get("/api/cells/").status_code == 401
    assert (
        api.client.get("/api/cells/", headers={"Authorization": "Bearer nonsense"}).status_code
        == 401
    )


def test_token_requests_are_rate_limited(database_url: str) -> None:
    settings = CloudSettings(
        database_url=database_url, jwt_secret=SECRET, token_rate_per_minute=3, broker="none"
    )
    with TestClient(create_app(settings)) as client:
        codes = [
            client.post("/api/token/", json={"username": "bob", "password": "x" * 8}).status_code
            for _ in range(5)
        ]
    assert codes == [401, 401, 401, 429, 429]


def test_crud_round_trip_of_every_passport_resource(api: Api, site: dict[str, Any]) -> None:
    admin = site["admin"]
    bodies = {
        "/api/chemical/": ({"name": "NMC811", "hazardous": True}, {"extinguishing_agent": "water"}),
        "/api/material/": (
            {"name": "cobalt", "share": 4.5, "recycled": True},
            {"recycled_content": 12.0},
        ),
        "/api/safety_feature/": (
            {"name": "tm", "description": "thermal management"},
            {"standard": "IEC 62619"},
        ),
        "/api/manufacturers/": ({"name": "ThirdCo", "city": "Athens"}, {"zipcode": "10001"}),
    }
    for path, (body, patch) in bodies.items():
        created = api.post(path, body, admin)
        item = f"{path}{created['id']}/"
        assert api.client.get(item, headers=admin).json() == created
        patched = api.client.patch(item, json=patch, headers=admin)
        assert patched.status_code == 200 and {**created, **patch} == patched.json()
        put = api.client.put(item, json=body, headers=admin)
        assert put.status_code == 200
        assert api.client.delete(item, headers=admin).status_code == 204
        assert api.client.get(item, headers=admin).status_code == 404


def test_battery_passport_with_relations_and_cells(api: Api, site: dict[str, Any]) -> None:
    maker = site["maker"]
    mat = api.post("/api/material/", {"name": "lithium"}, maker)["id"]
    chem = api.post("/api/chemical/", {"name": "LFP"}, maker)["id"]
    bat = api.client.patch(
        f"/api/batteries/{site['bat_a']}/",
        json={"materials": [mat], "status": "reused"},
        headers=maker,
    )
    assert (
        bat.status_code == 200
        and bat.json()["materials"] == [mat]
        and bat.json()["status"] == "reused"
    )
    cell = api.client.patch(
        f"/api/cells/{site['cells_a'][0]}/", json={"cell_chemistry": [chem]}, headers=maker
    )
    assert cell.json()["cell_chemistry"] == [chem]
    listed = api.client.get(
        f"/api/cells/?battery={site['bat_a']}&ordering=-position", headers=maker
    ).json()
    assert [c["position"] for c in listed] == [3, 2, 1, 0]


def test_permissions_per_role(api: Api, site: dict[str, Any]) -> None:
    c = api.client
    # A manufacturer writes only its own batteries, modules and cells.
    assert (
        c.patch(
            f"/api/batteries/{site['bat_b']}/", json={"battery_name": "x"}, headers=site["maker"]
        ).status_code
        == 404
    )
    assert (
        c.post(
            "/api/batteries/",
            json={"serial_number": "Z", "battery_name": "z", "manufacturer_id": 999},
            headers=site["maker"],
        ).status_code
        == 403
    )
    assert (
        c.post(
            "/api/modules/",
            json={"module_name": "m", "battery_id": site["bat_b"]},
            headers=site["maker"],
        ).status_code
        == 403
    )
    assert (
        c.post("/api/manufacturers/", json={"name": "Mine"}, headers=site["maker"]).status_code
        == 403
    )
    # An operator reads its own site's batteries only and writes nothing.
    assert [b["id"] for b in c.get("/api/batteries/", headers=site["operator"]).json()] == [
        site["bat_a"]
    ]
    assert c.get(f"/api/batteries/{site['bat_b']}/", headers=site["operator"]).status_code == 404
    assert c.post("/api/chemical/", json={"name": "x"}, headers=site["operator"]).status_code == 403
    # A service reads everything and writes no passport data.
    assert len(c.get("/api/batteries/", headers=site["service"]).json()) == 2
    assert c.post("/api/material/", json={"name": "x"}, headers=site["service"]).status_code == 403
    # A device writes only its own battery's telemetry and reads no passport data.
    own = {"cell_ids": site["cells_a"][:2], "voltage": [3.7, 3.71]}
    assert c.post("/api/measurements/", json=own, headers=site["device"]).status_code == 201
    other = {"cell_ids": [site["cell_b"]], "voltage": [3.6]}
    assert c.post("/api/measurements/", json=other, headers=site["device"]).status_code == 403
    assert c.get("/api/batteries/", headers=site["device"]).status_code == 403


def test_measurements_bulk_post_filters_and_pagination(api: Api, site: dict[str, Any]) -> None:
    cells = site["cells_a"]
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for k in range(5):
        body = {
            "cell_ids": cells,
            "measured_at": (t0 + dt.timedelta(minutes=k)).isoformat(),
            "voltage": [3.6 + 0.01 * i for i in range(4)],
            "temperature": [25.0] * 4,
            "current": [10.0] * 4,
            "sot": [0.0] * 4,
            "phase": [0.1] * 4,
            "soc": [50.0] * 4,
            "sos": [1.0] * 4,
        }
        echoed = api.post("/api/measurements/", body, site["device"])
        assert echoed["cell_ids"] == cells and len(echoed["ids"]) == 4
    headers = site["operator"]
    page = api.client.get(
        f"/api/measurements/?cell={cells[2]}&limit=2&ordering=-measured_at", headers=headers
    )
    assert page.status_code == 200 and len(page.json()) == 2
    assert page.json()[0]["voltage"] == pytest.approx(3.62) and 'rel="next"' in page.headers["Link"]
    since = (t0 + dt.timedelta(minutes=3)).isoformat()
    window = api.client.get(
        "/api/measurements/", params={"battery": site["bat_a"], "since": since}, headers=headers
    )
    assert len(window.json()) == 8  # minutes 3 and 4, four cells
    assert api.client.get("/api/measurements/?limit=100000", headers=headers).status_code == 422
    # The rival manufacturer sees none of battery A's data.
    assert api.client.get("/api/measurements/", headers=site["rival"]).json() == []
    one = window.json()[0]
    item = f"/api/measurements/{one['id']}/"
    assert api.client.patch(item, json={"soc": 49.0}, headers=site["admin"]).json()["soc"] == 49.0
    assert api.client.delete(item, headers=site["admin"]).status_code == 204


def test_eis_records_round_trip(api: Api, site: dict[str, Any]) -> None:
    # The thesis's own example payload.
    record = {
        "status": "success",
        "event_id": "207_1",
        "cell_id": site["cells_a"][0],
        "frequency": 25.11886432,
        "amplitude": 0.00033255133178403194,
        "phase": 0.085914587975807,
        "current_offset": 2,
        "v_start": 3.5,
        "v_end": 3.5,
        "temperature": 25,
    }
    created = api.post("/api/eis/", record, site["device"])
    assert created["event_id"] == "207_1" and created["frequency"] == pytest.approx(25.11886432)
    assert "added_at" in created
    put = api.client.put(
        f"/api/eis/{created['id']}/", json={**record, "status": "fail"}, headers=site["admin"]
    )
    assert put.json()["status"] == "fail"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"battery_name": "no serial"}, "serial_number"),  # missing value
        ({"serial_number": "S", "battery_name": "n", "weight": "heavy"}, "weight"),  # wrong type
        (
            {"serial_number": "S", "battery_name": "n", "capacity": 65054325342523534254524000},
            "capacity",
        ),  # out of range
        ({"serial_number": "S", "battery_name": "x" * 470}, "battery_name"),  # too long
        ({"serial_number": "S", "battery_name": "n", "status": "shiny"}, "status"),  # not a choice
        ({"serial_number": "S", "battery_name": "n", "colour": "red"}, "colour"),  # wrong parameter
        (
            {"serial_number": "S", "battery_name": "n", "weight": float("nan")},
            None,
        ),  # NaN is not JSON
    ],
)
def test_invalid_input_names_the_field_and_writes_nothing(
    api: Api, site: dict[str, Any], body: dict[str, Any], field: str | None
) -> None:
    before = len(api.client.get("/api/batteries/", headers=site["admin"]).json())
    if field is None:
        response = api.client.post(
            "/api/batteries/", content='{"serial_number": "S", "battery_name": "n", "weight": NaN}',
            headers={**site["admin"], "Content-Type": "application/json"},
        )  # fmt: skip
    else:
        response = api.client.post("/api/batteries/", json=body, headers=site["admin"])
    assert response.status_code in (400, 422), response.text
    if field:
        assert field in str(response.json()["detail"])
    assert len(api.client.get("/api/batteries/", headers=site["admin"]).json()) == before


def test_duplicate_unique_field_is_400_with_the_field(api: Api, site: dict[str, Any]) -> None:
    body = {"serial_number": "A-1", "battery_name": "again", "manufacturer_id": site["m1"]}
    response = api.client.post("/api/batteries/", json=body, headers=site["maker"])
    assert response.status_code == 400 and "serial_number" in str(response.json())


def test_bulk_measurements_reject_mismatched_arrays_and_unknown_cells(
    api: Api, site: dict[str, Any]
) -> None:
    cells = site["cells_a"]
    bad = api.client.post(
        "/api/measurements/", json={"cell_ids": cells, "voltage": [3.7]}, headers=site["admin"]
    )
    assert bad.status_code == 422 and "voltage has 1 values for 4 cell_ids" in bad.text
    unknown = api.client.post(
        "/api/measurements/", json={"cell_ids": [99999], "voltage": [3.7]}, headers=site["admin"]
    )
    assert unknown.status_code == 422 and "99999" in unknown.text
    assert api.client.get("/api/measurements/", headers=site["admin"]).json() == []


def test_health_docs_and_activity_log(api: Api, site: dict[str, Any]) -> None:
    assert api.client.get("/health").json() == {"database": "ok"}
    assert api.client.get("/api/schema/swagger-ui/").status_code == 200
    assert "/api/measurements/" in api.client.get("/api/schema/").json()["paths"]
    api.client.app.state.activity.flush()  # type: ignore[attr-defined]
    with api.sessions() as session:
        from cloud.models import ActivityLog

        rows = session.query(ActivityLog).filter_by(username="maker").all()
    assert rows and all("password" not in (r.detail or "") for r in rows)
    assert {r.method for r in rows} >= {"POST"}


def test_analytics_resources_and_their_permissions(api: Api, site: dict[str, Any]) -> None:
    service, operator, rival = site["service"], site["operator"], site["rival"]
    bat, cell = site["bat_a"], site["cells_a"][1]
    diag = {
        "battery_id": bat,
        "soc_max": 0.95,
        "soh_at_eol": 70.0,
        "xh0_time": [0.1, 0.2, 0.3, 0.4, 0.5],
        "soh_evolution": [100.0 - k for k in range(40)],
    }
    created = api.post("/api/diagnostics/", diag, service)
    assert created["xh0_time"] == diag["xh0_time"] and len(created["soh_evolution"]) == 40
    estimate = {
        "battery_id": bat,
        "cell_id": cell,
        "soh": 81.5,
        "algorithm": "ica-dqdv",
        "algorithm_version": "1.2",
    }
    stored = api.post("/api/estimates/", estimate, service)
    assert stored["soh"] == 81.5 and stored["produced_by_id"] is not None  # provenance
    wrong_cell = {**estimate, "cell_id": site["cell_b"]}
    api.post("/api/estimates/", wrong_cell, service, expect=403)
    ecm = {
        "battery_id": bat,
        "cell_id": cell,
        "voltage": 3.7,
        "r0": 0.0012,
        "r1": 0.0008,
        "c1": 2000.0,
    }
    assert api.post("/api/ecm_parameters/", ecm, service)["r0"] == pytest.approx(0.0012)
    api.post("/api/ecm_parameters/", ecm, operator, expect=403)  # operators read, services write
    assert len(api.client.get(f"/api/estimates/?battery={bat}", headers=operator).json()) == 1
    assert api.client.get("/api/ecm_parameters/", headers=rival).json() == []  # not its battery
    devices = api.client.get("/api/devices/", headers=operator).json()
    assert [d["name"] for d in devices] == ["edge-a"] and devices[0]["online"] is False


def test_events_are_listed_per_battery_and_only_to_its_readers(
    api: Api, site: dict[str, Any]
) -> None:
    """Events arrive over MQTT; REST lists them, scoped like the battery's other data."""
    from cloud.models import Event

    t0 = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    with api.sessions() as session, session.begin():
        edge = session.query(Device).filter_by(name="edge-a").one()
        other = Device(name="edge-b", battery_id=site["bat_b"])
        session.add(other)
        session.flush()
        session.add_all(
            [
                Event(
                    device_id=edge.id,
                    battery_id=site["bat_a"],
                    occurred_at=t0 + dt.timedelta(minutes=k),
                    kind="over_voltage",
                    severity="alarm",
                    detail=f"cell {k}",
                    cell_ids=[k],
                )
                for k in range(3)
            ]
            + [
                Event(
                    device_id=other.id,
                    battery_id=site["bat_b"],
                    occurred_at=t0,
                    kind="contactor_open",
                    severity="warning",
                )
            ]
        )
    listed = api.client.get(
        "/api/events/",
        params={"battery": site["bat_a"], "since": (t0 + dt.timedelta(minutes=1)).isoformat()},
        headers=site["operator"],
    )
    assert listed.status_code == 200, listed.text
    assert [(e["detail"], e["cell_ids"]) for e in listed.json()] == [
        ("cell 1", [1]),
        ("cell 2", [2]),
    ]
    # the operator of battery A sees none of battery B's events; the service sees all
    everything = api.client.get("/api/events/", headers=site["operator"]).json()
    assert {e["battery_id"] for e in everything} == {site["bat_a"]}
    assert len(api.client.get("/api/events/", headers=site["service"]).json()) == 4
    forged = {
        "device_id": 1,
        "battery_id": site["bat_a"],
        "occurred_at": t0.isoformat(),
        "kind": "x",
        "severity": "info",
    }
    assert api.client.post("/api/events/", json=forged, headers=site["service"]).status_code == 403


def test_a_measurement_cannot_be_moved_to_a_cell_that_does_not_exist(
    api: Api, site: dict[str, Any]
) -> None:
    """measurements.cell_id has no foreign key (bulk-write speed): the API checks it, for
    every role, admin included."""
    body = {"cell_ids": [site["cells_a"][0]], "voltage": [3.7]}
    stored = api.post("/api/measurements/", body, site["device"])
    item = f"/api/measurements/{stored['ids'][0]}/"
    moved = api.client.patch(item, json={"cell_id": 999_999}, headers=site["admin"])
    assert moved.status_code == 422, moved.text
    assert moved.json()["detail"][0]["loc"] == ["body", "cell_id"]
    assert api.client.get(item, headers=site["admin"]).json()["cell_id"] == site["cells_a"][0]
