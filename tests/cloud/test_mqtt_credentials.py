"""Each device's own MQTT password, from the database, enforced by amqtt and by Mosquitto.

Scenario: devices ``bms-a`` and ``bms-b`` get passwords issued by the cloud, ``bms-mute``
has none. On the embedded broker (accounts read from SQLite while it runs) and on a
private Mosquitto (files rendered from PostgreSQL, reloaded with SIGHUP) each device may
log in only with its own password and use only its own topics; a device registered, or
given a new password, while the broker runs connects without a restart. Also: the CLI
commands and the REST endpoint that issue passwords, and that the hash never leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from batterytwin.cli import app as cli_app
from cloud.db import make_engine, session_factory
from cloud.main import create_app
from cloud.migrate import upgrade
from cloud.models import Battery, DeadLetter, Device, Measurement, User
from cloud.mqtt.broker import (
    INGEST_USER,
    AccountSource,
    AclRules,
    BrokerAccounts,
    EmbeddedBroker,
    hash_mosquitto_password,
    verify_mosquitto_password,
)
from cloud.mqtt.contract import Channel
from cloud.mqtt.credentials import (
    broker_accounts,
    database_account_source,
    issue_device_password,
    write_broker_files,
)
from cloud.settings import CloudSettings
from cloud.users import add_user
from tests.cloud.mqtt_fixtures import (
    BACKENDS,
    N_CELLS,
    Backend,
    count,
    free_port,
    open_backend,
    private_mosquitto,
    seed_device,
    telemetry,
    wait_until,
)

INGEST_PASSWORD = "ingest-secret-for-this-test"
SECRET = "credentials-test-secret-0123456789abcdef"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with open_backend(request.param, tmp_path) as opened:
        yield opened


def _issue(backend: Backend, name: str) -> str:
    with Session(backend.engine) as session, session.begin():
        device = session.scalars(select(Device).where(Device.name == name)).one()
        return issue_device_password(session, device)


@dataclass
class SecuredBroker:
    """A broker whose accounts come from the backend's database."""

    host: str
    port: int
    refresh: Callable[[], Awaitable[None]]
    """Make the broker see the database's accounts now (Mosquitto: files + SIGHUP)."""
    immediate: bool
    """Whether new accounts work at once (embedded) or after a reload (Mosquitto)."""


@contextlib.asynccontextmanager
async def _secured_broker(backend: Backend, tmp_path: Path) -> AsyncIterator[SecuredBroker]:
    """The embedded broker on the database, or a private Mosquitto on rendered files."""
    if backend.kind == "sqlite-amqtt":
        accounts = database_account_source(
            session_factory(backend.engine),
            ingest_password_hash=hash_mosquitto_password(INGEST_PASSWORD),
            topics=backend.topics,
        )
        async with EmbeddedBroker(accounts=accounts) as broker:

            async def nothing() -> None:
                return None

            yield SecuredBroker(broker.host, broker.port, nothing, immediate=True)
        return
    port = free_port()
    directory = tmp_path / "mosquitto"

    def render() -> None:
        with Session(backend.engine) as session:
            conf = write_broker_files(
                session,
                directory,
                ingest_password=INGEST_PASSWORD,
                topics=backend.topics,
                port=port,
            )
        # as root, Mosquitto would switch to its own user, who cannot read the files
        conf.write_text(conf.read_text() + f"user {getpass.getuser()}\n")

    render()
    with private_mosquitto(
        directory / "mosquitto.conf", port, purpose="the credentials test"
    ) as process:

        async def reload() -> None:
            render()
            process.send_signal(signal.SIGHUP)

        yield SecuredBroker("127.0.0.1", port, reload, immediate=False)


async def _can_connect(broker: SecuredBroker, username: str | None, password: str | None) -> bool:
    try:
        async with aiomqtt.Client(
            broker.host, broker.port, username=username, password=password, timeout=5
        ):
            return True
    except aiomqtt.MqttError:
        return False


async def _connects_soon(broker: SecuredBroker, username: str, password: str, *, ok: bool) -> None:
    """Embedded: the first attempt must give ``ok``; Mosquitto: once it has reloaded."""
    if broker.immediate:
        assert await _can_connect(broker, username, password) is ok
        return

    async def settled() -> bool:
        return await _can_connect(broker, username, password) is ok

    await wait_until(settled, timeout_s=10, what=f"{username} connects: {ok}")


def _code(granted: int | ReasonCode) -> int:
    return int(granted.value) if isinstance(granted, ReasonCode) else granted


def test_each_device_uses_only_its_own_password_and_topics(
    backend: Backend, tmp_path: Path
) -> None:
    a = seed_device(backend, "bms-a")
    b = seed_device(backend, "bms-b")
    seed_device(backend, "bms-mute")  # registered, never given a password
    password_a, password_b = _issue(backend, "bms-a"), _issue(backend, "bms-b")

    async def scenario() -> None:
        async with _secured_broker(backend, tmp_path) as broker:
            assert await _can_connect(broker, "bms-a", password_a)
            assert not await _can_connect(broker, "bms-a", "wrong")
            assert not await _can_connect(broker, "bms-a", password_b)  # b's password
            assert not await _can_connect(broker, "bms-mute", "")
            assert not await _can_connect(broker, None, None)  # anonymous
            assert not await _can_connect(broker, INGEST_USER, "guess")
            host, port = broker.host, broker.port
            ingest_login = {"username": INGEST_USER, "password": INGEST_PASSWORD}
            async with backend.ingest(host, port, **ingest_login) as ingest:
                async with aiomqtt.Client(
                    host, port, username="bms-a", password=password_a, timeout=5
                ) as device:
                    mine, theirs = (backend.topic(d, Channel.commands) for d in ("bms-a", "bms-b"))
                    own = await device.subscribe(mine, qos=1)
                    other = await device.subscribe(theirs, qos=1)
                    # amqtt refuses the subscription; Mosquitto grants it but delivers nothing
                    assert _code(own[0]) == 1 and _code(other[0]) in {1, 0x80}
                    async with aiomqtt.Client(host, port, **ingest_login) as cloud:
                        await cloud.publish(theirs, b"for bms-b", qos=1)
                        await cloud.publish(mine, b"for bms-a", qos=1)
                    first = await asyncio.wait_for(anext(device.messages), 5)
                    assert (first.topic.value, first.payload) == (mine, b"for bms-a")
                    # a's credentials on b's telemetry topic: the broker drops the message
                    await device.publish(backend.topic("bms-b", Channel.telemetry), telemetry(0), 1)
                    await device.publish(backend.topic("bms-a", Channel.telemetry), telemetry(0), 1)
                    await device.publish(backend.topic("bms-a", Channel.telemetry), telemetry(1), 1)
                await wait_until(lambda: ingest.counters.stored >= 2, what="bms-a's two messages")
                await asyncio.sleep(0.2)
                assert ingest.counters.messages_in == 2 and ingest.counters.stored == 2

    asyncio.run(scenario())
    assert count(backend.engine, Measurement, Measurement.device_id == b.device_id) == 0
    assert count(backend.engine, Measurement, Measurement.device_id == a.device_id) == 2 * N_CELLS
    assert count(backend.engine, DeadLetter) == 0


def test_devices_registered_or_rotated_while_running_need_no_restart(
    backend: Backend, tmp_path: Path
) -> None:
    seed_device(backend, "bms-a")
    old_password = _issue(backend, "bms-a")

    async def scenario() -> None:
        async with _secured_broker(backend, tmp_path) as broker:
            host, port = broker.host, broker.port
            login = {"username": INGEST_USER, "password": INGEST_PASSWORD}
            async with backend.ingest(host, port, **login) as ingest:
                assert await _can_connect(broker, "bms-a", old_password)
                late = seed_device(backend, "bms-late")
                late_password = _issue(backend, "bms-late")
                new_password = _issue(backend, "bms-a")
                await broker.refresh()
                await _connects_soon(broker, "bms-late", late_password, ok=True)
                await _connects_soon(broker, "bms-a", new_password, ok=True)
                await _connects_soon(broker, "bms-a", old_password, ok=False)
                async with aiomqtt.Client(
                    host, port, username="bms-late", password=late_password, timeout=5
                ) as device:
                    topic = backend.topic("bms-late", Channel.telemetry)
                    await device.publish(topic, telemetry(0), qos=1)
                await wait_until(lambda: ingest.counters.stored >= 1, what="bms-late's message")
            return late.device_id

    late_id = asyncio.run(scenario())
    assert count(backend.engine, Measurement, Measurement.device_id == late_id) == N_CELLS


def test_broker_accounts_leave_out_devices_that_cannot_log_in(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
    upgrade(engine)
    try:
        with Session(engine) as session, session.begin():
            battery = Battery(serial_number="S-1", battery_name="pack")
            session.add(battery)
            session.flush()
            for name in ("bms-a", "bms-mute", "bad name", INGEST_USER):
                session.add(Device(name=name, battery_id=battery.id))
            session.flush()
            device = session.scalars(select(Device).where(Device.name == "bms-a")).one()
            password = issue_device_password(session, device)
            assert verify_mosquitto_password(password, device.mqtt_password_hash or "")
            accounts = broker_accounts(session, ingest_password_hash="$7$101$c2FsdA==$eA==")
        assert set(accounts.passwords) == {"bms-a", INGEST_USER}
        assert accounts.passwords[INGEST_USER] == "$7$101$c2FsdA==$eA=="
        assert set(accounts.acl) == {"bms-a", "bms-mute", INGEST_USER}  # mute: rules, no login
        assert accounts.acl["bms-mute"].subscribe == ("batterytwin/v1/devices/bms-mute/commands",)
    finally:
        engine.dispose()


def test_account_source_caches_and_rereads_for_refused_logins() -> None:
    reads: list[float] = []
    fail = False

    def load() -> BrokerAccounts:
        if fail:
            raise OSError("database down")
        reads.append(time.monotonic())
        return BrokerAccounts(passwords={f"user-{len(reads)}": "$7$"}, acl={})

    async def scenario() -> None:
        nonlocal fail
        source = AccountSource(load, max_age_s=60, retry_s=0.2)
        first = await source.get()
        assert await source.get() is first and len(reads) == 1  # cached
        began = time.monotonic()
        second = await source.get(read_after=began)  # a refused login reads again, not at once
        assert second is not first and reads[1] >= began and reads[1] - reads[0] >= 0.15
        fail = True
        assert await source.get(read_after=time.monotonic()) is second  # kept when a read fails

    asyncio.run(scenario())
    with pytest.raises(ValueError, match="retry_s"):
        AccountSource(load, max_age_s=1, retry_s=2)
    source = AccountSource(load)
    with pytest.raises(ValueError, match="not both"):
        EmbeddedBroker(accounts=source, acl={"x": AclRules()})


# --- CLI -----------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str | None] | None = None) -> Any:
    unset: dict[str, str | None] = {
        "BATTERYTWIN_MQTT_USERNAME": None,
        "BATTERYTWIN_MQTT_PASSWORD": None,
    }
    return CliRunner().invoke(cli_app, ["cloud", *args], env={**unset, **(env or {})})


def _stored_hash(url: str, name: str) -> str | None:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return session.scalar(select(Device.mqtt_password_hash).where(Device.name == name))
    finally:
        engine.dispose()


def test_cli_adds_devices_rotates_passwords_and_writes_broker_files(
    database_url: str, tmp_path: Path
) -> None:
    db = ("--db", database_url)
    missing = _cli("device", "add", "--name", "bms-7", "--battery-id", "1", *db)
    assert missing.exit_code == 2 and "no battery with id 1" in missing.stderr
    engine = make_engine(database_url)
    try:
        with Session(engine) as session, session.begin():
            battery = Battery(serial_number="S-7", battery_name="pack 7")
            session.add(battery)
            session.flush()
            battery_id = str(battery.id)
            session.add(Device(name="bms-mute", battery_id=battery.id))
    finally:
        engine.dispose()

    added = _cli(
        "device", "add", "--name", "bms-7", "--battery-id", battery_id, "--pillar", "2", *db
    )
    assert added.exit_code == 0, added.output
    password = added.stdout.strip()
    assert "shown only this once" in added.stderr and len(password) >= 32
    assert verify_mosquitto_password(password, _stored_hash(database_url, "bms-7") or "")
    again = _cli("device", "add", "--name", "bms-7", "--battery-id", battery_id, *db)
    assert again.exit_code == 2 and "exists already" in again.stderr
    bad = _cli("device", "add", "--name", "bms/7", "--battery-id", battery_id, *db)
    assert bad.exit_code == 2 and "topic level" in bad.stderr
    ingest = _cli("device", "add", "--name", INGEST_USER, "--battery-id", battery_id, *db)
    assert ingest.exit_code == 2 and "ingest" in ingest.stderr
    pillar = _cli("device", "add", "--name", "bms-8", "--battery-id", battery_id, "--pillar", "3")
    assert pillar.exit_code == 2 and "pillar" in pillar.output

    rotated = _cli("device", "password", "bms-7", *db)
    assert rotated.exit_code == 0, rotated.output
    new_password = rotated.stdout.strip()
    stored = _stored_hash(database_url, "bms-7") or ""
    assert verify_mosquitto_password(new_password, stored)
    assert not verify_mosquitto_password(password, stored)
    ghost = _cli("device", "password", "ghost", *db)
    assert ghost.exit_code == 2 and "no device named 'ghost'" in ghost.stderr

    out = tmp_path / "mosquitto"
    unset = _cli("broker-files", "--out", str(out), *db)
    assert unset.exit_code == 2 and "BATTERYTWIN_MQTT_PASSWORD" in unset.stderr
    env: dict[str, str | None] = {
        "BATTERYTWIN_MQTT_USERNAME": "cloud-ingest",
        "BATTERYTWIN_MQTT_PASSWORD": "ingest-password",
    }
    written = _cli("broker-files", "--out", str(out), "--port", "18830", *db, env=env)
    assert written.exit_code == 0, written.output
    assert "1 of 2 devices can log in" in written.stdout and "bms-mute" in written.stderr
    lines = dict(line.split(":", 1) for line in (out / "passwd").read_text().splitlines())
    assert set(lines) == {"bms-7", "cloud-ingest"}
    assert verify_mosquitto_password(new_password, lines["bms-7"])
    assert verify_mosquitto_password("ingest-password", lines["cloud-ingest"])
    assert (out / "passwd").stat().st_mode & 0o077 == 0
    acl = (out / "acl").read_text()
    assert "user bms-7\ntopic write batterytwin/v1/devices/bms-7/telemetry\n" in acl
    assert "user cloud-ingest\n" in acl
    # The service's user also runs the virtual test bench: its topics are in its rules.
    ingest_rules = acl.split("user cloud-ingest\n", 1)[1].split("\nuser ", 1)[0]
    assert "batterytwin/testbench/requests" in ingest_rules
    assert "batterytwin/testbench/results/+" in ingest_rules
    conf = (out / "mosquitto.conf").read_text()
    assert "listener 18830 127.0.0.1\n" in conf and f"password_file {out / 'passwd'}\n" in conf
    assert "8883" not in conf  # no TLS listener unless asked for
    half = _cli("broker-files", "--out", str(out), "--tls-certfile", "b.pem", *db, env=env)
    assert half.exit_code == 2 and "--tls-keyfile" in half.stderr
    tls = ("--tls-certfile", str(tmp_path / "b.pem"), "--tls-keyfile", str(tmp_path / "b.key"))
    secure = _cli("broker-files", "--out", str(out), *tls, *db, env=env)
    assert secure.exit_code == 0, secure.output
    conf = (out / "mosquitto.conf").read_text()
    assert "listener 8883" in conf and f"certfile {tmp_path / 'b.pem'}" in conf


# --- REST ----------------------------------------------------------------------------


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    settings = CloudSettings(
        database_url=database_url, jwt_secret=SECRET, token_rate_per_minute=1000, broker="none"
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _login(client: TestClient, name: str, role: str, **kwargs: Any) -> dict[str, str]:
    with client.app.state.sessions() as session, session.begin():  # type: ignore[attr-defined]
        add_user(session, username=name, password="password-123", role=role, **kwargs)
    tokens = client.post("/api/token/", json={"username": name, "password": "password-123"})
    assert tokens.status_code == 200, tokens.text
    return {"Authorization": f"Bearer {tokens.json()['access']}"}


def test_rest_rotates_a_password_for_admins_and_the_batterys_operator(client: TestClient) -> None:
    admin = _login(client, "admin", "admin")
    operator = _login(client, "operator", "operator")
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        operator_id = session.scalars(select(User.id).where(User.username == "operator")).one()

    def post(path: str, body: dict[str, Any]) -> Any:
        response = client.post(path, json=body, headers=admin)
        assert response.status_code == 201, response.text
        return response.json()

    mine = post("/api/batteries/", {"serial_number": "A", "battery_name": "a"})["id"]
    other = post("/api/batteries/", {"serial_number": "B", "battery_name": "b"})["id"]
    client.patch(f"/api/batteries/{mine}/", json={"operator_id": operator_id}, headers=admin)
    device = post("/api/devices/", {"name": "edge-a", "battery_id": mine})
    foreign = post("/api/devices/", {"name": "edge-b", "battery_id": other})
    secret = {"name": "edge-c", "battery_id": mine, "mqtt_password_hash": "$7$x"}
    assert client.post("/api/devices/", json=secret, headers=admin).status_code == 422

    def rotate(device_id: int, headers: dict[str, str]) -> Any:
        return client.post(f"/api/devices/{device_id}/mqtt_password/", headers=headers)

    by_admin = rotate(device["id"], admin)
    assert by_admin.status_code == 200 and by_admin.headers["cache-control"] == "no-store"
    assert by_admin.json()["username"] == "edge-a" and set(by_admin.json()) == {
        "username",
        "password",
    }
    by_operator = rotate(device["id"], operator)
    assert by_operator.status_code == 200
    settings: CloudSettings = client.app.state.settings  # type: ignore[attr-defined]
    stored = _stored_hash(settings.database_url, "edge-a")
    assert verify_mosquitto_password(by_operator.json()["password"], stored or "")
    assert not verify_mosquitto_password(by_admin.json()["password"], stored or "")
    assert rotate(foreign["id"], operator).status_code == 404  # not the operator's battery
    assert rotate(9999, admin).status_code == 404
    maker = post("/api/manufacturers/", {"name": "CellCo"})["id"]
    for role in ("service", "manufacturer", "device"):
        headers = _login(client, f"a-{role}", role, manufacturer_id=maker)
        refused = rotate(device["id"], headers)
        assert refused.status_code == 403 and "may not issue MQTT passwords" in refused.text
    assert client.post(f"/api/devices/{device['id']}/mqtt_password/").status_code == 401

    # the hash is never shown: not in the list, the detail, or the schema
    listed = client.get("/api/devices/", headers=admin).json()
    detail = client.get(f"/api/devices/{device['id']}/", headers=admin).json()
    assert all("mqtt_password_hash" not in row for row in [*listed, detail, device])
    assert detail["name"] == "edge-a" and len(listed) == 2
    ordering = client.get("/api/devices/?ordering=mqtt_password_hash", headers=admin)
    assert ordering.status_code == 422
    schema = client.get("/api/schema/").json()["components"]["schemas"]
    assert "mqtt_password_hash" not in schema["DevicesPublic"]["properties"]
