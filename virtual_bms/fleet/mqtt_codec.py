"""MQTT 3.1.1 client codec, without I/O: encoders for what a client sends, a reader for the rest.

A fleet load test holds thousands of connections in one process, so the codec is written for
the publish path: topics are encoded once and cached (:func:`encode_topic`), a PUBLISH is
one ``bytes.join`` of a header and the caller's payload, and :class:`PacketReader` copies a
payload out of its buffer with one slice instead of walking it byte by byte. The two
transports (:mod:`virtual_bms.fleet.mqtt_async`, :mod:`virtual_bms.fleet.mqtt_blocking`) share
it. The reference is the MQTT 3.1.1 OASIS standard; section numbers below are its own.

The client publishes and subscribes with QoS 0 or 1 and never unsubscribes, so the reader
refuses the QoS 2 handshake packets (PUBREC, PUBREL, PUBCOMP) and UNSUBACK as well as the
packets only a client sends.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CONNACK_REASONS",
    "MAX_PACKET_ID",
    "MAX_REMAINING_LENGTH",
    "Connack",
    "MqttConnectError",
    "MqttProtocolError",
    "Packet",
    "PacketReader",
    "Pingresp",
    "Puback",
    "Publish",
    "Suback",
    "Will",
    "connect_packet",
    "disconnect_packet",
    "encode_remaining_length",
    "encode_topic",
    "next_packet_id",
    "pingreq_packet",
    "puback_packet",
    "publish_packet",
    "subscribe_packet",
]

MAX_REMAINING_LENGTH: Final = 268_435_455  # bytes after the fixed header, 4 length bytes (2.2.3)
MAX_PACKET_ID: Final = 65_535  # packet identifiers are 1..65535 (2.3.1)
MAX_STRING_BYTES: Final = 65_535  # UTF-8 strings carry a 2-byte length (1.5.3)
SUBACK_FAILURE: Final = 0x80  # the return code of a refused subscription (3.9.3)

CONNACK_REASONS: Final[dict[int, str]] = {
    0: "connection accepted",
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
"""CONNACK return codes (3.2.2.3) and what they mean."""

_U16 = struct.Struct(">H")
_PUBACK = struct.Struct(">BBH")
_BYTE = tuple(bytes((i,)) for i in range(256))  # bytes((i,)) without building a tuple each time
_PROTOCOL = b"\x00\x04MQTT\x04"  # protocol name and level 4 = MQTT 3.1.1 (3.1.2.1, 3.1.2.2)
_PINGREQ = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"
_TOPIC_CACHE_SIZE = 65_536  # distinct topics kept encoded: 5 channels x 10,000 devices fit

# packet types (2.2.1)
_CONNECT, _CONNACK, _PUBLISH, _PUBREC, _PUBREL, _PUBCOMP = 1, 2, 3, 5, 6, 7
_SUBSCRIBE, _SUBACK, _UNSUBSCRIBE, _UNSUBACK = 8, 9, 10, 11
_PINGREQ_TYPE, _DISCONNECT_TYPE = 12, 14  # PINGRESP (13) is what _decode has left at the end
_CLIENT_ONLY = {
    _CONNECT: "CONNECT",
    _SUBSCRIBE: "SUBSCRIBE",
    _UNSUBSCRIBE: "UNSUBSCRIBE",
    _PINGREQ_TYPE: "PINGREQ",
    _DISCONNECT_TYPE: "DISCONNECT",
}
_NOT_USED = {_PUBREC: "PUBREC", _PUBREL: "PUBREL", _PUBCOMP: "PUBCOMP", _UNSUBACK: "UNSUBACK"}


class MqttProtocolError(ValueError):
    """Bytes from the broker that are not a well-formed MQTT 3.1.1 packet this client expects.

    The stream cannot be resynchronised after one: close the connection.
    """


class MqttConnectError(ConnectionError):
    """The broker refused the connection: CONNACK with a non-zero return code.

    Attributes:
        return_code: The CONNACK return code (4: bad user name or password, 5: not
            authorized, see :data:`CONNACK_REASONS`).
    """

    def __init__(self, return_code: int, *, client_id: str) -> None:
        reason = CONNACK_REASONS.get(return_code, "unknown return code")
        super().__init__(
            f"the broker refused client {client_id!r}: CONNACK {return_code} ({reason})"
            + (": check the user name and password" if return_code in (4, 5) else "")
        )
        self.return_code = return_code


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes for the client when it goes away without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Connack:
    """The broker's answer to CONNECT; ``return_code`` 0 means accepted."""

    session_present: bool
    return_code: int

    @property
    def reason(self) -> str:
        """What :attr:`return_code` means, e.g. ``"not authorized"``."""
        return CONNACK_REASONS.get(self.return_code, f"unknown return code {self.return_code}")


@dataclass(frozen=True, slots=True)
class Publish:
    """An application message from the broker; ``packet_id`` is ``None`` for QoS 0."""

    topic: str
    payload: bytes
    qos: int
    packet_id: int | None
    dup: bool = False
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Puback:
    """The broker took responsibility for the QoS 1 message ``packet_id``."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class Suback:
    """Granted QoS per requested filter, in order; ``0x80`` means refused."""

    packet_id: int
    granted_qos: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Pingresp:
    """The broker's answer to PINGREQ."""


Packet = Connack | Publish | Puback | Suback | Pingresp
"""Every packet :class:`PacketReader` yields."""

_PINGRESP_PACKET = Pingresp()


def encode_remaining_length(length: int) -> bytes:
    """The variable-length "remaining length" field (2.2.3): 7 bits a byte, 1 to 4 bytes.

    Raises:
        ValueError: If ``length`` is negative or above 268,435,455.
    """
    if 0 <= length < 128:
        return _BYTE[length]
    if 128 <= length < 16_384:
        return bytes((length & 0x7F | 0x80, length >> 7))
    if 16_384 <= length < 2_097_152:
        return bytes((length & 0x7F | 0x80, (length >> 7) & 0x7F | 0x80, length >> 14))
    if 2_097_152 <= length <= MAX_REMAINING_LENGTH:
        return bytes(
            (
                length & 0x7F | 0x80,
                (length >> 7) & 0x7F | 0x80,
                (length >> 14) & 0x7F | 0x80,
                length >> 21,
            )
        )
    raise ValueError(
        f"an MQTT packet holds 0 to {MAX_REMAINING_LENGTH} bytes after its fixed header, "
        f"got {length}: send a smaller payload"
    )


def _encode_string(text: str, *, what: str) -> bytes:
    """A UTF-8 string with its 2-byte length (1.5.3)."""
    data = text.encode()
    if len(data) > MAX_STRING_BYTES:
        raise ValueError(f"{what} is {len(data)} bytes of UTF-8; MQTT allows {MAX_STRING_BYTES}")
    if "\x00" in text:
        raise ValueError(f"{what} {text!r} contains U+0000, which MQTT forbids (1.5.3)")
    return _U16.pack(len(data)) + data


@functools.lru_cache(maxsize=_TOPIC_CACHE_SIZE)
def encode_topic(topic: str) -> bytes:
    """A topic name as it goes into a PUBLISH, cached: each device publishes to a few topics.

    Raises:
        ValueError: If ``topic`` is empty, holds a wildcard or U+0000, or is too long.
    """
    if not topic:
        raise ValueError("a topic name must not be empty (4.7.3)")
    if "+" in topic or "#" in topic:
        raise ValueError(
            f"topic {topic!r} holds a wildcard: '+' and '#' are for subscription filters only"
        )
    return _encode_string(topic, what="topic")


def _check_filter(topic_filter: str) -> None:
    if not topic_filter:
        raise ValueError("a topic filter must not be empty (4.7.3)")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(
                f"topic filter {topic_filter!r}: '#' must be a whole level and the last (4.7.1.2)"
            )
        if "+" in level and level != "+":
            raise ValueError(f"topic filter {topic_filter!r}: '+' must be a whole level (4.7.1.3)")


def _check_qos(qos: int, *, what: str) -> None:
    if qos not in (0, 1, 2):
        raise ValueError(f"{what} must be 0, 1 or 2, got {qos!r}")


def _check_packet_id(packet_id: int) -> None:
    if not 0 < packet_id <= MAX_PACKET_ID:
        raise ValueError(f"packet_id must be 1..{MAX_PACKET_ID}, got {packet_id}")


def next_packet_id(previous: int) -> int:
    """The packet identifier after ``previous``: 1, 2, ..., 65535, then 1 again."""
    return previous + 1 if previous < MAX_PACKET_ID else 1


def connect_packet(
    *,
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    keepalive_s: int = 60,
    clean_session: bool = True,
    will: Will | None = None,
) -> bytes:
    """CONNECT (3.1).

    Args:
        client_id: Unique per connection on the broker; empty only with ``clean_session``.
        username: Needed whenever ``password`` is given (3.1.2.9).
        keepalive_s: Longest silence the client promises (0 turns keepalive off); the broker
            drops the connection after 1.5 times this without a packet.
        clean_session: ``False`` keeps subscriptions and queued QoS 1 messages on the broker
            between connections.

    Raises:
        ValueError: For an invalid combination or value, with what to change.
    """
    if not 0 <= keepalive_s <= 65_535:
        raise ValueError(f"keepalive_s must be 0..65535 (0 = off), got {keepalive_s}")
    if not client_id and not clean_session:
        raise ValueError(
            "an empty client_id needs clean_session=True (3.1.3.1): give the client an id "
            "to keep its session"
        )
    if password is not None and username is None:
        raise ValueError("MQTT 3.1.1 sends a password only with a user name: give username too")
    flags = 0x02 if clean_session else 0
    payload = [_encode_string(client_id, what="client_id")]
    if will is not None:
        _check_qos(will.qos, what="will.qos")
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        if len(will.payload) > MAX_STRING_BYTES:
            raise ValueError(f"a will payload holds at most {MAX_STRING_BYTES} bytes")
        payload += [encode_topic(will.topic), _U16.pack(len(will.payload)), bytes(will.payload)]
    if username is not None:
        flags |= 0x80
        payload.append(_encode_string(username, what="username"))
    if password is not None:
        flags |= 0x40
        payload.append(_encode_string(password, what="password"))
    body = b"".join([_PROTOCOL, _BYTE[flags], _U16.pack(keepalive_s), *payload])
    return b"\x10" + encode_remaining_length(len(body)) + body


def publish_packet(
    *,
    topic: str,
    payload: bytes | bytearray,
    qos: int,
    packet_id: int | None,
    retain: bool = False,
    dup: bool = False,
) -> bytes:
    """PUBLISH (3.3): the hot path, one join over a cached topic and the payload.

    Args:
        packet_id: ``None`` for QoS 0, 1..65535 otherwise.
        dup: ``True`` when re-sending a QoS 1 or 2 message whose PUBACK never came.

    Raises:
        ValueError: For an invalid topic, QoS or packet id, or a too large payload.
    """
    topic_bytes = encode_topic(topic)
    if qos == 0:
        if packet_id is not None:
            raise ValueError("a QoS 0 PUBLISH has no packet_id: pass packet_id=None")
        if dup:
            raise ValueError("dup must be False for QoS 0 (3.3.1.1)")
        packet_id_bytes = b""
    elif qos == 1 or qos == 2:
        if packet_id is None or not 0 < packet_id <= MAX_PACKET_ID:
            raise ValueError(f"a QoS {qos} PUBLISH needs packet_id 1..65535, got {packet_id}")
        packet_id_bytes = _U16.pack(packet_id)
    else:
        raise ValueError(f"qos must be 0, 1 or 2, got {qos!r}")
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    length = len(topic_bytes) + len(packet_id_bytes) + len(payload)
    return b"".join(
        (_BYTE[first], encode_remaining_length(length), topic_bytes, packet_id_bytes, payload)
    )


def puback_packet(packet_id: int) -> bytes:
    """PUBACK (3.4): the client received the broker's QoS 1 message ``packet_id``."""
    _check_packet_id(packet_id)
    return _PUBACK.pack(0x40, 2, packet_id)


def subscribe_packet(*, packet_id: int, topics: list[tuple[str, int]]) -> bytes:
    """SUBSCRIBE (3.8) to ``(filter, requested QoS)`` pairs.

    Raises:
        ValueError: If ``topics`` is empty or a filter or QoS is invalid.
    """
    _check_packet_id(packet_id)
    if not topics:
        raise ValueError("SUBSCRIBE needs at least one (topic filter, qos) pair (3.8.3)")
    parts = [_U16.pack(packet_id)]
    for topic_filter, qos in topics:
        _check_filter(topic_filter)
        _check_qos(qos, what=f"qos of {topic_filter!r}")
        parts += [_encode_string(topic_filter, what="topic filter"), _BYTE[qos]]
    body = b"".join(parts)
    return b"\x82" + encode_remaining_length(len(body)) + body


def pingreq_packet() -> bytes:
    """PINGREQ (3.12): "still here", sent when the client has been silent for a while."""
    return _PINGREQ


def disconnect_packet() -> bytes:
    """DISCONNECT (3.14): a clean goodbye; the broker discards the will."""
    return _DISCONNECT


class PacketReader:
    """Splits a byte stream from the broker into packets, whatever the chunking.

    Feed it every chunk read from the socket; it keeps an incomplete packet until the rest
    arrives. Payloads are sliced out of the buffer in one copy.

    Args:
        max_packet_bytes: The largest remaining length accepted; a larger announced length
            raises at once instead of buffering it (default: the protocol's limit).
    """

    __slots__ = ("_buffer", "_max_length")

    def __init__(self, *, max_packet_bytes: int = MAX_REMAINING_LENGTH) -> None:
        self._buffer = bytearray()
        self._max_length = max_packet_bytes

    @property
    def buffered_bytes(self) -> int:
        """Bytes held back as the start of an incomplete packet."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        """Add ``data`` and return the packets it completed, in order.

        Raises:
            MqttProtocolError: If the stream is malformed or holds a packet a broker must
                not send to this client; the reader is unusable afterwards.
        """
        buffer = self._buffer
        buffer += data
        size = len(buffer)
        packets: list[Packet] = []
        position = 0
        while size - position >= 2:
            first = buffer[position]
            length = buffer[position + 1]
            start = position + 2
            if length & 0x80:  # more length bytes follow (2.2.3)
                length &= 0x7F
                shift = 7
                complete = False
                while start < size:
                    byte = buffer[start]
                    start += 1
                    length |= (byte & 0x7F) << shift
                    if byte < 0x80:
                        complete = True
                        break
                    if shift == 21:
                        raise MqttProtocolError(
                            "malformed remaining length: more than 4 bytes (MQTT 3.1.1 2.2.3)"
                        )
                    shift += 7
                if not complete:  # the chunk ends inside the length field
                    break
            if length > self._max_length:
                raise MqttProtocolError(
                    f"packet of {length} bytes announced, more than the {self._max_length} "
                    f"bytes allowed"
                )
            end = start + length
            if end > size:
                break
            packets.append(_decode(first, buffer, start, end))
            position = end
        if position:
            del buffer[:position]  # CPython drops a bytearray's head without moving the rest
        return packets


def _decode(first: int, buffer: bytearray, start: int, end: int) -> Packet:
    """One packet whose body is ``buffer[start:end]``."""
    if first == 0x40:  # PUBACK: by far the most frequent packet a publisher reads
        if end - start != 2:
            raise MqttProtocolError(f"PUBACK of {end - start} bytes, expected 2 (3.4.1)")
        return Puback((buffer[start] << 8) | buffer[start + 1])
    kind, flags = first >> 4, first & 0x0F
    if kind == _PUBLISH:
        return _decode_publish(flags, buffer, start, end)
    if kind in _CLIENT_ONLY:
        raise MqttProtocolError(f"the broker sent {_CLIENT_ONLY[kind]}, which only clients send")
    if kind in _NOT_USED:
        raise MqttProtocolError(
            f"the broker sent {_NOT_USED[kind]}; this client uses QoS 0 and 1 only and never "
            f"unsubscribes"
        )
    if kind == 0 or kind == 15:
        raise MqttProtocolError(f"packet type {kind} is reserved (2.2.1)")
    if flags:
        raise MqttProtocolError(
            f"packet type {kind} with reserved flags {flags:#06b}; they must be 0 (2.2.2)"
        )
    if kind == _CONNACK:
        if end - start != 2:
            raise MqttProtocolError(f"CONNACK of {end - start} bytes, expected 2 (3.2.1)")
        ack_flags = buffer[start]
        if ack_flags & 0xFE:
            raise MqttProtocolError(f"CONNACK flags {ack_flags:#04x}: bits 7-1 are reserved")
        return Connack(session_present=bool(ack_flags), return_code=buffer[start + 1])
    if kind == _SUBACK:
        if end - start < 3:
            raise MqttProtocolError(
                f"SUBACK of {end - start} bytes: needs a packet id and at least one return code"
            )
        codes = tuple(buffer[start + 2 : end])
        for code in codes:
            if code not in (0, 1, 2, SUBACK_FAILURE):
                raise MqttProtocolError(f"SUBACK return code {code:#04x} is not 0, 1, 2 or 0x80")
        return Suback((buffer[start] << 8) | buffer[start + 1], codes)
    # PINGRESP is all that is left (PUBACK with flags 0 took the fast path)
    if end != start:
        raise MqttProtocolError(f"PINGRESP of {end - start} bytes, expected 0 (3.13)")
    return _PINGRESP_PACKET


def _decode_publish(flags: int, buffer: bytearray, start: int, end: int) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MqttProtocolError("PUBLISH with QoS 3, which does not exist (3.3.1.2)")
    dup = bool(flags & 0x08)
    if dup and qos == 0:
        raise MqttProtocolError("PUBLISH with QoS 0 and the DUP flag set (3.3.1.1)")
    if end - start < 2:
        raise MqttProtocolError("PUBLISH too short for its topic length")
    topic_end = start + 2 + ((buffer[start] << 8) | buffer[start + 1])
    if topic_end > end:
        raise MqttProtocolError(
            f"PUBLISH topic of {topic_end - start - 2} bytes in a {end - start}-byte packet"
        )
    try:
        topic = buffer[start + 2 : topic_end].decode()
    except UnicodeDecodeError as error:
        raise MqttProtocolError(f"PUBLISH topic is not UTF-8: {error}") from None
    packet_id: int | None = None
    if qos:
        if topic_end + 2 > end:
            raise MqttProtocolError(f"QoS {qos} PUBLISH without its packet id")
        packet_id = (buffer[topic_end] << 8) | buffer[topic_end + 1]
        if packet_id == 0:
            raise MqttProtocolError("PUBLISH with packet id 0, which is not allowed (2.3.1)")
        topic_end += 2
    return Publish(
        topic=topic,
        payload=bytes(buffer[topic_end:end]),
        qos=qos,
        packet_id=packet_id,
        dup=dup,
        retain=bool(flags & 0x01),
    )
