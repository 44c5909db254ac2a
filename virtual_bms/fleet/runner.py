"""N virtual BMSs in one process: one MQTT connection each, one vectorised twin for all.

Every BMS has its own connection, credentials and sequence numbers, publishes telemetry of
its own cells (:class:`~virtual_bms.fleet.population.FleetPopulation`) at ``rate_hz``,
answers the cloud's commands with acks, and buffers through outages exactly as the single
BMS's store-and-forward does: a message stays in the BMS's outbox until the broker
acknowledges it, and after a reconnect everything unacknowledged is sent again, in seq
order (the cloud stores a redelivered ``(device, seq)`` once).

The loop is a single asyncio task that wakes every ``tick_s``: it steps the twin when its
time is due, generates the messages that are due, and writes what the in-flight window
allows. Connections are :class:`~virtual_bms.fleet.mqtt_async.LiteConnection`s
(``asyncio.Protocol``s: no task per connection), with one keepalive scheduler.

Records for the report: every message's first publish time (``(device, seq)`` ->
``time.time()``), and a timeline per second of messages generated, acknowledged,
connections held and backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cloud.mqtt.contract import Channel, ContractError, Topics, parse_command
from virtual_bms.fleet.mqtt_async import (
    KeepaliveScheduler,
    LiteConnection,
    MqttConnectError,
    connect,
)
from virtual_bms.fleet.mqtt_codec import Will
from virtual_bms.fleet.population import FleetPopulation

__all__ = ["DeviceCredentials", "FleetRecords", "FleetRunConfig", "FleetRunner"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """A BMS's MQTT login (its name is its client id and its topic level)."""

    name: str
    password: str


@dataclass(frozen=True)
class FleetRunConfig:
    """How the fleet talks to the broker.

    Attributes:
        host: Broker host.
        port: Broker port.
        rate_hz: Telemetry messages per BMS per second.
        duration_s: How long to generate messages (then drain).
        drain_s: Longest wait for the outboxes to empty at the end.
        inflight_per_device: Unacknowledged messages per BMS on the wire.
        outbox_limit: Messages a BMS keeps while offline; beyond it the oldest are
            dropped (counted as ``dropped_at_edge``).
        connect_concurrency: Connections being opened at once.
        keepalive_s: MQTT keepalive.
        tick_s: Period of the generating loop.
        twin_dt_s: Twin step; the twin runs ``speed`` times faster than the wall clock.
        speed: Twin seconds per wall second.
        topics: Topic names.
    """

    host: str
    port: int
    rate_hz: float = 0.3
    duration_s: float = 60.0
    drain_s: float = 60.0
    inflight_per_device: int = 4
    outbox_limit: int = 20_000
    connect_concurrency: int = 200
    keepalive_s: int = 60
    tick_s: float = 0.02
    twin_dt_s: float = 1.0
    speed: float = 1.0
    topics: Topics = field(default_factory=Topics)

    def __post_init__(self) -> None:
        if not self.rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {self.rate_hz}")
        if not self.duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        if self.inflight_per_device < 1:
            raise ValueError("inflight_per_device must be >= 1")


@dataclass
class FleetRecords:
    """What the run measured (the report's raw material)."""

    published_device: list[np.ndarray] = field(default_factory=list)
    published_seq: list[np.ndarray] = field(default_factory=list)
    published_at_s: list[np.ndarray] = field(default_factory=list)
    timeline: list[dict[str, float]] = field(default_factory=list)
    started_at_s: float = math.nan
    """Wall-clock time (``time.time()``) of the timeline's zero: publishing began."""
    connect_s: float = math.nan
    connected_peak: int = 0
    connect_failures: int = 0
    reconnects: int = 0
    commands_answered: int = 0
    dropped_at_edge: int = 0

    def publications(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(device index, seq, first publish time)`` of every generated message."""
        if not self.published_seq:
            empty = np.empty(0)
            return empty.astype(np.int64), empty.astype(np.int64), empty
        return (
            np.concatenate(self.published_device),
            np.concatenate(self.published_seq),
            np.concatenate(self.published_at_s),
        )


class _Device:
    """One BMS's link: connection, outbox, sequence numbers."""

    __slots__ = (
        "conn",
        "down_until",
        "index",
        "inflight",
        "name",
        "outbox",
        "password",
        "reconnecting",
        "sent",
    )

    def __init__(self, index: int, credentials: DeviceCredentials) -> None:
        self.index = index
        self.name = credentials.name
        self.password = credentials.password
        self.conn: LiteConnection | None = None
        self.outbox: deque[tuple[int, bytes]] = deque()  # (seq, payload), unacknowledged
        self.sent = 0  # outbox entries written on the current connection
        self.inflight = 0
        self.down_until = 0.0  # a network cut: no reconnect before this (monotonic)
        self.reconnecting = False  # one reconnect loop per device


class FleetRunner:
    """Runs a fleet: connect, generate and publish, answer commands, drain.

    Args:
        population: The BMSs' cells and telemetry.
        credentials: One login per BMS, in index order.
        config: Broker and pacing.
        seq_start: First sequence number per BMS (continue after an earlier run).
    """

    def __init__(
        self,
        population: FleetPopulation,
        credentials: Sequence[DeviceCredentials],
        config: FleetRunConfig,
        *,
        seq_start: np.ndarray | None = None,
    ) -> None:
        n = population.config.count
        if len(credentials) != n:
            raise ValueError(f"{len(credentials)} credentials for {n} BMSs")
        self.population = population
        self.config = config
        self.devices = [_Device(i, c) for i, c in enumerate(credentials)]
        self.next_seq = np.zeros(n, dtype=np.int64) if seq_start is None else seq_start.copy()
        self.records = FleetRecords()
        self._keepalive = KeepaliveScheduler()
        self._pending_dev: list[int] = []
        self._pending_seq: list[int] = []
        self._pending_at: list[float] = []
        self._acked = 0
        self._generated = 0
        self._stopping = False
        self._reconnects: set[asyncio.Task[None]] = set()
        self._topics = [config.topics.device(d.name, Channel.telemetry) for d in self.devices]
        self._ack_topics = [config.topics.device(d.name, Channel.acks) for d in self.devices]

    # ----------------------------------------------------------------- status
    @property
    def connected(self) -> int:
        return sum(1 for d in self.devices if d.conn is not None and d.conn.connected)

    @property
    def backlog(self) -> int:
        """Messages generated and not yet acknowledged by the broker."""
        return sum(len(d.outbox) for d in self.devices)

    # ------------------------------------------------------------- connecting
    async def _connect(self, device: _Device) -> None:
        topics = self.config.topics
        status_topic = topics.device(device.name, Channel.status)
        will = Will(
            topic=status_topic,
            payload=b'{"online":false,"ts":0}',
            qos=1,
            retain=True,
        )
        conn = await connect(
            self.config.host,
            self.config.port,
            client_id=device.name,
            username=device.name,
            password=device.password,
            keepalive_s=self.config.keepalive_s,
            clean_session=False,
            will=will,
            on_message=functools.partial(self._on_command, device),
            on_connection_lost=functools.partial(self._on_lost, device),
        )
        device.conn = conn
        device.sent = 0
        device.inflight = 0
        self._keepalive.add(conn)
        if not conn.session_present:
            await conn.subscribe([(topics.device(device.name, Channel.commands), 1)])
        status = f'{{"online":true,"ts":{time.time():.3f}}}'.encode()
        conn.publish(status_topic, status, qos=1, retain=True)
        self._flush(device)

    async def connect_all(self, *, progress: Callable[[int, int], None] | None = None) -> None:
        """Open every connection (``connect_concurrency`` at a time), retrying failures."""
        start = time.monotonic()
        gate = asyncio.Semaphore(self.config.connect_concurrency)
        done = 0

        async def one(device: _Device) -> None:
            nonlocal done
            delay = 0.5
            while not self._stopping:
                async with gate:
                    try:
                        await self._connect(device)
                        break
                    except MqttConnectError:
                        raise
                    except (OSError, TimeoutError, ConnectionError) as exc:
                        self.records.connect_failures += 1
                        _log.debug("connect %s failed: %s", device.name, exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 10.0)
            done += 1
            if progress is not None:
                progress(done, len(self.devices))

        await asyncio.gather(*(one(d) for d in self.devices))
        self.records.connect_s = time.monotonic() - start
        self.records.connected_peak = max(self.records.connected_peak, self.connected)

    def _on_lost(self, device: _Device, exc: Exception | None) -> None:
        conn = device.conn
        if conn is not None:
            self._keepalive.discard(conn)
        device.conn = None
        device.sent = 0
        device.inflight = 0
        if self._stopping or device.reconnecting:
            return  # a connection lost while the reconnect loop was connecting it
        device.reconnecting = True
        task = asyncio.get_running_loop().create_task(self._reconnect(device))
        self._reconnects.add(task)
        task.add_done_callback(self._reconnects.discard)

    async def _reconnect(self, device: _Device) -> None:
        try:
            await self._reconnect_loop(device)
        finally:
            device.reconnecting = False

    async def _reconnect_loop(self, device: _Device) -> None:
        delay = 0.5
        while not self._stopping and device.conn is None:
            wait = max(device.down_until - time.monotonic(), 0.0) + delay * random.random()
            await asyncio.sleep(wait)
            if self._stopping or time.monotonic() < device.down_until:
                continue
            try:
                await self._connect(device)
                self.records.reconnects += 1
            except (OSError, TimeoutError, ConnectionError, MqttConnectError) as exc:
                _log.debug("reconnect %s failed: %s", device.name, exc)
                delay = min(delay * 2, 10.0)

    def cut(self, indices: Sequence[int], *, duration_s: float) -> None:
        """Cut the network of BMSs ``indices`` for ``duration_s``: their connections drop
        without DISCONNECT (the broker publishes their will) and they keep generating
        into their outboxes until they may reconnect."""
        until = time.monotonic() + duration_s
        for i in indices:
            device = self.devices[i]
            device.down_until = until
            conn = device.conn
            if conn is not None:
                conn.abort()

    # ------------------------------------------------------------- publishing
    def _on_command(self, device: _Device, topic: str, payload: bytes) -> None:
        try:
            command = parse_command(payload)
        except ContractError as error:
            _log.warning("%s: bad command: %s", device.name, error.reason)
            return
        conn = device.conn
        if conn is None or not conn.connected:
            return
        ack = f'{{"command_id":{command.command_id},"status":"ok","detail":"fleet BMS"}}'
        conn.publish(self._ack_topics[device.index], ack.encode(), qos=1)
        self.records.commands_answered += 1

    def _flush(self, device: _Device) -> None:
        """Write outbox entries not yet on the wire, up to the in-flight window."""
        conn = device.conn
        if conn is None or not conn.connected:
            return
        window = self.config.inflight_per_device
        topic = self._topics[device.index]
        outbox = device.outbox
        while device.inflight < window and device.sent < len(outbox):
            seq, payload = outbox[device.sent]
            try:
                future = conn.publish(topic, payload, qos=1)
            except ConnectionError:
                return
            assert future is not None
            device.sent += 1
            device.inflight += 1
            future.add_done_callback(functools.partial(self._on_ack, device, seq, conn))

    def _on_ack(
        self, device: _Device, seq: int, conn: LiteConnection, future: asyncio.Future[None]
    ) -> None:
        if future.cancelled() or future.exception() is not None or device.conn is not conn:
            return  # lost with its connection: it is still in the outbox and will be resent
        device.inflight -= 1
        outbox = device.outbox
        if outbox and outbox[0][0] == seq:
            outbox.popleft()
        else:  # acknowledgements out of order (not seen with Mosquitto, but allowed)
            for k, (s, _) in enumerate(outbox):
                if s == seq:
                    del outbox[k]
                    break
        device.sent -= 1
        self._acked += 1
        self._flush(device)

    def _generate(self, due: np.ndarray) -> None:
        now_s = time.time()
        population = self.population
        limit = self.config.outbox_limit
        for i in due.tolist():
            device = self.devices[i]
            seq = int(self.next_seq[i])
            self.next_seq[i] = seq + 1
            device.outbox.append((seq, population.telemetry(i, seq=seq, ts_s=now_s)))
            if len(device.outbox) > limit and device.sent < len(device.outbox):
                # Full: the oldest message not on the wire goes (the single BMS's policy).
                del device.outbox[device.sent]
                self.records.dropped_at_edge += 1
            self._pending_dev.append(i)
            self._pending_seq.append(seq)
            self._pending_at.append(now_s)
            self._flush(device)
        self._generated += due.size

    def _keep_records(self) -> None:
        if self._pending_seq:
            self.records.published_device.append(np.array(self._pending_dev, dtype=np.int64))
            self.records.published_seq.append(np.array(self._pending_seq, dtype=np.int64))
            self.records.published_at_s.append(np.array(self._pending_at))
            self._pending_dev, self._pending_seq, self._pending_at = [], [], []

    async def run(
        self, *, on_second: Callable[[dict[str, float]], None] | None = None
    ) -> FleetRecords:
        """Connect everything, publish for ``duration_s``, drain, close; the records."""
        cfg = self.config
        n = len(self.devices)
        self._keepalive.start()
        try:
            await self.connect_all()
            period = 1.0 / cfg.rate_hz
            start = time.monotonic()
            self.records.started_at_s = time.time()
            # Spread the BMSs over one period so the broker sees a steady stream.
            next_due = start + np.random.default_rng(0).uniform(0.0, period, n)
            next_twin = start + cfg.twin_dt_s / cfg.speed
            next_second = start + 1.0
            last = {"generated": 0, "acked": 0}
            end = start + cfg.duration_s
            while (now := time.monotonic()) < end:
                if now >= next_twin:
                    self.population.step(cfg.twin_dt_s)
                    next_twin += cfg.twin_dt_s / cfg.speed
                due = np.flatnonzero(next_due <= now)
                if due.size:
                    next_due[due] += period
                    self._generate(due)
                if now >= next_second:
                    row = self._second(now - start, last)
                    if on_second is not None:
                        on_second(row)
                    next_second += 1.0
                await asyncio.sleep(cfg.tick_s)
            drain_end = time.monotonic() + cfg.drain_s
            while self.backlog and time.monotonic() < drain_end:
                await asyncio.sleep(0.2)
                if time.monotonic() >= next_second:
                    row = self._second(time.monotonic() - start, last)
                    if on_second is not None:
                        on_second(row)
                    next_second += 1.0
            self._keep_records()
        finally:
            await self.close()
        return self.records

    def _second(self, elapsed_s: float, last: dict[str, int]) -> dict[str, float]:
        connected = self.connected
        self.records.connected_peak = max(self.records.connected_peak, connected)
        row = {
            "t_s": round(elapsed_s, 3),
            "generated": float(self._generated - last["generated"]),
            "acked": float(self._acked - last["acked"]),
            "connected": float(connected),
            "backlog": float(self.backlog),
        }
        last["generated"], last["acked"] = self._generated, self._acked
        self.records.timeline.append(row)
        self._keep_records()
        return row

    async def close(self) -> None:
        """Close every connection (clean DISCONNECT) and stop the helpers."""
        self._stopping = True
        for task in list(self._reconnects):
            task.cancel()
        for task in list(self._reconnects):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for device in self.devices:
            conn = device.conn
            if conn is not None:
                conn.close()
        for device in self.devices:
            conn = device.conn
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.wait_closed()
        await self._keepalive.stop()
