"""Blocking-socket MQTT 3.1.1 client on the same codec, for Locust users.

Locust runs its users as gevent greenlets; with gevent's monkey patching the plain
``socket`` calls here yield to other greenlets instead of blocking the process, so thousands
of users share one process. This module does not import gevent: without it, it is simply a
small synchronous client (one connection per thread).

Example::

    with BlockingConnection.connect("127.0.0.1", 1883, client_id="bms-7",
                                    username="bms-7", password=pw) as conn:
        conn.publish("batterytwin/v1/devices/bms-7/telemetry", payload)
        acked = conn.wait_acks(timeout_s=5.0)
"""

from __future__ import annotations

import socket
import time
from types import TracebackType
from typing import Self

from virtual_bms.fleet.mqtt_codec import (
    MAX_PACKET_ID,
    Connack,
    MqttConnectError,
    MqttProtocolError,
    Packet,
    PacketReader,
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

__all__ = ["BlockingConnection", "MqttConnectError"]

_RECV_BYTES = 65_536  # one read takes every PUBACK that has arrived (4 bytes each)
_SEND_TIMEOUT_S = 30.0  # a broker that takes nothing for this long is as good as gone


class BlockingConnection:
    """One MQTT connection over a blocking socket; open it with :meth:`connect`.

    Publishing does not wait: :meth:`publish` writes the packet and returns its packet id;
    :meth:`wait_acks` or :meth:`poll` read what the broker sent back. A QoS 1 message from
    the broker (a command) is acknowledged as soon as it is read and handed out by the next
    :meth:`poll`.

    Attributes:
        client_id: The MQTT client identifier.
        keepalive_s: The keepalive announced in CONNECT; call :meth:`ping` when idle for
            about half of it.
        session_present: The broker still had a session for ``client_id``.
        last_send_s: ``time.monotonic()`` of the last packet sent.
    """

    def __init__(self, sock: socket.socket, *, client_id: str, keepalive_s: int) -> None:
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self.session_present = False
        self.last_send_s = 0.0
        self._sock: socket.socket | None = sock
        self._reader = PacketReader()
        self._inflight: set[int] = set()
        self._next_id = 1
        self._held: list[Packet] = []  # read while waiting for something else
        self._timeout_s: float | None = sock.gettimeout()

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 60,
        clean_session: bool = False,
        will: Will | None = None,
        timeout_s: float = 10.0,
    ) -> BlockingConnection:
        """Open a TCP connection, send CONNECT and wait for an accepted CONNACK.

        Raises:
            MqttConnectError: The broker refused (e.g. 5, "not authorized").
            TimeoutError: No CONNACK within ``timeout_s``.
            OSError: The TCP connection failed.
            ValueError: For invalid arguments.
        """
        data = connect_packet(
            client_id=client_id,
            username=username,
            password=password,
            keepalive_s=keepalive_s,
            clean_session=clean_session,
            will=will,
        )
        sock = socket.create_connection((host, port), timeout=timeout_s)
        connection = cls(sock, client_id=client_id, keepalive_s=keepalive_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle delay
            connection._send(data)
            deadline = time.monotonic() + timeout_s
            while True:
                packets = connection._read(deadline - time.monotonic())
                if packets:
                    break
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"MQTT client {client_id!r}: no CONNACK from {host}:{port} within "
                        f"{timeout_s} s"
                    )
            first = packets[0]
            if type(first) is not Connack:
                raise MqttProtocolError(f"expected CONNACK first, got {first!r}")
            if first.return_code != 0:
                raise MqttConnectError(first.return_code, client_id=client_id)
            connection.session_present = first.session_present
            connection._held += packets[1:]
        except BaseException:
            connection._drop()
            raise
        return connection

    @property
    def connected(self) -> bool:
        """True until :meth:`close` or a lost connection."""
        return self._sock is not None

    @property
    def inflight(self) -> frozenset[int]:
        """Packet ids of QoS 1 publishes not acknowledged yet."""
        return frozenset(self._inflight)

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> int | None:
        """Send a message without waiting for its acknowledgement.

        Returns:
            The packet id to look for in :meth:`wait_acks` (QoS 1), or ``None`` (QoS 0).

        Raises:
            ConnectionError: If the connection is closed or breaks while sending.
            ValueError: For a QoS other than 0 or 1, or an invalid topic.
            RuntimeError: If all 65,535 packet ids wait for acknowledgements.
        """
        if qos == 0:
            self._send(
                publish_packet(topic=topic, payload=payload, qos=0, packet_id=None, retain=retain)
            )
            return None
        if qos != 1:
            raise ValueError(f"qos must be 0 or 1 (this client does not do QoS 2), got {qos!r}")
        packet_id = self._allocate_id()
        self._send(
            publish_packet(topic=topic, payload=payload, qos=1, packet_id=packet_id, retain=retain)
        )
        self._inflight.add(packet_id)
        return packet_id

    def wait_acks(self, timeout_s: float) -> set[int]:
        """Read until every publish in flight is acknowledged, or ``timeout_s`` has passed.

        Returns:
            The packet ids acknowledged since the last call (those still missing stay in
            :attr:`inflight`). Other packets read meanwhile wait for :meth:`poll`.

        Raises:
            ConnectionError: If the connection is closed or breaks.
        """
        acked = {packet.packet_id for packet in self._held if type(packet) is Puback}
        if acked:  # read earlier, while subscribe() waited for its SUBACK
            self._held = [packet for packet in self._held if type(packet) is not Puback]
        deadline = time.monotonic() + timeout_s
        while self._inflight:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                break
            for packet in self._read(remaining_s):
                if type(packet) is Puback:
                    acked.add(packet.packet_id)
                else:
                    self._held.append(packet)
        return acked

    def poll(self, timeout_s: float) -> list[Packet]:
        """What has arrived: waits up to ``timeout_s`` for the first bytes, then returns.

        Every packet is returned (PUBACKs too, which also leave :attr:`inflight`); a QoS 1
        PUBLISH from the broker has been acknowledged already.

        Raises:
            ConnectionError: If the connection is closed or breaks.
        """
        packets, self._held = self._held, []
        if packets:
            timeout_s = 0.0
        packets += self._read(timeout_s)
        return packets

    def subscribe(self, topics: list[tuple[str, int]], *, timeout_s: float = 10.0) -> list[int]:
        """Subscribe to ``(filter, qos)`` pairs and wait for SUBACK.

        Returns:
            The granted QoS per filter; ``0x80`` where the broker refused it.

        Raises:
            TimeoutError: No SUBACK within ``timeout_s``.
            ConnectionError: If the connection is closed or breaks.
            ValueError: For an invalid filter or a QoS other than 0 or 1.
        """
        for topic_filter, qos in topics:
            if qos not in (0, 1):
                raise ValueError(f"subscribe with qos 0 or 1, got {qos!r} for {topic_filter!r}")
        packet_id = self._allocate_id()
        self._send(subscribe_packet(packet_id=packet_id, topics=topics))
        deadline = time.monotonic() + timeout_s
        granted: list[int] | None = None
        while granted is None:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise TimeoutError(
                    f"MQTT client {self.client_id!r}: no SUBACK within {timeout_s} s"
                )
            for packet in self._read(remaining_s):
                if type(packet) is Suback and packet.packet_id == packet_id:
                    granted = list(packet.granted_qos)
                else:
                    self._held.append(packet)
        return granted

    def ping(self) -> None:
        """Send PINGREQ; the PINGRESP shows up in :meth:`poll`."""
        self._send(pingreq_packet())

    def close(self) -> None:
        """Send DISCONNECT (so the broker discards the will) and close the socket. Idempotent."""
        sock = self._sock
        if sock is None:
            return
        try:
            self._set_timeout(sock, 1.0)
            sock.sendall(disconnect_packet())
        except OSError:
            pass  # the broker is gone already: closing is all that is left
        finally:
            self._drop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _allocate_id(self) -> int:
        inflight = self._inflight
        if len(inflight) >= MAX_PACKET_ID:
            raise RuntimeError(
                f"MQTT client {self.client_id!r} has {MAX_PACKET_ID} publishes waiting for "
                f"acknowledgements: call wait_acks first"
            )
        packet_id = self._next_id
        while packet_id in inflight:
            packet_id = next_packet_id(packet_id)
        self._next_id = next_packet_id(packet_id)
        return packet_id

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionError(f"MQTT client {self.client_id!r} is not connected")
        return self._sock

    def _send(self, data: bytes) -> None:
        sock = self._socket()
        try:
            self._set_timeout(sock, _SEND_TIMEOUT_S)
            sock.sendall(data)
        except OSError as error:
            self._drop()
            raise ConnectionError(
                f"MQTT client {self.client_id!r} lost its connection: {error!r}"
            ) from error
        self.last_send_s = time.monotonic()

    def _read(self, timeout_s: float) -> list[Packet]:
        """One read (waiting up to ``timeout_s``), decoded; PUBACKs leave the in-flight set."""
        sock = self._socket()
        try:
            self._set_timeout(sock, max(timeout_s, 0.0))
            data = sock.recv(_RECV_BYTES)
        except TimeoutError:
            return []
        except BlockingIOError:  # timeout 0 and nothing there
            return []
        except OSError as error:
            self._drop()
            raise ConnectionError(
                f"MQTT client {self.client_id!r} lost its connection: {error!r}"
            ) from error
        if not data:
            self._drop()
            raise ConnectionError(f"MQTT client {self.client_id!r}: the broker closed the link")
        try:
            packets = self._reader.feed(data)
        except MqttProtocolError:
            self._drop()
            raise
        self._take(packets)
        return packets

    def _take(self, packets: list[Packet]) -> None:
        """Bookkeeping for what was read: settle PUBACKs, acknowledge QoS 1 messages."""
        for packet in packets:
            if type(packet) is Puback:
                self._inflight.discard(packet.packet_id)
            elif type(packet) is Publish and packet.qos == 1 and packet.packet_id is not None:
                self._send(puback_packet(packet.packet_id))

    def _set_timeout(self, sock: socket.socket, timeout_s: float) -> None:
        # settimeout costs system calls; sends repeat the same value many times over
        if timeout_s != self._timeout_s:
            sock.settimeout(timeout_s)
            self._timeout_s = timeout_s

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
