"""The CAN path of Pillar 2: DBC round trip, snapshot assembly and its loss policy, and the
gateway end to end on python-can's virtual bus into the real cloud ingest (both backends)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import can
import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.models import Event, IngestedMessage, Measurement
from cloud.mqtt.contract import AckMessage, CommandMessage
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
from virtual_bms.can import (
    BmsSnapshot,
    CanEmitter,
    CanGateway,
    CanSource,
    GatewayConfig,
    GatewayError,
    IncompleteSnapshot,
    SnapshotAssembler,
    encode,
    load_dbc,
    serve_gateway,
)
from virtual_bms.can.gateway import INCOMPLETE_EVENT
from virtual_bms.outbox import Outbox
from virtual_bms.sources import Actuation, SensorSource
from virtual_bms.uplink import BrokerEndpoint, Uplink

# half the DBC resolution, plus float slack: the most a value may move on the bus
TOLERANCE = {
    "voltage_v": 0.0005,
    "temperature_c": 0.05,
    "soc": 0.0005,
    "soh": 0.0005,
    "sos": 0.0005,
    "equivalent_cycles": 0.05,
}
CURRENT_TOLERANCE_A = 0.0005
TIME_TOLERANCE_S = 0.005
SLACK = 1e-9
MEASUREMENT_COLUMNS = {  # snapshot field -> Measurement column
    "voltage_v": "voltage",
    "temperature_c": "temperature",
    "soc": "soc",
    "soh": "soh",
    "sos": "sos",
    "equivalent_cycles": "equivalent_cycles",
}


def _snapshot(n_cells: int, *, seed: int, time_s: float = 0.0) -> BmsSnapshot:
    rng = np.random.default_rng(seed)
    return BmsSnapshot(
        time_s=time_s,
        voltage_v=rng.uniform(2.5, 4.2, n_cells),
        temperature_c=rng.uniform(-10.0, 55.0, n_cells),
        current_a=float(rng.uniform(-80.0, 80.0)),
        soc=rng.uniform(0.0, 1.0, n_cells),
        soh=rng.uniform(0.6, 1.0, n_cells),
        sos=rng.uniform(0.8, 1.0, n_cells),
        equivalent_cycles=rng.uniform(500.0, 4000.0, n_cells),
        mode="discharging",
    )


def _assert_matches(received: BmsSnapshot, sent: BmsSnapshot) -> None:
    assert received.n_cells == sent.n_cells
    for name, tolerance in TOLERANCE.items():
        error = np.abs(getattr(received, name) - getattr(sent, name))
        assert error.max() <= tolerance + SLACK, f"{name}: {error.max()} > {tolerance}"
    assert abs(received.current_a - sent.current_a) <= CURRENT_TOLERANCE_A + SLACK
    assert abs(received.time_s - sent.time_s) <= TIME_TOLERANCE_S + SLACK
    assert (received.mode, received.faults) == (sent.mode, sent.faults)
    assert received.cycle_counter == sent.cycle_counter


def _assemble(messages: list[can.Message], **options: int) -> list[object]:
    assembler = SnapshotAssembler(load_dbc(), **options)
    return [result for message in messages for result in assembler.feed(message)]


@pytest.mark.parametrize("n_cells", [16, 100])
def test_round_trip_is_within_the_dbc_resolution(n_cells: int) -> None:
    sent = replace(
        _snapshot(n_cells, seed=n_cells, time_s=86_400.126),
        mode="fault",
        faults=("over_voltage", "over_current_charge"),
        cycle_counter=65_535,
    )
    messages = encode(sent, load_dbc())
    assert len(messages) == 2 * n_cells + 2
    assert all(m.dlc == 8 and not m.is_extended_id for m in messages)
    (received,) = _assemble(messages)
    assert isinstance(received, BmsSnapshot)
    _assert_matches(received, sent)


def test_values_beyond_a_signal_range_are_sent_saturated() -> None:
    sent = _snapshot(4, seed=1)
    sent = BmsSnapshot(
        time_s=1.0,
        voltage_v=sent.voltage_v,
        temperature_c=np.array([-55.0, 130.0, 20.0, 20.0]),
        current_a=-9000.0,
        soc=np.array([1.02, -0.01, 0.5, 0.5]),
        soh=sent.soh,
        sos=sent.sos,
        equivalent_cycles=np.array([1e6, 0.0, 1.0, 2.0]),
    )
    (received,) = _assemble(encode(sent))
    assert isinstance(received, BmsSnapshot)
    assert received.temperature_c[:2].tolist() == [-40.0, 125.0]
    assert received.soc[:2].tolist() == [1.0, 0.0]
    assert received.equivalent_cycles[0] == 26_214.3
    assert received.current_a == -8388.608


def test_a_snapshot_refuses_what_a_bms_cannot_send() -> None:
    good = _snapshot(3, seed=2)
    with pytest.raises(ValueError, match="finite"):
        replace(good, soc=np.array([0.5, np.nan, 0.5]))
    with pytest.raises(ValueError, match="2 values for 3 cells"):
        replace(good, soh=np.array([0.9, 0.9]))
    with pytest.raises(ValueError, match="mode must be one of"):
        replace(good, mode="sleeping")
    with pytest.raises(ValueError, match="1 to 4096 cells"):
        _snapshot(4097, seed=0)


def test_interleaved_cycles_and_frame_order_are_told_apart() -> None:
    first = _snapshot(16, seed=3, time_s=10.0)
    second = _snapshot(16, seed=4, time_s=11.0).with_counter(1)
    a, b = encode(first), encode(second)
    # data frames of both cycles alternate, cell states before measurements in the second;
    # then both status frames, in order; a frame of another node in between
    data_b = b[:-1]
    data_b = [data_b[0], *data_b[2::2], *data_b[1::2]]
    stranger = can.Message(arbitration_id=0x123, data=bytes(8), is_extended_id=False)
    mixed = [x for pair in zip(a[:-1], data_b, strict=True) for x in pair]
    results = _assemble([*mixed, stranger, a[-1], b[-1]])
    assert [type(r) for r in results] == [BmsSnapshot, BmsSnapshot]
    assert isinstance(results[0], BmsSnapshot) and isinstance(results[1], BmsSnapshot)
    _assert_matches(results[0], first)
    _assert_matches(results[1], second)


def test_a_missing_cell_frame_is_reported_and_the_next_cycle_is_whole() -> None:
    first = _snapshot(16, seed=5, time_s=1.0)
    second = _snapshot(16, seed=6, time_s=2.0).with_counter(1)
    a = encode(first)
    lost = 1 + 2 * 7 + 1  # the BMS_CellState frame of cell 7
    del a[lost]
    results = _assemble([*a, *encode(second)], n_cells=16)
    incomplete, whole = results
    assert isinstance(incomplete, IncompleteSnapshot)
    assert incomplete.cycle_counter == 0
    assert incomplete.missing_cells == (7,)
    assert not incomplete.missing_pack and not incomplete.missing_status
    assert "cell(s) without both cell frames: 7" in incomplete.reason
    assert isinstance(whole, BmsSnapshot)
    _assert_matches(whole, second)


def test_a_lost_status_frame_reports_its_cycle_when_a_later_one_closes() -> None:
    first = _snapshot(4, seed=7, time_s=1.0)
    second = _snapshot(4, seed=8, time_s=2.0).with_counter(1)
    results = _assemble([*encode(first)[:-1], *encode(second)])
    stale, whole = results
    assert isinstance(stale, IncompleteSnapshot)
    assert stale.missing_status and stale.cycle_counter is None and stale.cycle_low == 0
    assert isinstance(whole, BmsSnapshot)
    _assert_matches(whole, second)


def test_a_cell_count_other_than_expected_is_not_published() -> None:
    (result,) = _assemble(encode(_snapshot(4, seed=9)), n_cells=5)
    assert isinstance(result, IncompleteSnapshot)
    assert "says 4 cells, the gateway expects 5" in result.reason


def _channel() -> str:
    return f"bt-can-{uuid.uuid4().hex[:10]}"


def test_the_emitter_numbers_cycles_and_wraps_on_a_virtual_bus() -> None:
    channel = _channel()
    with (
        can.Bus(interface="virtual", channel=channel) as bms,
        can.Bus(interface="virtual", channel=channel) as listener,
    ):
        emitter = CanEmitter(bms, n_cells=8, first_cycle=65_535)
        sent = [emitter.send(_snapshot(8, seed=k, time_s=float(k))) for k in range(3)]
        assert [s.cycle_counter for s in sent] == [65_535, 0, 1]
        assert emitter.frames_sent == 3 * (2 * 8 + 2)
        assembler = SnapshotAssembler(n_cells=8)
        received = []
        while (message := listener.recv(timeout=0.1)) is not None:
            received += assembler.feed(message)
        assert len(received) == 3
        for got, want in zip(received, sent, strict=True):
            assert isinstance(got, BmsSnapshot)
            _assert_matches(got, want)
        with pytest.raises(ValueError, match="the emitter sends 8"):
            emitter.send(_snapshot(9, seed=0))


def test_can_source_is_a_read_only_sensor_source() -> None:
    source = CanSource(n_cells=4)
    assert isinstance(source, SensorSource)
    with pytest.raises(LookupError, match="no complete snapshot"):
        source.read()
    snapshot = _snapshot(4, seed=10, time_s=5.0)
    source.update(snapshot)
    frame = source.read()
    assert frame.time_s == 5.0
    assert frame.voltage_v.tolist() == snapshot.voltage_v.tolist()
    assert frame.current_a.tolist() == [snapshot.current_a]
    source.apply(Actuation(contactor_closed=False))
    assert source.requested == Actuation(contactor_closed=False)


def test_a_failing_bus_stops_the_gateway_with_a_clear_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        with contextlib.closing(Outbox(tmp_path / "gw.sqlite")) as outbox:
            bus = can.Bus(interface="virtual", channel=_channel())
            gateway = CanGateway(bus=bus, outbox=outbox)
            reading = asyncio.create_task(gateway.run())
            await asyncio.sleep(0.05)
            bus.shutdown()  # the adapter goes away
            with pytest.raises(GatewayError, match="check that the interface is up"):
                await asyncio.wait_for(reading, 5)

    asyncio.run(scenario())


# ---- end to end: emitter -> virtual bus -> gateway -> outbox -> uplink -> broker -> ingest


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with open_backend(request.param, tmp_path) as opened:
        yield opened


async def _refuse(command: CommandMessage) -> AckMessage:
    return AckMessage(command_id=command.command_id, status="rejected", detail="test")


def _stored(backend: Backend, cells: dict[int, int]) -> dict[dt.datetime, dict[int, Measurement]]:
    """Measurements by time (UTC) and cell position."""
    position = {cell_id: p for p, cell_id in cells.items()}
    by_time: dict[dt.datetime, dict[int, Measurement]] = {}
    with Session(backend.engine) as session:
        for row in session.scalars(select(Measurement)):
            at = row.measured_at
            at = at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)
            by_time.setdefault(at, {})[position[row.cell_id]] = row
    return by_time


def _assert_stored(rows: dict[int, Measurement], sent: BmsSnapshot) -> None:
    assert sorted(rows) == list(range(sent.n_cells))
    for field, column in MEASUREMENT_COLUMNS.items():
        values = np.array([getattr(rows[i], column) for i in range(sent.n_cells)])
        error = np.abs(values - getattr(sent, field))
        assert error.max() <= TOLERANCE[field] + SLACK, f"{column}: {error.max()}"
    currents = np.array([rows[i].current for i in range(sent.n_cells)])
    assert np.all(np.abs(currents - sent.current_a) <= CURRENT_TOLERANCE_A + SLACK)


def _match(stored_at: dt.datetime, sent: list[BmsSnapshot]) -> BmsSnapshot:
    """The emitted snapshot stamped ``T0 + time_s`` (within the BmsTime resolution)."""
    offset_s = (stored_at - T0).total_seconds()
    (match,) = [s for s in sent if abs(s.time_s - offset_s) <= TIME_TOLERANCE_S + 1e-6]
    return match


def test_gateway_forwards_emitted_snapshots_to_the_cloud(backend: Backend, tmp_path: Path) -> None:
    seeded = seed_device(backend, "bms-can", pillar=2)
    channel = _channel()
    k = 6
    snapshots = [_snapshot(N_CELLS, seed=100 + j, time_s=60.0 * j + 0.123) for j in range(k)]
    broken = 2  # this cycle loses the BMS_CellMeasurement frame of cell 5 on the bus
    source = CanSource(N_CELLS)

    async def scenario() -> None:
        async with backend.broker() as (host, port), backend.ingest(host, port) as ingest:
            outbox = Outbox(tmp_path / "bms-can.outbox.sqlite")
            uplink = Uplink(
                device="bms-can",
                outbox=outbox,
                endpoint=BrokerEndpoint(host=host, port=port),
                on_command=_refuse,
                topics=backend.topics,
            )
            backend.client_ids.add(uplink.client_id)
            with (
                can.Bus(interface="virtual", channel=channel) as gateway_bus,
                can.Bus(interface="virtual", channel=channel) as bms_bus,
            ):
                gateway = CanGateway(
                    bus=gateway_bus,
                    outbox=outbox,
                    uplink=uplink,
                    config=GatewayConfig(n_cells=N_CELLS, time_origin=T0, event_interval_s=0),
                    listeners=[source.update],
                )
                linked = asyncio.create_task(uplink.run())
                reading = asyncio.create_task(gateway.run())
                await uplink.wait_connected(10)
                emitter = CanEmitter(bms_bus, n_cells=N_CELLS)
                for j, snapshot in enumerate(snapshots):
                    if j == broken:  # sent by hand, as the emitter would, less one frame
                        snapshots[j] = snapshot.with_counter(emitter.next_cycle)
                        frames = encode(snapshots[j])
                        del frames[1 + 2 * 5]
                        for frame in frames:
                            bms_bus.send(frame)
                        emitter.next_cycle += 1
                    else:
                        snapshots[j] = await asyncio.to_thread(emitter.send, snapshot)
                await wait_until(lambda: ingest.counters.stored >= k - 1, what="telemetry stored")
                await wait_until(lambda: ingest.counters.events >= 1, what="event stored")
                gateway.stop()
                await reading
                uplink.stop()
                await linked
            outbox.close()
            assert gateway.counters.snapshots == k - 1
            assert gateway.counters.incomplete == 1 and gateway.counters.events == 1

    asyncio.run(scenario())
    delivered = [s for j, s in enumerate(snapshots) if j != broken]
    with backend.engine.connect() as conn:
        seqs = conn.scalars(
            select(IngestedMessage.seq).where(IngestedMessage.device_id == seeded.device_id)
        ).all()
        events = conn.execute(select(Event.kind, Event.severity, Event.cell_ids)).all()
    assert sorted(seqs) == list(range(k - 1))  # the broken cycle took no seq
    assert count(backend.engine, Measurement) == (k - 1) * N_CELLS
    stored = _stored(backend, seeded.cells)
    assert len(stored) == k - 1
    for at, rows in stored.items():
        _assert_stored(rows, _match(at, delivered))
    assert [tuple(e) for e in events] == [(INCOMPLETE_EVENT, "warning", [5])]
    assert source.latest is not None
    _assert_matches(source.latest, delivered[-1])


def test_the_gateway_entry_point_forwards_until_stopped(backend: Backend, tmp_path: Path) -> None:
    """``serve_gateway`` (what ``run_gateway`` and the CLI run) opens the bus by name."""
    seeded = seed_device(backend, "bms-can-cli", pillar=2)
    channel = _channel()
    sent: list[BmsSnapshot] = []
    with contextlib.closing(Outbox(":memory:")) as scratch:
        client_id = Uplink(
            device="bms-can-cli", outbox=scratch, endpoint=BrokerEndpoint(), on_command=_refuse
        ).client_id
    backend.client_ids.add(client_id)

    async def scenario() -> None:
        async with backend.broker() as (host, port), backend.ingest(host, port) as ingest:
            stop = asyncio.Event()
            serving = asyncio.create_task(
                serve_gateway(
                    interface="virtual",
                    channel=channel,
                    bitrate=500_000,
                    device="bms-can-cli",
                    endpoint=BrokerEndpoint(host=host, port=port),
                    outbox_path=tmp_path / "cli.outbox.sqlite",
                    config=GatewayConfig(n_cells=N_CELLS, time_origin=T0),
                    topics=backend.topics,
                    stop=stop,
                )
            )
            with can.Bus(interface="virtual", channel=channel) as bms_bus:
                emitter = CanEmitter(bms_bus, n_cells=N_CELLS)
                j = 0
                while ingest.counters.stored < 3:  # the gateway's bus opens at some point
                    snapshot = _snapshot(N_CELLS, seed=200 + j, time_s=10.0 * j)
                    sent.append(await asyncio.to_thread(emitter.send, snapshot))
                    j += 1
                    await asyncio.sleep(0.05)
                    assert j < 400, "nothing stored after 20 s"
            stop.set()
            counters = await asyncio.wait_for(serving, 15)
            assert counters.snapshots >= 3

    asyncio.run(scenario())
    stored = _stored(backend, seeded.cells)
    assert len(stored) >= 3
    for at, rows in stored.items():
        _assert_stored(rows, _match(at, sent))
