"""Store-and-forward against the real cloud ingest, on both backends (SQLite + amqtt,
PostgreSQL + Mosquitto): nothing lost, nothing stored twice, order kept, across a network
outage and a BMS restart; commands reach the BMS once and are acknowledged."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from sqlalchemy import select

from cloud.models import Command, IngestedMessage, Measurement
from cloud.mqtt.contract import (
    AckMessage,
    Channel,
    CommandMessage,
    TelemetryMessage,
    command_message,
)
from tests.cloud.mqtt_fixtures import (
    BACKENDS,
    N_CELLS,
    T0,
    Backend,
    count,
    open_backend,
    seed_device,
    wait_until,
)
from tests.virtual_bms.tcp_proxy import TcpProxy
from virtual_bms.outbox import Outbox
from virtual_bms.uplink import BrokerEndpoint, Uplink


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with open_backend(request.param, tmp_path) as opened:
        yield opened


def _sample(seq: int) -> bytes:
    cells = list(range(N_CELLS))
    return (
        TelemetryMessage(
            seq=seq,
            ts=T0 + dt.timedelta(seconds=seq),
            pillar=2,
            cell_ids=cells,
            voltage=[3.6 + 0.001 * c for c in cells],
            soc=[50.0] * N_CELLS,
        )
        .model_dump_json()
        .encode()
    )


async def _refuse(command: CommandMessage) -> AckMessage:
    return AckMessage(command_id=command.command_id, status="rejected", detail="not in this test")


def test_nothing_lost_or_duplicated_across_an_outage_and_a_restart(
    backend: Backend, tmp_path: Path
) -> None:
    seeded = seed_device(backend, "bms-saf", pillar=2)
    outbox_path = tmp_path / "bms-saf.outbox.sqlite"
    seen: list[int] = []  # seqs in the order a subscriber receives them

    def enqueue(outbox: Outbox, n: int) -> None:
        for _ in range(n):
            outbox.put_sequenced("telemetry", _sample)

    async def scenario() -> None:
        async with backend.broker() as (host, port), backend.ingest(host, port) as ingest:
            proxy = TcpProxy(host, port)
            await proxy.start()
            endpoint = BrokerEndpoint(host="127.0.0.1", port=proxy.port)
            topic = backend.topic("bms-saf", Channel.telemetry)
            async with aiomqtt.Client(host, port) as observer:
                await observer.subscribe(topic, qos=1)

                async def watch() -> None:
                    async for message in observer.messages:
                        assert isinstance(message.payload, bytes)
                        seen.append(TelemetryMessage.model_validate_json(message.payload).seq)

                watcher = asyncio.create_task(watch())
                outbox = Outbox(outbox_path)
                link = Uplink(
                    device="bms-saf",
                    outbox=outbox,
                    endpoint=endpoint,
                    on_command=_refuse,
                    topics=backend.topics,
                )
                backend.client_ids.add(link.client_id)
                running = asyncio.create_task(link.run())
                await link.wait_connected(10)
                enqueue(outbox, 40)
                link.wake()
                await link.wait_drained(10)

                await proxy.cut()  # the site loses its uplink; the BMS goes on sampling
                enqueue(outbox, 40)
                link.wake()
                await asyncio.sleep(0.5)
                assert len(outbox) == 40  # all buffered, none acknowledged
                link.stop()  # ... and the BMS restarts
                await running
                outbox.close()

                outbox = Outbox(outbox_path)
                assert len(outbox) == 40 and outbox.next_seq == 80
                link = Uplink(
                    device="bms-saf",
                    outbox=outbox,
                    endpoint=endpoint,
                    on_command=_refuse,
                    topics=backend.topics,
                )
                running = asyncio.create_task(link.run())
                enqueue(outbox, 40)
                await proxy.restore()
                await link.wait_connected(15)
                link.wake()
                await link.wait_drained(15)
                await wait_until(
                    lambda: ingest.counters.stored >= 120, timeout_s=15, what="120 stored"
                )
                await wait_until(lambda: len(set(seen)) >= 120, timeout_s=5, what="observer")
                link.stop()
                await running
                watcher.cancel()
                await proxy.cut()

    asyncio.run(scenario())
    with backend.engine.connect() as conn:
        stored = conn.scalars(
            select(IngestedMessage.seq).where(IngestedMessage.device_id == seeded.device_id)
        ).all()
    assert sorted(stored) == list(range(120))
    assert count(backend.engine, Measurement) == 120 * N_CELLS
    first_seen = list(dict.fromkeys(seen))  # redeliveries aside, the order of arrival
    assert first_seen == sorted(first_seen) == list(range(120))


def test_a_command_is_handled_once_and_acknowledged(backend: Backend, tmp_path: Path) -> None:
    seeded = seed_device(backend, "bms-cmd", pillar=1)
    handled: list[int] = []

    async def handle(command: CommandMessage) -> AckMessage:
        handled.append(command.command_id)
        return AckMessage(command_id=command.command_id, status="ok")

    with backend.engine.begin() as conn:
        command_id = conn.execute(
            Command.__table__.insert().returning(Command.id),  # type: ignore[attr-defined]
            {
                "device_id": seeded.device_id,
                "kind": "reporting_interval",
                "payload": {"interval_s": 5.0},
                "status": "sent",
            },
        ).scalar_one()
    message = command_message(
        command_id=command_id, kind="reporting_interval", params={"interval_s": 5.0}
    )

    def status() -> str:
        with backend.engine.connect() as conn:
            return str(conn.scalar(select(Command.status).where(Command.id == command_id)))

    async def scenario() -> None:
        async with backend.broker() as (host, port), backend.ingest(host, port):
            outbox = Outbox(tmp_path / "bms-cmd.sqlite")
            link = Uplink(
                device="bms-cmd",
                outbox=outbox,
                endpoint=BrokerEndpoint(host=host, port=port),
                on_command=handle,
                topics=backend.topics,
            )
            backend.client_ids.add(link.client_id)
            running = asyncio.create_task(link.run())
            await link.wait_connected(10)
            async with aiomqtt.Client(host, port) as cloud:
                topic = backend.topic("bms-cmd", Channel.commands)
                for _ in range(2):  # a redelivery
                    await cloud.publish(topic, message.model_dump_json(), qos=1)
            await wait_until(lambda: status() == "acked", timeout_s=10, what="acked")
            await asyncio.sleep(0.2)
            link.stop()
            await running

    asyncio.run(scenario())
    assert handled == [command_id]
