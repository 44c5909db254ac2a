"""MQTT over TLS end to end: a private Mosquitto with a TLS listener and a throw-away CA.

The broker authenticates with passwords and enforces the device ACL, as in production; the
ingest, the command publisher behind the REST API and a device all connect over TLS and
verify the broker's certificate against the test's CA.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from cloud.db import make_engine
from cloud.main import create_app
from cloud.migrate import upgrade
from cloud.models import Battery, Cell, Command, Device, Measurement, Module
from cloud.mqtt.broker import INGEST_USER, device_acl, render_mosquitto_conf, write_mosquitto_files
from cloud.mqtt.commands import MqttEndpoint, publish_command
from cloud.mqtt.contract import Channel, Topics
from cloud.mqtt.ingest import IngestConfig, IngestError, IngestService
from cloud.mqtt.tls import MqttTls, tls_context
from cloud.settings import CloudSettings
from cloud.users import add_user
from tests.cloud.mqtt_fixtures import (
    Backend,
    count,
    free_port,
    private_mosquitto,
    seed_device,
    telemetry,
    wait_until,
)
from tests.cloud.tls import make_ca_and_server_cert

DEVICE, DEVICE_SECRET = "bms-tls", "secret-device"
INGEST_SECRET = "secret-ingest"
JWT_SECRET = "mqtt-tls-test-secret-0123456789abcdef"
TOPICS = Topics()


@dataclass(frozen=True)
class TlsBroker:
    """A private Mosquitto: plain MQTT on ``plain_port``, TLS on ``tls_port``."""

    host: str
    plain_port: int
    tls_port: int
    ca_file: Path

    def tls(self, **overrides: Any) -> MqttTls:
        return MqttTls(ca_file=overrides.pop("ca_file", self.ca_file), **overrides)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[TlsBroker]:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca, cert, key = make_ca_and_server_cert(pki)
    files = write_mosquitto_files(
        tmp_path / "mosquitto",
        credentials={DEVICE: DEVICE_SECRET, INGEST_USER: INGEST_SECRET},
        acl=device_acl([DEVICE], topics=TOPICS),
    )
    plain_port, tls_port = free_port(), free_port()
    conf = tmp_path / "mosquitto" / "mosquitto.conf"
    conf.write_text(
        render_mosquitto_conf(
            password_file=files.password_file,
            acl_file=files.acl_file,
            port=plain_port,
            tls_port=tls_port,
            cafile=ca,
            certfile=cert,
            keyfile=key,
        )
        + f"user {getpass.getuser()}\n"  # as root, keep the rights to read the files
    )
    with private_mosquitto(conf, plain_port, tls_port, purpose="the MQTT TLS tests"):
        yield TlsBroker("127.0.0.1", plain_port, tls_port, ca)


def _device_client(broker: TlsBroker, *, host: str | None = None) -> aiomqtt.Client:
    return aiomqtt.Client(
        host or broker.host,
        broker.tls_port,
        username=DEVICE,
        password=DEVICE_SECRET,
        identifier=f"{DEVICE}-{uuid.uuid4().hex[:8]}",
        tls_context=tls_context(broker.tls()),
    )


def _ingest_config(broker: TlsBroker, tls: MqttTls, **overrides: Any) -> IngestConfig:
    return IngestConfig(
        host=broker.host,
        port=broker.tls_port,
        username=INGEST_USER,
        password=INGEST_SECRET,
        client_id=f"bt-tls-{uuid.uuid4().hex[:12]}",
        topics=TOPICS,
        tls=tls,
        **overrides,
    )


def test_ingest_over_tls_stores_telemetry_from_a_tls_device(
    broker: TlsBroker, database_url: str
) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    seeded = seed_device(Backend("mosquitto-tls", engine, TOPICS, "tls"), DEVICE)

    async def scenario() -> None:
        config = _ingest_config(broker, broker.tls())
        async with IngestService(engine=engine, config=config) as ingest:
            async with _device_client(broker) as device:
                await device.publish(TOPICS.device(DEVICE, Channel.telemetry), telemetry(1), qos=1)
            await wait_until(lambda: ingest.counters.stored == 1, what="the telemetry stored")
        assert ingest.counters.dead_lettered == 0

    try:
        asyncio.run(scenario())
        rows = count(engine, Measurement, Measurement.cell_id.in_(seeded.cells.values()))
        assert rows == len(seeded.cells)
    finally:
        engine.dispose()


def test_publish_command_over_tls_reaches_a_subscribed_device(
    broker: TlsBroker, tmp_path: Path
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
    upgrade(engine)
    seeded = seed_device(Backend("mosquitto-tls", engine, TOPICS, "tls"), DEVICE)
    with Session(engine) as session, session.begin():
        command = Command(
            device_id=seeded.device_id, kind="reporting_interval", payload={"interval_s": 30}
        )
        session.add(command)
        session.flush()
        command_id = command.id
    endpoint = MqttEndpoint(
        host="localhost",  # the certificate's DNS name, as well as its IP address
        port=broker.tls_port,
        username=INGEST_USER,
        password=INGEST_SECRET,
        tls=broker.tls(),
    )

    async def scenario() -> bytes:
        async with _device_client(broker) as device:
            await device.subscribe(TOPICS.device(DEVICE, Channel.commands), qos=1)
            async with endpoint.client(identifier="bt-tls-publisher") as client:
                await publish_command(client, engine=engine, command_id=command_id)
            async with asyncio.timeout(10):
                message = await anext(aiter(device.messages))
        assert isinstance(message.payload, bytes)
        return message.payload

    try:
        received = json.loads(asyncio.run(scenario()))
        assert received["command_id"] == command_id and received["params"] == {"interval_s": 30}
        with Session(engine) as session:
            stored = session.get(Command, command_id)
            assert stored is not None and stored.status == "sent"
    finally:
        engine.dispose()


def test_service_with_mqtts_sends_a_command_and_books_its_ack(
    broker: TlsBroker, tmp_path: Path
) -> None:
    settings = CloudSettings(
        database_url=f"sqlite:///{tmp_path / 'svc.db'}",
        jwt_secret=JWT_SECRET,
        broker=f"mqtts://localhost:{broker.tls_port}",
        mqtt_username=INGEST_USER,
        mqtt_password=INGEST_SECRET,
        mqtt_ca_file=broker.ca_file,
    )
    with TestClient(create_app(settings)) as service:
        assert service.get("/health").json() == {"database": "ok", "broker": "ok"}
        sessions = service.app.state.sessions  # type: ignore[attr-defined]
        with sessions() as session, session.begin():
            add_user(session, username="admin", password="password-123", role="admin")
            battery = Battery(serial_number="S-TLS", battery_name="pack")
            session.add(battery)
            session.flush()
            module = Module(module_name="m0", battery_id=battery.id)
            session.add(module)
            session.flush()
            session.add(Cell(cell_name="c0", module_id=module.id, position=0))
            device_row = Device(name=DEVICE, battery_id=battery.id)
            session.add(device_row)
            session.flush()
            device_id = device_row.id
        token = service.post(
            "/api/token/", json={"username": "admin", "password": "password-123"}
        ).json()["access"]
        admin = {"Authorization": f"Bearer {token}"}
        received: list[dict[str, Any]] = []
        ready = threading.Event()

        async def edge() -> None:
            async with _device_client(broker, host="localhost") as client:
                await client.subscribe(TOPICS.device(DEVICE, Channel.commands), qos=1)
                ready.set()
                async with asyncio.timeout(10):
                    message = await anext(aiter(client.messages))
                assert isinstance(message.payload, bytes)
                command = json.loads(message.payload)
                received.append(command)
                ack = {"command_id": command["command_id"], "status": "ok", "detail": "applied"}
                await client.publish(TOPICS.device(DEVICE, Channel.acks), json.dumps(ack), qos=1)

        thread = threading.Thread(target=lambda: asyncio.run(edge()))
        thread.start()
        assert ready.wait(10)
        body = {"device_id": device_id, "kind": "reporting_interval", "params": {"interval_s": 60}}
        sent = service.post("/api/commands/", json=body, headers=admin)
        assert sent.status_code == 201, sent.text
        thread.join(10)
        assert received and received[0]["params"] == {"interval_s": 60}
        for _ in range(100):  # the ingest, over TLS too, books the ack
            cmd = service.get(f"/api/commands/{sent.json()['id']}/", headers=admin).json()
            if cmd["status"] == "acked":
                break
            time.sleep(0.05)
        assert cmd["status"] == "acked" and cmd["ack_detail"] == "applied"


def test_ingest_refuses_a_broker_its_ca_did_not_sign(broker: TlsBroker, tmp_path: Path) -> None:
    other = tmp_path / "other-ca"
    other.mkdir()
    wrong_ca, _, _ = make_ca_and_server_cert(other)
    engine = make_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
    upgrade(engine)

    async def connect(tls: MqttTls) -> None:
        config = _ingest_config(broker, tls, connect_timeout_s=1.0)
        async with IngestService(engine=engine, config=config):
            pass

    try:
        with pytest.raises(IngestError, match="TLS is on") as refused:
            asyncio.run(connect(broker.tls(ca_file=wrong_ca)))
        assert str(wrong_ca) in str(refused.value)
        # the right CA, but a name the certificate does not carry
        with pytest.raises(IngestError, match=r"certificate for wrong\.example"):
            asyncio.run(connect(broker.tls(server_hostname="wrong.example")))
        asyncio.run(connect(broker.tls(server_hostname="localhost")))  # and one it does
    finally:
        engine.dispose()


def test_tls_context_names_a_missing_file_and_verifies(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"CA file .*missing-ca\.pem"):
        tls_context(MqttTls(ca_file=tmp_path / "missing-ca.pem"))
    ca, cert, _ = make_ca_and_server_cert(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"client key .*nokey\.pem"):
        tls_context(MqttTls(ca_file=ca, certfile=cert, keyfile=tmp_path / "nokey.pem"))
    with pytest.raises(ValueError, match="certfile and keyfile"):
        MqttTls(ca_file=ca, certfile=cert)
    context = tls_context(MqttTls(ca_file=ca))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_settings_parse_mqtts_and_refuse_it_without_a_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"

    def settings(**values: Any) -> CloudSettings:
        return CloudSettings(jwt_secret=JWT_SECRET, **values)

    tls = settings(broker="mqtts://broker.example", mqtt_ca_file=ca)
    assert tls.broker_address() == ("broker.example", 8883)
    assert tls.mqtt_tls() == MqttTls(ca_file=ca)
    assert settings(broker="mqtts://b:9883", mqtt_ca_file=ca).broker_address() == ("b", 9883)
    plain = settings(broker="mqtt://broker.example")
    assert plain.broker_address() == ("broker.example", 1883) and plain.mqtt_tls() is None
    with pytest.raises(ValueError, match="needs BATTERYTWIN_MQTT_CA_FILE"):
        settings(broker="mqtts://broker.example")
    with pytest.raises(ValueError, match="mqtts:// broker only"):
        settings(broker="mqtt://broker.example", mqtt_ca_file=ca)
    with pytest.raises(ValueError, match="MQTT_CLIENT_KEYFILE"):
        settings(broker="mqtts://b", mqtt_ca_file=ca, mqtt_client_certfile=ca)
    with pytest.raises(ValueError, match="mqtts://host"):
        settings(broker="tls://broker.example")


def test_mosquitto_conf_adds_a_tls_listener_only_when_asked() -> None:
    paths = {"password_file": Path("/m/passwd"), "acl_file": Path("/m/acl")}
    plain = render_mosquitto_conf(**paths)
    assert plain == (
        "listener 1883 127.0.0.1\nallow_anonymous false\npassword_file /m/passwd\n"
        "acl_file /m/acl\nmax_inflight_messages 1000\nmax_queued_messages 100000\n"
        "message_size_limit 1048576\npersistence false\n"
    )
    tls = render_mosquitto_conf(
        **paths, cafile=Path("/t/ca.pem"), certfile=Path("/t/s.pem"), keyfile=Path("/t/s.key")
    )
    assert tls == plain + (
        "\nlistener 8883 127.0.0.1\ncafile /t/ca.pem\ncertfile /t/s.pem\nkeyfile /t/s.key\n"
        "require_certificate false\n"
    )
    with pytest.raises(ValueError, match="both certfile and keyfile"):
        render_mosquitto_conf(**paths, certfile=Path("/t/s.pem"))
