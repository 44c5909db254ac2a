"""Active balancing on demand: thresholds, currents, and a real twin pack balanced to < 30 mV."""

from __future__ import annotations

import numpy as np
import pytest

from twin.models.ecm import EcmOptions
from twin.pack import Pack, SecondLifeSpread
from twin.params import load_parameter_set
from twin.sensors import Sensors, SensorSpec
from virtual_bms.estimators.balancing import (
    BalancingConfig,
    BalancingState,
    StopReason,
    balancing_currents,
    balancing_step,
)

CONFIG = BalancingConfig()


def voltages_with_spread(spread_v: float, n: int = 16) -> np.ndarray:
    return 3.7 + np.linspace(-spread_v / 2, spread_v / 2, n)


def test_request_at_90_mv_spread_finishes_at_once() -> None:
    state, current = balancing_step(
        BalancingState(),
        voltage_v=voltages_with_spread(0.090),
        request=True,
        dt_s=1.0,
        config=CONFIG,
    )
    assert not state.active and state.stop_reason is StopReason.not_needed
    assert state.spread_v == pytest.approx(0.090)
    assert not current.any()


def test_request_at_110_mv_spread_starts() -> None:
    state, current = balancing_step(
        BalancingState(),
        voltage_v=voltages_with_spread(0.110),
        request=True,
        dt_s=1.0,
        config=CONFIG,
    )
    assert state.active and state.stop_reason is None and state.elapsed_s == 0.0
    assert current[-1] == pytest.approx(CONFIG.current_a)  # the highest cell gives most
    assert current[0] == pytest.approx(-CONFIG.current_a * CONFIG.efficiency)
    # What the low cells receive is what the high cells give, less the converter's loss.
    assert -current[current < 0].sum() == pytest.approx(
        CONFIG.efficiency * current[current > 0].sum()
    )


def test_no_request_no_balancing() -> None:
    state, current = balancing_step(
        BalancingState(),
        voltage_v=voltages_with_spread(0.3),
        request=False,
        dt_s=1.0,
        config=CONFIG,
    )
    assert not state.active and state.stop_reason is None and not current.any()


def test_dissipative_mode_bleeds_towards_the_lowest_cell() -> None:
    config = BalancingConfig(mode="dissipative", current_a=0.5)
    v = np.array([3.70, 3.75, 3.82, 3.71])
    current = balancing_currents(v, config)
    np.testing.assert_allclose(current, [0.0, 0.5 * 5 / 12, 0.5, 0.5 / 12])


def test_abort_and_requests_while_running() -> None:
    state, _ = balancing_step(
        BalancingState(), voltage_v=voltages_with_spread(0.2), request=True, dt_s=1.0, config=CONFIG
    )
    state, current = balancing_step(
        state, voltage_v=voltages_with_spread(0.2), request=True, dt_s=10.0, config=CONFIG
    )
    assert state.active and state.elapsed_s == 10.0 and current.any()
    state, current = balancing_step(
        state,
        voltage_v=voltages_with_spread(0.2),
        request=False,
        dt_s=10.0,
        config=CONFIG,
        abort=True,
    )
    assert not state.active and state.stop_reason is StopReason.aborted and not current.any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stop_spread_v": 0.2}, "below start_spread_v"),
        ({"current_a": 0.0}, "current_a"),
        ({"efficiency": 1.5}, "efficiency"),
        ({"mode": "magic"}, "mode"),
        ({"max_duration_s": float("inf")}, "max_duration_s"),
    ],
)
def test_config_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BalancingConfig(**kwargs)  # type: ignore[arg-type]


def _spread_pack(seed: int = 0) -> tuple[Pack, Sensors]:
    """16 second-life 100 Ah cells resting around 80 % SoC, 4 % SoC spread: ~120 mV."""
    pack = Pack(
        load_parameter_set("ecm_example"),
        spread=SecondLifeSpread(soc_std=0.04),
        soc=0.8,
        options=EcmOptions(ageing="none"),
        seed=seed,
    )
    sensors = Sensors(SensorSpec(), n_voltage=16, n_current=1, n_temperature=16, seed=seed)
    return pack, sensors


def _balance(
    pack: Pack, sensors: Sensors, config: BalancingConfig, dt_s: float = 60.0
) -> tuple[BalancingState, np.ndarray, float]:
    """Run the machine on the twin until it stops; return state, last reading, true spread
    at the start."""
    out = pack.step(current_a=0.0, dt_s=dt_s, ambient_c=25.0)
    true_start = float(np.ptp(out.cells.voltage_v))
    state, current = BalancingState(), np.zeros(pack.n_cells)
    request = True
    for _ in range(1000):
        reading = sensors.read(
            time_s=out.time_s,
            voltage_v=out.cells.voltage_v,
            current_a=out.current_a,
            temperature_c=out.cells.surface_temperature_c,
        )
        state, current = balancing_step(
            state, voltage_v=reading.voltage_v, request=request, dt_s=dt_s, config=config
        )
        request = False
        pack.set_balancing(current)
        if not state.active:
            return state, reading.voltage_v, true_start
        out = pack.step(current_a=0.0, dt_s=dt_s, ambient_c=25.0)
    raise AssertionError("balancing never stopped")


def test_twin_pack_is_balanced_below_30_mv() -> None:
    pack, sensors = _spread_pack()
    soc_before = pack.cells.soc
    state, measured, true_start = _balance(pack, sensors, CONFIG)
    assert true_start > 0.110
    assert state.stop_reason is StopReason.spread_reached
    assert np.ptp(measured) < 0.030 and state.elapsed_s < CONFIG.max_duration_s
    assert not pack.balancing_current_a.any()  # the balancer pin is released
    # Charge moved from the high cells to the low ones.
    soc_after = pack.cells.soc
    assert np.ptp(soc_after) < 0.4 * np.ptp(soc_before)
    assert soc_after[np.argmax(soc_before)] < soc_before.max()
    assert soc_after[np.argmin(soc_before)] > soc_before.min()
    # Relaxed for an hour, the true spread stays near the threshold.
    for _ in range(60):
        out = pack.step(current_a=0.0, dt_s=60.0, ambient_c=25.0)
    assert np.ptp(out.cells.voltage_v) < 0.040


def test_twin_pack_balancing_times_out() -> None:
    pack, sensors = _spread_pack()
    config = BalancingConfig(max_duration_s=1800.0)
    state, measured, _ = _balance(pack, sensors, config)
    assert state.stop_reason is StopReason.timeout
    assert state.elapsed_s == pytest.approx(1800.0)
    assert np.ptp(measured) > 0.030
