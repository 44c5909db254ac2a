"""The lean MQTT clients against a real, private Mosquitto with a password file and an ACL.

One Mosquitto serves the module (every device its own user, as in production: the ACL of
``cloud.mqtt.broker.device_acl``); the broker-loss test starts its own, to kill it. The
scale test opens 2,000 connections from this process: the fd soft limit is raised to the
hard limit before Mosquitto starts, and Mosquitto inherits it (``start_mosquitto`` passes
no ``preexec_fn``, and none is needed for that).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from cloud.mqtt.broker import (
    INGEST_USER,
    device_acl,
    render_mosquitto_conf,
    write_mosquitto_files,
)
from cloud.mqtt.contract import Channel, Topics
from tests.cloud.mqtt_fixtures import free_port, private_mosquitto, start_mosquitto, wait_until
from virtual_bms.fleet.limits import raise_open_files
from virtual_bms.fleet.mqtt_async import KeepaliveScheduler, LiteConnection, connect
from virtual_bms.fleet.mqtt_blocking import BlockingConnection
from virtual_bms.fleet.mqtt_codec import (
    MqttConnectError,
    PacketReader,
    Pingresp,
    Publish,
    Will,
    puback_packet,
)

HOST = "127.0.0.1"
N_SCALE = 2_000  # concurrent connections of the scale test
SCALE_MESSAGES = 3  # per connection
CONNECT_CONCURRENCY = 200  # attempts at once: a burst beyond the accept backlog waits on SYN retry
DEVICES = ("bms-a", "bms-b", "bms-c", "bms-d", "bms-e")
TOPICS = Topics(root="bt-fleet-test/v1")


def _scale_name(i: int) -> str:
    return f"fleet-{i:05d}"


def _password(user: str) -> str:
    return f"pw-{user}-secret"


@dataclass(frozen=True)
class Broker:
    port: int

    def topic(self, device: str, channel: Channel) -> str:
        return TOPICS.device(device, channel)


def _raise_fd_limit(needed: int) -> None:
    """Soft RLIMIT_NOFILE up to the hard limit; children (Mosquitto) inherit it."""
    _, hard = raise_open_files()
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard} < {needed} needed: raise it (ulimit -Hn)")


def _write_conf(directory: Path, *, port: int, devices: list[str]) -> Path:
    users = [*devices, INGEST_USER]
    files = write_mosquitto_files(
        directory,
        credentials={user: _password(user) for user in users},
        acl=device_acl(devices, topics=TOPICS),
    )
    conf = directory / "mosquitto.conf"
    conf.write_text(
        render_mosquitto_conf(password_file=files.password_file, acl_file=files.acl_file, port=port)
        + "max_connections -1\n"  # listener option: no cap on concurrent clients
        # started as root, Mosquitto switches to the user "mosquitto", who cannot read the
        # 0600 password file in pytest's private directory; as anyone else it stays who it is
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    return conf


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    _raise_fd_limit(N_SCALE + 200)
    port = free_port()
    devices = [*DEVICES, *(_scale_name(i) for i in range(N_SCALE))]
    conf = _write_conf(tmp_path_factory.mktemp("fleet-mosquitto"), port=port, devices=devices)
    with private_mosquitto(conf, port, purpose="the lean MQTT client tests"):
        yield Broker(port=port)


async def _device(
    broker: Broker, name: str, *, clean_session: bool = True, **kwargs: object
) -> LiteConnection:
    return await connect(
        HOST,
        broker.port,
        client_id=name,
        username=name,
        password=_password(name),
        clean_session=clean_session,
        **kwargs,  # type: ignore[arg-type]
    )


def _ingest(broker: Broker, *, identifier: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        HOST,
        broker.port,
        username=INGEST_USER,
        password=_password(INGEST_USER),
        identifier=identifier,
    )


# -- connecting ----------------------------------------------------------------------------


def test_good_password_connects_and_bad_ones_are_refused(broker: Broker) -> None:
    async def scenario() -> None:
        conn = await _device(broker, "bms-a")
        assert conn.connected
        conn.close()
        await conn.wait_closed()
        assert not conn.connected
        for user, password in [("bms-a", "wrong"), ("nobody", "pw")]:
            with pytest.raises(MqttConnectError, match=r"not authorized|bad user name or password"):
                await connect(HOST, broker.port, client_id=user, username=user, password=password)
        with pytest.raises(ConnectionRefusedError):
            await connect(HOST, free_port(), client_id="x", connect_timeout_s=2.0)

    asyncio.run(scenario())
    with pytest.raises(MqttConnectError, match=r"not authorized|bad user name or password"):
        BlockingConnection.connect(
            HOST, broker.port, client_id="bms-a", username="bms-a", password="wrong"
        )


# -- publishing ----------------------------------------------------------------------------


def test_qos1_publishes_are_acked_and_arrive_in_order(broker: Broker) -> None:
    topic = broker.topic("bms-a", Channel.telemetry)
    payloads = [f'{{"seq": {i}, "pad": "{"x" * (i % 300)}"}}'.encode() for i in range(300)]

    async def scenario() -> None:
        async with _ingest(broker, identifier="fleet-sub-1") as ingest:
            await ingest.subscribe(TOPICS.subscription(Channel.telemetry), qos=1)
            received: list[bytes] = []

            async def collect() -> None:
                async for message in ingest.messages:
                    assert isinstance(message.payload, bytes)
                    received.append(message.payload)
                    if len(received) == len(payloads):
                        return

            collector = asyncio.create_task(collect())
            conn = await _device(broker, "bms-a")
            futures = [conn.publish(topic, payload, qos=1) for payload in payloads[:-1]]
            assert conn.publish(topic, payloads[-1], qos=0) is None
            assert all(f is not None for f in futures)
            assert conn.inflight > 0
            async with asyncio.timeout(10):
                await asyncio.gather(*[f for f in futures if f is not None])
            assert conn.inflight == 0
            async with asyncio.timeout(10):
                await collector
            conn.close()
            await conn.wait_closed()
            assert received == payloads  # exactly these, in order

    asyncio.run(scenario())


def test_packet_ids_wrap_at_65535_and_skip_ids_in_flight() -> None:
    class Transport(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__()
            self.written: list[bytes] = []
            self.closing = False

        def write(self, data: bytes | bytearray | memoryview) -> None:
            self.written.append(bytes(data))

        def is_closing(self) -> bool:
            return self.closing

        def close(self) -> None:
            self.closing = True

        def abort(self) -> None:
            self.closing = True

    def last_packet_id(transport: Transport) -> int | None:
        (packet,) = PacketReader().feed(transport.written[-1])
        assert isinstance(packet, Publish)
        return packet.packet_id

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        lost: list[Exception | None] = []
        conn = LiteConnection(
            client_id="ids",
            keepalive_s=0,
            connect_bytes=b"",
            on_message=None,
            on_connection_lost=lost.append,
            loop=loop,
        )
        transport = Transport()
        conn.connection_made(transport)
        conn.data_received(b"\x20\x02\x00\x00")  # CONNACK accepted
        assert conn.connected
        futures = [conn.publish("t", b"", qos=1) for _ in range(65_535)]
        assert last_packet_id(transport) == 65_535
        with pytest.raises(RuntimeError, match="65535 packets waiting"):
            conn.publish("t", b"")
        # acknowledge everything except 1 and 3, in one chunk
        conn.data_received(b"".join(puback_packet(i) for i in range(2, 65_536) if i != 3))
        assert conn.inflight == 2
        assert all(f is not None and f.done() for f in futures[1:2] + futures[3:])
        conn.publish("t", b"")
        assert last_packet_id(transport) == 2  # wrapped past 65535, skipped 1
        conn.publish("t", b"")
        assert last_packet_id(transport) == 4  # skipped 3
        pending = futures[0]
        assert pending is not None and not pending.done()
        conn.close()
        assert transport.written[-1] == b"\xe0\x00"  # DISCONNECT
        with pytest.raises(ConnectionError, match="closed the connection"):
            await pending
        conn.connection_lost(None)
        assert lost == [None]
        with pytest.raises(ConnectionError, match="not connected"):
            conn.publish("t", b"")

    asyncio.run(scenario())


def test_uvloop_runs_the_client(broker: Broker) -> None:
    import uvloop

    async def scenario() -> None:
        conn = await _device(broker, "bms-e")
        future = conn.publish(broker.topic("bms-e", Channel.telemetry), b"{}")
        assert future is not None
        async with asyncio.timeout(5):
            await future
        conn.close()
        await conn.wait_closed()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


# -- commands from the cloud -----------------------------------------------------------------


def test_command_is_delivered_once_and_acked(broker: Broker) -> None:
    """A QoS 1 command is PUBACKed: after reconnecting (clean_session=False) it does not come
    again, while one queued meanwhile does; an unacknowledged one does come again."""
    commands = broker.topic("bms-b", Channel.commands)

    async def scenario() -> None:
        received: list[bytes] = []

        def on_message(topic: str, payload: bytes) -> None:
            assert topic == commands
            received.append(payload)

        async def device(*, handler: object = on_message, **kwargs: object) -> LiteConnection:
            return await _device(broker, "bms-b", clean_session=False, on_message=handler, **kwargs)

        async with _ingest(broker, identifier="fleet-cloud") as cloud:
            conn = await device()
            assert await conn.subscribe([(commands, 1)]) == [1]
            await cloud.publish(commands, b"cmd-1", qos=1)
            await wait_until(lambda: received == [b"cmd-1"], timeout_s=5, what="cmd-1")
            conn.close()
            await conn.wait_closed()

            await cloud.publish(commands, b"cmd-2", qos=1)  # queued in the session
            conn = await device()
            assert conn.session_present
            await wait_until(lambda: received == [b"cmd-1", b"cmd-2"], timeout_s=5, what="cmd-2")
            await asyncio.sleep(0.5)
            assert received == [b"cmd-1", b"cmd-2"]  # cmd-1 was acked: not sent again

            # a handler that fails leaves the message unacknowledged: it comes again
            def failing(topic: str, payload: bytes) -> None:
                raise RuntimeError("handler broke")

            conn.close()
            await conn.wait_closed()
            lost: list[Exception | None] = []
            conn = await device(handler=failing, on_connection_lost=lost.append)
            await cloud.publish(commands, b"cmd-3", qos=1)
            await wait_until(lambda: bool(lost), timeout_s=5, what="the failing handler")
            assert isinstance(lost[0], RuntimeError)
            await conn.wait_closed()
            conn = await device()
            await wait_until(lambda: received[-1:] == [b"cmd-3"], timeout_s=5, what="cmd-3 again")
            conn.close()
            await conn.wait_closed()
            conn = await _device(broker, "bms-b", clean_session=True)  # drop the session
            conn.close()
            await conn.wait_closed()

    asyncio.run(scenario())


# -- keepalive and connection loss -----------------------------------------------------------


def test_abort_drops_without_disconnect_so_the_will_is_published(broker: Broker) -> None:
    status = broker.topic("bms-e", Channel.status)
    will = Will(topic=status, payload=b'{"online": false, "ts": 0}', qos=1)

    async def scenario() -> None:
        async with _ingest(broker, identifier="fleet-will") as cloud:
            await cloud.subscribe(status, qos=1)
            wills: list[bytes] = []

            async def collect() -> None:
                async for message in cloud.messages:
                    assert isinstance(message.payload, bytes)
                    wills.append(message.payload)

            collector = asyncio.create_task(collect())
            lost: list[Exception | None] = []
            conn = await _device(broker, "bms-e", will=will, on_connection_lost=lost.append)
            conn.close()  # DISCONNECT: the broker discards the will
            await conn.wait_closed()
            assert lost == [None]
            conn = await _device(broker, "bms-e", will=will, on_connection_lost=lost.append)
            future = conn.publish(broker.topic("bms-e", Channel.telemetry), b"{}")
            conn.abort()
            assert not conn.connected
            await conn.wait_closed()
            assert future is not None
            with pytest.raises(ConnectionError):
                await future
            assert isinstance(lost[1], ConnectionAbortedError)
            await wait_until(lambda: bool(wills), timeout_s=5, what="the will")
            await asyncio.sleep(0.2)
            assert wills == [will.payload]  # once, and not after the clean close
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector

    asyncio.run(scenario())


def test_keepalive_pings_keep_an_idle_connection_open(broker: Broker) -> None:
    async def scenario() -> None:
        lost: dict[str, Exception | None] = {}
        kept = await _device(
            broker, "bms-c", keepalive_s=2, on_connection_lost=lambda e: lost.setdefault("c", e)
        )
        unkept = await _device(
            broker, "bms-d", keepalive_s=2, on_connection_lost=lambda e: lost.setdefault("d", e)
        )
        started = time.monotonic()
        async with KeepaliveScheduler() as keepalive:
            keepalive.add(kept)
            # without pings the broker drops a connection after 1.5 x keepalive = 3 s
            await wait_until(lambda: "d" in lost, timeout_s=8, what="the unkept connection")
            idle_s = time.monotonic() - started
            assert idle_s > 3.0
            assert kept.connected and "c" not in lost
            assert keepalive.pings_sent >= 2
            future = kept.publish(broker.topic("bms-c", Channel.telemetry), b"{}")
            assert future is not None
            async with asyncio.timeout(5):
                await future
            assert len(keepalive) == 1
            kept.close()
            await kept.wait_closed()
            assert keepalive.tick() == 0
            assert len(keepalive) == 0  # closed connections are forgotten on the next tick
        await unkept.wait_closed()

    asyncio.run(scenario())


def test_broker_loss_fails_pending_publishes(tmp_path: Path) -> None:
    port = free_port()
    conf = _write_conf(tmp_path, port=port, devices=["lonely"])
    process = start_mosquitto(conf, port, purpose="the broker loss test")

    async def scenario() -> None:
        lost: list[Exception | None] = []
        conn = await connect(
            HOST,
            port,
            client_id="lonely",
            username="lonely",
            password=_password("lonely"),
            on_connection_lost=lost.append,
        )
        topic = TOPICS.device("lonely", Channel.telemetry)
        os.kill(process.pid, signal.SIGSTOP)  # frozen: it reads nothing, acknowledges nothing
        futures = [conn.publish(topic, b"{}") for _ in range(10)]
        await asyncio.sleep(0.2)
        assert conn.inflight == 10
        process.kill()  # sockets close with unread data: the client sees a reset
        results = await asyncio.gather(
            *[f for f in futures if f is not None], return_exceptions=True
        )
        assert all(isinstance(r, ConnectionError) for r in results), results
        assert not conn.connected and conn.inflight == 0
        assert len(lost) == 1 and lost[0] is not None
        with pytest.raises(ConnectionError, match="not connected"):
            conn.publish(topic, b"{}")
        await conn.wait_closed()

    try:
        asyncio.run(scenario())
    finally:
        process.kill()
        process.wait(timeout=10)


# -- the blocking client ---------------------------------------------------------------------


def test_blocking_client_publishes_gets_acks_and_commands(broker: Broker) -> None:
    telemetry = broker.topic("bms-d", Channel.telemetry)
    commands = broker.topic("bms-d", Channel.commands)
    cloud = BlockingConnection.connect(
        HOST,
        broker.port,
        client_id="fleet-blocking-cloud",
        username=INGEST_USER,
        password=_password(INGEST_USER),
        clean_session=True,
    )
    with (
        cloud,
        BlockingConnection.connect(
            HOST, broker.port, client_id="bms-d", username="bms-d", password=_password("bms-d")
        ) as device,
    ):
        assert cloud.subscribe([(TOPICS.subscription(Channel.telemetry), 1)]) == [1]
        assert device.subscribe([(commands, 1)]) == [1]
        ids = [device.publish(telemetry, f"m{i}".encode()) for i in range(100)]
        assert device.wait_acks(timeout_s=10) == set(ids)
        assert device.inflight == frozenset()

        seen: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(seen) < 100 and time.monotonic() < deadline:
            seen += [p.payload for p in cloud.poll(timeout_s=1) if isinstance(p, Publish)]
        assert seen == [f"m{i}".encode() for i in range(100)]

        cloud.publish(commands, b"cmd", qos=1)
        assert cloud.wait_acks(timeout_s=5)
        got: list[Publish] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got += [p for p in device.poll(timeout_s=1) if isinstance(p, Publish)]
        assert [(p.topic, p.payload, p.qos) for p in got] == [(commands, b"cmd", 1)]

        device.ping()
        pongs: list[object] = []
        deadline = time.monotonic() + 5
        while not pongs and time.monotonic() < deadline:
            pongs += [p for p in device.poll(timeout_s=1) if isinstance(p, Pingresp)]
        assert pongs == [Pingresp()]
    assert not device.connected and not cloud.connected
    with pytest.raises(ConnectionError, match="not connected"):
        device.publish(telemetry, b"x")


# -- scale -----------------------------------------------------------------------------------


def test_two_thousand_concurrent_connections(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    async def scenario() -> dict[str, float]:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(i: int) -> LiteConnection:
            name = _scale_name(i)
            async with gate:
                return await _device(broker, name, keepalive_s=60, connect_timeout_s=30)

        started = time.perf_counter()
        connections = await asyncio.gather(*(one(i) for i in range(N_SCALE)))
        connected_s = time.perf_counter() - started
        assert sum(c.connected for c in connections) == N_SCALE
        futures = [
            conn.publish(TOPICS.device(conn.client_id, Channel.telemetry), b'{"seq": %d}' % k)
            for conn in connections
            for k in range(SCALE_MESSAGES)
        ]
        async with asyncio.timeout(30):
            await asyncio.gather(*[f for f in futures if f is not None])
        published_s = time.perf_counter() - started - connected_s
        assert all(c.inflight == 0 and c.connected for c in connections)
        for conn in connections:
            conn.close()
        await asyncio.gather(*(c.wait_closed() for c in connections))
        return {"connect_s": connected_s, "publish_s": published_s}

    started = time.perf_counter()
    times = asyncio.run(scenario())
    total_s = time.perf_counter() - started
    with capsys.disabled():
        print(
            f"\n{N_SCALE} connections: connected in {times['connect_s']:.2f} s, "
            f"{N_SCALE * SCALE_MESSAGES} QoS 1 messages acked in {times['publish_s']:.2f} s, "
            f"total {total_s:.2f} s"
        )
