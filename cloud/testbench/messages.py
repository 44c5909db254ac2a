"""The test bench's JSON formats: the test request, and the status and data messages of a run.

A request says what to test (unit, level, test type), how (an optional PyBaMM-style
procedure, time step, ambient, safety overrides) and on which model (an ECM or PyBaMM
parameter set, or an FMU from the models exchange). The same :class:`TestRequest` is the
body of ``POST /api/tests/`` and the payload of the MQTT request topic.

A run answers on its results topic with :class:`StatusMessage` (``started`` ->
``in_progress`` -> ``completed`` / ``failed`` / ``stopped_by_safety``, or ``rejected``
for a request that could not be read) and :class:`DataMessage` chunks (``seq`` 0, 1, ...).
The ``started`` message declares the variables and their units once; data chunks carry
only numbers. Sign convention, as everywhere in batterytwin: positive current discharges.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid as uuid_module
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from twin.errors import TwinInputError
from twin.experiment import parse_experiment

__all__ = [
    "DATA_VARIABLES",
    "FINAL_STATUSES",
    "VARIABLES",
    "BenchKind",
    "DataMessage",
    "EcmModelSpec",
    "FmuModelSpec",
    "Level",
    "ModelSpec",
    "PybammModelSpec",
    "RequestError",
    "ResultMessage",
    "SafetyOverrides",
    "Status",
    "StatusMessage",
    "TestRequest",
    "TestType",
    "Variable",
    "parse_request",
    "parse_result",
]

MAX_PAYLOAD_BYTES = 1 << 20  # as the device contract: one message is at most 1 MiB
MAX_STEPS = 1000  # procedure steps of one request (a cycle counts once)
MAX_CYCLES = 2000  # about 6000 h of 1C cycling, 2 million samples at dt_s = 10

TestType = Literal["capacity", "hppc", "cycle_ageing", "overcharge", "overdischarge", "custom"]
Level = Literal["cell", "module", "pack"]
BenchKind = Literal["virtual", "physical"]
Status = Literal["started", "in_progress", "completed", "failed", "stopped_by_safety", "rejected"]
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "stopped_by_safety"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class EcmModelSpec(_Strict):
    """An equivalent-circuit twin from a named parameter set (``twin.params``)."""

    kind: Literal["ecm"]
    parameter_set: str = Field(default="nmc_okane2022", min_length=1, max_length=100)
    soh: float = Field(default=1.0, gt=0.0, le=1.5)
    """Usable capacity relative to the set's nominal (second life: 0.7 - 0.9)."""
    resistance_factor: float = Field(default=1.0, gt=0.0, le=100.0)
    initial_soc: float = Field(default=0.5, ge=0.0, le=1.0)
    ageing: bool = True
    """Ageing on: capacity fades and resistance grows while the test runs."""
    ageing_rate_factor: float = Field(default=1.0, ge=0.0, le=1000.0)
    """Multiplies every ageing increment (> 1 compresses a long ageing test)."""

    @field_validator("parameter_set")
    @classmethod
    def _known_set(cls, value: str) -> str:
        from twin.params import available_parameter_sets

        known = available_parameter_sets()
        if value not in known:  # a request never names a file on the server
            raise ValueError(f"unknown ECM parameter set {value!r}; known: {', '.join(known)}")
        return value


class PybammModelSpec(_Strict):
    """A PyBaMM electrochemical twin (``twin.models.pybamm_twin``)."""

    kind: Literal["pybamm"]
    parameter_set: str = Field(default="OKane2022", min_length=1, max_length=100)
    model: Literal["SPM", "SPMe", "DFN"] = "SPMe"
    thermal: Literal["lumped", "isothermal"] = "lumped"
    initial_soc: float = Field(default=0.5, ge=0.0, le=1.0)


class FmuModelSpec(_Strict):
    """An FMU of the models exchange (``GET /api/fmu/...``), by its id."""

    kind: Literal["fmu"]
    model_id: int = Field(ge=1)
    mapping: dict[str, str | float | None] | None = None
    """Variable roles (``twin.fmu.twin.FmuMapping`` keys); detected from names if omitted."""
    parameters: dict[str, float] = Field(default_factory=dict)
    """Start values of FMU parameters."""
    initial_soc: float | None = Field(default=None, ge=0.0, le=1.0)
    capacity_ah: float | None = Field(default=None, gt=0.0)
    """What 1C means, when the FMU has no capacity output."""
    min_voltage_v: float | None = Field(default=None, gt=0.0)
    max_voltage_v: float | None = Field(default=None, gt=0.0)
    """The unit's voltage window: default procedures and the bench's limits need it."""
    max_temperature_c: float = 60.0

    @model_validator(mode="after")
    def _window(self) -> FmuModelSpec:
        low, high = self.min_voltage_v, self.max_voltage_v
        if low is not None and high is not None and low >= high:
            raise ValueError(f"min_voltage_v ({low}) must be below max_voltage_v ({high})")
        return self


ModelSpec = Annotated[EcmModelSpec | PybammModelSpec | FmuModelSpec, Field(discriminator="kind")]


class SafetyOverrides(_Strict):
    """The bench's safety limits, where the defaults of the test type do not fit."""

    max_voltage_v: float | None = Field(default=None, gt=0.0)
    min_voltage_v: float | None = Field(default=None, ge=0.0)
    max_temperature_c: float | None = None
    max_soc: float | None = Field(default=None, gt=0.0)
    min_soc: float | None = Field(default=None, lt=1.0)
    timeout_s: float | None = Field(default=None, gt=0.0)
    """Simulated time after which the bench stops the test."""


class TestRequest(_Strict):
    """One test to run: what, how, on which model (the request topic's payload)."""

    __test__ = False  # not a pytest test class

    uuid: str | None = None
    """The test's identifier; the bench makes one when it is missing."""
    name: str | None = Field(default=None, min_length=1, max_length=200)
    unit_under_test: str = Field(min_length=1, max_length=100)
    level: Level = "cell"
    test_type: TestType
    n_cycles: int | None = Field(default=None, ge=1, le=MAX_CYCLES)
    """Cycles of a ``cycle_ageing`` test (default 10); the procedure is one cycle."""
    procedure: list[str] | None = Field(default=None, min_length=1, max_length=MAX_STEPS)
    """PyBaMM-style steps, e.g. ``"Discharge at 1C until 2.5 V"``; default: the type's."""
    model: ModelSpec = Field(default_factory=lambda: EcmModelSpec(kind="ecm"))
    bench: BenchKind = "virtual"
    scheduled_at: dt.datetime | None = None
    """UTC; a time without offset is taken as UTC. Default: when the request arrives."""
    dt_s: float | None = Field(default=None, gt=0.0, le=3600.0)
    """Simulation step; default 1 s for HPPC, 10 s otherwise."""
    ambient_c: float = Field(default=25.0, ge=-60.0, le=120.0)
    safety: SafetyOverrides = Field(default_factory=SafetyOverrides)

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(uuid_module.UUID(value))
        except ValueError:
            raise ValueError(f"must be a UUID such as {uuid_module.uuid4()}") from None

    @field_validator("scheduled_at")
    @classmethod
    def _utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # no offset: UTC, as everywhere in the cloud
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)

    @field_validator("procedure")
    @classmethod
    def _steps(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for index, text in enumerate(value):
            try:
                parse_experiment([text])
            except TwinInputError as error:
                raise ValueError(f"step {index}: {error}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TestRequest:
        if self.test_type == "custom" and self.procedure is None:
            raise ValueError("a custom test needs a procedure (a list of experiment steps)")
        if self.n_cycles is not None and self.test_type != "cycle_ageing":
            raise ValueError(f"n_cycles is for cycle_ageing tests, not {self.test_type}")
        return self

    def completed(self) -> TestRequest:
        """This request with its defaults filled in: uuid, name, scheduled time."""
        return self.model_copy(
            update={
                "uuid": self.uuid or str(uuid_module.uuid4()),
                "name": self.name or self.test_type.replace("_", " ").capitalize(),
                "scheduled_at": self.scheduled_at or dt.datetime.now(dt.UTC),
            }
        )


class Variable(_Strict):
    """One recorded variable: its name in data chunks, its unit and its role."""

    name: str
    unit: str
    type: Literal["input", "output", "time"]
    description: str = ""


VARIABLES: tuple[Variable, ...] = (
    Variable(name="time_s", unit="s", type="time", description="time since the test began"),
    Variable(name="step", unit="-", type="input", description="procedure step index"),
    Variable(name="current_a", unit="A", type="input", description="positive discharges"),
    Variable(name="voltage_v", unit="V", type="output", description="terminal voltage"),
    Variable(name="temperature_c", unit="degC", type="output", description="cell surface"),
    Variable(name="soc", unit="-", type="output", description="state of charge, 0..1"),
)
DATA_VARIABLES: tuple[str, ...] = tuple(v.name for v in VARIABLES)

_Number = float | None  # None where a twin has no value (e.g. an FMU without a SoC output)


class StatusMessage(_Strict):
    """A change of a test's status, on ``{root}/results/{uuid}``."""

    kind: Literal["status"] = "status"
    uuid: str | None
    status: Status
    ts: dt.datetime
    test: TestRequest | None = None
    """``started``: the request as the bench runs it (so results from a physical bench
    make their own test record)."""
    variables: list[Variable] | None = None
    """``started``: the variables of the data chunks, with units (declared once)."""
    progress: dict[str, Any] | None = None
    """``in_progress``: step_index, n_steps, step, cycle, time_s."""
    outcome: dict[str, Any] | None = None
    """Final statuses: the end of the run and its KPIs (see docs/test_bench.md)."""
    errors: list[dict[str, Any]] | None = None
    """``rejected``: what was wrong, one entry per field (``loc``, ``msg``)."""

    @model_validator(mode="after")
    def _named(self) -> StatusMessage:
        if self.uuid is None and self.status != "rejected":
            raise ValueError(f"a {self.status} status needs the test's uuid")
        return self


class DataMessage(_Strict):
    """``seq``-numbered samples of a run: parallel arrays, one entry per sample."""

    kind: Literal["data"] = "data"
    uuid: str
    seq: int = Field(ge=0)
    time_s: list[float] = Field(min_length=1)
    step: list[int]
    current_a: list[_Number]
    voltage_v: list[_Number]
    temperature_c: list[_Number]
    soc: list[_Number]

    @model_validator(mode="after")
    def _lengths(self) -> DataMessage:
        n = len(self.time_s)
        for name in DATA_VARIABLES[1:]:
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} values for {n} time_s")
        return self

    def columns(self) -> dict[str, list[Any]]:
        """The arrays by variable name (``time_s`` first)."""
        return {name: list(getattr(self, name)) for name in DATA_VARIABLES}


ResultMessage = Annotated[StatusMessage | DataMessage, Field(discriminator="kind")]
_RESULT: TypeAdapter[StatusMessage | DataMessage] = TypeAdapter(ResultMessage)


class RequestError(ValueError):
    """A request (or result message) that does not follow the format.

    Attributes:
        errors: One ``{"loc": "model.parameter_set", "msg": ...}`` per bad field.
        uuid: The request's uuid, when it had a readable one (to answer on its topic).
    """

    def __init__(self, errors: list[dict[str, Any]], *, uuid: str | None = None) -> None:
        self.errors = errors
        self.uuid = uuid
        super().__init__("; ".join(f"{e['loc'] or '(message)'}: {e['msg']}" for e in errors))


def _errors(error: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": ".".join(str(part) for part in e["loc"]), "msg": e["msg"]} for e in error.errors()
    ]


def _load_json(payload: bytes | str) -> Any:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise RequestError([{"loc": "", "msg": f"larger than {MAX_PAYLOAD_BYTES} bytes"}])
    try:
        return json.loads(payload, parse_constant=_no_constant)
    except ValueError as error:
        raise RequestError([{"loc": "", "msg": f"bad JSON: {error}"}]) from None


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_request(payload: bytes | str) -> TestRequest:
    """A request from JSON text, with its defaults filled in.

    Raises:
        RequestError: Naming each bad field (and the request's uuid, if it was readable).
    """
    data = _load_json(payload)
    try:
        return TestRequest.model_validate(data).completed()
    except ValidationError as error:
        raw = data.get("uuid") if isinstance(data, dict) else None
        readable = None
        if isinstance(raw, str):
            try:
                readable = str(uuid_module.UUID(raw))
            except ValueError:
                readable = None
        raise RequestError(_errors(error), uuid=readable) from None


def parse_result(payload: bytes | str) -> StatusMessage | DataMessage:
    """A status or data message from JSON text.

    Raises:
        RequestError: Naming each bad field.
    """
    data = _load_json(payload)
    try:
        return _RESULT.validate_python(data)
    except ValidationError as error:
        raise RequestError(_errors(error)) from None


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: a value a twin does not have goes out as null."""
    return value if math.isfinite(value) else None
