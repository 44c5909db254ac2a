"""The MQTT wire contract between edge BMSs and the cloud: topics and payloads, written once.

The cloud's ingest and the virtual BMSs both import this module, so a payload that one side
writes the other side reads. Every payload is one UTF-8 JSON object; the full description
with examples is ``docs/wire_contract.md``.

Topics, under ``batterytwin/v1/devices/{device}/`` (``{device}`` is ``Device.name``):

=============  =========  =====  ======  ======================================================
channel        direction  QoS    retain  payload
=============  =========  =====  ======  ======================================================
telemetry      up         1      no      :class:`TelemetryMessage`
eis            up         1      no      :class:`EisMessage`
events         up         1      no      :class:`EventMessage`
status         up         1      yes     :class:`StatusMessage` (also the last will, offline)
acks           up         1      no      :class:`AckMessage`
commands       down       1      no      :data:`CommandMessage`
=============  =========  =====  ======  ======================================================

Sign convention: positive current discharges the battery (as everywhere in batterytwin).
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import re
from collections.abc import Mapping, Sequence, Sized
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    PlainSerializer,
    PlainValidator,
    StrictBool,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

__all__ = [
    "DEVICE_NAME_PATTERN",
    "MAX_CELLS",
    "MAX_EIS_RECORDS",
    "MAX_PAYLOAD_BYTES",
    "TELEMETRY_QUANTITIES",
    "TOPIC_ROOT",
    "UPLINK_CHANNELS",
    "AckMessage",
    "Channel",
    "CommandMessage",
    "ContractError",
    "EcmUpdateCommand",
    "EcmUpdateParams",
    "EisMessage",
    "EisPoint",
    "EisRequestCommand",
    "EisRequestParams",
    "EventMessage",
    "ReportingIntervalCommand",
    "ReportingIntervalParams",
    "StatusMessage",
    "TelemetryMessage",
    "Topics",
    "UplinkMessage",
    "command_message",
    "parse_command",
    "parse_uplink",
]

TOPIC_ROOT = "batterytwin/v1"
MAX_PAYLOAD_BYTES = 1024 * 1024  # bytes; 4096 cells x 9 quantities at full precision fit
MAX_CELLS = 4096  # cells in one telemetry message
MAX_EIS_RECORDS = 10_000  # frequency points x cells in one EIS message
MAX_SEQ = 2**63 - 1  # BIGINT
DEVICE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
"""A device name is one topic level, a Mosquitto user name and a password-file key."""

_DEVICE_NAME = re.compile(DEVICE_NAME_PATTERN)
_ROOT = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class ContractError(ValueError):
    """A topic or payload that breaks the contract; :attr:`reason` is one line for a log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Channel(enum.StrEnum):
    """The last topic level: what a message on the topic carries."""

    telemetry = "telemetry"
    eis = "eis"
    events = "events"
    status = "status"
    acks = "acks"
    commands = "commands"


UPLINK_CHANNELS: tuple[Channel, ...] = (
    Channel.telemetry,
    Channel.eis,
    Channel.events,
    Channel.status,
    Channel.acks,
)
"""Channels a device publishes on (and the ingest subscribes to); ``commands`` goes down."""


class Topics(BaseModel):
    """Topic names under one root; tests and multi-tenant brokers pass their own root."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    root: str = TOPIC_ROOT

    @model_validator(mode="after")
    def _plain_root(self) -> Topics:
        if not _ROOT.match(self.root):
            raise ValueError(
                f"topic root must be plain levels such as 'batterytwin/v1' (no wildcards, no "
                f"leading or trailing '/'), got {self.root!r}"
            )
        return self

    def device(self, device: str, channel: Channel) -> str:
        """The topic of ``channel`` for ``device``.

        Raises:
            ContractError: If ``device`` is not a valid device name.
        """
        if not _DEVICE_NAME.match(device):
            raise ContractError(
                f"device name {device!r} must match {DEVICE_NAME_PATTERN} (it is a topic level)"
            )
        return f"{self.root}/devices/{device}/{channel}"

    def subscription(self, channel: Channel) -> str:
        """The filter that matches ``channel`` of every device."""
        return f"{self.root}/devices/+/{channel}"

    def parse(self, topic: str) -> tuple[str, Channel]:
        """``(device, channel)`` of a device topic.

        Raises:
            ContractError: If ``topic`` is not ``{root}/devices/{device}/{channel}``.
        """
        prefix = f"{self.root}/devices/"
        rest = topic.removeprefix(prefix)
        parts = rest.split("/")
        if rest == topic or len(parts) != 2 or not _DEVICE_NAME.match(parts[0]):
            raise ContractError(f"topic {topic!r} is not {prefix}<device>/<channel>")
        try:
            return parts[0], Channel(parts[1])
        except ValueError:
            raise ContractError(f"topic {topic!r}: unknown channel {parts[1]!r}") from None


def _to_datetime(value: Any) -> dt.datetime:
    """ISO-8601 (naive means UTC) or epoch seconds -> an aware UTC datetime."""
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"ts {value[:40]!r} is not ISO-8601") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError("ts must be finite")
        try:
            moment = dt.datetime.fromtimestamp(value, dt.UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"ts {value} is out of range for epoch seconds") from None
    else:
        raise ValueError("ts must be an ISO-8601 string or epoch seconds")
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


Timestamp = Annotated[
    dt.datetime,
    PlainValidator(_to_datetime),
    PlainSerializer(lambda moment: moment.isoformat(), return_type=str),
    WithJsonSchema({"anyOf": [{"type": "string", "format": "date-time"}, {"type": "number"}]}),
]
"""ISO-8601 text (without an offset it is UTC) or epoch seconds; read as an aware UTC time."""

TELEMETRY_QUANTITIES: tuple[str, ...] = (
    "voltage",
    "temperature",
    "current",
    "sot",
    "phase",
    "soc",
    "sos",
    "soh",
    "equivalent_cycles",
)
"""The per-cell arrays of :class:`TelemetryMessage`, named as ``Measurement`` columns."""

Seq = Annotated[int, Field(ge=0, le=MAX_SEQ)]
CellId = Annotated[int, Field(ge=0, le=2**31 - 1)]
Positive = Annotated[FiniteFloat, Field(gt=0)]
NonNegative = Annotated[FiniteFloat, Field(ge=0)]


class _Payload(BaseModel):
    # strict: "1" is not 1 and true is not 1; extra keys are a contract breach, not noise
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def check_parallel_arrays(cell_ids: Sequence[int], arrays: Mapping[str, Sized | None]) -> None:
    """The one-sample-of-many-cells format, shared by MQTT telemetry and the REST bulk POST.

    Raises:
        ValueError: If a cell repeats, no quantity is given, or an array's length is not
            that of ``cell_ids``.
    """
    n = len(cell_ids)
    if len(set(cell_ids)) != n:
        raise ValueError("cell_ids must not repeat a cell")
    present = {name: values for name, values in arrays.items() if values is not None}
    if not present:
        raise ValueError(f"no quantity: send at least one of {', '.join(arrays)}")
    for name, values in present.items():
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} values for {n} cell_ids")


class TelemetryMessage(_Payload):
    """One sample of a pack, cell by cell, as parallel arrays indexed like ``cell_ids``.

    ``cell_ids`` are the cell positions in the device's battery (``Cell.position``). A
    quantity the device does not measure is left out (D2.3 Table 2: Pillar 1 sends
    voltage, temperature, current, sot, phase, soc, sos; Pillar 2 sends soc, soh, sos,
    equivalent_cycles plus voltage, current, temperature). Units: V, degC, A (positive
    discharges), deg; soc, soh, sos and sot as fractions or percent as the device's
    estimator reports them.

    ``seq`` counts every stored uplink message of a device (telemetry and EIS share it).
    """

    seq: Seq
    ts: Timestamp
    pillar: Literal[1, 2]
    cell_ids: list[CellId] = Field(min_length=1, max_length=MAX_CELLS)
    voltage: list[FiniteFloat] | None = None
    temperature: list[FiniteFloat] | None = None
    current: list[FiniteFloat] | None = None
    sot: list[FiniteFloat] | None = None
    phase: list[FiniteFloat] | None = None
    soc: list[FiniteFloat] | None = None
    sos: list[FiniteFloat] | None = None
    soh: list[FiniteFloat] | None = None
    equivalent_cycles: list[FiniteFloat] | None = None

    @model_validator(mode="after")
    def _parallel(self) -> TelemetryMessage:
        check_parallel_arrays(self.cell_ids, {q: getattr(self, q) for q in TELEMETRY_QUANTITIES})
        return self

    def quantities(self) -> dict[str, list[float]]:
        """The arrays that are present, by name."""
        return {q: v for q in TELEMETRY_QUANTITIES if (v := getattr(self, q)) is not None}


class EisPoint(_Payload):
    """One frequency point of one cell: exactly the keys of ``twin.eis.EisRecord.to_dict()``."""

    model_config = ConfigDict(
        validate_by_alias=True, validate_by_name=True, serialize_by_alias=True
    )

    status: Literal["success", "noisy", "fail"]
    event_id: str = Field(min_length=1, max_length=100)
    cell_id: CellId
    frequency: Positive  # Hz
    amplitude: FiniteFloat  # A
    phase: FiniteFloat  # deg, equal to Z_phz
    current_offset: FiniteFloat  # A
    v_start: FiniteFloat  # V
    v_end: FiniteFloat  # V
    temperature: FiniteFloat  # degC
    z_re: FiniteFloat = Field(alias="Z_re")  # ohm
    z_im: FiniteFloat = Field(alias="Z_im")  # ohm
    z_mod: FiniteFloat = Field(alias="Z_mod")  # ohm
    z_phz: FiniteFloat = Field(alias="Z_phz")  # deg
    voltage: FiniteFloat  # V


class EisMessage(_Payload):
    """EIS points of one sweep (or part of it: a long sweep is split over several ``seq``)."""

    seq: Seq
    ts: Timestamp
    records: list[EisPoint] = Field(min_length=1, max_length=MAX_EIS_RECORDS)


class EventMessage(_Payload):
    """Something the edge BMS wants the cloud to know now (a limit hit, a contactor opened)."""

    ts: Timestamp
    kind: str = Field(pattern=r"^[a-z][a-z0-9_]{0,49}$")
    severity: Literal["info", "warning", "alarm"]
    detail: str = Field(default="", max_length=2000)
    cell_ids: list[CellId] | None = Field(default=None, max_length=MAX_CELLS)


class StatusMessage(_Payload):
    """Retained presence: ``online`` on connect, and ``online: false`` as the last will."""

    online: StrictBool
    ts: Timestamp


class AckMessage(_Payload):
    """The device's answer to a command: done (``ok``) or refused with a reason."""

    command_id: Annotated[int, Field(ge=1)]
    status: Literal["ok", "rejected"]
    detail: str = Field(default="", max_length=2000)


class EcmUpdateParams(_Payload):
    """New equivalent-circuit parameters (ohm, F) valid around ``voltage`` (V)."""

    voltage: FiniteFloat
    r0: Positive
    r1: Positive
    c1: Positive
    r2: Positive | None = None
    c2: Positive | None = None
    r3: Positive | None = None
    c3: Positive | None = None
    r4: Positive | None = None
    c4: Positive | None = None

    @model_validator(mode="after")
    def _pairs(self) -> EcmUpdateParams:
        for k in (2, 3, 4):
            if (getattr(self, f"r{k}") is None) != (getattr(self, f"c{k}") is None):
                raise ValueError(f"r{k} and c{k} come together: give both or neither")
        return self


class EisRequestParams(_Payload):
    """Run an EIS sweep on ``cells`` (positions; ``null`` means every cell)."""

    cells: list[CellId] | None = Field(default=None, max_length=MAX_CELLS)
    f_min_hz: Positive
    f_max_hz: Positive
    points: Annotated[int, Field(ge=1, le=1000)]

    @model_validator(mode="after")
    def _band(self) -> EisRequestParams:
        if self.f_max_hz < self.f_min_hz:
            raise ValueError(f"f_max_hz {self.f_max_hz} must be >= f_min_hz {self.f_min_hz}")
        return self


class ReportingIntervalParams(_Payload):
    """Send telemetry every ``interval_s`` seconds."""

    interval_s: Positive


class _CommandBase(_Payload):
    command_id: Annotated[int, Field(ge=1)]  # Command.id


class EcmUpdateCommand(_CommandBase):
    kind: Literal["ecm_update"]
    params: EcmUpdateParams


class EisRequestCommand(_CommandBase):
    kind: Literal["eis_request"]
    params: EisRequestParams


class ReportingIntervalCommand(_CommandBase):
    kind: Literal["reporting_interval"]
    params: ReportingIntervalParams


CommandMessage = EcmUpdateCommand | EisRequestCommand | ReportingIntervalCommand
"""A downlink command; ``kind`` selects the type of ``params``."""

UplinkMessage = TelemetryMessage | EisMessage | EventMessage | StatusMessage | AckMessage

_COMMAND: TypeAdapter[CommandMessage] = TypeAdapter(
    Annotated[CommandMessage, Field(discriminator="kind")]
)
_UPLINK: dict[Channel, type[_Payload]] = {
    Channel.telemetry: TelemetryMessage,
    Channel.eis: EisMessage,
    Channel.events: EventMessage,
    Channel.status: StatusMessage,
    Channel.acks: AckMessage,
}


def _reason(what: str, error: ValidationError) -> str:
    """One line from a pydantic error: the first few problems with where they are."""
    problems = []
    for item in error.errors(include_url=False)[:5]:
        if item["type"] == "json_invalid":
            return f"bad JSON: {item['msg'].removeprefix('Invalid JSON: ')}"
        where = ".".join(str(part) for part in item["loc"])
        msg = item["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {msg}" if where else msg)
    more = error.error_count() - len(problems)
    tail = f" (+{more} more)" if more > 0 else ""
    return f"invalid {what}: {'; '.join(problems)}{tail}"


def parse_uplink(channel: Channel, payload: bytes) -> UplinkMessage:
    """Validate the payload of a device's message on ``channel``.

    Raises:
        ContractError: Oversized, not JSON, or not the channel's payload; the reason says
            which field is wrong.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ContractError(f"oversized: {len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    model = _UPLINK.get(channel)
    if model is None:
        raise ContractError(f"devices do not publish on {channel!r}")
    try:
        message: UplinkMessage = model.model_validate_json(payload)  # type: ignore[assignment]
    except ValidationError as error:
        raise ContractError(_reason(str(channel), error)) from None
    return message


def parse_command(payload: bytes) -> CommandMessage:
    """Validate a downlink command (what a device does on its ``commands`` topic).

    Raises:
        ContractError: Oversized, not JSON, or not a command.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ContractError(f"oversized: {len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        return _COMMAND.validate_json(payload)
    except ValidationError as error:
        raise ContractError(_reason("command", error)) from None


def command_message(*, command_id: int, kind: str, params: dict[str, Any]) -> CommandMessage:
    """The downlink message for a ``Command`` row (``kind`` and ``payload`` = params).

    Raises:
        ContractError: If ``kind`` is unknown or ``params`` do not fit it; the API can call
            this to refuse a command before storing it.
    """
    try:
        return _COMMAND.validate_python({"command_id": command_id, "kind": kind, "params": params})
    except ValidationError as error:
        raise ContractError(_reason(f"{kind} command", error)) from None
