"""Operating modes and protection (D1.2's high-level diagrams): charging, discharging,
resting, fault.

Pure: :func:`next_mode` takes the present state and a sensor frame and returns the next
state and the limit violations that caused a fault. Any violation (over/under-voltage,
over/under-temperature, over-current in either direction) moves the BMS to ``fault``,
where the contactor stays open; it leaves ``fault`` for ``resting`` only after
``fault_hold_s`` with every reading back inside the limits by a hysteresis margin.
Otherwise the mode follows the measured current: above ``rest_current_a`` discharging,
below minus that charging, else resting.

Example::

    limits = ProtectionLimits.for_cells(params.limits, max_current_a=100.0)
    state = ModeState()
    state, violations = next_mode(state, frame, limits)
    contactor_closed = state.mode is not Mode.fault
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from twin.models.ecm_params import Limits
from virtual_bms.sources import SensorFrame

__all__ = ["Mode", "ModeState", "ProtectionLimits", "Violation", "check_limits", "next_mode"]


class Mode(enum.StrEnum):
    charging = "charging"
    discharging = "discharging"
    resting = "resting"
    fault = "fault"


@dataclass(frozen=True, slots=True)
class ProtectionLimits:
    """Safe operating area of every series group, with the margins to leave a fault.

    Attributes:
        min_voltage_v, max_voltage_v: Group voltage window.
        min_temperature_c, max_temperature_c: Temperature window.
        max_discharge_current_a, max_charge_current_a: String current limits (magnitudes).
        voltage_hysteresis_v, temperature_hysteresis_c: How far inside the window a
            reading must be back before a fault clears.
        fault_hold_s: Least time in ``fault``.
        rest_current_a: Currents within +- this are rest.
    """

    min_voltage_v: float
    max_voltage_v: float
    min_temperature_c: float = -20.0
    max_temperature_c: float = 60.0
    max_discharge_current_a: float = float("inf")
    max_charge_current_a: float = float("inf")
    voltage_hysteresis_v: float = 0.05
    temperature_hysteresis_c: float = 5.0
    fault_hold_s: float = 60.0
    rest_current_a: float = 0.5

    def __post_init__(self) -> None:
        if not self.min_voltage_v < self.max_voltage_v:
            raise ValueError(
                f"min_voltage_v {self.min_voltage_v} must be below max_voltage_v "
                f"{self.max_voltage_v}"
            )
        if not self.min_temperature_c < self.max_temperature_c:
            raise ValueError(
                f"min_temperature_c {self.min_temperature_c} must be below max_temperature_c "
                f"{self.max_temperature_c}"
            )
        for name in ("max_discharge_current_a", "max_charge_current_a", "fault_hold_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def for_cells(
        cls,
        limits: Limits,
        *,
        max_current_a: float = float("inf"),
        voltage_margin_v: float = 0.03,
        **overrides: float,
    ) -> ProtectionLimits:
        """Protection for a cell parameter set's operating window (``EcmParameters.limits``).

        The voltage trips sit ``voltage_margin_v`` outside the operating window, as a BMS's
        over-voltage protection sits above the charge voltage (4.2 V cells commonly trip at
        4.23-4.3 V): a charger holding 4.2 V with 1 mV of sensor noise must not fault.
        """
        values: dict[str, float] = {
            "min_voltage_v": limits.min_voltage_v - voltage_margin_v,
            "max_voltage_v": limits.max_voltage_v + voltage_margin_v,
            "min_temperature_c": limits.min_temperature_c,
            "max_temperature_c": limits.max_temperature_c,
            "max_discharge_current_a": max_current_a,
            "max_charge_current_a": max_current_a,
        }
        return cls(**(values | overrides))


@dataclass(frozen=True, slots=True)
class Violation:
    """A limit crossed: which, by which groups (or strings, for current), at what value."""

    kind: str  # over_voltage, under_voltage, over_temperature, under_temperature,
    # over_current_discharge, over_current_charge
    channels: tuple[int, ...]
    worst: float
    limit: float

    def describe(self) -> str:
        where = ", ".join(map(str, self.channels[:8])) + (" ..." if len(self.channels) > 8 else "")
        return f"{self.kind}: {self.worst:.4g} beyond {self.limit:.4g} at channel(s) {where}"


@dataclass(frozen=True, slots=True)
class ModeState:
    mode: Mode = Mode.resting
    since_s: float = 0.0
    faults: tuple[Violation, ...] = field(default=())
    """What put the BMS in ``fault`` (empty otherwise)."""


def check_limits(frame: SensorFrame, limits: ProtectionLimits) -> list[Violation]:
    """Every limit the frame crosses (empty when all is well)."""
    found: list[Violation] = []

    def add(kind: str, mask: np.ndarray, values: np.ndarray, limit: float, high: bool) -> None:
        if mask.any():
            worst = float(values[mask].max() if high else values[mask].min())
            found.append(Violation(kind, tuple(int(i) for i in np.flatnonzero(mask)), worst, limit))

    v, t, i = frame.voltage_v, frame.temperature_c, frame.current_a
    add("over_voltage", v > limits.max_voltage_v, v, limits.max_voltage_v, True)
    add("under_voltage", v < limits.min_voltage_v, v, limits.min_voltage_v, False)
    add("over_temperature", t > limits.max_temperature_c, t, limits.max_temperature_c, True)
    add("under_temperature", t < limits.min_temperature_c, t, limits.min_temperature_c, False)
    add(
        "over_current_discharge",
        i > limits.max_discharge_current_a,
        i,
        limits.max_discharge_current_a,
        True,
    )
    add(
        "over_current_charge",
        -i > limits.max_charge_current_a,
        i,
        -limits.max_charge_current_a,
        False,
    )
    return found


def _clear(frame: SensorFrame, limits: ProtectionLimits) -> bool:
    """Every reading back inside the window by the hysteresis margins."""
    dv, dt = limits.voltage_hysteresis_v, limits.temperature_hysteresis_c
    return bool(
        np.all(frame.voltage_v <= limits.max_voltage_v - dv)
        and np.all(frame.voltage_v >= limits.min_voltage_v + dv)
        and np.all(frame.temperature_c <= limits.max_temperature_c - dt)
        and np.all(frame.temperature_c >= limits.min_temperature_c + dt)
    )


def next_mode(
    state: ModeState, frame: SensorFrame, limits: ProtectionLimits
) -> tuple[ModeState, list[Violation]]:
    """The mode after ``frame``, and the violations that (newly or still) hold."""
    violations = check_limits(frame, limits)
    now = frame.time_s
    if violations:
        if state.mode is Mode.fault:
            return ModeState(Mode.fault, state.since_s, tuple(violations)), violations
        return ModeState(Mode.fault, now, tuple(violations)), violations
    if state.mode is Mode.fault:
        if now - state.since_s < limits.fault_hold_s or not _clear(frame, limits):
            return state, []
        return ModeState(Mode.resting, now), []
    current = float(np.sum(frame.current_a))
    if current > limits.rest_current_a:
        mode = Mode.discharging
    elif current < -limits.rest_current_a:
        mode = Mode.charging
    else:
        mode = Mode.resting
    return (state if mode is state.mode else ModeState(mode, now)), []
