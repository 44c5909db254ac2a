"""A broker outage: Mosquitto (persistent, as the cloud renders its config) stops while the
BMS keeps sampling, then comes back; the ingest's session survives and every message is
stored once, in order. (The embedded amqtt broker keeps sessions in memory only: for
production, Mosquitto.)"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from cloud.db import make_engine
from cloud.migrate import upgrade
from cloud.models import IngestedMessage
from cloud.mqtt.broker import render_mosquitto_conf
from cloud.mqtt.contract import Topics
from cloud.mqtt.ingest import IngestConfig, IngestService
from tests.cloud.mqtt_fixtures import (
    Backend,
    free_port,
    seed_device,
    start_mosquitto,
    stop_mosquitto,
    wait_until,
)
from tests.virtual_bms.test_uplink import _refuse, _sample
from virtual_bms.outbox import Outbox
from virtual_bms.uplink import BrokerEndpoint, Uplink


class _Mosquitto:
    """A private Mosquitto the test can stop and start again on the same port."""

    def __init__(self, conf: Path, port: int) -> None:
        self.conf, self.port = conf, port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = start_mosquitto(self.conf, self.port, purpose="the broker outage test")

    def stop(self) -> None:
        if self.process is not None:
            stop_mosquitto(self.process)
            self.process = None


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[_Mosquitto]:
    port = free_port()
    (tmp_path / "persistence").mkdir()
    (tmp_path / "passwd").write_text("")
    (tmp_path / "acl").write_text("")
    conf = render_mosquitto_conf(
        password_file=tmp_path / "passwd",
        acl_file=tmp_path / "acl",
        port=port,
        persistence_dir=tmp_path / "persistence",
    ).replace("allow_anonymous false", "allow_anonymous true")
    conf = "\n".join(
        line for line in conf.splitlines() if not line.startswith(("password_file", "acl_file"))
    )
    (tmp_path / "mosquitto.conf").write_text(conf + "\n")
    broker = _Mosquitto(tmp_path / "mosquitto.conf", port)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_a_broker_restart_loses_and_repeats_nothing(mosquitto: _Mosquitto, tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
    upgrade(engine)
    topics = Topics(root="outage/v1")
    backend = Backend("sqlite-mosquitto", engine, topics, "outage")
    seeded = seed_device(backend, "bms-out", pillar=2)
    endpoint = BrokerEndpoint(host="127.0.0.1", port=mosquitto.port)
    ingest_config = IngestConfig(host="127.0.0.1", port=mosquitto.port, topics=topics)

    async def scenario() -> None:
        async with IngestService(engine=engine, config=ingest_config) as ingest:
            outbox = Outbox(tmp_path / "bms.sqlite")
            link = Uplink(
                device="bms-out",
                outbox=outbox,
                endpoint=endpoint,
                on_command=_refuse,
                topics=topics,
                reconnect_delay_max_s=1.0,
            )
            running = asyncio.create_task(link.run())
            await link.wait_connected(10)
            for _ in range(30):
                outbox.put_sequenced("telemetry", _sample)
            link.wake()
            await link.wait_drained(10)
            await wait_until(lambda: ingest.counters.stored >= 30, what="30 before the outage")

            await asyncio.to_thread(mosquitto.stop)
            for _ in range(30):  # sampled while the broker is down
                outbox.put_sequenced("telemetry", _sample)
            link.wake()
            await asyncio.sleep(1.0)
            assert len(outbox) == 30 and not link.connected
            await asyncio.to_thread(mosquitto.start)
            await link.wait_connected(15)
            link.wake()
            await link.wait_drained(15)
            await wait_until(lambda: ingest.counters.stored >= 60, timeout_s=20, what="60 stored")
            link.stop()
            await running

    asyncio.run(scenario())
    with engine.connect() as conn:
        stored = conn.execute(
            select(IngestedMessage.seq, IngestedMessage.received_at)
            .where(IngestedMessage.device_id == seeded.device_id)
            .order_by(IngestedMessage.received_at, IngestedMessage.seq)
        ).all()
    engine.dispose()
    assert [seq for seq, _ in stored] == list(range(60))  # once each, in the order sent
