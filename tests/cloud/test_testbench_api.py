"""``/api/tests/`` on both databases, without MQTT: the bench runs requests in-process and
the analysis endpoints filter, detail, count and chart them."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient

from cloud.main import create_app
from cloud.settings import CloudSettings
from tests.cloud.api_fixtures import SECRET, Api

CAPACITY = {"unit_under_test": "Cell-01", "test_type": "capacity", "level": "cell"}
OVERCHARGE = {
    "unit_under_test": "Module-02",
    "test_type": "overcharge",
    "level": "module",
    "scheduled_at": "2025-02-01T09:00:00Z",
}
CUSTOM = {
    "unit_under_test": "Cell-01",
    "test_type": "custom",
    "procedure": ["Discharge at 1C for 10 minutes", "Rest for 5 minutes"],
    "scheduled_at": "2025-01-15T09:00:00+01:00",
    "dt_s": 5,
}
FINAL = ("completed", "failed", "stopped_by_safety")


def _wait(api: Api, ref: Any, headers: dict[str, str], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        test = api.client.get(f"/api/tests/{ref}/", headers=headers).json()
        if test["status"] in FINAL:
            return test
        assert time.monotonic() < deadline, f"test {ref} still {test['status']}"
        time.sleep(0.05)


def test_tests_requested_over_rest_run_and_are_analysed(api: Api, site: dict[str, Any]) -> None:
    operator, service, admin = site["operator"], site["service"], site["admin"]
    capacity = api.post("/api/tests/", CAPACITY, operator)
    # queued as started; the bench may have taken it already when the answer is read
    assert capacity["status"] in ("started", "in_progress", "completed")
    assert capacity["bench"] == "virtual" and capacity["unit_under_test"] == "Cell-01"
    assert capacity["name"] == "Capacity" and len(capacity["uuid"]) == 36
    overcharge = api.post("/api/tests/", OVERCHARGE, service)
    custom = api.post("/api/tests/", CUSTOM, admin)
    assert custom["scheduled_at"] == "2025-01-15T08:00:00+00:00"  # kept in UTC
    # who may ask, and what a bad request gets
    assert api.client.post("/api/tests/", json=CAPACITY, headers=site["maker"]).status_code == 403
    assert api.client.post("/api/tests/", json=CAPACITY, headers=site["device"]).status_code == 403
    bad = api.client.post(
        "/api/tests/", json={**CUSTOM, "procedure": ["Rest for 1 minute", "Jump"]}, headers=admin
    )
    assert bad.status_code == 422
    [error] = bad.json()["detail"]
    assert error["loc"] == ["body", "procedure"]
    assert "step 1" in error["msg"] and "Jump" in error["msg"]

    done = {t["id"]: _wait(api, t["id"], operator) for t in (capacity, overcharge, custom)}
    assert done[capacity["id"]]["status"] == "completed"
    kpis = done[capacity["id"]]["outcome"]["kpis"]
    assert abs(kpis["measured_capacity_ah"] / 5.0 - 1) < 0.02
    assert done[overcharge["id"]]["status"] == "completed"
    assert done[overcharge["id"]]["outcome"]["summary"].startswith("safety limit reached at")
    assert done[custom["id"]]["status"] == "completed"

    # details, by id or uuid, readable by any non-device role
    details = api.client.get(f"/api/tests/{custom['uuid']}/", headers=site["maker"]).json()
    assert details["id"] == custom["id"] and details["unit_under_test"] == "Cell-01"
    units = {v["name"]: (v["unit"], v["type"]) for v in details["variables"]}
    assert units["voltage_v"] == ("V", "output") and units["current_a"] == ("A", "input")
    assert details["n_samples"] == 180  # 15 min in 5 s steps
    assert details["outcome"]["model"]["kind"] == "ecm"
    assert api.client.get("/api/tests/999/", headers=admin).status_code == 404
    assert api.client.get(f"/api/tests/{custom['id']}/", headers=site["device"]).status_code == 403

    # list filters and paging
    def ids(query: str) -> list[int]:
        response = api.client.get(f"/api/tests/{query}", headers=operator)
        assert response.status_code == 200, response.text
        return [t["id"] for t in response.json()]

    every = [custom["id"], overcharge["id"], capacity["id"]]  # newest first
    assert ids("") == every
    assert ids("?status=completed") == every and ids("?status=started&status=failed") == []
    assert ids("?test_type=overcharge") == [overcharge["id"]]
    assert ids("?unit_under_test=Cell-01&ordering=id") == [capacity["id"], custom["id"]]
    assert ids("?level=module") == [overcharge["id"]]
    january = "?since=2025-01-01T00:00:00Z&until=2025-02-01T00:00:00Z"
    assert ids(january) == [custom["id"]]
    assert ids("?since=2025-01-01T00:00:00Z&until=2025-02-01T09:00:01Z&ordering=scheduled_at") == [
        custom["id"],
        overcharge["id"],
    ]
    page = api.client.get("/api/tests/?limit=2", headers=operator)
    assert len(page.json()) == 2 and 'rel="next"' in page.headers["Link"]
    assert ids("?limit=2&offset=2") == [capacity["id"]]
    listed = api.client.get("/api/tests/?test_type=capacity", headers=operator).json()[0]
    assert listed["summary"].startswith("measured capacity") and listed["scheduled_at"]
    assert api.client.get("/api/tests/?ordering=colour", headers=operator).status_code == 422

    # analytics: tests per level and status
    counts = api.client.get("/api/tests/analytics/", headers=site["maker"]).json()
    assert counts["total"] == 3
    assert counts["by_level"] == {"cell": 2, "module": 1}
    assert counts["by_status"] == {"completed": 3}
    assert counts["by_level_and_status"]["module"] == {"completed": 1}
    assert counts["by_type"] == {"capacity": 1, "overcharge": 1, "custom": 1}
    only = api.client.get("/api/tests/analytics/?unit_under_test=Cell-01", headers=admin).json()
    assert only["total"] == 2

    # results for trend charts: variable choice, time window, decimation
    base = f"/api/tests/{custom['id']}/results/"
    full = api.client.get(base, headers=operator).json()
    assert full["n_samples"] == full["n_points"] == 180
    assert set(full["data"]) == {"time_s", "step", "current_a", "voltage_v", "temperature_c", "soc"}
    assert full["units"]["temperature_c"] == "degC"
    assert full["data"]["time_s"][:2] == [5.0, 10.0] and full["data"]["step"][-1] == 1
    window = api.client.get(
        f"{base}?variables=voltage_v,current_a&since_s=100&until_s=400&max_points=10",
        headers=operator,
    ).json()
    assert set(window["data"]) == {"time_s", "voltage_v", "current_a"}
    assert window["n_samples"] == 61 and window["n_points"] == 10
    assert window["data"]["time_s"][0] == 100.0 and window["data"]["time_s"][-1] == 400.0
    assert all(v > 0 for v in window["data"]["current_a"][:8])  # discharging: positive
    unknown = api.client.get(f"{base}?variables=voltage_v,colour", headers=operator)
    assert unknown.status_code == 422 and "colour" in unknown.text
    by_uuid = api.client.get(f"/api/tests/{custom['uuid']}/results/?max_points=2", headers=admin)
    assert by_uuid.json()["data"]["time_s"] == [5.0, 900.0]


def test_a_stop_aborts_the_running_test_and_a_restart_runs_the_queued_ones(
    database_url: str,
) -> None:
    settings = CloudSettings(
        database_url=database_url, jwt_secret=SECRET, broker="none", estimator_interval_s=0
    )
    long = {
        "unit_under_test": "Cell-09",
        "test_type": "cycle_ageing",
        "n_cycles": 2000,
        "dt_s": 1,
    }
    with TestClient(create_app(settings)) as client:
        api = Api(client)
        admin = api.user("admin", "admin")
        running = api.post("/api/tests/", long, admin)
        queued = api.post("/api/tests/", CAPACITY, admin)  # one bench: it waits
        deadline = time.monotonic() + 10
        while client.get(f"/api/tests/{running['id']}/", headers=admin).json()["n_samples"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    with TestClient(create_app(settings)) as client:
        api = Api(client)
        aborted = client.get(f"/api/tests/{running['id']}/", headers=admin).json()
        assert aborted["status"] == "failed" and aborted["outcome"]["end"] == "aborted"
        assert aborted["n_samples"] > 0  # what it measured before the stop is kept
        resumed = _wait(api, queued["id"], admin)
        assert resumed["status"] == "completed"
