"""Commands on both backends: publish, a fake device receives and acks, the row follows."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.models import Command
from cloud.mqtt.commands import CommandError, publish_command
from cloud.mqtt.contract import (
    AckMessage,
    Channel,
    EcmUpdateCommand,
    ReportingIntervalCommand,
    parse_command,
)
from tests.cloud.mqtt_fixtures import BACKENDS, Backend, open_backend, seed_device, wait_until


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with open_backend(request.param, tmp_path) as opened:
        yield opened


def _add_command(backend: Backend, device_id: int, kind: str, params: dict[str, Any]) -> int:
    with Session(backend.engine) as session, session.begin():
        command = Command(device_id=device_id, kind=kind, payload=params)
        session.add(command)
        session.flush()
        return command.id


def _command(backend: Backend, command_id: int) -> Command:
    with Session(backend.engine) as session:
        command = session.get(Command, command_id)
        assert command is not None
        return command


def test_command_round_trip_ends_acked_or_failed(backend: Backend) -> None:
    seeded = seed_device(backend, "bms-cmd")
    ecm = {"voltage": 3.7, "r0": 0.0021, "r1": 0.0012, "c1": 8000.0, "r2": 0.001, "c2": 2.0e4}
    ecm_id = _add_command(backend, seeded.device_id, "ecm_update", ecm)
    slow_id = _add_command(backend, seeded.device_id, "reporting_interval", {"interval_s": 600})
    bad_id = _add_command(backend, seeded.device_id, "reporting_interval", {"interval_s": -1})
    received: list[Any] = []

    async def fake_device(host: str, port: int, ready: asyncio.Event) -> None:
        """Applies an ECM update, refuses reporting intervals over 300 s."""
        async with aiomqtt.Client(host, port, identifier=backend.client_id("device")) as device:
            await device.subscribe(backend.topic("bms-cmd", Channel.commands), qos=1)
            ready.set()
            async for message in device.messages:
                assert isinstance(message.payload, bytes)
                command = parse_command(message.payload)
                received.append(command)
                ok = not (
                    isinstance(command, ReportingIntervalCommand)
                    and command.params.interval_s > 300
                )
                ack = AckMessage(
                    command_id=command.command_id,
                    status="ok" if ok else "rejected",
                    detail="applied" if ok else "interval_s above 300 s",
                )
                acks = backend.topic("bms-cmd", Channel.acks)
                await device.publish(acks, ack.model_dump_json(), qos=1)
                if len(received) == 2:
                    return

    async def scenario() -> None:
        async with backend.broker() as (host, port), backend.ingest(host, port) as ingest:
            ready = asyncio.Event()
            device = asyncio.create_task(fake_device(host, port, ready))
            await asyncio.wait_for(ready.wait(), 5)
            async with aiomqtt.Client(host, port) as cloud:
                sent = await publish_command(
                    cloud, engine=backend.engine, command_id=ecm_id, topics=backend.topics
                )
                assert isinstance(sent, EcmUpdateCommand) and sent.params.c2 == 2.0e4
                await publish_command(
                    cloud, engine=backend.engine, command_id=slow_id, topics=backend.topics
                )
                with pytest.raises(CommandError, match="interval_s"):
                    await publish_command(
                        cloud, engine=backend.engine, command_id=bad_id, topics=backend.topics
                    )
                with pytest.raises(CommandError, match="no command"):
                    await publish_command(cloud, engine=backend.engine, command_id=999)
            await asyncio.wait_for(device, 10)
            await wait_until(lambda: ingest.counters.acks >= 2, what="two acks")
            assert ingest.counters.dead_lettered == 0

    asyncio.run(scenario())
    assert [c.command_id for c in received] == [ecm_id, slow_id]
    assert received[0].params.model_dump(exclude_none=True) == ecm
    ecm_row, slow_row, bad_row = (_command(backend, i) for i in (ecm_id, slow_id, bad_id))
    assert (ecm_row.status, ecm_row.ack_detail) == ("acked", "applied")
    assert ecm_row.sent_at is not None and ecm_row.acked_at is not None
    assert (slow_row.status, slow_row.ack_detail) == ("failed", "interval_s above 300 s")
    assert bad_row.status == "failed" and bad_row.sent_at is None
    assert bad_row.ack_detail is not None and "interval_s" in bad_row.ack_detail
    with Session(backend.engine) as session:
        assert session.scalars(select(Command.status).order_by(Command.id)).all() == [
            "acked",
            "failed",
            "failed",
        ]


def test_a_command_the_broker_never_got_is_failed_not_left_pending(tmp_path: Path) -> None:
    """The API answers 503 when the broker is unreachable; the stored command is marked
    failed, so nothing sends it later behind the caller's back."""
    from fastapi.testclient import TestClient

    from cloud.main import create_app
    from cloud.models import Battery, Device
    from cloud.settings import CloudSettings
    from cloud.users import add_user
    from tests.cloud.mqtt_fixtures import MOSQUITTO_HOST, MOSQUITTO_PORT, free_port, require

    require(MOSQUITTO_HOST, MOSQUITTO_PORT, "Mosquitto")
    settings = CloudSettings(
        database_url=f"sqlite:///{tmp_path / 'cloud.db'}",
        broker=f"mqtt://{MOSQUITTO_HOST}:{MOSQUITTO_PORT}",
        ingest_in_api=False,
        estimator_interval_s=0,
        jwt_secret="commands-test-secret-0123456789abcdef",
    )
    app = create_app(settings)
    with TestClient(app) as client:
        with app.state.sessions() as session, session.begin():
            add_user(session, username="admin", password="password-123", role="admin")
            battery = Battery(serial_number="SN-unreachable", battery_name="pack")
            session.add(battery)
            session.flush()
            device = Device(name="bms-unreachable", battery_id=battery.id, pillar=2)
            session.add(device)
            session.flush()
            device_id = device.id
        # the broker goes away after start-up: nothing listens on the endpoint's new port
        app.state.mqtt = app.state.mqtt.model_copy(update={"port": free_port()})
        token = client.post("/api/token/", json={"username": "admin", "password": "password-123"})
        headers = {"Authorization": f"Bearer {token.json()['access']}"}
        body = {"device_id": device_id, "kind": "reporting_interval", "params": {"interval_s": 5}}
        sent = client.post("/api/commands/", json=body, headers=headers)
        assert sent.status_code == 503, sent.text
        assert "was not sent" in sent.json()["detail"]
        listed = client.get(f"/api/commands/?device={device_id}", headers=headers).json()
    assert [(c["status"], c["ack_detail"][:30]) for c in listed] == [
        ("failed", "not sent: broker unreachable (")
    ]
