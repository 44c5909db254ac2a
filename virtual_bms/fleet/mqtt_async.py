"""Lean asyncio MQTT 3.1.1 client: one ``asyncio.Protocol`` per connection, no task per connection.

Made for fleet load tests, where one process holds 10,000 connections (one per virtual BMS,
each with its own credentials). A connection in steady state is a protocol object, a socket
and a dict of unacknowledged publishes: reading happens in the event loop's callbacks,
keepalive pings come from one :class:`KeepaliveScheduler` for all connections, and nothing
else runs per connection. Works with the default loop and with uvloop.

Example::

    conn = await connect("127.0.0.1", 1883, client_id="bms-7", username="bms-7", password=pw)
    keepalive.add(conn)
    await conn.publish("batterytwin/v1/devices/bms-7/telemetry", payload)  # PUBACK came
    conn.close()

Delivery: :meth:`LiteConnection.publish` returns a future that resolves on PUBACK. When the
connection is lost, every unacknowledged publish fails with :class:`ConnectionError`; the
caller keeps its messages (store and forward) and sends them again after reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, cast

from virtual_bms.fleet.mqtt_codec import (
    MAX_PACKET_ID,
    Connack,
    MqttConnectError,
    MqttProtocolError,
    PacketReader,
    Pingresp,
    Puback,
    Publish,
    Suback,
    Will,
    connect_packet,
    disconnect_packet,
    next_packet_id,
    pingreq_packet,
    puback_packet,
    publish_packet,
    subscribe_packet,
)

__all__ = ["KeepaliveScheduler", "LiteConnection", "MqttConnectError", "connect"]

_log = logging.getLogger(__name__)
_now_s = time.monotonic
_PINGREQ = pingreq_packet()
_DISCONNECT = disconnect_packet()

MessageHandler = Callable[[str, bytes], None]
LossHandler = Callable[[Exception | None], None]


class LiteConnection(asyncio.Protocol):
    """One MQTT connection; made by :func:`connect`, not directly.

    It is its own ``asyncio.Protocol`` (the loop calls ``connection_made``,
    ``data_received`` and ``connection_lost``; those are not for callers).

    Attributes:
        client_id: The MQTT client identifier.
        keepalive_s: The keepalive announced in CONNECT (0: off).
        connected: True from the accepted CONNACK until the connection is closed or lost.
        session_present: The broker still had a session for ``client_id`` (only with
            ``clean_session=False``).
    """

    __slots__ = (
        "_closed",
        "_connack",
        "_connect_bytes",
        "_error",
        "_last_out_s",
        "_loop",
        "_next_id",
        "_on_connection_lost",
        "_on_message",
        "_ping_sent_s",
        "_publishes",
        "_reader",
        "_subscribes",
        "_transport",
        "client_id",
        "connected",
        "keepalive_s",
        "session_present",
    )

    def __init__(
        self,
        *,
        client_id: str,
        keepalive_s: int,
        connect_bytes: bytes,
        on_message: MessageHandler | None,
        on_connection_lost: LossHandler | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self.connected = False
        self.session_present = False
        self._connect_bytes = connect_bytes
        self._on_message = on_message
        self._on_connection_lost = on_connection_lost
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._reader = PacketReader()
        self._publishes: dict[int, asyncio.Future[None]] = {}
        self._subscribes: dict[int, asyncio.Future[list[int]]] = {}
        self._next_id = 1
        self._connack: asyncio.Future[None] = loop.create_future()
        self._closed: asyncio.Future[None] = loop.create_future()
        self._error: Exception | None = None  # why we dropped the connection ourselves
        self._last_out_s = 0.0  # time.monotonic() of the last packet written
        self._ping_sent_s: float | None = None  # an unanswered PINGREQ went out then

    # -- for callers -------------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        """QoS 1 publishes written but not yet acknowledged."""
        return len(self._publishes)

    @property
    def last_out_s(self) -> float:
        """``time.monotonic()`` when the last packet went out (what keepalive looks at)."""
        return self._last_out_s

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None] | None:
        """Send a message; with QoS 1 the future resolves when the broker acknowledges it.

        Does not wait: the packet is handed to the transport at once. Bound the number of
        unacknowledged messages yourself (:attr:`inflight`), as the broker queues at most
        its ``max_inflight_messages`` and the rest waits in socket buffers.

        Returns:
            For QoS 1 a future that resolves on PUBACK or fails with ``ConnectionError``
            when the connection closes first; ``None`` for QoS 0.

        Raises:
            ConnectionError: If the connection is not open.
            ValueError: For a QoS other than 0 or 1, or an invalid topic.
            RuntimeError: If all 65,535 packet ids are waiting for acknowledgements.
        """
        transport = self._transport
        if transport is None or not self.connected:
            raise ConnectionError(f"MQTT client {self.client_id!r} is not connected")
        if qos == 1:
            packet_id = self._allocate_id()
            future: asyncio.Future[None] = self._loop.create_future()
            data = publish_packet(
                topic=topic, payload=payload, qos=1, packet_id=packet_id, retain=retain
            )
            self._publishes[packet_id] = future
            transport.write(data)
            self._last_out_s = _now_s()
            return future
        if qos == 0:
            transport.write(
                publish_packet(topic=topic, payload=payload, qos=0, packet_id=None, retain=retain)
            )
            self._last_out_s = _now_s()
            return None
        raise ValueError(f"qos must be 0 or 1 (this client does not do QoS 2), got {qos!r}")

    async def subscribe(self, topics: list[tuple[str, int]]) -> list[int]:
        """Subscribe to ``(filter, qos)`` pairs and wait for SUBACK.

        Returns:
            The granted QoS per filter, in order; ``0x80`` where the broker refused it.
            (Mosquitto 2.0 grants a filter its ACL forbids and then delivers nothing.)

        Raises:
            ConnectionError: If the connection is not open or closes before SUBACK.
            ValueError: For an invalid filter or a QoS other than 0 or 1.
        """
        transport = self._transport
        if transport is None or not self.connected:
            raise ConnectionError(f"MQTT client {self.client_id!r} is not connected")
        for topic_filter, qos in topics:
            if qos not in (0, 1):
                raise ValueError(
                    f"subscribe with qos 0 or 1 (this client does not do QoS 2), got {qos!r} "
                    f"for {topic_filter!r}"
                )
        packet_id = self._allocate_id()
        data = subscribe_packet(packet_id=packet_id, topics=topics)
        future: asyncio.Future[list[int]] = self._loop.create_future()
        self._subscribes[packet_id] = future
        transport.write(data)
        self._last_out_s = _now_s()
        return await future

    def ping(self) -> None:
        """Send PINGREQ (the :class:`KeepaliveScheduler` does this when the link is idle)."""
        transport = self._transport
        if transport is None or not self.connected:
            return
        transport.write(_PINGREQ)
        now_s = _now_s()
        self._last_out_s = now_s
        if self._ping_sent_s is None:
            self._ping_sent_s = now_s

    def close(self) -> None:
        """Send DISCONNECT and close; unacknowledged publishes fail with ``ConnectionError``.

        A clean DISCONNECT makes the broker discard the will. Idempotent.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self.connected:
            transport.write(_DISCONNECT)
        self.connected = False
        self._fail_pending(f"MQTT client {self.client_id!r} closed the connection")
        transport.close()

    def abort(self) -> None:
        """Drop the connection at once without DISCONNECT, as a crash or a cut cable would.

        The broker publishes the will. Unacknowledged publishes fail with
        ``ConnectionError`` and ``on_connection_lost`` gets a ``ConnectionAbortedError``.
        Idempotent.
        """
        self._abort(ConnectionAbortedError(f"MQTT client {self.client_id!r} aborted"))

    async def wait_closed(self) -> None:
        """Return once the socket is closed (after :meth:`close` or a loss)."""
        await asyncio.shield(self._closed)

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Loop callback: send CONNECT."""
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._connect_bytes)
        self._last_out_s = _now_s()

    def data_received(self, data: bytes) -> None:
        """Loop callback: decode and dispatch what the broker sent."""
        try:
            packets = self._reader.feed(data)
        except MqttProtocolError as error:
            self._abort(error)
            return
        for packet in packets:
            if type(packet) is Puback:
                future = self._publishes.pop(packet.packet_id, None)
                if future is not None and not future.done():
                    future.set_result(None)
            elif not self._connack.done():
                self._on_connack(packet)
                if self._transport is None or self._transport.is_closing():
                    return
            elif type(packet) is Publish:
                if not self._deliver(packet):
                    return
            elif type(packet) is Pingresp:
                self._ping_sent_s = None
            elif type(packet) is Suback:
                waiter = self._subscribes.pop(packet.packet_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(list(packet.granted_qos))
            else:  # a second CONNACK
                self._abort(MqttProtocolError(f"unexpected {packet!r} on an open connection"))
                return

    def connection_lost(self, exc: Exception | None) -> None:
        """Loop callback: fail what waits, then tell ``on_connection_lost``."""
        connack = self._connack
        was_open = connack.done() and not connack.cancelled() and connack.exception() is None
        self._transport = None
        self.connected = False
        error = self._error or exc
        if not connack.done():
            lost = ConnectionError(f"MQTT client {self.client_id!r}: closed before CONNACK")
            lost.__cause__ = error
            connack.set_exception(lost)
        self._fail_pending(
            f"MQTT client {self.client_id!r} lost its connection"
            + (f": {error!r}" if error is not None else "")
        )
        if not self._closed.done():
            self._closed.set_result(None)
        if was_open and self._on_connection_lost is not None:
            self._on_connection_lost(error)

    # -- internals -----------------------------------------------------------------------------

    def _allocate_id(self) -> int:
        """The next packet id that is not waiting for an acknowledgement."""
        publishes, subscribes = self._publishes, self._subscribes
        if len(publishes) + len(subscribes) >= MAX_PACKET_ID:
            raise RuntimeError(
                f"MQTT client {self.client_id!r} has {MAX_PACKET_ID} packets waiting for "
                f"acknowledgements: await some before publishing more"
            )
        packet_id = self._next_id
        while packet_id in publishes or packet_id in subscribes:
            packet_id = next_packet_id(packet_id)
        self._next_id = next_packet_id(packet_id)
        return packet_id

    def _on_connack(self, packet: object) -> None:
        if type(packet) is not Connack:
            self._abort(MqttProtocolError(f"expected CONNACK first, got {packet!r}"))
            return
        if packet.return_code != 0:
            error = MqttConnectError(packet.return_code, client_id=self.client_id)
            self._error = error
            self._connack.set_exception(error)
            assert self._transport is not None
            self._transport.close()
            return
        self.connected = True
        self.session_present = packet.session_present
        if not self._connack.done():
            self._connack.set_result(None)

    def _deliver(self, packet: Publish) -> bool:
        """Hand a message to ``on_message``, then PUBACK it; False if that failed.

        A handler that raises leaves the message unacknowledged and drops the connection,
        so that the broker delivers it again (with ``clean_session=False``).
        """
        if self._on_message is not None:
            try:
                self._on_message(packet.topic, packet.payload)
            except Exception as error:
                _log.exception("on_message of %r failed on %r", self.client_id, packet.topic)
                self._abort(error)
                return False
        transport = self._transport  # on_message may have closed the connection
        if packet.qos == 1 and packet.packet_id is not None and self.connected and transport:
            transport.write(puback_packet(packet.packet_id))
            self._last_out_s = _now_s()
        return True

    def _abort(self, error: Exception) -> None:
        """Drop the connection at once, reporting ``error`` as the cause of the loss."""
        if self._error is None:
            self._error = error
        self.connected = False  # no more writes: the transport drops its buffer
        transport = self._transport
        if transport is not None:
            transport.abort()

    def _fail_pending(self, message: str) -> None:
        publishes, self._publishes = self._publishes, {}
        subscribes, self._subscribes = self._subscribes, {}
        waiting: list[asyncio.Future[Any]] = [*publishes.values(), *subscribes.values()]
        for future in waiting:
            if not future.done():
                future.set_exception(ConnectionError(message))
                # the loss is reported once through on_connection_lost; a publisher that
                # dropped its futures should not get thousands of "never retrieved" logs
                future.exception()

    def _keepalive_due(self, now_s: float) -> bool:
        """Ping if idle for keepalive/2; drop the link if a ping went unanswered.

        Returns:
            True if a PINGREQ went out.
        """
        if not self.connected or self.keepalive_s <= 0:
            return False
        if self._ping_sent_s is not None and now_s - self._ping_sent_s > self.keepalive_s:
            self._abort(
                TimeoutError(
                    f"MQTT client {self.client_id!r}: no PINGRESP within {self.keepalive_s} s"
                )
            )
            return False
        if now_s - self._last_out_s >= self.keepalive_s / 2:
            self.ping()
            return True
        return False


async def connect(
    host: str,
    port: int,
    *,
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    keepalive_s: int = 60,
    clean_session: bool = False,
    will: Will | None = None,
    connect_timeout_s: float = 10.0,
    on_message: MessageHandler | None = None,
    on_connection_lost: LossHandler | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> LiteConnection:
    """Open a TCP connection, send CONNECT and wait for an accepted CONNACK.

    Args:
        client_id: Unique per connection; with ``clean_session=False`` the broker keeps
            the session (subscriptions, unacknowledged messages) under this id.
        keepalive_s: Announced to the broker; register the connection with a
            :class:`KeepaliveScheduler` so that idle connections send pings.
        will: Published by the broker if the connection is lost without DISCONNECT.
        on_message: Called in the event loop with ``(topic, payload)`` of each message
            the broker delivers; a QoS 1 message is acknowledged after it returns. If it
            raises, the connection is dropped and the message stays unacknowledged.
        on_connection_lost: Called once when an established connection ends, with the
            error (``None`` after :meth:`LiteConnection.close`).

    Raises:
        MqttConnectError: The broker refused (e.g. 4, "bad user name or password").
        TimeoutError: No accepted CONNACK within ``connect_timeout_s``.
        OSError: The TCP connection failed (e.g. ``ConnectionRefusedError``).
        ValueError: For invalid arguments (see :func:`~.mqtt_codec.connect_packet`).
    """
    loop = loop or asyncio.get_running_loop()
    connection = LiteConnection(
        client_id=client_id,
        keepalive_s=keepalive_s,
        connect_bytes=connect_packet(
            client_id=client_id,
            username=username,
            password=password,
            keepalive_s=keepalive_s,
            clean_session=clean_session,
            will=will,
        ),
        on_message=on_message,
        on_connection_lost=on_connection_lost,
        loop=loop,
    )
    try:
        async with asyncio.timeout(connect_timeout_s):
            await loop.create_connection(lambda: connection, host, port)
            await connection._connack
    except TimeoutError:
        what = "no CONNACK from" if connection._transport is not None else "no TCP connection to"
        await _discard(connection)
        raise TimeoutError(
            f"MQTT client {client_id!r}: {what} {host}:{port} within {connect_timeout_s} s"
        ) from None
    except asyncio.CancelledError:
        connection._abort(ConnectionError("connect cancelled"))
        raise
    except BaseException:
        await _discard(connection)
        raise
    return connection


async def _discard(connection: LiteConnection) -> None:
    """Close a connection that never opened, so no socket is left for the GC to warn about."""
    transport = connection._transport
    if transport is None:
        return
    transport.abort()
    with contextlib.suppress(Exception):
        await connection.wait_closed()


class KeepaliveScheduler:
    """One task that keeps any number of connections alive with PINGREQs.

    Every tick it pings each registered connection whose last outbound packet is at least
    keepalive/2 old, and drops a connection whose ping stayed unanswered for a whole
    keepalive. A per-connection timer would be 10,000 timer handles re-armed on every
    publish; one sweep a second over a dict costs a few milliseconds.

    Connections that are closed or lost are forgotten on the next tick.

    Args:
        tick_s: Longest time between sweeps; shortened to a quarter of the smallest
            registered keepalive, so a ping always goes out before the broker's deadline
            (1.5 x keepalive).

    Attributes:
        pings_sent: PINGREQs sent so far, for load-test statistics.
    """

    def __init__(self, *, tick_s: float = 1.0) -> None:
        if tick_s <= 0:
            raise ValueError(f"tick_s must be > 0, got {tick_s}")
        self._tick_s = tick_s
        self._connections: dict[LiteConnection, None] = {}
        self._task: asyncio.Task[None] | None = None
        self.pings_sent = 0

    def __len__(self) -> int:
        return len(self._connections)

    def add(self, connection: LiteConnection) -> None:
        """Keep ``connection`` alive from now on."""
        self._connections[connection] = None
        if connection.keepalive_s > 0:
            self._tick_s = min(self._tick_s, connection.keepalive_s / 4)

    def discard(self, connection: LiteConnection) -> None:
        """Stop pinging ``connection`` (no error if it was not registered)."""
        self._connections.pop(connection, None)

    def tick(self, *, now_s: float | None = None) -> int:
        """One sweep (the task calls this); returns how many pings went out."""
        now_s = _now_s() if now_s is None else now_s
        pings = 0
        gone: list[LiteConnection] = []
        for connection in list(self._connections):
            if not connection.connected:
                gone.append(connection)
            elif connection._keepalive_due(now_s):
                pings += 1
        for connection in gone:
            self._connections.pop(connection, None)
        self.pings_sent += pings
        return pings

    def start(self) -> None:
        """Start the sweeping task in the running loop."""
        if self._task is not None:
            raise RuntimeError("the keepalive scheduler is already running")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mqtt-keepalive")

    async def stop(self) -> None:
        """Stop the task (connections stay open)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            self.tick()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
