"""Broker rules: Mosquitto files, and the same ACL enforced by amqtt and by Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from cloud.models import DeadLetter, Measurement
from cloud.mqtt.broker import (
    INGEST_USER,
    EmbeddedBroker,
    device_acl,
    hash_mosquitto_password,
    render_mosquitto_acl,
    render_mosquitto_conf,
    topic_matches,
    verify_mosquitto_password,
    write_mosquitto_files,
)
from cloud.mqtt.contract import Channel, Topics
from tests.cloud.mqtt_fixtures import (
    BACKENDS,
    Backend,
    count,
    free_port,
    open_backend,
    private_mosquitto,
    seed_device,
    telemetry,
    wait_until,
)

CREDENTIALS = {"bms-a": "secret-a", "bms-b": "secret-b", INGEST_USER: "secret-ingest"}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with open_backend(request.param, tmp_path) as opened:
        yield opened


def test_password_hash_is_mosquittos_format() -> None:
    # made by `mosquitto_passwd -b passwd dev1 secret` (Mosquitto 2.0.11)
    made_by_mosquitto = (
        "$7$101$d24Qyy5PHNGXyuYv$A2NMEe6kAGj2LE7Ot+FaMOjqXrih77gC2YLLmgcjePUfqUGZL4jAegEOJ5w"
        "DOCeU/d/svAs8Aq/O0CRGYtDCxQ=="
    )
    assert verify_mosquitto_password("secret", made_by_mosquitto)
    assert not verify_mosquitto_password("Secret", made_by_mosquitto)
    ours = hash_mosquitto_password("secret")
    assert ours.startswith("$7$101$") and ours != hash_mosquitto_password("secret")
    assert verify_mosquitto_password("secret", ours)
    assert not verify_mosquitto_password("secret", "$6$not$ours")


def test_topic_matches_filters_like_a_broker() -> None:
    assert topic_matches("a/+/c", "a/b/c") and topic_matches("a/#", "a/b/c")
    assert topic_matches("a/+/c", "a/+/c")  # a filter inside the allowed one
    assert not topic_matches("a/b/c", "a/+/c")  # wider than allowed
    assert not topic_matches("a/+/c", "a/#")
    assert not topic_matches("a/b", "a/b/c") and not topic_matches("a/b/c", "a/b")


def test_acl_gives_each_device_its_own_topics_only(tmp_path: Path) -> None:
    topics = Topics()
    acl = device_acl(["bms-a", "bms-b"], topics=topics)
    a = acl["bms-a"]
    assert topics.device("bms-a", Channel.telemetry) in a.publish
    assert not any(topic_matches(t, topics.device("bms-b", Channel.telemetry)) for t in a.publish)
    assert a.subscribe == (topics.device("bms-a", Channel.commands),)
    ingest = acl[INGEST_USER]
    assert ingest.publish == ("batterytwin/v1/devices/+/commands",)
    assert "batterytwin/v1/devices/+/telemetry" in ingest.subscribe
    text = render_mosquitto_acl(acl)
    assert "user bms-a\ntopic write batterytwin/v1/devices/bms-a/telemetry\n" in text
    assert "topic read batterytwin/v1/devices/bms-a/commands\n" in text
    files = write_mosquitto_files(tmp_path / "mqtt", credentials=CREDENTIALS, acl=acl)
    assert files.password_file.stat().st_mode & 0o077 == 0
    lines = dict(line.split(":", 1) for line in files.password_file.read_text().splitlines())
    assert verify_mosquitto_password("secret-b", lines["bms-b"])
    with pytest.raises(ValueError, match="topic level"):
        device_acl(["bad/name"])


@contextlib.asynccontextmanager
async def _secured_broker(backend: Backend, tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    """A broker with passwords and the device ACL: amqtt in-process, or a private Mosquitto."""
    acl = device_acl(["bms-a", "bms-b"], topics=backend.topics)
    if backend.kind == "sqlite-amqtt":
        async with EmbeddedBroker(credentials=CREDENTIALS, acl=acl) as broker:
            yield broker.host, broker.port
        return
    files = write_mosquitto_files(tmp_path / "mosquitto", credentials=CREDENTIALS, acl=acl)
    port = free_port()
    conf = tmp_path / "mosquitto" / "mosquitto.conf"
    conf.write_text(
        render_mosquitto_conf(password_file=files.password_file, acl_file=files.acl_file, port=port)
        + f"user {getpass.getuser()}\n"  # as root, keep the rights to read the files
    )
    with private_mosquitto(conf, port, purpose="the ACL test"):
        yield "127.0.0.1", port


def _code(granted: int | ReasonCode) -> int:
    return int(granted.value) if isinstance(granted, ReasonCode) else granted


def test_broker_refuses_what_the_acl_does_not_allow(backend: Backend, tmp_path: Path) -> None:
    a = seed_device(backend, "bms-a")
    b = seed_device(backend, "bms-b")

    async def scenario() -> None:
        async with _secured_broker(backend, tmp_path) as (host, port):
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client(host, port, username="bms-a", password="wrong"):
                    pass
            ingest_service = backend.ingest(
                host, port, username=INGEST_USER, password=CREDENTIALS[INGEST_USER]
            )
            async with ingest_service as ingest:
                async with aiomqtt.Client(
                    host, port, username="bms-a", password="secret-a", timeout=5
                ) as device:
                    mine, theirs = (backend.topic(d, Channel.commands) for d in ("bms-a", "bms-b"))
                    own = await device.subscribe(mine, qos=1)
                    other = await device.subscribe(theirs, qos=1)
                    # amqtt refuses the subscription; Mosquitto grants it but delivers nothing
                    assert _code(own[0]) == 1 and _code(other[0]) in {1, 0x80}
                    async with aiomqtt.Client(
                        host, port, username=INGEST_USER, password=CREDENTIALS[INGEST_USER]
                    ) as cloud:
                        await cloud.publish(theirs, b"for bms-b", qos=1)
                        await cloud.publish(mine, b"for bms-a", qos=1)
                    first = await asyncio.wait_for(anext(device.messages), 5)
                    assert (first.topic.value, first.payload) == (mine, b"for bms-a")
                    # bms-a's credentials on bms-b's topic: the broker drops the message
                    await device.publish(backend.topic("bms-b", Channel.telemetry), telemetry(0), 1)
                    await device.publish(backend.topic("bms-a", Channel.telemetry), telemetry(0), 1)
                    await device.publish(backend.topic("bms-a", Channel.telemetry), telemetry(1), 1)
                await wait_until(lambda: ingest.counters.processed >= 2, what="bms-a's two")
                await asyncio.sleep(0.2)
                assert ingest.counters.messages_in == 2 and ingest.counters.stored == 2

    asyncio.run(scenario())
    assert count(backend.engine, Measurement, Measurement.device_id == b.device_id) == 0
    assert count(backend.engine, Measurement, Measurement.device_id == a.device_id) == 32
    assert count(backend.engine, DeadLetter) == 0
