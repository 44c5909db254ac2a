"""``/api/fleet/``: provisioning many devices, the stored-message poll and the summary a
fleet load test reads, on SQLite and PostgreSQL; also ``cloud device add-many``."""

from __future__ import annotations

import csv
import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from batterytwin.cli import app as cli_app
from cloud.db import make_engine
from cloud.fleet_provision import provision_devices
from cloud.models import Battery, Cell, Device, IngestedMessage, Measurement, Module
from cloud.mqtt.broker import verify_mosquitto_password
from tests.cloud.api_fixtures import Api

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def users(api: Api) -> dict[str, dict[str, str]]:
    return {role: api.user(role, role) for role in ("admin", "service", "operator", "device")}


def _provision(api: Api, headers: dict[str, str], **body: Any) -> list[dict[str, Any]]:
    response = api.client.post("/api/fleet/devices/", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    result: list[dict[str, Any]] = response.json()
    return result


def _hashes(api: Api) -> dict[str, str | None]:
    with api.sessions() as session:
        rows = session.execute(select(Device.name, Device.mqtt_password_hash)).all()
        return {name: hashed for name, hashed in rows}


def _store(api: Api, messages: dict[str, list[tuple[int, str]]], *, at: dt.datetime = T0) -> None:
    """Rows in ingested_messages as the ingest writes them: (seq, kind) per device."""
    with api.sessions() as session, session.begin():
        ids = dict(session.execute(select(Device.name, Device.id)).all())
        rows = [
            {"device_id": ids[name], "seq": seq, "kind": kind, "received_at": at}
            for name, pairs in messages.items()
            for seq, kind in pairs
        ]
        session.execute(insert(IngestedMessage), rows)


def _stored(api: Api, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    response = api.client.post("/api/fleet/stored/", json=body, headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


# --- provisioning ------------------------------------------------------------------------


def test_provisioning_creates_batteries_cells_and_working_passwords(
    api: Api, users: dict[str, dict[str, str]]
) -> None:
    made = _provision(api, users["admin"], prefix="fleet-", count=3, start=7, pillar=2, cells=4)
    assert [d["name"] for d in made] == ["fleet-00007", "fleet-00008", "fleet-00009"]
    hashes = _hashes(api)
    for device in made:
        assert verify_mosquitto_password(device["password"], hashes[device["name"]] or "")
    with api.sessions() as session:
        for device in made:
            row = session.get(Device, device["device_id"])
            assert row is not None and row.name == device["name"] and row.pillar == 2
            battery = session.get(Battery, row.battery_id)
            assert battery is not None and battery.serial_number == f"SN-{row.name}"
            positions = session.scalars(
                select(Cell.position)
                .join(Module, Cell.module_id == Module.id)
                .where(Module.battery_id == battery.id)
                .order_by(Cell.position)
            ).all()
            assert positions == [0, 1, 2, 3]
        assert session.scalar(select(func.count()).select_from(Module)) == 3


def test_provisioning_again_rotates_passwords_without_new_batteries(
    api: Api, users: dict[str, dict[str, str]]
) -> None:
    first = {d["name"]: d for d in _provision(api, users["admin"], prefix="f_", count=2)}
    again = _provision(api, users["admin"], prefix="f_", count=3, pillar=2)  # one more
    hashes = _hashes(api)
    for device in again:
        old = first.get(device["name"])
        assert verify_mosquitto_password(device["password"], hashes[device["name"]] or "")
        if old is not None:
            assert device["device_id"] == old["device_id"]
            assert device["password"] != old["password"]
            assert not verify_mosquitto_password(old["password"], hashes[device["name"]] or "")
    with api.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Battery)) == 3
        assert session.scalar(select(func.count()).select_from(Cell)) == 3 * 16
        assert set(session.scalars(select(Device.pillar))) == {2}


def test_provisioning_reuses_the_battery_of_a_deleted_device(
    api: Api, users: dict[str, dict[str, str]]
) -> None:
    (made,) = _provision(api, users["admin"], prefix="re-", count=1, cells=2)
    with api.sessions() as session, session.begin():
        device = session.get(Device, made["device_id"])
        assert device is not None
        battery_id = device.battery_id
        session.delete(device)
    (again,) = _provision(api, users["admin"], prefix="re-", count=1, cells=2)
    with api.sessions() as session:
        device = session.get(Device, again["device_id"])
        assert device is not None and device.battery_id == battery_id
        assert session.scalar(select(func.count()).select_from(Cell)) == 2


_INVALID_PROVISIONING = [
    ({"prefix": "bad/", "count": 1}, "prefix"),
    ({"prefix": "", "count": 1}, "prefix"),
    ({"prefix": "-x", "count": 1}, "prefix"),
    ({"prefix": "a.b", "count": 1}, "prefix"),
    ({"prefix": "x" * 81, "count": 1}, "prefix"),
    ({"prefix": "f-", "count": 0}, "count"),
    ({"prefix": "f-", "count": 20_001}, "count"),
    ({"prefix": "f-", "count": 1, "cells": 0}, "cells"),
    ({"prefix": "f-", "count": 1, "cells": 4097}, "cells"),
    ({"prefix": "f-", "count": 1, "pillar": 3}, "pillar"),
    ({"prefix": "f-", "count": 1, "start": -1}, "start"),
    ({"prefix": "f-", "count": 1, "colour": "red"}, "colour"),
]


def test_provisioning_validation_names_the_field(
    api: Api, users: dict[str, dict[str, str]]
) -> None:
    for body, field in _INVALID_PROVISIONING:
        response = api.client.post("/api/fleet/devices/", json=body, headers=users["admin"])
        assert response.status_code == 422, response.text
        assert [e["loc"] for e in response.json()["detail"]] == [["body", field]], body


def test_provisioning_refuses_too_many_cells_in_one_call(
    api: Api, users: dict[str, dict[str, str]]
) -> None:
    body = {"prefix": "f-", "count": 1000, "cells": 4096}
    response = api.client.post("/api/fleet/devices/", json=body, headers=users["admin"])
    assert response.status_code == 422
    assert "count * cells" in response.json()["detail"]
    with api.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Device)) == 0


def test_provisioning_2000_devices_timing(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = make_engine(database_url)
    from cloud.migrate import upgrade

    upgrade(engine)
    try:
        started = time.perf_counter()
        with Session(engine) as session, session.begin():
            made = provision_devices(session, prefix="load-", count=2000, pillar=2, cells=16)
        seconds = time.perf_counter() - started
        with Session(engine) as session:
            assert session.scalar(select(func.count()).select_from(Cell)) == 32_000
    finally:
        engine.dispose()
    assert len(made) == 2000
    with capsys.disabled():
        backend = database_url.split(":", 1)[0]
        print(f"\nprovisioned 2,000 devices (32,000 cells) on {backend} in {seconds:.2f} s")
    assert seconds < 60


# --- stored ------------------------------------------------------------------------------


def test_stored_returns_exactly_the_pairs_above_the_marks(
    api: Api, users: dict[str, dict[str, str]]
) -> None:
    _provision(api, users["admin"], prefix="s-", count=3, cells=1)
    _store(
        api,
        {
            "s-00000": [(0, "telemetry"), (1, "telemetry"), (2, "eis"), (5, "telemetry")],
            "s-00001": [(0, "telemetry"), (1, "telemetry")],
            "s-00002": [(9, "telemetry")],
        },
    )
    before = time.time()
    body = {"devices": {"s-00000": 1, "s-00001": 1, "s-00002": -1, "ghost": -1}}
    found = _stored(api, users["service"], body)
    pairs = sorted(zip(found["device"], found["seq"], strict=True))
    assert pairs == [("s-00000", 2), ("s-00000", 5), ("s-00002", 9)]
    assert found["received_at_s"] == [T0.timestamp()] * 3
    assert before - 1 <= found["now_s"] <= time.time() + 1
    assert found["truncated"] is False
    nothing = _stored(api, users["admin"], {"devices": {"s-00000": 5, "s-00001": 1}})
    assert nothing["device"] == nothing["seq"] == nothing["received_at_s"] == []


def test_stored_truncates_per_device_and_says_so(
    api: Api, users: dict[str, dict[str, str]]
) -> None:
    _provision(api, users["admin"], prefix="t-", count=2, cells=1)
    _store(
        api,
        {
            "t-00000": [(seq, "telemetry") for seq in range(10)],
            "t-00001": [(seq, "telemetry") for seq in range(2)],
        },
    )
    marks = {"t-00000": -1, "t-00001": -1}
    found = _stored(api, users["admin"], {"devices": marks, "limit": 6})  # 3 per device
    pairs = sorted(zip(found["device"], found["seq"], strict=True))
    assert pairs == [("t-00000", 0), ("t-00000", 1), ("t-00000", 2), ("t-00001", 0), ("t-00001", 1)]
    assert found["truncated"] is True
    marks = {"t-00000": 8, "t-00001": 1}
    rest = _stored(api, users["admin"], {"devices": marks, "limit": 6})
    assert (rest["device"], rest["seq"], rest["truncated"]) == (["t-00000"], [9], False)


def test_stored_validates_its_body(api: Api, users: dict[str, dict[str, str]]) -> None:
    for body, loc in [
        ({"devices": {"a b": 1}}, ["body", "devices", "a b", "[key]"]),
        ({"devices": {"ok": -2}}, ["body", "devices", "ok"]),
        ({"devices": {}, "limit": 50_001}, ["body", "limit"]),
        ({}, ["body", "devices"]),
    ]:
        response = api.client.post("/api/fleet/stored/", json=body, headers=users["admin"])
        assert response.status_code == 422, response.text
        assert [e["loc"] for e in response.json()["detail"]] == [loc]


# --- summary -----------------------------------------------------------------------------


def _measure(api: Api, device: str, *, samples: int, repeat_first: bool = False) -> None:
    """``samples`` rows per cell of ``device``'s battery, one a second from T0."""
    with api.sessions() as session, session.begin():
        cells = session.scalars(
            select(Cell.id)
            .join(Module, Cell.module_id == Module.id)
            .join(Device, Device.battery_id == Module.battery_id)
            .where(Device.name == device)
        ).all()
        rows = [
            {"cell_id": cell, "measured_at": T0 + dt.timedelta(seconds=k), "voltage": 3.6}
            for cell in cells
            for k in range(samples)
        ]
        if repeat_first:
            rows.append(dict(rows[0]))  # what an ingest storing a message twice would leave
        session.execute(insert(Measurement), rows)


def test_summary_counts_messages_rows_and_duplicates(
    api: Api, users: dict[str, dict[str, str]]
) -> None:
    _provision(api, users["admin"], prefix="fleet_", count=3, cells=2)
    _provision(api, users["admin"], prefix="other-", count=1, cells=2)
    _store(
        api,
        {
            "fleet_00000": [(0, "telemetry"), (1, "telemetry"), (2, "eis"), (7, "telemetry")],
            "fleet_00001": [(3, "telemetry")],
            "other-00000": [(0, "telemetry")],
        },
    )
    _measure(api, "fleet_00000", samples=3)
    _measure(api, "fleet_00001", samples=1, repeat_first=True)
    _measure(api, "other-00000", samples=5, repeat_first=True)

    response = api.client.get("/api/fleet/summary/?prefix=fleet_", headers=users["service"])
    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary == {
        "devices": {
            "fleet_00000": {
                "count": 4,
                "min_seq": 0,
                "max_seq": 7,
                "by_kind": {"telemetry": 3, "eis": 1},
            },
            "fleet_00001": {"count": 1, "min_seq": 3, "max_seq": 3, "by_kind": {"telemetry": 1}},
            "fleet_00002": {"count": 0, "min_seq": None, "max_seq": None, "by_kind": {}},
        },
        "measurement_rows": 2 * 3 + 2 * 1 + 1,
        "duplicate_measurement_rows": None,
    }
    checked = api.client.get(
        "/api/fleet/summary/",
        params={"prefix": "fleet_", "check_duplicates": "true"},
        headers=users["admin"],
    ).json()
    assert (checked["measurement_rows"], checked["duplicate_measurement_rows"]) == (9, 1)
    # "_" is a LIKE wildcard: "fleet_" must not match "fleetX..."
    _provision(api, users["admin"], prefix="fleetX", count=1, cells=1)
    again = api.client.get("/api/fleet/summary/?prefix=fleet_", headers=users["admin"]).json()
    assert sorted(again["devices"]) == ["fleet_00000", "fleet_00001", "fleet_00002"]


def test_summary_validates_the_prefix(api: Api, users: dict[str, dict[str, str]]) -> None:
    for query in ("", "?prefix=", "?prefix=a%2Fb"):
        response = api.client.get(f"/api/fleet/summary/{query}", headers=users["admin"])
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["query", "prefix"]


# --- permissions -------------------------------------------------------------------------


def test_permissions(api: Api, users: dict[str, dict[str, str]]) -> None:
    calls: list[tuple[str, str, dict[str, Any] | None, dict[str | None, int]]] = [
        (
            "post",
            "/api/fleet/devices/",
            {"prefix": "p-", "count": 1},
            {"admin": 200, "service": 403, "operator": 403, "device": 403, None: 401},
        ),
        (
            "post",
            "/api/fleet/stored/",
            {"devices": {"p-00000": -1}},
            {"admin": 200, "service": 200, "operator": 403, "device": 403, None: 401},
        ),
        (
            "get",
            "/api/fleet/summary/?prefix=p-",
            None,
            {"admin": 200, "service": 200, "operator": 403, "device": 403, None: 401},
        ),
    ]
    for method, path, body, by_role in calls:
        for role, code in by_role.items():
            headers = users[role] if role else {}
            response = api.client.request(method, path, json=body, headers=headers)
            assert response.status_code == code, (path, role, response.text)
            if code == 403:
                assert f"role '{role}' may not" in response.json()["detail"]


# --- CLI ---------------------------------------------------------------------------------


def test_cli_add_many_writes_the_passwords_as_csv(database_url: str, tmp_path: Path) -> None:
    out = tmp_path / "creds.csv"
    args = ["cloud", "device", "add-many", "--prefix", "cli-", "--db", database_url]
    result = CliRunner().invoke(
        cli_app, [*args, "--count", "3", "--pillar", "2", "--cells", "2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "3 devices cli-..." in result.stderr
    assert out.stat().st_mode & 0o077 == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [r["name"] for r in rows] == ["cli-00000", "cli-00001", "cli-00002"]
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            hashes = dict(session.execute(select(Device.name, Device.mqtt_password_hash)).all())
            for row in rows:
                assert verify_mosquitto_password(row["password"], hashes[row["name"]] or "")
                assert session.get(Device, int(row["device_id"])) is not None
    finally:
        engine.dispose()
    printed = CliRunner().invoke(cli_app, [*args, "--count", "1"])  # to stdout; rotates
    assert printed.exit_code == 0, printed.output
    (row,) = csv.DictReader(printed.stdout.splitlines())
    assert row["name"] == "cli-00000" and row["password"] != rows[0]["password"]
    refused = CliRunner().invoke(cli_app, [*args, "--count", "1", "--pillar", "3"])
    assert refused.exit_code == 2 and "pillar must be 1 or 2" in refused.stderr
