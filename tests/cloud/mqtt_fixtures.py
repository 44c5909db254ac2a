"""Helpers of the MQTT tests: the two backends, a seeded device, payloads, waiting.

Every MQTT test runs on both backends:

* ``sqlite-amqtt``: a SQLite file in ``tmp_path`` and an in-process amqtt broker;
* ``postgres-mosquitto``: a fresh PostgreSQL database (dropped afterwards) and the
  Mosquitto on 127.0.0.1:1883. Topics live under a root unique to the test, and the
  persistent sessions and retained messages a test leaves are removed at teardown.

The second backend is skipped when its services are unreachable, unless ``CI`` is set:
then it fails, so CI never silently drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from cloud.db import make_engine
from cloud.migrate import upgrade
from cloud.models import Battery, Cell, Device, Module
from cloud.mqtt.broker import EmbeddedBroker
from cloud.mqtt.contract import Channel, Topics
from cloud.mqtt.ingest import IngestConfig, IngestService

BACKENDS = ("sqlite-amqtt", "postgres-mosquitto")
PG_HOST, PG_PORT = "127.0.0.1", 5432
MOSQUITTO_HOST, MOSQUITTO_PORT = "127.0.0.1", 1883
N_CELLS = 16
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def reachable(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
        return True
    return False


def require(host: str, port: int, what: str) -> None:
    """Skip when ``what`` is down, except in CI, where that is a failure."""
    if reachable(host, port):
        return
    message = f"{what} is not reachable on {host}:{port}"
    if in_ci():
        pytest.fail(f"{message}, and CI=true requires it")
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def mosquitto_binary(purpose: str) -> str:
    """The mosquitto executable; without one, skip (or fail when CI is set)."""
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        if in_ci():
            pytest.fail(f"the mosquitto binary is needed for {purpose} and CI=true")
        pytest.skip(f"no mosquitto binary: {purpose} needs one")
    return found


def start_mosquitto(conf: Path, *ports: int, purpose: str) -> subprocess.Popen[bytes]:
    """A private Mosquitto on ``conf``, once every one of ``ports`` accepts connections;
    its stderr goes to ``mosquitto.log`` beside ``conf`` and is shown if it fails."""
    binary = mosquitto_binary(purpose)
    log = conf.parent / "mosquitto.log"
    with log.open("wb") as out:
        process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=out)
    deadline = time.monotonic() + 10
    for port in ports:
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                stop_mosquitto(process)
                pytest.fail(f"mosquitto did not start: {log.read_text()}")
            time.sleep(0.05)
    return process


def stop_mosquitto(process: subprocess.Popen[bytes]) -> None:
    """Terminate cleanly (a clean stop writes Mosquitto's persistence file)."""
    if process.poll() is None:
        process.terminate()
    process.wait(timeout=10)


@contextlib.contextmanager
def private_mosquitto(conf: Path, *ports: int, purpose: str) -> Iterator[subprocess.Popen[bytes]]:
    """:func:`start_mosquitto` for the block, stopped after it."""
    process = start_mosquitto(conf, *ports, purpose=purpose)
    try:
        yield process
    finally:
        stop_mosquitto(process)


@dataclass
class Backend:
    """A database and a broker for one test, isolated from every other test."""

    kind: str
    engine: Engine
    topics: Topics
    run_id: str
    client_ids: set[str] = field(default_factory=set)  # persistent sessions to drop
    devices: set[str] = field(default_factory=set)  # retained status to clear

    @contextlib.asynccontextmanager
    async def broker(self) -> AsyncIterator[tuple[str, int]]:
        """``(host, port)`` of the broker, running for the block."""
        if self.kind == "sqlite-amqtt":
            async with EmbeddedBroker() as broker:
                yield broker.host, broker.port
        else:
            yield MOSQUITTO_HOST, MOSQUITTO_PORT

    def client_id(self, role: str) -> str:
        """A client id unique to this test (<= 23 characters), dropped at teardown."""
        client_id = f"bt-{role[:6]}-{self.run_id}"
        self.client_ids.add(client_id)
        return client_id

    def ingest(self, host: str, port: int, **overrides: Any) -> IngestService:
        config = IngestConfig(
            host=host,
            port=port,
            client_id=self.client_id("ingest"),
            topics=self.topics,
            **overrides,
        )
        return IngestService(engine=self.engine, config=config)

    def topic(self, device: str, channel: Channel) -> str:
        return self.topics.device(device, channel)


@contextlib.contextmanager
def open_backend(kind: str, tmp_path: Path) -> Iterator[Backend]:
    run_id = uuid.uuid4().hex[:12]
    topics = Topics(root=f"bt-test-{run_id}/v1")
    if kind == "sqlite-amqtt":
        engine = make_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
        upgrade(engine)
        try:
            yield Backend(kind, engine, topics, run_id)
        finally:
            engine.dispose()
        return
    require(PG_HOST, PG_PORT, "PostgreSQL")
    require(MOSQUITTO_HOST, MOSQUITTO_PORT, "Mosquitto")
    name = f"bt_mqtt_{run_id}"
    admin = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}")
    backend = Backend(kind, engine, topics, run_id)
    try:
        upgrade(engine)
        yield backend
    finally:
        engine.dispose()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        asyncio.run(_clean_broker(backend))


async def _clean_broker(backend: Backend) -> None:
    """Drop the test's persistent sessions and retained messages from the shared broker."""
    for client_id in backend.client_ids:
        async with aiomqtt.Client(
            MOSQUITTO_HOST, MOSQUITTO_PORT, identifier=client_id, clean_session=True
        ):
            pass
    if backend.devices:
        async with aiomqtt.Client(MOSQUITTO_HOST, MOSQUITTO_PORT) as client:
            for device in backend.devices:
                await client.publish(backend.topic(device, Channel.status), b"", qos=1, retain=True)


@dataclass(frozen=True)
class Seeded:
    device_id: int
    name: str
    battery_id: int
    cells: dict[int, int]  # position -> Cell.id


def seed_device(backend: Backend, name: str, *, pillar: int = 1) -> Seeded:
    """A battery with one module of cells at positions 0..15 and a device on it."""
    backend.devices.add(name)
    with Session(backend.engine) as session, session.begin():
        battery = Battery(serial_number=f"SN-{name}", battery_name=f"pack of {name}")
        module = Module(module_name=f"module of {name}", position=0)
        session.add(battery)
        session.flush()
        module.battery_id = battery.id
        session.add(module)
        session.flush()
        cells = [
            Cell(cell_name=f"{name}-cell-{i}", position=i, module_id=module.id)
            for i in range(N_CELLS)
        ]
        device = Device(name=name, battery_id=battery.id, pillar=pillar)
        session.add_all([*cells, device])
        session.flush()
        return Seeded(device.id, name, battery.id, {c.position or 0: c.id for c in cells})


def telemetry(seq: int, /, *, pillar: int = 1, cells: int = N_CELLS, **overrides: Any) -> bytes:
    """A valid telemetry payload; values follow from ``seq`` and the cell position."""
    ids = list(range(cells))
    body: dict[str, Any] = {
        "seq": seq,
        "ts": (T0 + dt.timedelta(seconds=seq)).isoformat(),
        "pillar": pillar,
        "cell_ids": ids,
        "voltage": [3.6 + 0.01 * i for i in ids],
        "temperature": [25.0 + 0.1 * i for i in ids],
        "current": [2.5] * cells,
    }
    if pillar == 1:
        body |= {
            "sot": [0.9] * cells,
            "phase": [-1.5] * cells,
            "soc": [0.5] * cells,
            "sos": [0.95] * cells,
        }
    else:
        body |= {
            "soc": [0.4] * cells,
            "soh": [0.8 - 0.001 * i for i in ids],
            "sos": [0.9] * cells,
            "equivalent_cycles": [1200.0 + i for i in ids],
        }
    body |= overrides
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], *, timeout_s: float = 10.0, what: str = ""
) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")
        await asyncio.sleep(0.02)


def count(engine: Engine, model: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


def close(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
