"""The Pillar 2 CAN gateway (D2.3 sec. 4.2.1.1): BMS frames in, MQTT telemetry out.

A Raspberry Pi with a CAN HAT listens to the BMS on ``can0``; the gateway rebuilds each
reporting cycle with a :class:`~virtual_bms.can.frames.SnapshotAssembler`, maps it to a
Pillar 2 :class:`~cloud.mqtt.contract.TelemetryMessage` (per cell: voltage, temperature,
current, soc, soh, sos, equivalent cycles; soc/soh/sos as fractions) and queues it in the
same store-and-forward :class:`~virtual_bms.outbox.Outbox` that a virtual BMS uses; an
:class:`~virtual_bms.uplink.Uplink` drains it to the broker. It only listens: it sends
nothing on the bus and refuses cloud commands.

Policies:

* Cells: the frames' ``CellIndex`` ``i`` is sent as ``cell_ids[i] = cell_positions[i]``
  (default ``i``: the index is the cell's position in the battery, ``Cell.position``).
  Every cell carries the pack current (one string).
* Time: with no ``time_origin`` a snapshot is stamped with the time its ``BMS_Status``
  frame was received (keep the Pi's clock synchronised, e.g. chrony); with one, with
  ``time_origin + BmsTime`` (the BMS's own clock, for replays and tests).
* Loss: an incomplete snapshot is not published. It is counted and logged, and an
  ``events`` message ``can_snapshot_incomplete`` (warning) names the missing cells, at
  most one per ``event_interval_s`` (it says how many were dropped since the last one).
  The first cycle after the gateway starts is usually cut (it joined mid-cycle): it is
  logged only.

Example::

    run_gateway(interface="socketcan", channel="can0", bitrate=500_000, device="pilot-2",
                endpoint=BrokerEndpoint.from_url("mqtt://cloud:1883"),
                outbox_path="/var/lib/batterytwin/pilot-2.outbox.sqlite")
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import can
from cantools.database.can import Database
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from cloud.mqtt.contract import (
    AckMessage,
    Channel,
    CommandMessage,
    EventMessage,
    TelemetryMessage,
    Topics,
)
from virtual_bms.can.frames import (
    MAX_CELLS,
    BmsSnapshot,
    IncompleteSnapshot,
    SnapshotAssembler,
    load_dbc,
)
from virtual_bms.outbox import Outbox
from virtual_bms.sources import Actuation, SensorFrame
from virtual_bms.uplink import BrokerEndpoint, Uplink

__all__ = [
    "INCOMPLETE_EVENT",
    "CanGateway",
    "CanSource",
    "GatewayConfig",
    "GatewayCounters",
    "GatewayError",
    "run_gateway",
    "serve_gateway",
    "to_telemetry",
]

_log = logging.getLogger(__name__)

INCOMPLETE_EVENT: Final = "can_snapshot_incomplete"
_RECV_TIMEOUT_S = 0.1  # how soon the reader thread notices a stop
_READ_BATCH = 1000  # frames handed to the event loop at once, at most
_CLOCK_SKEW_S = 86_400.0  # a frame timestamp further from now is the interface's own clock


class GatewayError(RuntimeError):
    """The gateway cannot go on (the bus failed); the message says what to check."""


class GatewayConfig(BaseModel):
    """How the gateway maps and reports what it receives (see the module docstring).

    Attributes:
        n_cells: Cells the BMS reports; ``None`` trusts ``BMS_Status.CellCount``
            (default: the length of ``cell_positions`` if given).
        cell_positions: ``cell_positions[i]`` is the ``Cell.position`` of CAN cell index
            ``i``; ``None`` means the index is the position.
        time_origin: Stamp snapshots ``time_origin + BmsTime`` instead of the receive time.
        event_interval_s: Least time between two ``can_snapshot_incomplete`` events.
        drain_timeout_s: On shutdown, how long :func:`serve_gateway` lets the uplink send
            what is queued (what is left stays in the outbox for the next start).
        max_messages: Bound of the outbox (oldest telemetry is dropped beyond it).
        dbc_path: A copy of ``batterytwin_bms.dbc`` with other frame IDs.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_cells: int | None = Field(default=None, ge=1, le=MAX_CELLS)
    cell_positions: tuple[int, ...] | None = None
    time_origin: AwareDatetime | None = None
    event_interval_s: float = Field(default=60.0, ge=0.0)
    drain_timeout_s: float = Field(default=5.0, ge=0.0)
    max_messages: int = Field(default=100_000, ge=1)
    dbc_path: Path | None = None

    @model_validator(mode="after")
    def _positions(self) -> GatewayConfig:
        positions = self.cell_positions
        if positions is None:
            return self
        if len(set(positions)) != len(positions) or min(positions, default=0) < 0:
            raise ValueError("cell_positions must be distinct positions >= 0")
        if self.n_cells is None:
            object.__setattr__(self, "n_cells", len(positions))
        elif self.n_cells != len(positions):
            raise ValueError(
                f"cell_positions has {len(positions)} entries for n_cells={self.n_cells}; "
                f"give one position per cell"
            )
        return self


@dataclass
class GatewayCounters:
    frames: int = 0  # CAN frames read off the bus (all IDs)
    snapshots: int = 0  # complete snapshots queued as telemetry
    incomplete: int = 0  # snapshots dropped as incomplete
    events: int = 0  # can_snapshot_incomplete events queued


def to_telemetry(
    snapshot: BmsSnapshot, *, seq: int, ts: dt.datetime, cell_ids: Sequence[int]
) -> TelemetryMessage:
    """The Pillar 2 telemetry of one snapshot (D2.3 Table 2), cells in CAN index order.

    Raises:
        ValueError: If ``cell_ids`` does not have one position per cell.
    """
    n = snapshot.n_cells
    if len(cell_ids) != n:
        raise ValueError(f"{len(cell_ids)} cell_ids for a snapshot of {n} cells")
    return TelemetryMessage(
        seq=seq,
        ts=ts,
        pillar=2,
        cell_ids=list(cell_ids),
        voltage=snapshot.voltage_v.tolist(),
        temperature=snapshot.temperature_c.tolist(),
        current=[snapshot.current_a] * n,
        soc=snapshot.soc.tolist(),
        soh=snapshot.soh.tolist(),
        sos=snapshot.sos.tolist(),
        equivalent_cycles=snapshot.equivalent_cycles.tolist(),
    )


SnapshotListener = Callable[[BmsSnapshot], None]


class CanGateway:
    """Reads a bus and queues each complete snapshot as telemetry; see the module docstring.

    Args:
        bus: An open python-can bus (the caller closes it).
        outbox: Where telemetry and events are queued.
        uplink: Woken after each batch of frames (``None``: only queue).
        config: Mapping and reporting options.
        db: The frame database (default: ``config.dbc_path`` or the packaged DBC).
        listeners: Called with every complete snapshot (e.g. :meth:`CanSource.update`).
    """

    def __init__(
        self,
        *,
        bus: can.BusABC,
        outbox: Outbox,
        uplink: Uplink | None = None,
        config: GatewayConfig | None = None,
        db: Database | None = None,
        listeners: Sequence[SnapshotListener] = (),
    ) -> None:
        self.bus = bus
        self.outbox = outbox
        self.uplink = uplink
        self.config = config or GatewayConfig()
        self.counters = GatewayCounters()
        self.assembler = SnapshotAssembler(
            db or load_dbc(self.config.dbc_path), n_cells=self.config.n_cells
        )
        self._listeners = list(listeners)
        self._closed_any = False  # a status frame has been seen since the start
        self._last_event_s = -float("inf")
        self._unreported = 0  # incomplete snapshots since the last event
        self._queue: asyncio.Queue[list[can.Message] | BaseException | None] | None = None
        self._stopping = False

    def handle(self, message: can.Message) -> None:
        """Take one frame: assemble, and queue what it completes (no waking, no await)."""
        self.counters.frames += 1
        results = self.assembler.feed(message)
        first = not self._closed_any
        for result in results:
            if isinstance(result, BmsSnapshot):
                self._publish(result, message.timestamp)
            else:
                self._report(result, startup=first)
        if results:
            self._closed_any = True

    def _stamp(self, snapshot: BmsSnapshot, received_s: float) -> dt.datetime:
        origin = self.config.time_origin
        if origin is not None:
            return origin + dt.timedelta(seconds=snapshot.time_s)
        now = time.time()
        if not received_s or abs(received_s - now) > _CLOCK_SKEW_S:
            received_s = now
        return dt.datetime.fromtimestamp(received_s, dt.UTC)

    def _cell_ids(self, indices: Sequence[int]) -> list[int]:
        positions = self.config.cell_positions
        if positions is None:
            return list(indices)
        return [positions[i] for i in indices if i < len(positions)]

    def _publish(self, snapshot: BmsSnapshot, received_s: float) -> None:
        ts = self._stamp(snapshot, received_s)
        ids = self._cell_ids(range(snapshot.n_cells))

        def build(seq: int) -> bytes:
            message = to_telemetry(snapshot, seq=seq, ts=ts, cell_ids=ids)
            return message.model_dump_json().encode()

        self.outbox.put_sequenced(Channel.telemetry.value, build)
        self.counters.snapshots += 1
        for listener in self._listeners:
            listener(snapshot)

    def _report(self, incomplete: IncompleteSnapshot, *, startup: bool) -> None:
        self.counters.incomplete += 1
        if startup:
            _log.info("not published (the gateway started mid-cycle): %s", incomplete.reason)
            return
        _log.warning("not published: %s", incomplete.reason)
        self._unreported += 1
        now = time.monotonic()
        if now - self._last_event_s < self.config.event_interval_s:
            return
        detail = incomplete.reason
        if self._unreported > 1:
            detail += f" ({self._unreported} incomplete snapshots dropped since the last event)"
        event = EventMessage(
            ts=dt.datetime.now(dt.UTC),
            kind=INCOMPLETE_EVENT,
            severity="warning",
            detail=detail[:2000],
            cell_ids=self._cell_ids(incomplete.missing_cells) or None,
        )
        self.outbox.put(Channel.events.value, event.model_dump_json().encode())
        self.counters.events += 1
        self._last_event_s = now
        self._unreported = 0

    def stop(self) -> None:
        """Finish: :meth:`run` returns soon (call from the event loop's thread)."""
        self._stopping = True
        if self._queue is not None:
            self._queue.put_nowait(None)

    async def run(self) -> None:
        """Read the bus until :meth:`stop`.

        Raises:
            GatewayError: If reading the bus fails (interface down, adapter unplugged).
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[list[can.Message] | BaseException | None] = asyncio.Queue()
        self._queue = queue
        finished = threading.Event()
        reader = threading.Thread(
            target=_read_bus,
            args=(self.bus, loop, queue, finished),
            name=f"can-gateway-reader {self.bus.channel_info}",
            daemon=True,
        )
        reader.start()
        try:
            while not self._stopping:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise GatewayError(
                        f"reading CAN bus {self.bus.channel_info} failed: {item}; check that "
                        f"the interface is up (ip -details link show can0)"
                    ) from item
                for message in item:
                    self.handle(message)
                if self.uplink is not None:
                    self.uplink.wake()
        finally:
            finished.set()
            await asyncio.to_thread(reader.join, 5 * _RECV_TIMEOUT_S + 1.0)
            self._queue = None


def _read_bus(
    bus: can.BusABC,
    loop: asyncio.AbstractEventLoop,
    queue: asyncio.Queue[list[can.Message] | BaseException | None],
    finished: threading.Event,
) -> None:
    """The reader thread: blocks in ``bus.recv`` and hands frames to the loop in batches."""
    while not finished.is_set():
        try:
            message = bus.recv(timeout=_RECV_TIMEOUT_S)
            if message is None:
                continue
            batch = [message]
            while len(batch) < _READ_BATCH and (more := bus.recv(timeout=0.0)) is not None:
                batch.append(more)
        except Exception as error:  # handed to the loop, which raises it as a GatewayError
            loop.call_soon_threadsafe(queue.put_nowait, error)
            return
        loop.call_soon_threadsafe(queue.put_nowait, batch)


class CanSource:
    """A :class:`~virtual_bms.sources.SensorSource` over the snapshots a gateway receives.

    The physical-hardware counterpart of :class:`~virtual_bms.sources.TwinSource`: BMS
    code reads the real pack through it. Feed it with ``CanGateway(listeners=[source.update])``.
    It is read-only: the physical BMS keeps the contactor and balancing, so :meth:`apply`
    sends nothing; it keeps the last request in :attr:`requested` and logs once.

    Args:
        n_cells: Cells (series groups) of the pack.
    """

    def __init__(self, n_cells: int) -> None:
        if not 1 <= n_cells <= MAX_CELLS:
            raise ValueError(f"n_cells must be in 1..{MAX_CELLS}, got {n_cells}")
        self._n_cells = n_cells
        self.latest: BmsSnapshot | None = None
        self.requested: Actuation | None = None

    @property
    def n_groups(self) -> int:
        return self._n_cells

    @property
    def n_strings(self) -> int:
        return 1

    def update(self, snapshot: BmsSnapshot) -> None:
        """A complete snapshot arrived.

        Raises:
            ValueError: If it does not have ``n_cells`` cells.
        """
        if snapshot.n_cells != self._n_cells:
            raise ValueError(
                f"snapshot of {snapshot.n_cells} cells for a source of {self._n_cells} cells"
            )
        self.latest = snapshot

    def read(self) -> SensorFrame:
        """The latest complete snapshot as a sensor frame.

        Raises:
            LookupError: Before the first complete snapshot has arrived.
        """
        latest = self.latest
        if latest is None:
            raise LookupError("no complete snapshot received from the CAN bus yet")
        return latest.to_sensor_frame()

    def apply(self, actuation: Actuation) -> None:
        if self.requested is None:
            _log.warning("CanSource is read-only: actuation requests are kept, not sent to the BMS")
        self.requested = actuation


async def _read_only(command: CommandMessage) -> AckMessage:
    return AckMessage(
        command_id=command.command_id,
        status="rejected",
        detail="the CAN gateway forwards BMS telemetry only; it does not command the BMS",
    )


def _bus_filters(db: Database) -> list[can.typechecking.CanFilter]:
    names = ("BMS_Status", "BMS_Pack", "BMS_CellMeasurement", "BMS_CellState")
    return [
        {"can_id": db.get_message_by_name(name).frame_id, "can_mask": 0x7FF, "extended": False}
        for name in names
    ]


async def serve_gateway(
    *,
    interface: str,
    channel: str,
    bitrate: int | None,
    device: str,
    endpoint: BrokerEndpoint,
    outbox_path: str | Path,
    config: GatewayConfig | None = None,
    topics: Topics | None = None,
    stop: asyncio.Event | None = None,
    listeners: Sequence[SnapshotListener] = (),
) -> GatewayCounters:
    """Run the gateway until ``stop`` is set; what :func:`run_gateway` runs.

    Opens the bus (only the BMS frame IDs pass its filter) and the outbox, runs the
    gateway and its uplink, and on ``stop`` lets the uplink drain for
    ``config.drain_timeout_s`` before closing everything.

    Returns:
        The gateway's counters.

    Raises:
        GatewayError: If the bus cannot be opened or fails.
    """
    config = config or GatewayConfig()
    stop = stop or asyncio.Event()
    db = load_dbc(config.dbc_path)
    options: dict[str, Any] = {} if bitrate is None else {"bitrate": bitrate}
    try:
        bus = can.Bus(interface=interface, channel=channel, can_filters=_bus_filters(db), **options)
    except (can.CanError, OSError) as error:
        raise GatewayError(
            f"cannot open CAN {interface} channel {channel!r}: {error}; on a Raspberry Pi check "
            f"the HAT's overlay and bring the interface up (ip link set {channel} up type can "
            f"bitrate {bitrate or 500_000})"
        ) from error
    outbox = Outbox(outbox_path, max_messages=config.max_messages)
    try:
        with bus:
            uplink = Uplink(
                device=device,
                outbox=outbox,
                endpoint=endpoint,
                on_command=_read_only,
                topics=topics,
            )
            gateway = CanGateway(
                bus=bus, outbox=outbox, uplink=uplink, config=config, db=db, listeners=listeners
            )
            linked = asyncio.create_task(uplink.run(), name="can-gateway-uplink")
            reading = asyncio.create_task(gateway.run(), name="can-gateway-reader")
            stopping = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({linked, reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                gateway.stop()
                await reading  # raises the bus's GatewayError
                if not linked.done() and config.drain_timeout_s > 0:
                    with contextlib.suppress(TimeoutError):
                        await uplink.wait_drained(config.drain_timeout_s)
            finally:
                stopping.cancel()
                uplink.stop()
                gateway.stop()
                await asyncio.gather(linked, reading, return_exceptions=True)
            linked.result()  # an uplink that crashed is an error too
            return gateway.counters
    finally:
        outbox.close()


def run_gateway(
    *,
    interface: str = "socketcan",
    channel: str = "can0",
    bitrate: int | None = 500_000,
    device: str,
    endpoint: BrokerEndpoint,
    outbox_path: str | Path,
    config: GatewayConfig | None = None,
    topics: Topics | None = None,
) -> GatewayCounters:
    """Forward a BMS's CAN frames to the cloud until SIGINT or SIGTERM (the CLI's entry).

    Args:
        interface: A python-can interface: ``socketcan`` on a Raspberry Pi with a CAN HAT
            (``can0`` must be up: ``ip link set can0 up type can bitrate 500000``),
            ``virtual`` for tests, or any other python-can interface.
        channel: The interface's channel (``can0``; any name for ``virtual``).
        bitrate: Bit rate in bit/s for interfaces that set it when opened; SocketCAN takes
            it from ``ip link`` and ignores this. ``None`` leaves the interface's default.
        device: The registered device name (MQTT topics and, usually, user name).
        endpoint: The broker.
        outbox_path: The store-and-forward SQLite file (kept across restarts).
        config: Mapping and reporting options (:class:`GatewayConfig`).
        topics: Topic root (default ``batterytwin/v1``).

    Returns:
        The gateway's counters, once stopped.

    Raises:
        GatewayError: If the bus fails (the process should exit non-zero and be restarted,
            e.g. by systemd).
    """

    async def main() -> GatewayCounters:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
                handled.append(signum)
        try:
            return await serve_gateway(
                interface=interface,
                channel=channel,
                bitrate=bitrate,
                device=device,
                endpoint=endpoint,
                outbox_path=outbox_path,
                config=config,
                topics=topics,
                stop=stop,
            )
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)

    return asyncio.run(main())
