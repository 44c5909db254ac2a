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
