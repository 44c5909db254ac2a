"""The MQTT ingest on both backends: storage, exactly-once, dead letters, presence."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select

from cloud.db import make_engine
from cloud.models import DeadLetter, Device, EisRecord, Event, IngestedMessage, Measurement
from cloud.mqtt.contract import Channel, EventMessage, StatusMessage
from cloud.mqtt.ingest import IngestService
from tests.cloud.mqtt_fixtures import (
    BACKENDS,
    N_CELLS,
    T0,
    Backend,
    close,
    count,
    open_backend,
    seed_device,
    telemetry,
    wait_until,
)
from twin.eis import EisRecord as TwinEisRecord


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with open_backend(request.param, tmp_path) as opened:
        yield opened


def _eis_point(cell_id: int, frequency_hz: float) -> dict[str, object]:
    """A point exactly as the twin's EIS emulation puts it on the wire."""
    return TwinEisRecord(
        frequency_hz=frequency_hz,
        amplitude_a=0.5,
        current_offset_a=0.0,
        v_start_v=3.70,
        v_end_v=3.71,
        temperature_c=24.5,
        z_re_ohm=0.012,
        z_im_ohm=-0.003,
        z_mod_ohm=math.hypot(0.012, 0.003),
        z_phz_deg=math.degrees(math.atan2(-0.003, 0.012)),
        voltage_v=3.705,
        status="success",
        event_id="207_1",
        cell_id=cell_id,
    ).to_dict()


def test_telemetry_and_eis_are_stored_with_their_values(backend: Backend) -> None:
    p1 = seed_device(backend, "bms-p1")
    p2 = seed_device(backend, "bms-p2", pillar=2)

    async def scenario() -> None:
        async with backend.broker() as (host, port), backend.ingest(host, port) as ingest:
            async with aiomqtt.Client(host, port) as device:
                await device.publish(backend.topic("bms-p1", Channel.telemetry), telemetry(0), 1)
                await device.publish(
                    backend.topic("bms-p2", Channel.telemetry), telemetry(0, pillar=2), 1
                )
                eis = {
                    "seq": 1,
                    "ts": T0.timestamp(),
                    "records": [_eis_point(3, 1000.0), _eis_point(3, 0.1)],
                }
                await device.publish(
                    backend.topic("bms-p1", Channel.eis), json.dumps(eis).encode(), 1
                )
            await wait_until(lambda: ingest.counters.processed >= 3, what="3 messages")
            assert ingest.counters.stored == 3
            assert ingest.counters.dead_lettered == 0
            assert ingest.counters.measurement_rows == 2 * N_CELLS
            assert ingest.counters.last_lag_s is not None

    asyncio.run(scenario())
    with backend.engine.connect() as conn:
        rows = conn.execute(select(Measurement).where(Measurement.device_id == p1.device_id)).all()
        by_cell = {row.cell_id: row for row in rows}
        assert sorted(by_cell) == sorted(p1.cells.values())
        for position, cell_id in p1.cells.items():
            row = by_cell[cell_id]
            assert close(row.voltage, 3.6 + 0.01 * position)
            assert close(row.temperature, 25.0 + 0.1 * position)
            assert (row.current, row.sot, row.phase, row.soc, row.sos) == (
                2.5,
                0.9,
                -1.5,
                0.5,
                0.95,
            )
            assert row.soh is None and row.equivalent_cycles is None
            assert row.measured_at.replace(tzinfo=None) == T0.replace(tzinfo=None)
        pillar2 = conn.execute(select(Measurement).where(Measurement.cell_id == p2.cells[7])).one()
        assert close(pillar2.soh, 0.8 - 0.007)
        assert pillar2.equivalent_cycles == 1207.0 and pillar2.sot is None
        eis_rows = conn.execute(select(EisRecord).order_by(EisRecord.frequency)).all()
        assert [r.frequency for r in eis_rows] == [0.1, 1000.0]
        assert all(r.cell_id == p1.cells[3] and r.event_id == "207_1" for r in eis_rows)
        assert close(eis_rows[0].z_re, 0.012) and close(eis_rows[0].z_im, -0.003)
        assert eis_rows[0].status == "success" and close(eis_rows[0].voltage, 3.705)
        seen = conn.execute(select(Device.last_seen).where(Device.id == p1.device_id)).scalar()
        assert seen is not None


def test_exactly_once_across_an_ingest_restart(backend: Backend) -> None:
    seeded = seed_device(backend, "bms-restart")
    n = 60
    topic = backend.topic("bms-restart", Channel.telemetry)

    async def scenario() -> None:
        async with backend.broker() as (host, port):
            async with backend.ingest(host, port):
                pass  # the broker now holds the ingest's persistent session
            async with aiomqtt.Client(host, port) as device:
                for seq in range(n):
                    await device.publish(topic, telemetry(seq), qos=1)
                await device.publish(topic, telemetry(5), qos=1)  # a device-side resend
            async with backend.ingest(host, port) as ingest:
                await wait_until(lambda: ingest.counters.processed >= n + 1, what=f"{n + 1}")
                await asyncio.sleep(0.2)  # nothing more arrives
                assert ingest.counters.messages_in == n + 1
                assert (ingest.counters.stored, ingest.counters.duplicates) == (n, 1)
            async with aiomqtt.Client(host, port) as device:
                await device.publish(topic, telemetry(7), qos=1)  # after the restart too
            async with backend.ingest(host, port) as ingest:
                await wait_until(lambda: ingest.counters.processed >= 1, what="the resend")
                assert ingest.counters.duplicates == 1 and ingest.counters.stored == 0

    asyncio.run(scenario())
    assert count(backend.engine, IngestedMessage) == n
    assert count(backend.engine, Measurement, Measurement.device_id == seeded.device_id) == (
        n * N_CELLS
    )


def test_a_trickle_is_gathered_into_few_batches_within_the_window(backend: Backend) -> None:
    """Messages 10 ms apart share a transaction when the batch window is 1 s; with no window
    each one is its own batch."""
    seed_device(backend, "bms-trickle")
    topic = backend.topic("bms-trickle", Channel.telemetry)
    n = 20

    async def batches_for(window_s: float, first_seq: int) -> int:
        async with (
            backend.broker() as (host, port),
            backend.ingest(host, port, batch_window_s=window_s) as ingest,
        ):
            async with aiomqtt.Client(host, port) as device:
                for seq in range(first_seq, first_seq + n):
                    await device.publish(topic, telemetry(seq), qos=1)
                    await asyncio.sleep(0.01)
            await wait_until(lambda: ingest.counters.stored >= n, what=f"{n} stored")
            return ingest.counters.batches

    assert asyncio.run(batches_for(1.0, 0)) <= 2
    assert asyncio.run(batches_for(0.0, n)) >= n // 2


def test_a_message_is_acknowledged_only_once_it_is_stored(
    backend: Backend, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    amqtt_loses_it = backend.kind == "sqlite-amqtt"
    if amqtt_loses_it:
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason="amqtt 0.12 forgets QoS 1 messages in flight to a client that disconnects "
                "(its PUBACK waiters are cancelled and the messages popped); Mosquitto resends",
            )
        )
    seeded = seed_device(backend, "bms-ack")
    topic = backend.topic("bms-ack", Channel.telemetry)
    no_schema = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # every write fails

    async def scenario() -> None:
        async with backend.broker() as (host, port):
            failing = IngestService(engine=no_schema, config=backend.ingest(host, port).config)
            async with failing:
                async with aiomqtt.Client(host, port) as device:
                    for seq in range(3):
                        await device.publish(topic, telemetry(seq), qos=1)
                await wait_until(lambda: failing.counters.db_retries >= 1, what="a failed write")
                assert failing.counters.processed == 0
            async with backend.ingest(host, port) as ingest:  # same session, working database
                await wait_until(
                    lambda: ingest.counters.stored >= 3,
                    timeout_s=2.0 if amqtt_loses_it else 10.0,
                    what="the redelivery",
                )

    asyncio.run(scenario())
    no_schema.dispose()
    assert count(backend.engine, Measurement, Measurement.device_id == seeded.device_id) == (
        3 * N_CELLS
    )


def test_invalid_messages_are_dead_lettered_and_the_stream_goes_on(backend: Backend) -> None:
    seed_device(backend, "bms-dl")
    own = backend.topic("bms-dl", Channel.telemetry)
    nan = json.dumps(json.loads(telemetry(3)) | {"voltage": [math.nan] * N_CELLS}).encode()
    oversized = telemetry(9, bulk="x" * (1024 * 1024))
    eis = {"seq": 10, "ts": T0.isoformat(), "records": [_eis_point(0, 1.0)]}
    cases: list[tuple[str, bytes, str]] = [
        (own, b'{"seq": 1, "ts": ', "bad JSON"),
        (own, telemetry(2, seq="2"), "seq: Input should be a valid integer"),
        (own, nan, "voltage.0: Input should be a finite number"),
        (own, telemetry(4, current=[1.0, 2.0]), "current has 2 values for 16 cell_ids"),
        (own, telemetry(5, cell_ids=[0, 1, 99], cells=3), "cell_ids 99 are not positions"),
        (own, telemetry(6, extra=1), "extra: Extra inputs are not permitted"),
        (own, oversized, "oversized"),
        (backend.topic("ghost", Channel.telemetry), telemetry(8), "unknown device 'ghost'"),
        (own, telemetry(10), ""),
        (backend.topic("bms-dl", Channel.eis), json.dumps(eis).encode(), "already used by a"),
        (
            backend.topic("bms-dl", Channel.acks),
            b'{"command_id": 77, "status": "ok"}',
            "ack for command 77",
        ),
        (own, telemetry(11), ""),
    ]

    async def scenario() -> None:
        async with (
            backend.broker() as (host, port),
            backend.ingest(host, port, dead_letter_chars=100) as ingest,
        ):
            async with aiomqtt.Client(host, port) as device:
                for topic, payload, _ in cases:
                    await device.publish(topic, payload, qos=1)
            await wait_until(lambda: ingest.counters.processed >= len(cases), what="all")
            assert ingest.counters.stored == 2
            assert ingest.counters.dead_lettered == len(cases) - 2

    asyncio.run(scenario())
    with backend.engine.connect() as conn:
        letters = conn.execute(select(DeadLetter).order_by(DeadLetter.id)).all()
        stored = conn.execute(select(IngestedMessage.seq).order_by(IngestedMessage.seq)).all()
    expected = [(topic, reason) for topic, _, reason in cases if reason]
    assert len(letters) == len(expected)
    for letter, (topic, reason) in zip(letters, expected, strict=True):
        assert letter.topic == topic
        assert reason in letter.reason, (reason, letter.reason)
        assert len(letter.payload) <= 100
    assert [seq for (seq,) in stored] == [10, 11]


def test_status_and_last_will_set_device_online(backend: Backend) -> None:
    seeded = seed_device(backend, "bms-will")
    topic = backend.topic("bms-will", Channel.status)
    client_id = backend.client_id("will")

    def online() -> bool | None:
        with backend.engine.connect() as conn:
            return conn.execute(select(Device.online).where(Device.id == seeded.device_id)).scalar()

    def connect_then_die(host: str, port: int) -> None:
        """A device that says it is online, then loses its connection without a goodbye."""
        device = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        offline = StatusMessage(online=False, ts=T0).model_dump_json()
        device.will_set(topic, offline, qos=1, retain=True)
        device.connect(host, port, keepalive=30)
        hello = StatusMessage(online=True, ts=T0).model_dump_json()
        sent = device.publish(topic, hello, qos=1, retain=True)
        for _ in range(100):  # the broker acknowledges within a few loop turns
            if sent.is_published():
                break
            device.loop(timeout=0.05)
        assert sent.is_published()
        sock = device.socket()
        assert sock is not None
        sock.close()  # no DISCONNECT: the broker publishes the will

    async def scenario() -> None:
        async with backend.broker() as (host, port), backend.ingest(host, port) as ingest:
            await asyncio.to_thread(connect_then_die, host, port)
            await wait_until(lambda: ingest.counters.status_updates >= 2, what="online, will")
            assert ingest.counters.dead_lettered == 0
            assert online() is False
            async with aiomqtt.Client(host, port) as device:
                hello = StatusMessage(online=True, ts=T0).model_dump_json()
                await device.publish(topic, hello, qos=1, retain=True)
            await wait_until(lambda: online() is True, what="online again")

    asyncio.run(scenario())
    with backend.engine.connect() as conn:
        assert conn.execute(select(Device.last_seen)).scalar() is not None


def test_events_are_stored_with_device_battery_and_cells(backend: Backend) -> None:
    seeded = seed_device(backend, "bms-events")
    topic = backend.topic("bms-events", Channel.events)
    alarm = EventMessage(
        ts=T0, kind="over_temperature", severity="alarm", detail="62 degC", cell_ids=[3, 4]
    )

    async def scenario() -> None:
        async with backend.broker() as (host, port), backend.ingest(host, port) as ingest:
            async with aiomqtt.Client(host, port) as device:
                await device.publish(topic, alarm.model_dump_json(), qos=1)
                await device.publish(topic, b'{"ts": 0, "kind": "Bad Kind"}', qos=1)
            await wait_until(lambda: ingest.counters.processed >= 2, what="two events")
            assert (ingest.counters.events, ingest.counters.dead_lettered) == (1, 1)

    asyncio.run(scenario())
    with backend.engine.connect() as conn:
        row = conn.execute(select(Event)).one()
    assert (row.device_id, row.battery_id) == (seeded.device_id, seeded.battery_id)
    assert (row.kind, row.severity, row.detail, row.cell_ids) == (
        "over_temperature",
        "alarm",
        "62 degC",
        [3, 4],
    )
    assert row.occurred_at.replace(tzinfo=None) == T0.replace(tzinfo=None)


def test_last_seen_is_written_at_most_every_interval(backend: Backend) -> None:
    """Presence is not rewritten on every message: one device row update per interval."""
    seeded = seed_device(backend, "bms-seen")
    topic = backend.topic("bms-seen", Channel.telemetry)

    def last_seen() -> object:
        with backend.engine.connect() as conn:
            return conn.execute(
                select(Device.last_seen).where(Device.id == seeded.device_id)
            ).scalar()

    async def scenario() -> None:
        async with backend.broker() as (host, port):
            slow = backend.ingest(host, port, last_seen_every_s=3600)
            async with slow as ingest, aiomqtt.Client(host, port) as device:
                await device.publish(topic, telemetry(0), 1)
                await wait_until(lambda: ingest.counters.stored >= 1, what="first stored")
                first = last_seen()
                assert first is not None
                await asyncio.sleep(0.05)
                await device.publish(topic, telemetry(1), 1)
                await wait_until(lambda: ingest.counters.stored >= 2, what="second stored")
                assert last_seen() == first  # within the interval: not written again
            every = backend.ingest(host, port, last_seen_every_s=0)
            async with every as ingest, aiomqtt.Client(host, port) as device:
                await device.publish(topic, telemetry(2), 1)
                await wait_until(lambda: ingest.counters.stored >= 1, what="third stored")
                assert last_seen() != first  # written on every message

    asyncio.run(scenario())
