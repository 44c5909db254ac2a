"""MQTT ingest: device messages, checked against the contract, stored in batches exactly once.

One aiomqtt client with a persistent session (``clean_session=False``, a fixed client id)
subscribes with QoS 1 to every device's uplink channels, so the broker keeps what devices
publish while the ingest is down. A message is acknowledged to the broker only after the
transaction holding it has committed; a redelivery after a crash is recognised by its
``(device, seq)`` in ``ingested_messages``, written in the same transaction as the data,
and stored nothing twice. Whatever breaks the contract goes to ``dead_letters`` with the
reason, and the stream goes on.

Several ingest processes share the stream with ``shared_group``: each subscribes with
``$share/{group}/{filter}`` under its own client id, and the broker hands every message to
one of them. Mosquitto 2.0 keeps a worker's share (in flight and new) in that worker's
session while it is down, so a worker must come back with the same client id
(:mod:`cloud.mqtt.ingest_workers` restarts it) or be retired (:meth:`IngestService.retire`).

Example::

    service = IngestService(engine=engine, config=IngestConfig(host="broker", port=1883))
    async with service:  # connected and subscribed
        ...  # service.counters for metrics
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from types import TracebackType
from typing import Any, Self, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Engine,
    Float,
    Integer,
    Table,
    bindparam,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.types import TypeEngine

from cloud.models import (
    Cell,
    Command,
    DeadLetter,
    Device,
    EisRecord,
    Event,
    IngestedMessage,
    Measurement,
)
from cloud.models import Module as BatteryModule
from cloud.mqtt.contract import (
    TELEMETRY_QUANTITIES,
    UPLINK_CHANNELS,
    AckMessage,
    Channel,
    ContractError,
    EisMessage,
    EventMessage,
    StatusMessage,
    TelemetryMessage,
    Topics,
    parse_uplink,
)
from cloud.mqtt.tls import MqttTls, tls_context

__all__ = ["IngestConfig", "IngestCounters", "IngestError", "IngestService"]

_PREFETCH_CHUNK = 1000  # names (or batteries) per IN list when loading devices in bulk

_log = logging.getLogger(__name__)

_MEASUREMENTS = cast(Table, Measurement.__table__)
_EIS = cast(Table, EisRecord.__table__)
_INGESTED = cast(Table, IngestedMessage.__table__)
_DEAD = cast(Table, DeadLetter.__table__)
_DEVICES = cast(Table, Device.__table__)
_EVENTS = cast(Table, Event.__table__)
_COMMANDS = cast(Table, Command.__table__)
_MEASUREMENT_COLUMNS = ("cell_id", "device_id", "measured_at", "added_at", *TELEMETRY_QUANTITIES)
GUARD_CHANNELS: tuple[Channel, ...] = (Channel.telemetry, Channel.eis, Channel.acks)
"""What a guard stores: messages stored at most once however often they arrive (a ``seq``
claim, an ack of a command already acked). Events and presence carry no ``seq``: a
guard would store them twice."""
_STOP_POLL_S = 0.25  # how often an idle ingest checks whether it should stop
_UNKNOWN_DEVICE_RETRY_S = 2.0  # a device registered after its first message is seen this soon


def _postgres_type(column_type: TypeEngine[Any]) -> str:
    """The PostgreSQL type name binary COPY needs for a measurements column."""
    if isinstance(column_type, BigInteger):
        return "int8"
    if isinstance(column_type, Integer):
        return "int4"
    if isinstance(column_type, DateTime):
        return "timestamptz" if column_type.timezone else "timestamp"
    if isinstance(column_type, Float):
        return "float8"
    raise TypeError(f"no binary COPY type for {column_type!r}")


_COPY_TYPES = [_postgres_type(_MEASUREMENTS.c[name].type) for name in _MEASUREMENT_COLUMNS]


class IngestError(RuntimeError):
    """The ingest cannot run as configured (broker unreachable, subscription refused)."""


class IngestConfig(BaseModel):
    """Where the broker is, who the ingest is there, and how it batches."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    client_id: str = Field(default="batterytwin-ingest", min_length=1, max_length=23)
    """Fixed, so that the broker keeps the session (and its queued messages) across restarts."""
    topics: Topics = Topics()
    batch_size: int = Field(default=1000, ge=1)
    """Most messages in one transaction."""
    batch_window_s: float = Field(default=0.02, ge=0, le=5)
    """How long a batch stays open after its first message, gathering more (added latency)."""
    keepalive_s: int = Field(default=30, ge=5)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    reconnect_delay_s: float = Field(default=0.5, gt=0)
    reconnect_delay_max_s: float = Field(default=30.0, gt=0)
    last_seen_every_s: float = Field(default=10.0, ge=0)
    """A device's ``last_seen`` is written at most this often by this ingest: presence needs
    no finer grain, and one row update per message cost the database as much as the
    message's 16 measurement rows (10,000 devices at 0.3 Hz: 3,000 updates/s). 0: always."""
    device_cache_s: float = Field(default=60.0, ge=0)
    """How long a device's id and cell map are reused before they are read again."""
    dead_letter_chars: int = Field(default=4096, ge=0)
    """Payload bytes kept in a dead letter (decoded as UTF-8 with replacement)."""
    use_copy: bool = True
    """On PostgreSQL, write measurements with COPY (else executemany)."""
    tls: MqttTls | None = None
    """Connect over TLS, verifying the broker against a CA (port 8883, usually); None: plain."""
    shared_group: str | None = None
    """Subscribe as a member of this MQTT shared subscription group (``$share/{group}/...``),
    so that the broker splits the messages between the group's clients; each member needs
    its own ``client_id``. None: one ingest receives every message."""
    guard_window_s: float | None = Field(default=None, gt=0)
    """Run as a shared group's guard: a plain, persistent subscription to the channels that
    carry a ``seq`` (telemetry, EIS) and to acks, whose messages are stored only for this
    many seconds after each CONNACK and otherwise acknowledged unstored. A broker that does
    not restore ``$share/`` subscriptions after a restart (Mosquitto 2.0) restores this
    one, so what devices publish before the group's members have subscribed again is
    queued for the guard; the ``(device, seq)`` claim makes the overlap harmless. Must
    exceed the members' ``reconnect_delay_max_s``. None: an ordinary ingest."""

    @model_validator(mode="after")
    def _password_needs_user(self) -> IngestConfig:
        if self.password is not None and self.username is None:
            raise ValueError("a password without a username is ignored by MQTT: set username")
        return self

    @model_validator(mode="after")
    def _plain_group_name(self) -> IngestConfig:
        group = self.shared_group
        if group is not None and (not group or any(c in group for c in "/+#")):
            raise ValueError(
                f"shared_group must be a non-empty name without '/', '+' or '#' (it becomes "
                f"$share/<group>/...), got {group!r}"
            )
        return self

    @model_validator(mode="after")
    def _guard_is_plain(self) -> IngestConfig:
        if self.guard_window_s is not None and self.shared_group is not None:
            raise ValueError(
                "a guard subscribes plainly (that is what the broker restores): "
                f"give guard_window_s or shared_group, not both (group {self.shared_group!r})"
            )
        return self

    def subscriptions(self) -> list[str]:
        """The topic filters the ingest subscribes to, one per uplink channel."""
        if self.guard_window_s is not None:
            return [self.topics.subscription(channel) for channel in GUARD_CHANNELS]
        plain = [self.topics.subscription(channel) for channel in UPLINK_CHANNELS]
        if self.shared_group is None:
            return plain
        return [f"$share/{self.shared_group}/{topic}" for topic in plain]


@dataclass
class IngestCounters:
    """What the ingest has done since it started (for Prometheus)."""

    messages_in: int = 0
    stored: int = 0  # telemetry and EIS messages written (first delivery)
    duplicates: int = 0  # redeliveries and repeated acks: nothing written
    dead_lettered: int = 0
    status_updates: int = 0
    acks: int = 0
    events: int = 0
    measurement_rows: int = 0
    eis_rows: int = 0
    batches: int = 0
    reconnects: int = 0
    db_retries: int = 0
    last_lag_s: float | None = None  # commit time minus the device's ts, newest stored message
    last_batch_s: float | None = None  # how long the last batch's transaction took
    guard_passed: int = 0  # a guard outside its window: acknowledged, not stored

    @property
    def processed(self) -> int:
        """Messages that are done with (each counted once in exactly one outcome)."""
        return (
            self.stored
            + self.duplicates
            + self.dead_lettered
            + self.status_updates
            + self.acks
            + self.events
        )


@dataclass(frozen=True, slots=True)
class _Raw:
    topic: str
    payload: bytes
    retain: bool
    received_at: dt.datetime


@dataclass(frozen=True, slots=True)
class _DeviceInfo:
    id: int
    name: str
    battery_id: int
    cells: dict[int, int]  # position -> Cell.id
    loaded_at: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class _Dead:
    raw: _Raw
    reason: str


@dataclass(frozen=True, slots=True)
class _Data:
    raw: _Raw
    device: _DeviceInfo
    kind: str  # telemetry | eis
    message: TelemetryMessage | EisMessage
    cell_ids: list[int]  # Cell.id per cell_ids entry (telemetry) or per record (EIS)

    @property
    def key(self) -> tuple[int, int]:
        return self.device.id, self.message.seq


@dataclass(frozen=True, slots=True)
class _Other:
    raw: _Raw
    device: _DeviceInfo
    message: StatusMessage | AckMessage | EventMessage


_Item = _Dead | _Data | _Other


@dataclass
class _Outcome:
    stored: int = 0
    duplicates: int = 0
    dead: list[tuple[str, str]] = field(default_factory=list)  # (topic, reason)
    status_updates: int = 0
    acks: int = 0
    events: int = 0
    measurement_rows: int = 0
    eis_rows: int = 0
    lag_s: float | None = None
    # id(_Raw) -> ("stored" | "duplicate" | "dead_lettered", reason): per message, for HTTPS
    verdicts: dict[int, tuple[str, str]] = field(default_factory=dict)

    def add(self, other: _Outcome) -> None:
        for name in ("stored", "duplicates", "status_updates", "acks", "events"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.measurement_rows += other.measurement_rows
        self.eis_rows += other.eis_rows
        self.dead += other.dead
        self.verdicts |= other.verdicts
        self.lag_s = other.lag_s if other.lag_s is not None else self.lag_s


def _transient(error: DBAPIError) -> bool:
    """A database that is down or busy, as opposed to one that refuses this data."""
    return isinstance(error, OperationalError | InterfaceError) or error.connection_invalidated


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class IngestService:
    """Consumes device topics from the broker and writes them to the database.

    Use it as an async context manager (connects, subscribes, consumes in the background,
    and on exit flushes, acknowledges and disconnects) or await :meth:`run` in the service's
    entry point. Database writes run in a worker thread, so the MQTT keepalive never waits
    for the database.

    Args:
        engine: The database (schema from ``cloud.migrate.upgrade``).
        config: Broker, identity and batching.
    """

    def __init__(self, *, engine: Engine, config: IngestConfig) -> None:
        self._engine = engine
        self._config = config
        self.counters = IngestCounters()
        self._devices: dict[str, tuple[_DeviceInfo | None, float]] = {}
        self._stop = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._store_until = math.inf  # a guard's window ends here (time.monotonic())
        self._session_present = False  # a guard's last CONNACK
        self._seen_written: dict[int, float] = {}  # device id -> time.monotonic() written

    @property
    def config(self) -> IngestConfig:
        return self._config

    @property
    def subscribed(self) -> bool:
        """Whether the ingest is connected and subscribed right now."""
        return self._subscribed.is_set()

    def stop(self) -> None:
        """Ask :meth:`run` to finish the batch in hand, disconnect and return."""
        self._stop.set()

    async def run(self) -> None:
        """Consume until :meth:`stop` (or cancellation), reconnecting when the broker drops.

        Raises:
            IngestError: If the broker refuses the ingest's subscriptions.
        """
        delay = self._config.reconnect_delay_s
        while not self._stop.is_set():
            try:
                await self._session()
                delay = self._config.reconnect_delay_s
            except aiomqtt.MqttError as error:
                self._subscribed.clear()
                if self._stop.is_set():
                    break
                self.counters.reconnects += 1
                _log.warning("MQTT: %s; reconnecting in %.1f s", error, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(2 * delay, self._config.reconnect_delay_max_s)
        self._subscribed.clear()

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise RuntimeError("the ingest is already running")
        self._stop.clear()
        self._task = asyncio.create_task(self.run(), name="mqtt-ingest")
        subscribed = asyncio.create_task(self._subscribed.wait())
        await asyncio.wait(
            {self._task, subscribed},
            timeout=self._config.connect_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        subscribed.cancel()
        if not self._subscribed.is_set():
            await self._finish()
            cfg = self._config
            tls = (
                f" TLS is on: does the broker serve TLS on port {cfg.port}, with a certificate "
                f"for {cfg.tls.server_hostname or cfg.host} signed by the CA in {cfg.tls.ca_file}?"
                if cfg.tls
                else ""
            )
            raise IngestError(
                f"no MQTT session with {cfg.host}:{cfg.port} within {cfg.connect_timeout_s} s: "
                f"is the broker running and are the ingest's credentials right?{tls}"
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._finish()

    async def _finish(self) -> None:
        task, self._task = self._task, None
        self.stop()
        if task is not None:
            await task

    async def retire(self, *, idle_s: float = 2.0) -> None:
        """Take this client id out of service for good (fewer ingest workers than before).

        The broker keeps giving a stopped member of a shared group its share of the
        messages, in its session, until the same client id returns. Retiring resumes that
        session, unsubscribes (from then on the other members get everything), stores what
        the session still held, in flight and queued, until nothing has arrived for
        ``idle_s``, and ends the session. Run it only while no other process uses the
        client id, and not while this service runs.

        Raises:
            RuntimeError: If the service is running.
            aiomqtt.MqttError: If the broker cannot be reached.
        """
        if self._task is not None:
            raise RuntimeError("stop the ingest before retiring its client id")
        cfg = self._config
        plain = [cfg.topics.subscription(channel) for channel in UPLINK_CHANNELS]
        filters = list(dict.fromkeys([*plain, *cfg.subscriptions()]))
        async with self._client() as client:
            unsubscribed = asyncio.Event()
            # reading goes on while the broker answers, as in _session
            drain = asyncio.create_task(self._drain(client, idle_s=idle_s, after=unsubscribed))
            try:
                await client.unsubscribe(filters)
                unsubscribed.set()
                await drain
            finally:
                if not drain.done():
                    drain.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await drain
        async with self._client(clean_session=True):
            pass  # a clean connection ends the persistent session
        _log.info("MQTT ingest client id %s retired: it has no session any more", cfg.client_id)

    async def _drain(self, client: aiomqtt.Client, *, idle_s: float, after: asyncio.Event) -> None:
        """Store what arrives until ``after`` is set and nothing came for ``idle_s``."""
        while True:
            first = await _next_message(client, timeout_s=idle_s)
            if first is None:
                if after.is_set():
                    return
                continue
            batch = [first, *_take_waiting(client, self._config.batch_size - 1)]
            await self._flush(client, batch)

    def _client(self, *, clean_session: bool = False) -> aiomqtt.Client:
        cfg = self._config
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            identifier=cfg.client_id,
            clean_session=clean_session,
            keepalive=cfg.keepalive_s,
            timeout=cfg.connect_timeout_s,
            tls_context=tls_context(cfg.tls) if cfg.tls else None,
        )
        # aiomqtt acknowledges on receipt; paho can wait, and the ack must follow the commit
        mqtt = _paho(client)
        mqtt.manual_ack_set(True)
        if cfg.guard_window_s is not None:  # a guard needs the CONNACK's session-present flag
            on_connect = mqtt.on_connect
            assert on_connect is not None  # aiomqtt's, which resolves the connection

            def _on_connect(*args: Any) -> None:
                self._session_present = bool(args[2].session_present)  # (client, data, flags..
                on_connect(*args)

            mqtt.on_connect = _on_connect
        return client

    async def _session(self) -> None:
        """One connection: read and flush batches until stop or error, subscribing meanwhile.

        Reading starts before the SUBSCRIBE: a resumed session's queued messages arrive right
        after the CONNACK, and a broker may answer the SUBSCRIBE only once they are acked.
        """
        async with self._client() as client:
            if self._config.guard_window_s is not None:
                # A new session had no subscription before: nothing can have been missed.
                # A resumed one may hold what arrived while the group was not subscribed.
                window_s = self._config.guard_window_s if self._session_present else 0.0
                self._store_until = time.monotonic() + window_s
                _log.info(
                    "MQTT ingest guard: %s session, storing for %.0f s",
                    "resumed" if self._session_present else "new",
                    window_s,
                )
            consumer = asyncio.create_task(self._consume(client))
            try:
                wanted = self._config.subscriptions()
                granted: Sequence[int | ReasonCode] = await client.subscribe(
                    [(topic, 1) for topic in wanted]
                )
                refused = [t for t, code in zip(wanted, granted, strict=True) if _refused(code)]
                if refused:
                    raise IngestError(
                        f"the broker refused the subscriptions {refused}: allow the ingest user "
                        "to read them (see cloud.mqtt.broker.device_acl)"
                    )
                self._subscribed.set()
                _log.info("MQTT ingest subscribed to %s", ", ".join(wanted))
                await consumer
            finally:
                if not consumer.done():
                    consumer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await consumer

    async def _consume(self, client: aiomqtt.Client) -> None:
        """Gather batches and flush them until stop; then store what has already arrived.

        A batch closes when it is full or ``batch_window_s`` after its first message. While a
        batch's transaction runs, the event loop keeps receiving, so under load the next
        batch fills during the commit and batches grow with the message rate.
        """
        cfg = self._config
        while not self._stop.is_set():
            first = await _next_message(client, timeout_s=_STOP_POLL_S)
            if first is None:
                continue
            batch = [first]
            deadline = time.monotonic() + cfg.batch_window_s
            while len(batch) < cfg.batch_size:
                waiting = _take_waiting(client, cfg.batch_size - len(batch))
                if waiting:
                    batch += waiting
                    continue
                left_s = deadline - time.monotonic()
                message = await _next_message(client, timeout_s=left_s) if left_s > 0 else None
                if message is None:
                    break
                batch.append(message)
            await self._flush(client, batch)
        # what has arrived is stored before leaving: a broker may forget in-flight messages
        while batch := _take_waiting(client, cfg.batch_size):
            await self._flush(client, batch)

    async def _flush(self, client: aiomqtt.Client, batch: Sequence[aiomqtt.Message]) -> None:
        if time.monotonic() > self._store_until:  # a guard, outside its window
            mqtt = _paho(client)
            for message in batch:
                if message.qos > 0:
                    mqtt.ack(message.mid, message.qos)
            self.counters.guard_passed += len(batch)
            return
        received_at = _now()
        raws = [
            _Raw(
                topic=message.topic.value,
                payload=_payload_bytes(message.payload),
                retain=message.retain,
                received_at=received_at,
            )
            for message in batch
        ]
        self.counters.messages_in += len(raws)
        delay = self._config.reconnect_delay_s
        while True:
            started = time.perf_counter()
            try:
                outcome = await asyncio.to_thread(self._store, raws)
                break
            except DBAPIError as error:  # only transient errors leave _store
                if self._stop.is_set():
                    _log.warning("database unavailable at stop; the broker redelivers the batch")
                    return
                self.counters.db_retries += 1
                _log.warning("database: %s; retrying the batch in %.1f s", error, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(2 * delay, self._config.reconnect_delay_max_s)
        mqtt = _paho(client)
        for message in batch:
            if message.qos > 0:
                mqtt.ack(message.mid, message.qos)
        self._count(outcome, seconds=time.perf_counter() - started)

    async def store_payloads(self, topic: str, payloads: Sequence[bytes]) -> list[tuple[str, str]]:
        """Store messages that came another way than the broker (the HTTPS fallback).

        The same path as a batch from the broker: contract, device and cell checks, the
        ``(device, seq)`` claim (a seq already stored, by either path, is a duplicate) and
        dead letters, in one transaction run in a worker thread. No broker connection is
        needed. Counted in :attr:`counters` like MQTT batches.

        Args:
            topic: The device topic the payloads would have come on (device and channel).
            payloads: Raw payloads, in the order the device sent them.

        Returns:
            Per payload, in order: ``("stored", "")``, ``("duplicate", "")`` or
            ``("dead_lettered", reason)``.

        Raises:
            sqlalchemy.exc.DBAPIError: The database is down or busy: nothing was stored.
        """
        received_at = _now()
        raws = [_Raw(topic, payload, False, received_at) for payload in payloads]
        started = time.perf_counter()
        outcome = await asyncio.to_thread(self._store, raws)
        self.counters.messages_in += len(raws)
        self._count(outcome, seconds=time.perf_counter() - started)
        return [outcome.verdicts.get(id(raw), ("stored", "")) for raw in raws]

    def _count(self, outcome: _Outcome, *, seconds: float) -> None:
        c = self.counters
        c.batches += 1
        c.stored += outcome.stored
        c.duplicates += outcome.duplicates
        c.dead_lettered += len(outcome.dead)
        c.status_updates += outcome.status_updates
        c.acks += outcome.acks
        c.events += outcome.events
        c.measurement_rows += outcome.measurement_rows
        c.eis_rows += outcome.eis_rows
        c.last_batch_s = seconds
        if outcome.lag_s is not None:
            c.last_lag_s = outcome.lag_s
        for topic, reason in outcome.dead[:20]:
            _log.warning("dead letter from %s: %s", topic, reason)

    # --- worker thread: everything below touches the database ---------------------------

    def _store(self, raws: Sequence[_Raw]) -> _Outcome:
        """Prepare and write a batch in one transaction; one by one if the database refuses."""
        self._prefetch_devices(raws)
        items = [self._prepare_safely(raw) for raw in raws]
        try:
            with self._engine.begin() as conn:
                return self._write(conn, items)
        except DBAPIError as error:
            if _transient(error):
                raise
            _log.warning("database refused a batch (%s); storing its messages one by one", error)
        except Exception:
            _log.exception("storing a batch failed; storing its messages one by one")
        self._devices.clear()  # a device or cell may have gone
        outcome = _Outcome()
        for item in items:
            try:
                with self._engine.begin() as conn:
                    outcome.add(self._write(conn, [item]))
                continue
            except DBAPIError as error:
                if _transient(error):
                    raise
                reason = f"database refused: {str(error.orig).splitlines()[0]}"
            except Exception as error:
                _log.exception("storing a message from %s failed", item.raw.topic)
                reason = f"internal error: {type(error).__name__}: {error}"
            with self._engine.begin() as conn:
                outcome.add(self._write(conn, [_Dead(item.raw, reason)]))
        return outcome

    def _prepare_safely(self, raw: _Raw) -> _Item:
        try:
            return self._prepare(raw)
        except DBAPIError as error:
            if _transient(error):
                raise
            return _Dead(raw, f"database refused: {str(error.orig).splitlines()[0]}")
        except Exception as error:
            _log.exception("reading a message from %s failed", raw.topic)
            return _Dead(raw, f"internal error: {type(error).__name__}: {error}")

    def _prepare(self, raw: _Raw) -> _Item:
        """Topic, contract and device checks; no writes."""
        try:
            name, channel = self._config.topics.parse(raw.topic)
            message = parse_uplink(channel, raw.payload)
        except ContractError as error:
            return _Dead(raw, error.reason)
        device = self._device(name)
        if device is None:
            return _Dead(raw, f"unknown device {name!r}: no Device with that name")
        if isinstance(message, StatusMessage | AckMessage | EventMessage):
            return _Other(raw, device, message)
        positions = (
            message.cell_ids
            if isinstance(message, TelemetryMessage)
            else [record.cell_id for record in message.records]
        )
        missing = sorted(set(positions).difference(device.cells))
        if missing and time.monotonic() - device.loaded_at > 1.0:
            device = self._device(name, fresh=True) or device
            missing = sorted(set(positions).difference(device.cells))
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            return _Dead(
                raw,
                f"unknown cells: cell_ids {shown} are not positions of cells in the battery "
                f"(id {device.battery_id}) of device {name!r}",
            )
        kind = "telemetry" if isinstance(message, TelemetryMessage) else "eis"
        return _Data(raw, device, kind, message, [device.cells[p] for p in positions])

    def _prefetch_devices(self, raws: Sequence[_Raw]) -> None:
        """Load the batch's devices that are not cached (or expired) in two queries.

        With thousands of devices, looking each up on its own (a pooled connection, two
        queries and a rollback per device every ``device_cache_s``) cost the ingest about
        half its time; a batch of a fleet holds hundreds of devices.
        """
        now = time.monotonic()
        ttl = self._config.device_cache_s
        wanted: set[str] = set()
        for raw in raws:
            try:
                name, _ = self._config.topics.parse(raw.topic)
            except ContractError:
                continue
            cached = self._devices.get(name)
            if cached is None or (cached[0] is not None and now - cached[1] >= ttl):
                wanted.add(name)
        if len(wanted) >= 2:  # one device: _device loads it when it is needed
            self._load_devices(sorted(wanted), now=now)

    def _load_devices(self, names: Sequence[str], *, now: float) -> None:
        """Read ``names`` (unknown ones as None) and their cell maps into the cache, in two
        queries per chunk of names."""
        with self._engine.connect() as conn:
            devices: dict[str, tuple[int, int]] = {}
            for start in range(0, len(names), _PREFETCH_CHUNK):
                chunk = names[start : start + _PREFETCH_CHUNK]
                rows = conn.execute(
                    select(Device.name, Device.id, Device.battery_id).where(Device.name.in_(chunk))
                )
                devices.update({name: (device_id, battery) for name, device_id, battery in rows})
            batteries = sorted({battery for _, battery in devices.values()})
            cells: dict[int, dict[int, int]] = {b: {} for b in batteries}
            for start in range(0, len(batteries), _PREFETCH_CHUNK):
                chunk_b = batteries[start : start + _PREFETCH_CHUNK]
                rows_c = conn.execute(
                    select(BatteryModule.battery_id, Cell.position, Cell.id)
                    .join(BatteryModule, Cell.module_id == BatteryModule.id)
                    .where(BatteryModule.battery_id.in_(chunk_b), Cell.position.is_not(None))
                )
                for battery, position, cell_id in rows_c:
                    if position is not None and battery is not None:
                        cells[battery][position] = cell_id
        for name in names:
            found = devices.get(name)
            info = (
                None
                if found is None
                else _DeviceInfo(
                    id=found[0],
                    name=name,
                    battery_id=found[1],
                    cells=cells.get(found[1], {}),
                    loaded_at=now,
                )
            )
            self._devices[name] = (info, now)

    def _device(self, name: str, *, fresh: bool = False) -> _DeviceInfo | None:
        """The device called ``name`` with its cell map, cached for ``device_cache_s``."""
        now = time.monotonic()
        cached = self._devices.get(name)
        if cached is not None and not fresh:
            info, loaded_at = cached
            ttl = self._config.device_cache_s if info is not None else _UNKNOWN_DEVICE_RETRY_S
            if now - loaded_at < ttl:
                return info
        self._load_devices([name], now=now)
        return self._devices[name][0]

    def _write(self, conn: Connection, items: Sequence[_Item]) -> _Outcome:
        """Write prepared items in the caller's transaction."""
        now = _now()
        outcome = _Outcome()
        dead: list[_Dead] = [item for item in items if isinstance(item, _Dead)]
        fresh, more_dead, outcome.duplicates = self._claim(
            conn, [item for item in items if isinstance(item, _Data)], now=now
        )
        dead += more_dead
        self._write_data(conn, fresh, now=now, outcome=outcome)
        others = [item for item in items if isinstance(item, _Other)]
        dead += self._write_others(conn, others, fresh, now=now, outcome=outcome)
        if dead:
            order = {id(item.raw): i for i, item in enumerate(items)}
            dead.sort(key=lambda d: order[id(d.raw)])  # the order they arrived in
            keep = self._config.dead_letter_chars
            conn.execute(
                insert(_DEAD),
                [
                    {
                        "received_at": d.raw.received_at,
                        "topic": d.raw.topic[:255],
                        "reason": d.reason,
                        # PostgreSQL text holds no NUL
                        "payload": d.raw.payload[:keep]
                        .decode("utf-8", errors="replace")
                        .replace("\x00", "\ufffd"),
                    }
                    for d in dead
                ],
            )
            outcome.dead = [(d.raw.topic, d.reason) for d in dead]
            outcome.verdicts |= {id(d.raw): ("dead_lettered", d.reason) for d in dead}
        done = {id(d.raw) for d in fresh} | {id(o.raw) for o in others}
        for item in items:  # what is neither dead nor written was a redelivered seq
            key = id(item.raw)
            outcome.verdicts.setdefault(key, ("stored", "") if key in done else ("duplicate", ""))
        return outcome

    def _claim(
        self, conn: Connection, data: Sequence[_Data], *, now: dt.datetime
    ) -> tuple[list[_Data], list[_Dead], int]:
        """Insert ``(device, seq)`` of each message; only the ones that were new are stored.

        Returns:
            The messages to store, dead letters for a seq reused by another kind, and how
            many were duplicates.
        """
        first: dict[tuple[int, int], _Data] = {}
        dead: list[_Dead] = []
        duplicates = 0
        for item in data:
            seen = first.get(item.key)
            if seen is None:
                first[item.key] = item
            elif seen.kind != item.kind:
                dead.append(_Dead(item.raw, _seq_reused(item, seen.kind)))
            else:
                duplicates += 1
        if not first:
            return [], dead, duplicates
        rows = [
            {"device_id": d.device.id, "seq": d.message.seq, "kind": d.kind, "received_at": now}
            for d in first.values()
        ]
        claimed = {(int(a), int(b)) for a, b in _insert_new_keys(conn, rows)}
        taken = [key for key in first if key not in claimed]
        if taken:
            kinds = {
                (int(a), int(b)): kind
                for a, b, kind in conn.execute(
                    select(_INGESTED.c.device_id, _INGESTED.c.seq, _INGESTED.c.kind).where(
                        tuple_(_INGESTED.c.device_id, _INGESTED.c.seq).in_(taken)
                    )
                )
            }
            for key in taken:
                item = first[key]
                if kinds.get(key, item.kind) != item.kind:
                    dead.append(_Dead(item.raw, _seq_reused(item, kinds[key])))
                else:
                    duplicates += 1
        return [d for key, d in first.items() if key in claimed], dead, duplicates

    def _write_data(
        self, conn: Connection, fresh: Sequence[_Data], *, now: dt.datetime, outcome: _Outcome
    ) -> None:
        measurements: list[tuple[Any, ...]] = []
        eis: list[dict[str, Any]] = []
        for item in fresh:
            message = item.message
            if isinstance(message, TelemetryMessage):
                absent = [None] * len(item.cell_ids)
                columns = [getattr(message, q) or absent for q in TELEMETRY_QUANTITIES]
                device, ts = repeat(item.device.id), repeat(message.ts)
                measurements.extend(zip(item.cell_ids, device, ts, repeat(now), *columns))
            else:
                for record, cell_id in zip(message.records, item.cell_ids, strict=True):
                    row = record.model_dump(exclude={"cell_id"}, by_alias=False)
                    eis.append(
                        row | {"cell_id": cell_id, "measured_at": message.ts, "added_at": now}
                    )
            outcome.lag_s = (now - message.ts).total_seconds()
        if measurements:
            self._insert_measurements(conn, measurements)
        if eis:
            conn.execute(insert(_EIS), eis)
        outcome.stored += len(fresh)
        outcome.measurement_rows += len(measurements)
        outcome.eis_rows += len(eis)

    def _insert_measurements(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        if conn.dialect.name == "postgresql" and self._config.use_copy:
            # COPY on the transaction's own psycopg connection: commits with the seq claims
            # binary COPY with the types given: ~5x faster than text COPY here
            driver = conn.connection.driver_connection
            columns = ", ".join(_MEASUREMENT_COLUMNS)
            with (
                driver.cursor() as cursor,  # type: ignore[union-attr]
                cursor.copy(
                    f"COPY {_MEASUREMENTS.name} ({columns}) FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                copy.set_types(_COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
            return
        conn.execute(
            insert(_MEASUREMENTS), [dict(zip(_MEASUREMENT_COLUMNS, r, strict=True)) for r in rows]
        )

    def _write_others(
        self,
        conn: Connection,
        others: Sequence[_Other],
        fresh: Iterable[_Data],
        *,
        now: dt.datetime,
        outcome: _Outcome,
    ) -> list[_Dead]:
        """Acks, presence and last_seen; returns dead letters for acks of unknown commands."""
        dead: list[_Dead] = []
        last_seen: dict[int, dt.datetime] = {}
        online: dict[int, bool] = {}
        events: list[dict[str, Any]] = []
        for data in fresh:
            last_seen[data.device.id] = data.raw.received_at
        for item in others:
            message, device = item.message, item.device
            if not item.raw.retain:  # a retained message is old news, not a sign of life
                last_seen[device.id] = item.raw.received_at
            if isinstance(message, StatusMessage):
                online[device.id] = message.online
                outcome.status_updates += 1
            elif isinstance(message, EventMessage):
                level = logging.WARNING if message.severity == "alarm" else logging.INFO
                _log.log(level, "event from %s: %s %s", device.name, message.kind, message.detail)
                events.append(
                    {
                        "device_id": device.id,
                        "battery_id": device.battery_id,
                        "occurred_at": message.ts,
                        "received_at": item.raw.received_at,
                        "kind": message.kind,
                        "severity": message.severity,
                        "detail": message.detail,
                        "cell_ids": message.cell_ids,
                    }
                )
                outcome.events += 1
            else:
                result = conn.execute(
                    update(_COMMANDS)
                    .where(
                        _COMMANDS.c.id == message.command_id,
                        _COMMANDS.c.device_id == device.id,
                        _COMMANDS.c.status.in_(("pending", "sent")),
                    )
                    .values(
                        status="acked" if message.status == "ok" else "failed",
                        acked_at=now,
                        ack_detail=message.detail,
                    )
                )
                if result.rowcount:
                    outcome.acks += 1
                    continue
                known = conn.execute(
                    select(_COMMANDS.c.id).where(
                        _COMMANDS.c.id == message.command_id, _COMMANDS.c.device_id == device.id
                    )
                ).first()
                if known is None:
                    dead.append(
                        _Dead(
                            item.raw,
                            f"ack for command {message.command_id}, which is not a command of "
                            f"device {device.name!r}",
                        )
                    )
                else:
                    outcome.duplicates += 1  # the command was already acknowledged
                    outcome.verdicts[id(item.raw)] = ("duplicate", "")
        if events:
            conn.execute(insert(_EVENTS), events)
        if online:
            conn.execute(
                update(_DEVICES)
                .where(_DEVICES.c.id == bindparam("b_id"))
                .values(online=bindparam("b_online")),
                # In id order: two workers updating the same devices in different orders
                # deadlock each other (seen after reconnect bursts).
                [{"b_id": k, "b_online": v} for k, v in sorted(online.items())],
            )
        if last_seen and self._config.last_seen_every_s > 0:
            mono, every_s, written = (
                time.monotonic(),
                self._config.last_seen_every_s,
                self._seen_written,
            )
            last_seen = {
                k: v for k, v in last_seen.items() if mono - written.get(k, -math.inf) >= every_s
            }
            written.update(dict.fromkeys(last_seen, mono))
        if last_seen:
            conn.execute(
                update(_DEVICES)
                .where(_DEVICES.c.id == bindparam("b_id"))
                .values(last_seen=bindparam("b_seen")),
                [{"b_id": k, "b_seen": v} for k, v in sorted(last_seen.items())],
            )
        return dead


def _insert_new_keys(conn: Connection, rows: Sequence[dict[str, Any]]) -> Iterable[Any]:
    """Insert message keys, skipping known ones; the ``(device_id, seq)`` that were new."""
    if conn.dialect.name == "postgresql":
        # one statement with array parameters: a multi-row VALUES of thousands of
        # placeholders spent more time in query building than in the database
        return conn.execute(
            text(
                f"INSERT INTO {_INGESTED.name} (device_id, seq, kind, received_at) "
                "SELECT d, s, k, :received_at FROM unnest("
                "CAST(:devices AS integer[]), CAST(:seqs AS bigint[]), CAST(:kinds AS text[])"
                ") AS t(d, s, k) ON CONFLICT DO NOTHING RETURNING device_id, seq"
            ),
            {
                "devices": [r["device_id"] for r in rows],
                "seqs": [r["seq"] for r in rows],
                "kinds": [r["kind"] for r in rows],
                "received_at": rows[0]["received_at"],
            },
        )
    statement = (
        sqlite.insert(_INGESTED)
        .on_conflict_do_nothing()
        .returning(_INGESTED.c.device_id, _INGESTED.c.seq)
    )
    # executemany with RETURNING: SQLAlchemy batches it into multi-row INSERTs
    return conn.execute(statement, rows)


def _seq_reused(item: _Data, other_kind: str) -> str:
    return (
        f"seq {item.message.seq} of device {item.device.name!r} was already used by a "
        f"{other_kind} message (one seq counter per device covers telemetry and eis)"
    )


async def _next_message(client: aiomqtt.Client, *, timeout_s: float) -> aiomqtt.Message | None:
    """The next received message, or None after ``timeout_s``.

    Reads aiomqtt's message queue directly: ``anext(client.messages)`` loses the message
    it was handed when the waiting is cancelled, an ``asyncio.Queue.get`` does not.

    Raises:
        aiomqtt.MqttError: If the connection drops while waiting.
    """
    queue = _queue(client)
    if not queue.empty():
        return queue.get_nowait()
    disconnected: asyncio.Future[None] = client._disconnected
    get = asyncio.ensure_future(queue.get())
    try:
        waiting: set[asyncio.Future[Any]] = {get, disconnected}
        await asyncio.wait(waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not get.done():
            get.cancel()  # the message, if one came, stays in the queue
    if get.done() and not get.cancelled():
        return get.result()
    if disconnected.done():
        raise aiomqtt.MqttError("disconnected while waiting for messages")
    return None


def _take_waiting(client: aiomqtt.Client, most: int) -> list[aiomqtt.Message]:
    """Up to ``most`` messages that have already arrived, without waiting."""
    queue = _queue(client)
    return [queue.get_nowait() for _ in range(min(most, queue.qsize()))]


def _queue(client: aiomqtt.Client) -> asyncio.Queue[aiomqtt.Message]:
    return client._queue


def _refused(code: int | ReasonCode) -> bool:
    return code.is_failure if isinstance(code, ReasonCode) else code >= 0x80


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


def _paho(client: aiomqtt.Client) -> paho.Client:
    """The paho client under aiomqtt (aiomqtt 2 has no manual-acknowledgement API)."""
    return client._client
