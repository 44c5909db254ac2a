"""SoS: limits, alarms per cell, SoT reinforcement, plating and the thermal-runaway warning."""

from __future__ import annotations

import numpy as np
import pytest

from twin.models.base import FloatArray
from twin.models.ecm import CellInit, EcmOptions, EcmTwin
from twin.params import load_parameter_set
from twin.sensors import Sensors, SensorSpec
from virtual_bms.estimators.sos import (
    RunawayRule,
    SafetyInputs,
    SafetyLimits,
    SosError,
    heating_rate_c_per_min,
    state_of_safety,
    thermal_runaway_warning,
)

LIMITS = SafetyLimits(
    min_voltage_v=2.5,
    max_voltage_v=4.2,
    max_discharge_current_a=10.0,
    max_charge_current_a=5.0,
)


def test_cells_far_from_every_limit_are_fully_safe() -> None:
    result = state_of_safety(
        SafetyInputs(
            voltage_v=[3.7, 3.6, 3.8],
            current_a=[2.0, -1.0, 0.0],
            temperature_c=25.0,
            sot_c=[26.0, np.nan, 27.0],
            impedance_ratio=[1.1, np.nan, 1.0],
            phase_shift_deg=[0.5, np.nan, -1.0],
        ),
        limits=LIMITS,
    )
    assert result.sos.tolist() == [1.0, 1.0, 1.0]
    assert result.alarms == ()
    assert result.limiting == ("", "", "")


def test_each_limit_raises_its_own_alarm_with_its_margin() -> None:
    cases = {  # cell: (voltage, current, surface, SoT, |Z| ratio, phase shift)
        0: (4.25, 0.0, 25.0, np.nan, np.nan, np.nan),  # over voltage
        1: (4.18, 0.0, 25.0, np.nan, np.nan, np.nan),  # in the voltage band
        2: (3.7, 10.5, 25.0, np.nan, np.nan, np.nan),  # discharge current beyond
        3: (3.7, -2.0, -2.0, np.nan, np.nan, np.nan),  # charging below 0 degC
        4: (3.7, 0.0, 45.0, 58.0, np.nan, np.nan),  # SoT near the upper limit
        5: (3.7, 0.0, 25.0, 25.0, 1.7, np.nan),  # |Z| grew 70 %
        6: (3.7, 0.0, 25.0, 25.0, 1.0, -5.5),  # phase moved 5.5 deg
    }
    columns = np.array(list(cases.values())).T
    result = state_of_safety(
        SafetyInputs(
            voltage_v=columns[0],
            current_a=columns[1],
            temperature_c=columns[2],
            sot_c=columns[3],
            impedance_ratio=columns[4],
            phase_shift_deg=columns[5],
        ),
        limits=LIMITS,
    )
    expected = {  # cell: (check, level, margin, SoS)
        0: ("over_voltage", "alarm", -0.05, 0.0),
        1: ("over_voltage", "warning", 0.02, 0.4),
        2: ("over_discharge_current", "alarm", -0.5, 0.0),
        3: ("cold_charging", "alarm", -2.0, 0.0),
        4: ("over_temperature", "warning", 2.0, 0.4),
        5: ("impedance_growth", "alarm", -0.2, 0.0),
        6: ("phase_shift", "alarm", -0.5, 0.0),
    }
    for cell, (check, level, margin, sos) in expected.items():
        (alarm,) = result.alarms_for(cell)
        assert (alarm.check, alarm.level) == (check, level)
        assert alarm.margin == pytest.approx(margin)
        assert result.sos[cell] == pytest.approx(sos)
        assert result.limiting[cell] == check
    # The SoT, not the cooler surface, is what the temperature limit saw.
    assert result.alarms_for(4)[0].value == 58.0
    assert "cell 2 over_discharge_current alarm: 10.5 A" in str(result.alarms_for(2)[0])
    # Discharging cell 2 is not charging: the cold-charging check does not apply to it.
    assert np.isnan(result.indicators["cold_charging"][2])


def test_missing_reading_makes_the_cell_unsafe() -> None:
    result = state_of_safety(
        SafetyInputs(voltage_v=[3.7, np.nan], current_a=0.0, temperature_c=25.0), limits=LIMITS
    )
    assert result.sos.tolist() == [1.0, 0.0]
    assert [a.check for a in result.alarms_for(1)] == ["missing_voltage"]


def test_detected_plating_caps_the_sos() -> None:
    result = state_of_safety(
        SafetyInputs(
            voltage_v=[3.9, 3.9, 4.19],
            current_a=0.0,
            temperature_c=10.0,
            plating_detected=[False, True, True],
        ),
        limits=LIMITS,
    )
    assert result.sos == pytest.approx([1.0, 0.5, 0.2])
    assert result.limiting == ("", "lithium_plating", "over_voltage")
    assert [a.check for a in result.alarms_for(1)] == ["lithium_plating"]


def test_limits_validate_and_come_from_a_parameter_set() -> None:
    with pytest.raises(SosError, match=r"min_voltage_v \(4\.3\) must be below max_voltage_v"):
        SafetyLimits(
            min_voltage_v=4.3, max_voltage_v=4.2, max_discharge_current_a=1, max_charge_current_a=1
        )
    with pytest.raises(SosError, match=r"temperature_band_c must be > 0, got 0"):
        SafetyLimits(
            min_voltage_v=2.5,
            max_voltage_v=4.2,
            max_discharge_current_a=1,
            max_charge_current_a=1,
            temperature_band_c=0,
        )
    limits = SafetyLimits.from_parameters(load_parameter_set("nmc_okane2022"))
    assert (limits.min_voltage_v, limits.max_voltage_v) == (2.5, 4.2)
    assert (limits.max_charge_current_a, limits.max_discharge_current_a) == (5.0, 10.0)


def test_heating_rate_is_a_least_squares_slope_over_the_window() -> None:
    t = np.arange(0.0, 900.0, 1.0)
    rng = np.random.default_rng(0)
    ramp = np.column_stack([25.0 + 2.0 * t / 60.0, np.full(t.size, 30.0)])
    noisy = np.round((ramp + 0.5 * rng.standard_normal(ramp.shape)) / 0.1) * 0.1
    noisy[-10:, 1] = np.nan  # a dropped channel keeps its other samples
    rate = heating_rate_c_per_min(t, noisy, window_s=300.0)
    assert rate == pytest.approx([2.0, 0.0], abs=0.08)
    with pytest.raises(SosError, match="strictly increasing"):
        heating_rate_c_per_min(t[::-1], noisy)


def _normal_operation(parameter_set: str, *, c_rate: float) -> tuple[FloatArray, FloatArray]:
    """Surface-temperature readings of three second-life cells over a discharge."""
    params = load_parameter_set(parameter_set)
    twin = EcmTwin(
        params,
        n_cells=3,
        init=CellInit(soc=0.95, temperature_c=25.0, resistance_factor=[1.0, 1.3, 1.6]),
        options=EcmOptions(ageing="none"),
    )
    sensors = Sensors(SensorSpec(), n_voltage=3, n_temperature=3, seed=5)
    times, readings = [], []
    for _ in range(int(0.8 * 3600 / c_rate)):
        step = twin.step(current_a=c_rate * params.nominal_capacity_ah, dt_s=1.0, ambient_c=25.0)
        reading = sensors.read(
            time_s=step.time_s,
            voltage_v=step.voltage_v,
            current_a=step.current_a[0],
            temperature_c=step.surface_temperature_c,
        )
        times.append(step.time_s)
        readings.append(reading.temperature_c)
    return np.array(times), np.array(readings)


@pytest.mark.parametrize(
    ("parameter_set", "c_rate"), [("ecm_example", 1.0), ("nmc_okane2022", 1.0)]
)
def test_runaway_warning_stays_off_in_normal_operation(parameter_set: str, c_rate: float) -> None:
    t, temps = _normal_operation(parameter_set, c_rate=c_rate)
    rng = np.random.default_rng(1)
    peak = np.zeros(temps.shape[1])
    for end in range(300, t.size, 60):  # the check runs every minute
        rate = heating_rate_c_per_min(t[:end], temps[:end])
        peak = np.maximum(peak, rate)
        surface = temps[end - 1]
        warning = thermal_runaway_warning(
            rate_c_per_min=rate,
            surface_temperature_c=surface,
            sot_c=surface + rng.normal(0.0, 1.0, surface.size),  # SoT error ~1 K
            impedance_ratio=1.0 + rng.normal(0.0, 0.02, surface.size),
            phase_shift_deg=rng.normal(0.0, 0.5, surface.size),
        )
        assert not warning.warning.any()
    # Measured peak slopes: ecm_example (100 Ah) 0.30-0.48 degC/min; nmc_okane2022 (a lone
    # 21700, near adiabatic) 1.2-1.8 degC/min: a heating vote at most, never a warning.
    assert peak.max() < RunawayRule().heating_rate_c_per_min


def _runaway_ramp() -> tuple[FloatArray, FloatArray]:
    """Self-heating that accelerates (exponential onset), read by a noisy thermistor."""
    t = np.arange(0.0, 600.0, 1.0)
    surface = 40.0 + 0.4 * (np.exp(t / 150.0) - 1.0)  # 8.7 degC/min at the end
    rng = np.random.default_rng(3)
    return t, np.round((surface + 0.5 * rng.standard_normal(t.size)) / 0.1) * 0.1


def test_runaway_warning_triggers_on_a_runaway_like_ramp() -> None:
    t, read = _runaway_ramp()
    rate = heating_rate_c_per_min(t, read, window_s=120.0)
    surface = read[-1:]
    warning = thermal_runaway_warning(
        rate_c_per_min=rate,
        surface_temperature_c=surface,
        sot_c=surface + 9.0,  # the core leads: heat is made inside
        impedance_ratio=[0.7],  # |Z| falls as the core heats
    )
    assert warning.warning.tolist() == [True]
    assert warning.votes.tolist() == [3]
    assert not warning.critical[0]
    assert 4.0 < warning.rate_c_per_min[0] < 10.0

    result = state_of_safety(
        SafetyInputs(voltage_v=3.9, current_a=0.0, temperature_c=surface, sot_c=surface + 9.0),
        limits=LIMITS,
        runaway=warning,
    )
    assert result.sos.tolist() == [0.0]
    assert result.limiting == ("thermal_runaway",)
    assert any(a.check == "thermal_runaway" and a.level == "alarm" for a in result.alarms)


def test_runaway_voting_needs_two_of_the_available_indicators() -> None:
    rule = RunawayRule()
    heating = rule.heating_rate_c_per_min + 1.0
    warning = thermal_runaway_warning(
        rate_c_per_min=[heating, heating, heating, 0.0, rule.critical_rate_c_per_min],
        surface_temperature_c=[40.0, 40.0, 40.0, 40.0, 40.0],
        sot_c=[40.5, 47.0, np.nan, 47.0, 40.0],
        impedance_ratio=[1.0, 1.0, np.nan, 0.6, 1.0],
        rule=rule,
    )
    # 0: heating only, EIS and SoT normal (a thermistor glitch);
    # 1: heating + hot core; 2: no EIS at all, heating is the only indicator;
    # 3: hot core + impedance anomaly at steady temperature (an internal short);
    # 4: critical heating alone.
    assert warning.warning.tolist() == [False, True, True, True, True]
    assert warning.available.tolist() == [3, 3, 1, 3, 3]
    assert warning.critical.tolist() == [False, False, False, False, True]


def test_runaway_warning_must_match_the_cells() -> None:
    warning = thermal_runaway_warning(rate_c_per_min=[0.0, 0.0], surface_temperature_c=25.0)
    with pytest.raises(SosError, match="runaway warning covers 2 cells, inputs 3"):
        state_of_safety(
            SafetyInputs(voltage_v=[3.7] * 3, current_a=0.0, temperature_c=25.0),
            limits=LIMITS,
            runaway=warning,
        )
