"""The whole service: REST + embedded broker + ingest, health, metrics, commands."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import aiomqtt
import pytest
from fastapi.testclient import TestClient

from cloud.main import create_app
from cloud.models import Battery, Cell, Device, Module
from cloud.mqtt.credentials import issue_device_password
from cloud.settings import CloudSettings
from cloud.users import add_user

SECRET = "service-test-secret-0123456789abcdef"


@pytest.fixture
def service(tmp_path: Any) -> Iterator[TestClient]:
    settings = CloudSettings(
        database_url=f"sqlite:///{tmp_path / 'svc.db'}",
        jwt_secret=SECRET,
        broker="embedded",
        embedded_broker_port=0,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def _login(client: TestClient, name: str, role: str) -> dict[str, str]:
    with client.app.state.sessions() as session, session.begin():  # type: ignore[attr-defined]
        add_user(session, username=name, password="password-123", role=role)
    token = client.post("/api/token/", json={"username": name, "password": "password-123"})
    return {"Authorization": f"Bearer {token.json()['access']}"}


def _seed_device(client: TestClient) -> tuple[int, str]:
    """A device with four cells: its id and its MQTT password."""
    with client.app.state.sessions() as session, session.begin():  # type: ignore[attr-defined]
        battery = Battery(serial_number="S-1", battery_name="pack")
        session.add(battery)
        session.flush()
        module = Module(module_name="m0", battery_id=battery.id)
        session.add(module)
        session.flush()
        session.add_all(
            [Cell(cell_name=f"c{i}", module_id=module.id, position=i) for i in range(4)]
        )
        device = Device(name="edge-1", battery_id=battery.id)
        session.add(device)
        session.flush()
        return device.id, issue_device_password(session, device)


def test_health_and_metrics_with_the_embedded_broker(service: TestClient) -> None:
    health = service.get("/health")
    assert health.status_code == 200 and health.json() == {"database": "ok", "broker": "ok"}
    text = service.get("/metrics").text
    assert "batterytwin_ingest_messages_in" in text and "batterytwin_devices_online 0.0" in text


def test_command_round_trip_with_acknowledgement(service: TestClient) -> None:
    admin = _login(service, "admin", "admin")
    device_id, mqtt_password = _seed_device(service)
    endpoint = service.app.state.mqtt  # type: ignore[attr-defined]
    host, port = endpoint.host, endpoint.port
    received: list[dict[str, Any]] = []
    ready = threading.Event()

    async def edge() -> None:
        async with aiomqtt.Client(
            host, port, identifier="edge-1", username="edge-1", password=mqtt_password
        ) as client:
            await client.subscribe("batterytwin/v1/devices/edge-1/commands", qos=1)
            ready.set()
            async for message in client.messages:
                command = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                received.append(command)
                ack = {"command_id": command["command_id"], "status": "ok", "detail": "applied"}
                await client.publish("batterytwin/v1/devices/edge-1/acks", json.dumps(ack), qos=1)
                return

    thread = threading.Thread(target=lambda: asyncio.run(edge()))
    thread.start()
    assert ready.wait(10)
    body = {
        "device_id": device_id,
        "kind": "ecm_update",
        "params": {"voltage": 3.7, "r0": 0.001, "r1": 0.002, "c1": 900.0},
    }
    sent = service.post("/api/commands/", json=body, headers=admin)
    assert sent.status_code == 201, sent.text
    thread.join(10)
    assert received and received[0]["kind"] == "ecm_update" and received[0]["params"]["r0"] == 0.001
    for _ in range(50):  # the ingest books the ack
        cmd = service.get(f"/api/commands/{sent.json()['id']}/", headers=admin).json()
        if cmd["status"] == "acked":
            break
        threading.Event().wait(0.1)
    assert cmd["status"] == "acked" and cmd["ack_detail"] == "applied"
    bad = service.post("/api/commands/", json={**body, "params": {"r0": -1}}, headers=admin)
    assert bad.status_code == 422
    device_user = _login(service, "edge-user", "device")
    assert service.post("/api/commands/", json=body, headers=device_user).status_code == 403
