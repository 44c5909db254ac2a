"""The REST tests' client and a seeded site (two manufacturers, an operator, cells, a
device), shared by the API test modules through conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud.main import create_app
from cloud.models import Device
from cloud.settings import CloudSettings
from cloud.users import add_user

SECRET = "test-secret-0123456789abcdef-0123456789"


class Api:
    """A test client plus helpers to make users and log them in."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.sessions = client.app.state.sessions  # type: ignore[attr-defined]

    def user(self, name: str, role: str, **kwargs: Any) -> dict[str, str]:
        with self.sessions() as session, session.begin():
            add_user(session, username=name, password="password-123", role=role, **kwargs)
        tokens = self.client.post(
            "/api/token/", json={"username": name, "password": "password-123"}
        )
        assert tokens.status_code == 200, tokens.text
        return {"Authorization": f"Bearer {tokens.json()['access']}"}

    def post(
        self, path: str, body: dict[str, Any], headers: dict[str, str], expect: int = 201
    ) -> Any:
        response = self.client.post(path, json=body, headers=headers)
        assert response.status_code == expect, response.text
        return response.json()


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    settings = CloudSettings(
        database_url=database_url, jwt_secret=SECRET, token_rate_per_minute=1000, broker="none"
    )
    with TestClient(create_app(settings)) as client:
        yield Api(client)


@pytest.fixture
def site(api: Api) -> dict[str, Any]:
    """Two manufacturers with a battery each, an operator of battery A, cells, a device."""
    admin = api.user("admin", "admin")
    m1 = api.post("/api/manufacturers/", {"name": "CellCo"}, admin)["id"]
    m2 = api.post("/api/manufacturers/", {"name": "OtherCo"}, admin)["id"]
    maker = api.user("maker", "manufacturer", manufacturer_id=m1)
    rival = api.user("rival", "manufacturer", manufacturer_id=m2)
    operator = api.user("operator", "operator")
    service = api.user("service", "service")
    op_id = api.client.get("/api/batteries/", headers=operator)  # a read with no batteries yet
    assert op_id.json() == []
    bat_a = api.post(
        "/api/batteries/",
        {
            "serial_number": "A-1",
            "battery_name": "pack A",
            "manufacturer_id": m1,
            "status": "repurposed",
        },
        maker,
    )["id"]
    bat_b = api.post(
        "/api/batteries/",
        {"serial_number": "B-1", "battery_name": "pack B", "manufacturer_id": m2},
        rival,
    )["id"]
    with api.sessions() as session, session.begin():
        from cloud.models import Battery, User

        op = session.query(User).filter_by(username="operator").one()
        session.get(Battery, bat_a).operator_id = op.id
    mod_a = api.post("/api/modules/", {"module_name": "A-m0", "battery_id": bat_a}, maker)["id"]
    mod_b = api.post("/api/modules/", {"module_name": "B-m0", "battery_id": bat_b}, rival)["id"]
    cells_a = [
        api.post("/api/cells/", {"cell_name": f"A-c{i}", "module_id": mod_a, "position": i}, maker)[
            "id"
        ]
        for i in range(4)
    ]
    cell_b = api.post(
        "/api/cells/", {"cell_name": "B-c0", "module_id": mod_b, "position": 0}, rival
    )["id"]
    device = api.user("edge-a", "device")
    with api.sessions() as session, session.begin():
        from cloud.models import User

        edge = session.query(User).filter_by(username="edge-a").one()
        session.add(Device(name="edge-a", battery_id=bat_a, user_id=edge.id))
    users = {"admin": admin, "maker": maker, "rival": rival, "operator": operator}
    ids = {
        "bat_a": bat_a,
        "bat_b": bat_b,
        "mod_a": mod_a,
        "cells_a": cells_a,
        "cell_b": cell_b,
        "m1": m1,
    }
    return {**users, "service": service, "device": device, **ids}
