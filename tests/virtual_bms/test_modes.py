"""Mode transitions and protection: every limit faults, faults hold and clear with margin."""

from __future__ import annotations

import numpy as np
import pytest

from virtual_bms.modes import Mode, ModeState, ProtectionLimits, check_limits, next_mode
from virtual_bms.sources import SensorFrame

LIMITS = ProtectionLimits(
    min_voltage_v=2.5,
    max_voltage_v=4.2,
    min_temperature_c=-10.0,
    max_temperature_c=55.0,
    max_discharge_current_a=100.0,
    max_charge_current_a=50.0,
    fault_hold_s=30.0,
)


def frame(
    t: float,
    *,
    v: float = 3.7,
    i: float = 0.0,
    temp: float = 25.0,
    n: int = 4,
    cell: int | None = None,
    cell_v: float | None = None,
) -> SensorFrame:
    voltage = np.full(n, v)
    if cell is not None and cell_v is not None:
        voltage[cell] = cell_v
    return SensorFrame(t, voltage, np.array([i]), np.full(n, temp))


def test_mode_follows_the_current_sign_with_a_rest_band() -> None:
    state = ModeState()
    state, _ = next_mode(state, frame(1, i=20.0), LIMITS)
    assert state.mode is Mode.discharging and state.since_s == 1
    state, _ = next_mode(state, frame(2, i=19.0), LIMITS)
    assert state.since_s == 1  # same mode: the time it started is kept
    state, _ = next_mode(state, frame(3, i=-10.0), LIMITS)
    assert state.mode is Mode.charging
    state, _ = next_mode(state, frame(4, i=0.3), LIMITS)
    assert state.mode is Mode.resting


@pytest.mark.parametrize(
    ("kwargs", "kind"),
    [
        ({"cell": 2, "cell_v": 4.25}, "over_voltage"),
        ({"cell": 0, "cell_v": 2.4}, "under_voltage"),
        ({"temp": 61.0}, "over_temperature"),
        ({"temp": -12.0}, "under_temperature"),
        ({"i": 120.0}, "over_current_discharge"),
        ({"i": -60.0}, "over_current_charge"),
    ],
)
def test_each_limit_faults_and_names_itself(kwargs: dict[str, float], kind: str) -> None:
    state, violations = next_mode(ModeState(Mode.discharging), frame(5, **kwargs), LIMITS)  # type: ignore[arg-type]
    assert state.mode is Mode.fault and [v.kind for v in violations] == [kind]
    if "cell" in kwargs:
        assert violations[0].channels == (kwargs["cell"],)
    assert kind.split("_")[0] in violations[0].describe()


def test_a_fault_holds_then_clears_only_with_margin() -> None:
    state, _ = next_mode(ModeState(), frame(0, cell=1, cell_v=4.3), LIMITS)
    assert state.mode is Mode.fault
    state, _ = next_mode(state, frame(10), LIMITS)
    assert state.mode is Mode.fault  # inside the hold time
    state, _ = next_mode(state, frame(40, cell=1, cell_v=4.17), LIMITS)
    assert state.mode is Mode.fault  # within limits but not by the 50 mV margin
    state, _ = next_mode(state, frame(41, cell=1, cell_v=4.1), LIMITS)
    assert state.mode is Mode.resting


def test_nothing_is_reported_inside_the_limits() -> None:
    assert check_limits(frame(0, v=4.2, i=100.0, temp=55.0), LIMITS) == []


def test_inconsistent_limits_are_refused() -> None:
    with pytest.raises(ValueError, match=r"min_voltage_v 4\.2 must be below"):
        ProtectionLimits(min_voltage_v=4.2, max_voltage_v=3.0)
