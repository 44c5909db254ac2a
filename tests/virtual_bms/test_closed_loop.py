"""A virtual BMS against the whole cloud service: telemetry in, a command down, its ack
booked. On the embedded defaults (SQLite + amqtt with device passwords) and on
PostgreSQL + Mosquitto."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cloud.main import create_app
from cloud.models import Battery, Cell, Device, Module
from cloud.mqtt.credentials import issue_device_password
from cloud.settings import CloudSettings
from cloud.users import add_user
from tests.cloud.conftest import _postgres_database
from tests.cloud.mqtt_fixtures import MOSQUITTO_HOST, MOSQUITTO_PORT, require
from tests.virtual_bms.test_http_fallback import _clean_mosquitto
from virtual_bms.assembly import run_online, twin_bms
from virtual_bms.outbox import Outbox
from virtual_bms.uplink import BrokerEndpoint

SECRET = "closed-loop-secret-0123456789abcdef"
N_CELLS = 8


@pytest.fixture(params=["embedded", "postgres-mosquitto"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    if request.param == "embedded":
        settings = CloudSettings(
            database_url=f"sqlite:///{tmp_path / 'cloud.db'}",
            jwt_secret=SECRET,
            broker="embedded",
            embedded_broker_port=0,
        )
        with TestClient(create_app(settings)) as client:
            yield client
        return
    require(MOSQUITTO_HOST, MOSQUITTO_PORT, "Mosquitto")
    for url in _postgres_database():
        settings = CloudSettings(
            database_url=url,
            jwt_secret=SECRET,
            broker=f"mqtt://{MOSQUITTO_HOST}:{MOSQUITTO_PORT}",
        )
        with TestClient(create_app(settings)) as client:
            yield client
            with client.app.state.sessions() as session:  # type: ignore[attr-defined]
                devices = list(session.scalars(select(Device.name)))
        asyncio.run(_clean_mosquitto(devices))  # sessions and retained status on the shared broker


def _register(client: TestClient, name: str) -> tuple[int, str, dict[str, str]]:
    """A battery of N_CELLS cells, its device (with an MQTT password) and an admin."""
    state: Any = client.app.state  # type: ignore[attr-defined]
    with state.sessions() as session, session.begin():
        add_user(session, username="admin", password="password-123", role="admin")
        battery = Battery(serial_number=f"SN-{name}", battery_name="home pack")
        session.add(battery)
        session.flush()
        module = Module(module_name="m0", battery_id=battery.id)
        session.add(module)
        session.flush()
        session.add_all(
            [
                Cell(cell_name=f"{name}-c{i}", module_id=module.id, position=i)
                for i in range(N_CELLS)
            ]
        )
        device = Device(name=name, battery_id=battery.id, pillar=2)
        session.add(device)
        session.flush()
        device_id, password = device.id, issue_device_password(session, device)
    token = client.post("/api/token/", json={"username": "admin", "password": "password-123"})
    return device_id, password, {"Authorization": f"Bearer {token.json()['access']}"}


def test_a_virtual_bms_reports_and_obeys_the_cloud(service: TestClient, tmp_path: Path) -> None:
    name = f"bms-{uuid.uuid4().hex[:8]}"
    device_id, password, admin = _register(service, name)
    mqtt = service.app.state.mqtt  # type: ignore[attr-defined]
    endpoint = BrokerEndpoint.from_url(f"mqtt://{name}:{password}@{mqtt.host}:{mqtt.port}")
    bms = twin_bms(
        device=name,
        pillar=2,
        cells=N_CELLS,
        outbox=Outbox(tmp_path / "bms.sqlite"),
        trace=True,
        sample_period_s=10.0,
        reporting_interval_s=60.0,
    )
    summary: dict[str, Any] = {}

    def run() -> None:  # 2 h of twin time at 600x: 12 s of wall time
        summary.update(
            asyncio.run(run_online(bms, endpoint=endpoint, duration_s=7200.0, speed=600.0))
        )

    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.monotonic() + 20
    while bms.counters.telemetry < 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    body = {
        "device_id": device_id,
        "kind": "ecm_update",
        "params": {"voltage": 3.7, "r0": 0.0012, "r1": 0.0008, "c1": 30000.0},
    }
    sent = service.post("/api/commands/", json=body, headers=admin)
    assert sent.status_code == 201, sent.text
    runner.join(60)
    assert not runner.is_alive()

    assert bms.cloud_model and bms.model is not None and bms.model.n_rc == 1
    command = service.get(f"/api/commands/{sent.json()['id']}/", headers=admin).json()
    for _ in range(50):
        if command["status"] == "acked":
            break
        time.sleep(0.1)
        command = service.get(f"/api/commands/{sent.json()['id']}/", headers=admin).json()
    assert command["status"] == "acked", command
    assert summary["left_in_outbox"] == 0 and summary["telemetry"] == 120
    assert summary["soc_rmse_pct"] < 2.0
    rows: list[dict[str, Any]] = []
    for _ in range(50):  # the ingest's last batch may still be committing
        listed = service.get(
            "/api/measurements/", params={"device": device_id, "limit": 1000}, headers=admin
        )
        rows = [r for r in listed.json() if r["device_id"] == device_id]
        if len(rows) >= 120 * N_CELLS:
            break
        time.sleep(0.1)
    assert len(rows) == 120 * N_CELLS
    assert all(0.0 <= r["soc"] <= 1.0 and 0.3 < r["soh"] < 1.2 for r in rows)


def test_eis_to_drt_to_ecm_update_closes_the_loop(service: TestClient, tmp_path: Path) -> None:
    """Pillar 1 end to end: the BMS's EIS sweep reaches the cloud, the DRT job fits it,
    the ECM update goes back down, the BMS acknowledges it and estimates with it."""
    from cloud.models import EisRecord

    name = f"hub-{uuid.uuid4().hex[:8]}"
    device_id, password, admin = _register(service, name)
    battery_id = service.get(f"/api/devices/{device_id}/", headers=admin).json()["battery_id"]
    mqtt = service.app.state.mqtt  # type: ignore[attr-defined]
    endpoint = BrokerEndpoint.from_url(f"mqtt://{name}:{password}@{mqtt.host}:{mqtt.port}")
    bms = twin_bms(
        device=name,
        pillar=1,
        cells=N_CELLS,
        outbox=Outbox(tmp_path / "hub.sqlite"),
        sample_period_s=10.0,
        reporting_interval_s=300.0,
        eis={"interval_s": 600.0, "f_min_hz": 0.01, "f_max_hz": 1000.0, "points": 31},
    )
    done = threading.Event()

    def run() -> None:  # 3 h of twin time at 600x
        asyncio.run(run_online(bms, endpoint=endpoint, duration_s=10_800.0, speed=600.0))
        done.set()

    runner = threading.Thread(target=run)
    runner.start()
    state: Any = service.app.state  # type: ignore[attr-defined]

    def sweeps_stored() -> int:
        with state.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(EisRecord)) or 0)

    deadline = time.monotonic() + 30
    while sweeps_stored() < N_CELLS * 31 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sweeps_stored() >= N_CELLS * 31, "no EIS sweep reached the cloud"
    ran = service.post(f"/api/estimators/drt_ecm/run/?battery={battery_id}", headers=admin)
    assert ran.status_code == 200, ran.text
    run_record = ran.json()
    assert run_record["status"] == "ok", run_record
    command_id = run_record["outcome"]["command_id"]
    assert command_id is not None and len(run_record["outcome"]["fits"]) >= N_CELLS
    runner.join(60)
    assert done.is_set()
    assert bms.cloud_model and bms.counters.ecm_updates == 1
    command = service.get(f"/api/commands/{command_id}/", headers=admin).json()
    for _ in range(50):
        if command["status"] == "acked":
            break
        time.sleep(0.1)
        command = service.get(f"/api/commands/{command_id}/", headers=admin).json()
    assert command["status"] == "acked", command
