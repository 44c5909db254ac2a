"""The HTTPS bulk-POST fallback against the whole cloud service, served over TLS by uvicorn:
with MQTT unreachable the outbox reaches the database over HTTPS once and in order; a
message that goes over both paths is stored once; logins and senders are checked; an
invalid message is a 422 with the contract's reason and a dead letter. On SQLite without
a broker (the storage-only ingest), SQLite + amqtt and PostgreSQL + Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import func, select

from cloud.main import create_app
from cloud.models import Battery, Cell, DeadLetter, Device, Event, IngestedMessage, Measurement
from cloud.models import Module as BatteryModule
from cloud.mqtt.contract import AckMessage, Channel, CommandMessage, Topics
from cloud.mqtt.credentials import issue_device_password
from cloud.mqtt.ingest import IngestConfig
from cloud.settings import CloudSettings
from cloud.users import add_user
from tests.cloud.conftest import _postgres_database
from tests.cloud.mqtt_fixtures import MOSQUITTO_HOST, MOSQUITTO_PORT, free_port, require, wait_until
from tests.cloud.mqtt_fixtures import telemetry as telemetry_payload
from tests.cloud.tls import make_ca_and_server_cert
from tests.virtual_bms.tcp_proxy import TcpProxy
from virtual_bms.http_fallback import HttpFallback, HttpFallbackError
from virtual_bms.outbox import Outbox, OutboxItem
from virtual_bms.uplink import BrokerEndpoint, Uplink

SECRET = "https-fallback-secret-0123456789abcdef"
N_CELLS = 4
PASSWORD = "password-123"


@dataclass
class Cloud:
    """A running cloud service and who is registered in it."""

    kind: str
    app: FastAPI
    url: str
    ca: Path
    device: str  # device with its API user (same name) and MQTT password
    mqtt_password: str
    other_device: str  # a second device, with its own user

    @property
    def state(self) -> Any:
        return self.app.state

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=_verify(self.ca), timeout=10)

    def token(self, username: str, password: str = PASSWORD) -> dict[str, str]:
        with self.client() as client:
            answer = client.post("/api/token/", json={"username": username, "password": password})
        assert answer.status_code == 200, answer.text
        return {"Authorization": f"Bearer {answer.json()['access']}"}

    def fallback(self, **options: Any) -> HttpFallback:
        return HttpFallback(self.url, self.device, PASSWORD, ca_file=self.ca, **options)

    def seqs(self, device: str) -> list[int]:
        with self.state.engine.connect() as conn:
            return list(
                conn.scalars(
                    select(IngestedMessage.seq)
                    .join(Device, Device.id == IngestedMessage.device_id)
                    .where(Device.name == device)
                    .order_by(IngestedMessage.received_at, IngestedMessage.seq)
                )
            )

    def rows(self, model: Any, device: str) -> int:
        with self.state.engine.connect() as conn:
            device_id = conn.scalar(select(Device.id).where(Device.name == device))
            return int(
                conn.scalar(
                    select(func.count()).select_from(model).where(model.device_id == device_id)
                )
                or 0
            )


def _verify(ca: Path) -> Any:
    import ssl

    return ssl.create_default_context(cafile=str(ca))


@contextlib.contextmanager
def _serve(app: FastAPI, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The app on a real HTTPS port (uvicorn in a thread, lifespan and all)."""
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        log_level="warning",
        ws="none",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the cloud service did not start (see the log above)"
        assert time.monotonic() < deadline, "the cloud service did not start within 30 s"
        time.sleep(0.05)
    try:
        yield f"https://127.0.0.1:{port}", ca
    finally:
        server.should_exit = True
        thread.join(30)


def _register(app: FastAPI) -> tuple[str, str, str]:
    """Two devices on batteries of N_CELLS cells, each with its API user; an admin and an
    operator. Returns the first device's name and MQTT password, and the second's name."""
    names = [f"bms-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    passwords = []
    with app.state.sessions() as session, session.begin():
        add_user(session, username="admin", password=PASSWORD, role="admin")
        add_user(session, username="operator", password=PASSWORD, role="operator")
        for name in names:
            user = add_user(session, username=name, password=PASSWORD, role="device")
            battery = Battery(serial_number=f"SN-{name}", battery_name="home pack")
            session.add(battery)
            session.flush()
            module = BatteryModule(module_name="m0", battery_id=battery.id)
            session.add(module)
            session.flush()
            session.add_all(
                [
                    Cell(cell_name=f"{name}-c{i}", module_id=module.id, position=i)
                    for i in range(N_CELLS)
                ]
            )
            device = Device(name=name, battery_id=battery.id, pillar=2, user_id=user.id)
            session.add(device)
            session.flush()
            passwords.append(issue_device_password(session, device))
    return names[0], passwords[0], names[1]


@contextlib.contextmanager
def _cloud(kind: str, tmp_path: Path) -> Iterator[Cloud]:
    if kind == "postgres-mosquitto":
        require(MOSQUITTO_HOST, MOSQUITTO_PORT, "Mosquitto")
        for url in _postgres_database():
            settings = CloudSettings(
                database_url=url,
                jwt_secret=SECRET,
                broker=f"mqtt://{MOSQUITTO_HOST}:{MOSQUITTO_PORT}",
            )
            devices: list[str] = []
            try:
                with _running(kind, settings, tmp_path) as cloud:
                    devices.append(cloud.device)
                    yield cloud
            finally:
                asyncio.run(_clean_mosquitto(devices))
        return
    settings = CloudSettings(
        database_url=f"sqlite:///{tmp_path / 'cloud.db'}",
        jwt_secret=SECRET,
        broker="none" if kind == "sqlite-none" else "embedded",
        embedded_broker_port=0,
    )
    with _running(kind, settings, tmp_path) as cloud:
        yield cloud


@contextlib.contextmanager
def _running(kind: str, settings: CloudSettings, tmp_path: Path) -> Iterator[Cloud]:
    app = create_app(settings)
    with _serve(app, tmp_path) as (url, ca):
        device, mqtt_password, other = _register(app)
        yield Cloud(kind, app, url, ca, device, mqtt_password, other)


async def _clean_mosquitto(devices: list[str]) -> None:
    """Drop what the test left on the shared broker once the service has stopped: the BMS's
    persistent session and retained status, then the ingest's session (and so what it
    queued meanwhile, the cleared status among it)."""
    for device in devices:
        link = Uplink(
            device=device, outbox=Outbox(":memory:"), endpoint=BrokerEndpoint(), on_command=_refuse
        )
        async with aiomqtt.Client(
            MOSQUITTO_HOST, MOSQUITTO_PORT, identifier=link.client_id, clean_session=True
        ) as client:
            await client.publish(Topics().device(device, Channel.status), b"", qos=1, retain=True)
    ingest_id = IngestConfig().client_id
    async with aiomqtt.Client(
        MOSQUITTO_HOST, MOSQUITTO_PORT, identifier=ingest_id, clean_session=True
    ):
        pass


@pytest.fixture(params=["sqlite-none", "sqlite-amqtt", "postgres-mosquitto"])
def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cloud]:
    with _cloud(request.param, tmp_path) as opened:
        yield opened


@pytest.fixture(params=["sqlite-amqtt", "postgres-mosquitto"])
def cloud_with_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cloud]:
    with _cloud(request.param, tmp_path) as opened:
        yield opened


async def _refuse(command: CommandMessage) -> AckMessage:
    return AckMessage(command_id=command.command_id, status="rejected", detail="not here")


def _sample(seq: int) -> bytes:
    return telemetry_payload(seq, pillar=2, cells=N_CELLS)


def _event() -> bytes:
    return json.dumps(
        {"ts": "2024-05-01T12:00:00+00:00", "kind": "limit_hit", "severity": "warning"}
    ).encode()


class _Recording(HttpFallback):
    """Remembers the seqs it posted, in order; can lose the cloud's answers (a dropped
    connection after the cloud stored the POST), so the items stay queued."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.posted: list[int] = []
        self.lose_answers = False

    async def post(self, items: Sequence[OutboxItem]) -> list[int]:
        taken = await super().post(items)
        self.posted += [json.loads(i.payload)["seq"] for i in items if i.channel == "telemetry"]
        if self.lose_answers:
            raise HttpFallbackError("the answer was lost on the way back")
        return taken


def test_with_mqtt_unreachable_telemetry_arrives_over_https_once_in_order(
    cloud: Cloud, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "bms.sqlite")

    async def scenario() -> _Recording:
        async with _Recording(
            cloud.url, cloud.device, PASSWORD, ca_file=cloud.ca, max_messages=15
        ) as fallback:
            link = Uplink(
                device=cloud.device,
                outbox=outbox,
                endpoint=BrokerEndpoint(port=free_port()),  # nobody listens: MQTT is down
                on_command=_refuse,
                fallback=fallback,
                fallback_after_s=0.3,
                fallback_batch=40,
                reconnect_delay_max_s=0.5,
            )
            running = asyncio.create_task(link.run())
            for i in range(100):
                outbox.put_sequenced("telemetry", _sample)
                if i == 50:
                    outbox.put("events", _event())
            link.wake()
            await link.wait_drained(30)
            link.stop()
            await running
            assert not link.connected and link.counters.published == 0
            assert link.counters.http_posted == 101 and link.counters.disconnects >= 1
            # the same messages again: the cloud has them, nothing is written twice
            outbox_again = Outbox(":memory:")
            for _ in range(100):
                outbox_again.put_sequenced("telemetry", _sample)
            assert len(await fallback.post(outbox_again.peek(100))) == 100
            return fallback

    fallback = asyncio.run(scenario())
    assert fallback.posted[:100] == list(range(100))  # in order, in POSTs of <= 15
    assert cloud.seqs(cloud.device) == list(range(100))  # stored in the order sent
    assert cloud.rows(Measurement, cloud.device) == 100 * N_CELLS
    assert cloud.rows(Event, cloud.device) == 1


def test_a_message_over_https_and_again_over_mqtt_is_stored_once(
    cloud_with_broker: Cloud, tmp_path: Path
) -> None:
    cloud = cloud_with_broker
    outbox = Outbox(tmp_path / "bms.sqlite")
    mqtt = cloud.state.mqtt

    async def scenario() -> Uplink:
        proxy = TcpProxy(mqtt.host, mqtt.port)
        await proxy.start()
        await proxy.cut()  # the site has no MQTT (HTTPS still goes out)
        endpoint = BrokerEndpoint(
            host="127.0.0.1",
            port=proxy.port,
            username=cloud.device,
            password=SecretStr(cloud.mqtt_password),
        )
        async with _Recording(cloud.url, cloud.device, PASSWORD, ca_file=cloud.ca) as fallback:
            link = Uplink(
                device=cloud.device,
                outbox=outbox,
                endpoint=endpoint,
                on_command=_refuse,
                fallback=fallback,
                fallback_after_s=0.3,
                reconnect_delay_s=0.1,
                reconnect_delay_max_s=0.3,
            )
            running = asyncio.create_task(link.run())
            for _ in range(30):
                outbox.put_sequenced("telemetry", _sample)
            link.wake()
            await link.wait_drained(30)
            assert link.counters.http_posted == 30 and link.counters.published == 0

            fallback.lose_answers = True  # stored in the cloud, but the BMS never hears it
            for _ in range(20):
                outbox.put_sequenced("telemetry", _sample)
            link.wake()
            await wait_until(
                lambda: link.counters.http_failures >= 1 and len(cloud.seqs(cloud.device)) == 50,
                timeout_s=30,
            )
            assert len(outbox) == 20

            await proxy.restore()  # MQTT is back: the 20 go again, over MQTT
            await link.wait_connected(30)
            await link.wait_drained(30)
            ingest = cloud.state.ingest
            await wait_until(lambda: ingest.counters.duplicates >= 20, timeout_s=30)
            link.stop()
            await running
            await proxy.cut()
            return link

    link = asyncio.run(scenario())
    assert link.counters.published == 20
    assert sorted(cloud.seqs(cloud.device)) == list(range(50))
    assert cloud.rows(Measurement, cloud.device) == 50 * N_CELLS


def test_logins_and_senders_are_checked(cloud: Cloud) -> None:
    body = b"[" + _sample(0) + b"]"
    headers = {"Content-Type": "application/json"}
    device_token = cloud.token(cloud.device)

    async def wrong_password() -> None:
        async with HttpFallback(cloud.url, cloud.device, "wrong-password", ca_file=cloud.ca) as bad:
            with pytest.raises(HttpFallbackError, match="HTTP 401"):
                await bad.post([OutboxItem(1, "telemetry", _sample(0))])

    asyncio.run(wrong_password())
    with cloud.client() as client:
        post = client.post
        assert post("/api/uplink/telemetry/", content=body, headers=headers).status_code == 401
        bad_token = headers | {"Authorization": "Bearer not-a-token"}
        assert post("/api/uplink/telemetry/", content=body, headers=bad_token).status_code == 401
        # a device posts for itself only
        stranger = post(
            "/api/uplink/telemetry/",
            content=body,
            params={"device": cloud.other_device},
            headers=headers | device_token,
        )
        assert stranger.status_code == 403 and cloud.other_device in stranger.json()["detail"]
        # other roles do not post at all
        operator = headers | cloud.token("operator")
        refused = post("/api/uplink/telemetry/", content=body, headers=operator)
        assert refused.status_code == 403 and "operator" in refused.json()["detail"]
        # an admin names the device
        admin = headers | cloud.token("admin")
        assert post("/api/uplink/telemetry/", content=body, headers=admin).status_code == 400
        for_other = post(
            "/api/uplink/telemetry/",
            content=body,
            params={"device": cloud.other_device},
            headers=admin,
        )
        assert for_other.status_code == 200, for_other.text
        assert for_other.json()["device"] == cloud.other_device
        # presence is MQTT's; unknown channels are not there
        status = post("/api/uplink/status/", content=b"{}", headers=headers | device_token)
        assert status.status_code == 404 and "telemetry" in status.json()["detail"]
        assert cloud.seqs(cloud.device) == []
    assert cloud.seqs(cloud.other_device) == [0]


def test_an_invalid_message_is_422_with_the_reason_and_a_dead_letter(cloud: Cloud) -> None:
    headers = {"Content-Type": "application/json"} | cloud.token(cloud.device)
    unknown_cell = telemetry_payload(7, pillar=2, cells=N_CELLS + 1)
    not_json = b'{"seq": 1, '
    with cloud.client() as client:
        single = client.post("/api/uplink/telemetry/", content=not_json, headers=headers)
        assert single.status_code == 422, single.text
        (result,) = single.json()["results"]
        assert result["outcome"] == "dead_lettered" and "bad JSON" in result["reason"]
        assert single.json()["detail"] == f"message 0: {result['reason']}"

        bulk = b"[" + b",".join([_sample(0), unknown_cell, _sample(1)]) + b"]"
        first = client.post("/api/uplink/telemetry/", content=bulk, headers=headers)
        assert first.status_code == 422, first.text
        answer = first.json()
        assert [r["outcome"] for r in answer["results"]] == ["stored", "dead_lettered", "stored"]
        assert "unknown cells: cell_ids 4" in answer["results"][1]["reason"]
        assert answer["detail"].startswith("message 1: unknown cells")
        assert (answer["stored"], answer["duplicates"], answer["dead_lettered"]) == (2, 0, 1)

        again = client.post("/api/uplink/telemetry/", content=bulk, headers=headers).json()
        assert [r["outcome"] for r in again["results"]] == [
            "duplicate",
            "dead_lettered",
            "duplicate",
        ]

        valid = client.post(
            "/api/uplink/telemetry/", content=_sample(2), headers=headers
        )  # one object, not an array
        assert valid.status_code == 200 and valid.json()["results"][0]["outcome"] == "stored"

        too_many = b"[" + b",".join([b"{}"] * 1001) + b"]"
        refused = client.post("/api/uplink/telemetry/", content=too_many, headers=headers)
        assert refused.status_code == 413 and "1000" in refused.json()["detail"]

    with cloud.state.engine.connect() as conn:
        letters = conn.execute(
            select(DeadLetter.topic, DeadLetter.reason).order_by(DeadLetter.id)
        ).all()
    topic = Topics().device(cloud.device, Channel.telemetry)
    mine = [reason for t, reason in letters if t == topic]
    assert len(mine) == 3 and "bad JSON" in mine[0] and "unknown cells" in mine[1]
    assert cloud.seqs(cloud.device) == [0, 1, 2]

    async def via_the_client() -> list[int]:
        items = [
            OutboxItem(1, "telemetry", _sample(3)),
            OutboxItem(2, "telemetry", unknown_cell),
            OutboxItem(3, "telemetry", b"not json"),
            OutboxItem(4, "events", _event()),
        ]
        async with cloud.fallback() as fallback:
            return await fallback.post(items)

    assert asyncio.run(via_the_client()) == [1, 2, 3, 4]  # dead letters leave the queue too
    assert cloud.seqs(cloud.device) == [0, 1, 2, 3]
