"""The MQTT 3.1.1 codec alone: exact bytes, round trips, any chunking, malformed input.

The property checks run on a seeded random loop always, and under hypothesis as well when
it is installed (it is not a declared dependency).
"""

from __future__ import annotations

import random
import struct

import pytest

from virtual_bms.fleet.mqtt_codec import (
    MAX_REMAINING_LENGTH,
    Connack,
    MqttConnectError,
    MqttProtocolError,
    Packet,
    PacketReader,
    Pingresp,
    Puback,
    Publish,
    Suback,
    Will,
    connect_packet,
    disconnect_packet,
    encode_remaining_length,
    encode_topic,
    next_packet_id,
    pingreq_packet,
    puback_packet,
    publish_packet,
    subscribe_packet,
)


def _feed_in_pieces(data: bytes, cuts: list[int]) -> list[Packet]:
    reader = PacketReader()
    packets: list[Packet] = []
    previous = 0
    for cut in [*sorted(cuts), len(data)]:
        packets += reader.feed(data[previous:cut])
        previous = cut
    assert reader.buffered_bytes == 0
    return packets


def _server_stream() -> tuple[bytes, list[Packet]]:
    """Bytes of one of each packet a broker sends this client, and what they decode to."""
    publish = publish_packet(topic="bt/devices/d1/commands", payload=b"{}", qos=1, packet_id=9)
    data = (
        b"\x20\x02\x01\x00"  # CONNACK, session present, accepted
        + b"\x90\x04\x00\x07\x01\x80"  # SUBACK id 7: QoS 1 granted, one refused
        + publish
        + puback_packet(300)
        + b"\xd0\x00"  # PINGRESP
        + publish_packet(topic="a/b", payload=b"x" * 200, qos=0, packet_id=None, retain=True)
    )
    expected: list[Packet] = [
        Connack(session_present=True, return_code=0),
        Suback(packet_id=7, granted_qos=(1, 0x80)),
        Publish(topic="bt/devices/d1/commands", payload=b"{}", qos=1, packet_id=9),
        Puback(packet_id=300),
        Pingresp(),
        Publish(topic="a/b", payload=b"x" * 200, qos=0, packet_id=None, retain=True),
    ]
    return data, expected


# -- exact bytes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (MAX_REMAINING_LENGTH, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_matches_the_spec_table(length: int, encoded: bytes) -> None:
    assert encode_remaining_length(length) == encoded


@pytest.mark.parametrize("length", [-1, MAX_REMAINING_LENGTH + 1])
def test_remaining_length_out_of_range_is_refused(length: int) -> None:
    with pytest.raises(ValueError, match="0 to 268435455"):
        encode_remaining_length(length)


def test_connect_bytes_with_credentials() -> None:
    packet = connect_packet(
        client_id="bms-1", username="u", password="p", keepalive_s=60, clean_session=False
    )
    body = b"\x00\x04MQTT\x04" + b"\xc0" + b"\x00\x3c" + b"\x00\x05bms-1\x00\x01u\x00\x01p"
    assert packet == b"\x10" + bytes([len(body)]) + body


def test_connect_bytes_with_will_and_clean_session() -> None:
    will = Will(topic="d/status", payload=b'{"online": false}', qos=1, retain=True)
    packet = connect_packet(client_id="c", keepalive_s=2, clean_session=True, will=will)
    body = (
        b"\x00\x04MQTT\x04"
        + bytes([0x02 | 0x04 | 0x08 | 0x20])  # clean, will, will QoS 1, will retain
        + b"\x00\x02"
        + b"\x00\x01c"
        + b"\x00\x08d/status"
        + b"\x00\x11"
        + b'{"online": false}'
    )
    assert packet == b"\x10" + bytes([len(body)]) + body


def test_subscribe_and_small_packets() -> None:
    packet = subscribe_packet(packet_id=258, topics=[("a/+/c", 1), ("x/#", 0)])
    body = b"\x01\x02" + b"\x00\x05a/+/c\x01" + b"\x00\x03x/#\x00"
    assert packet == b"\x82" + bytes([len(body)]) + body
    assert puback_packet(258) == b"\x40\x02\x01\x02"
    assert pingreq_packet() == b"\xc0\x00"
    assert disconnect_packet() == b"\xe0\x00"


def test_publish_flags_and_packet_id() -> None:
    packet = publish_packet(
        topic="t", payload=b"hi", qos=1, packet_id=0x1234, retain=True, dup=True
    )
    assert packet == b"\x3b\x07\x00\x01t\x12\x34hi"  # 0x30 | dup 0x08 | qos 1 << 1 | retain


def test_topics_are_encoded_once() -> None:
    topic = "batterytwin/v1/devices/bms-cache/telemetry"
    assert encode_topic(topic) is encode_topic(topic)


def test_packet_ids_wrap_at_65535() -> None:
    assert next_packet_id(1) == 2
    assert next_packet_id(65_534) == 65_535
    assert next_packet_id(65_535) == 1


# -- round trips and chunking ----------------------------------------------------------------


@pytest.mark.parametrize("remaining", [127, 128, 16_383, 16_384, 2_097_151])
def test_publish_round_trip_at_remaining_length_boundaries(remaining: int) -> None:
    topic_and_id = 3 + 2  # "\x00\x01t" and the packet id
    payload = bytes(range(256)) * (remaining // 256 + 1)
    payload = payload[: remaining - topic_and_id]
    packet = publish_packet(topic="t", payload=payload, qos=1, packet_id=5)
    header = 1 + len(encode_remaining_length(remaining))
    assert len(packet) == header + remaining
    assert packet[1:header] == encode_remaining_length(remaining)
    expected = [Publish(topic="t", payload=payload, qos=1, packet_id=5)]
    assert PacketReader().feed(packet) == expected
    # split inside the length field and inside the payload
    assert _feed_in_pieces(packet, [1, 2, header, len(packet) // 2]) == expected


def test_large_payload_fed_in_socket_sized_chunks() -> None:
    payload = random.Random(1).randbytes(2_000_000)
    packet = publish_packet(topic="big", payload=payload, qos=0, packet_id=None)
    cuts = list(range(65_536, len(packet), 65_536))
    assert _feed_in_pieces(packet, cuts) == [
        Publish(topic="big", payload=payload, qos=0, packet_id=None)
    ]


def test_stream_fed_byte_by_byte_gives_the_same_packets() -> None:
    data, expected = _server_stream()
    assert PacketReader().feed(data) == expected
    assert _feed_in_pieces(data, list(range(1, len(data)))) == expected


def test_seeded_random_chunking() -> None:
    data, expected = _server_stream()
    data, expected = data * 20, expected * 20
    rng = random.Random(20240501)
    for _ in range(200):
        cuts = rng.sample(range(1, len(data)), rng.randint(1, 40))
        assert _feed_in_pieces(data, cuts) == expected


def _check_publish_round_trip(
    *,
    topic: str,
    payload: bytes,
    qos: int,
    packet_id: int,
    retain: bool,
    dup: bool,
    cuts: list[int],
) -> None:
    dup = dup and qos > 0
    pid = packet_id if qos else None
    packet = publish_packet(
        topic=topic, payload=payload, qos=qos, packet_id=pid, retain=retain, dup=dup
    )
    stream = packet + puback_packet(packet_id) + packet
    publish = Publish(topic=topic, payload=payload, qos=qos, packet_id=pid, dup=dup, retain=retain)
    inside = sorted({cut for cut in cuts if 0 < cut < len(stream)})
    assert _feed_in_pieces(stream, inside) == [publish, Puback(packet_id), publish]


def _check_garbage(data: bytes, cut: int) -> None:
    """Arbitrary bytes decode or raise MqttProtocolError: nothing else escapes."""
    reader = PacketReader()
    try:
        reader.feed(data[:cut])
        reader.feed(data[cut:])
    except MqttProtocolError:
        pass


def _random_topic(rng: random.Random) -> str:
    alphabet = "abcXYZ019/_-.é€ 😀"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))


def test_publish_round_trip_seeded_random() -> None:
    rng = random.Random(31_337)
    for _ in range(500):
        _check_publish_round_trip(
            topic=_random_topic(rng),
            payload=rng.randbytes(rng.choice([0, 1, 100, 127, 128, 3000])),
            qos=rng.choice([0, 1]),
            packet_id=rng.randint(1, 65_535),
            retain=rng.random() < 0.5,
            dup=rng.random() < 0.5,
            cuts=[rng.randint(1, 7000) for _ in range(rng.randint(0, 8))],
        )


def test_garbage_seeded_random() -> None:
    rng = random.Random(4711)
    for _ in range(3000):
        data = rng.randbytes(rng.randint(0, 64))
        _check_garbage(data, rng.randint(0, 64))


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - the seeded loops above still run
    pass
else:
    _topic_text = st.text(
        alphabet=st.characters(blacklist_characters="+#\x00", blacklist_categories=("Cs",)),
        min_size=1,
        max_size=60,
    )

    @settings(max_examples=300, deadline=None)
    @given(
        topic=_topic_text,
        payload=st.binary(max_size=3000),
        qos=st.sampled_from([0, 1]),
        packet_id=st.integers(min_value=1, max_value=65_535),
        retain=st.booleans(),
        dup=st.booleans(),
        cuts=st.lists(st.integers(min_value=1, max_value=7000), max_size=8),
    )
    def test_publish_round_trip_property(
        topic: str,
        payload: bytes,
        qos: int,
        packet_id: int,
        retain: bool,
        dup: bool,
        cuts: list[int],
    ) -> None:
        _check_publish_round_trip(
            topic=topic,
            payload=payload,
            qos=qos,
            packet_id=packet_id,
            retain=retain,
            dup=dup,
            cuts=cuts,
        )

    @settings(max_examples=500, deadline=None)
    @given(data=st.binary(max_size=64), cut=st.integers(min_value=0, max_value=64))
    def test_garbage_decodes_or_raises_protocol_error(data: bytes, cut: int) -> None:
        _check_garbage(data, cut)


# -- malformed input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x30\xff\xff\xff\xff\x01", "more than 4 bytes"),
        (b"\x36\x05\x00\x01t\x00\x01", "QoS 3"),
        (b"\x38\x03\x00\x01t", "QoS 0 and the DUP flag"),
        (b"\x30\x03\x00\x09t", "topic of 9 bytes in a 3-byte packet"),
        (b"\x30\x01\x00", "too short for its topic length"),
        (b"\x30\x04\x00\x02\xff\xfe", "not UTF-8"),
        (b"\x32\x03\x00\x01t", "without its packet id"),
        (b"\x32\x05\x00\x01t\x00\x00", "packet id 0"),
        (b"\x20\x03\x00\x00\x00", "CONNACK of 3 bytes"),
        (b"\x20\x02\x02\x00", "bits 7-1 are reserved"),
        (b"\x40\x03\x00\x01\x00", "PUBACK of 3 bytes"),
        (b"\x42\x02\x00\x01", "reserved flags"),
        (b"\x90\x03\x00\x01\x03", "SUBACK return code 0x03"),
        (b"\x90\x02\x00\x01", "SUBACK of 2 bytes"),
        (b"\xd0\x01\x00", "PINGRESP of 1 bytes"),
        (b"\x10\x00", "sent CONNECT, which only clients send"),
        (b"\xc0\x00", "sent PINGREQ"),
        (b"\x50\x02\x00\x01", "sent PUBREC; this client uses QoS 0 and 1 only"),
        (b"\x62\x02\x00\x01", "sent PUBREL"),
        (b"\xb0\x02\x00\x01", "sent UNSUBACK"),
        (b"\x00\x00", "packet type 0 is reserved"),
        (b"\xf0\x00", "packet type 15 is reserved"),
    ],
)
def test_malformed_packets_raise_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(MqttProtocolError, match=message):
        PacketReader().feed(data)


def test_five_length_bytes_are_refused_before_the_rest_arrives() -> None:
    reader = PacketReader()
    assert reader.feed(b"\x30\x80\x80\x80") == []
    with pytest.raises(MqttProtocolError, match="more than 4 bytes"):
        reader.feed(b"\x80")


def test_announced_length_above_the_limit_is_refused_at_once() -> None:
    reader = PacketReader(max_packet_bytes=1000)
    with pytest.raises(MqttProtocolError, match="packet of 1001 bytes announced"):
        reader.feed(b"\x30" + encode_remaining_length(1001))


# -- invalid arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topic": "a/+/c", "qos": 0, "packet_id": None}, "wildcard"),
        ({"topic": "a/#", "qos": 0, "packet_id": None}, "wildcard"),
        ({"topic": "", "qos": 0, "packet_id": None}, "must not be empty"),
        ({"topic": "a\x00b", "qos": 0, "packet_id": None}, "U\\+0000"),
        ({"topic": "t", "qos": 0, "packet_id": 3}, "pass packet_id=None"),
        ({"topic": "t", "qos": 0, "packet_id": None, "dup": True}, "dup must be False"),
        ({"topic": "t", "qos": 1, "packet_id": None}, r"needs packet_id 1\.\.65535"),
        ({"topic": "t", "qos": 1, "packet_id": 0}, r"needs packet_id 1\.\.65535"),
        ({"topic": "t", "qos": 1, "packet_id": 65_536}, r"needs packet_id 1\.\.65535"),
        ({"topic": "t", "qos": 3, "packet_id": 1}, "qos must be 0, 1 or 2"),
    ],
)
def test_publish_argument_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        publish_packet(payload=b"", **kwargs)  # type: ignore[arg-type]


def test_topic_longer_than_65535_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="MQTT allows 65535"):
        publish_packet(topic="é" * 40_000, payload=b"", qos=0, packet_id=None)


def test_connect_argument_errors() -> None:
    with pytest.raises(ValueError, match="give username too"):
        connect_packet(client_id="c", password="p")
    with pytest.raises(ValueError, match="empty client_id needs clean_session=True"):
        connect_packet(client_id="", clean_session=False)
    with pytest.raises(ValueError, match=r"keepalive_s must be 0\.\.65535"):
        connect_packet(client_id="c", keepalive_s=70_000)
    with pytest.raises(ValueError, match=r"will\.qos must be 0, 1 or 2"):
        connect_packet(client_id="c", will=Will(topic="t", payload=b"", qos=5))


def test_subscribe_argument_errors() -> None:
    with pytest.raises(ValueError, match="at least one"):
        subscribe_packet(packet_id=1, topics=[])
    with pytest.raises(ValueError, match="'#' must be a whole level and the last"):
        subscribe_packet(packet_id=1, topics=[("a/#/b", 1)])
    with pytest.raises(ValueError, match="'\\+' must be a whole level"):
        subscribe_packet(packet_id=1, topics=[("a+/b", 1)])
    with pytest.raises(ValueError, match="qos of 'a' must be 0, 1 or 2"):
        subscribe_packet(packet_id=1, topics=[("a", 7)])
    with pytest.raises(ValueError, match=r"packet_id must be 1\.\.65535"):
        subscribe_packet(packet_id=0, topics=[("a", 1)])


def test_connect_error_names_the_return_code() -> None:
    assert "bad user name or password" in str(MqttConnectError(4, client_id="x"))
    assert "not authorized" in str(MqttConnectError(5, client_id="x"))
    assert MqttConnectError(5, client_id="x").return_code == 5
    assert Connack(session_present=False, return_code=4).reason == "bad user name or password"
    assert isinstance(MqttConnectError(4, client_id="x"), ConnectionError)


def test_many_pubacks_in_one_chunk() -> None:
    data = b"".join(struct.pack(">BBH", 0x40, 2, i) for i in range(1, 5001))
    assert PacketReader().feed(data) == [Puback(i) for i in range(1, 5001)]
