"""The wire contract alone (no broker, no database): topics, payloads, commands."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from cloud.mqtt.contract import (
    MAX_CELLS,
    MAX_PAYLOAD_BYTES,
    Channel,
    ContractError,
    EcmUpdateCommand,
    EisMessage,
    EisPoint,
    EisRequestCommand,
    ReportingIntervalCommand,
    StatusMessage,
    TelemetryMessage,
    Topics,
    command_message,
    parse_command,
    parse_uplink,
)
from twin.eis import WIRE_KEYS
from twin.eis import EisRecord as TwinEisRecord


def _telemetry(**fields: Any) -> bytes:
    body: dict[str, Any] = {"seq": 1, "ts": 1714564800, "pillar": 1, "cell_ids": [0, 1]}
    body |= {"voltage": [3.7, 3.71]} | fields
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def test_topics_name_and_parse_device_channels() -> None:
    topics = Topics()
    assert topics.device("bms-1", Channel.telemetry) == "batterytwin/v1/devices/bms-1/telemetry"
    assert topics.subscription(Channel.acks) == "batterytwin/v1/devices/+/acks"
    assert topics.parse("batterytwin/v1/devices/bms-1/status") == ("bms-1", Channel.status)
    for bad in (
        "batterytwin/v1/devices/bms-1",
        "other/devices/a/eis",
        "batterytwin/v1/devices/a/x",
    ):
        with pytest.raises(ContractError):
            topics.parse(bad)
    with pytest.raises(ContractError, match="topic level"):
        topics.device("a/b", Channel.eis)
    with pytest.raises(ValueError, match="no wildcards"):
        Topics(root="batterytwin/#")


def test_telemetry_reads_iso_and_epoch_times_as_utc() -> None:
    epoch = parse_uplink(Channel.telemetry, _telemetry())
    naive = parse_uplink(Channel.telemetry, _telemetry(ts="2024-05-01T12:00:00"))
    offset = parse_uplink(Channel.telemetry, _telemetry(ts="2024-05-01T14:00:00+02:00"))
    moments = [m.ts for m in (epoch, naive, offset) if isinstance(m, TelemetryMessage)]
    assert moments == [dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)] * 3
    assert isinstance(epoch, TelemetryMessage) and epoch.quantities() == {"voltage": [3.7, 3.71]}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"voltage": [3.7]}, "voltage has 1 values for 2 cell_ids"),
        ({"voltage": None}, "no quantity"),
        ({"cell_ids": [1, 1]}, "must not repeat"),
        (
            {
                "cell_ids": list(range(MAX_CELLS + 1)),
                "voltage": None,
                "soc": [0.5] * (MAX_CELLS + 1),
            },
            "at most 4096",
        ),
        ({"seq": -1}, "seq: Input should be greater than or equal to 0"),
        ({"seq": True}, "seq: Input should be a valid integer"),
        ({"seq": "1"}, "seq: Input should be a valid integer"),
        ({"pillar": 3}, "pillar: Input should be 1 or 2"),
        ({"ts": "yesterday"}, "ts 'yesterday' is not ISO-8601"),
        ({"ts": 1e300}, "out of range"),
        ({"soc": ["0.5", 0.5]}, "soc.0: Input should be a valid number"),
        ({"soc": [None, 0.5]}, "soc.0: Input should be a valid number"),
        ({"vendor": "x"}, "vendor: Extra inputs are not permitted"),
    ],
)
def test_telemetry_breaches_say_what_is_wrong(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(ContractError) as caught:
        parse_uplink(Channel.telemetry, _telemetry(**fields))
    assert reason in caught.value.reason
    assert caught.value.reason.startswith("invalid telemetry: ")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused(literal: str) -> None:
    payload = _telemetry().replace(b"3.71", literal.encode())
    with pytest.raises(ContractError, match=r"voltage\.1: Input should be a finite number"):
        parse_uplink(Channel.telemetry, payload)


def test_bad_json_and_oversized_payloads_are_refused() -> None:
    with pytest.raises(ContractError, match=r"^bad JSON"):
        parse_uplink(Channel.telemetry, b'{"seq": 1,')
    with pytest.raises(ContractError, match=r"^bad JSON"):
        parse_uplink(Channel.status, b"\xff\xfe")
    with pytest.raises(ContractError, match=r"^oversized"):
        parse_uplink(Channel.telemetry, b" " * (MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(ContractError, match="do not publish"):
        parse_uplink(Channel.commands, b"{}")


def test_eis_points_are_the_twins_wire_records() -> None:
    record = TwinEisRecord(
        frequency_hz=10.0,
        amplitude_a=0.5,
        current_offset_a=0.0,
        v_start_v=3.7,
        v_end_v=3.7,
        temperature_c=25.0,
        z_re_ohm=0.01,
        z_im_ohm=-0.002,
        z_mod_ohm=0.0102,
        z_phz_deg=-11.3,
        voltage_v=3.7,
        status="noisy",
        event_id="207_1",
        cell_id=4,
    ).to_dict()
    aliases = {f.alias or name for name, f in EisPoint.model_fields.items()}
    assert aliases == set(WIRE_KEYS)
    payload = json.dumps({"seq": 3, "ts": "2024-05-01T12:00:00Z", "records": [record]})
    message = parse_uplink(Channel.eis, payload.encode())
    assert isinstance(message, EisMessage)
    assert message.records[0].model_dump() == record
    assert TwinEisRecord.from_dict(message.records[0].model_dump()).cell_id == 4
    with pytest.raises(ContractError, match="status"):
        parse_uplink(Channel.eis, payload.replace('"noisy"', '"meh"').encode())


def test_status_and_acks() -> None:
    status = parse_uplink(Channel.status, b'{"online": true, "ts": 0}')
    assert isinstance(status, StatusMessage) and status.online
    with pytest.raises(ContractError, match="online: Input should be a valid boolean"):
        parse_uplink(Channel.status, b'{"online": 1, "ts": 0}')
    with pytest.raises(ContractError, match="status"):
        parse_uplink(Channel.acks, b'{"command_id": 1, "status": "maybe"}')


def test_commands_carry_typed_params() -> None:
    ecm = command_message(
        command_id=1, kind="ecm_update", params={"voltage": 3.7, "r0": 1e-3, "r1": 2e-3, "c1": 5e3}
    )
    assert isinstance(ecm, EcmUpdateCommand) and ecm.params.r2 is None
    eis = command_message(
        command_id=2,
        kind="eis_request",
        params={"cells": None, "f_min_hz": 0.1, "f_max_hz": 1000, "points": 30},
    )
    assert isinstance(eis, EisRequestCommand)
    interval = command_message(command_id=3, kind="reporting_interval", params={"interval_s": 5})
    assert isinstance(interval, ReportingIntervalCommand)
    for message in (ecm, eis, interval):
        assert parse_command(message.model_dump_json().encode()) == message
    refused: list[tuple[str, dict[str, Any], str]] = [
        (
            "ecm_update",
            {"voltage": 3.7, "r0": 1e-3, "r1": 2e-3, "c1": 5e3, "r2": 1e-3},
            "r2 and c2",
        ),
        ("ecm_update", {"voltage": 3.7, "r0": -1.0, "r1": 2e-3, "c1": 5e3}, "r0"),
        ("eis_request", {"f_min_hz": 10.0, "f_max_hz": 1.0, "points": 5}, "f_max_hz"),
        ("reporting_interval", {"interval_s": 0}, "interval_s"),
        ("reboot", {}, "does not match any of the expected tags"),
    ]
    for kind, params, reason in refused:
        with pytest.raises(ContractError, match=reason):
            command_message(command_id=9, kind=kind, params=params)
    with pytest.raises(ContractError, match="command_id"):
        parse_command(
            b'{"command_id": 0, "kind": "reporting_interval", "params": {"interval_s": 1}}'
        )
