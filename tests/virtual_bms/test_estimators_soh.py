"""SoH after charge completion: unit behaviour and aged twin cells after a full charge."""

from __future__ import annotations

import numpy as np
import pytest

from twin.models.ecm import EcmOptions
from twin.pack import Pack, SecondLifeSpread
from twin.params import load_parameter_set
from twin.sensors import Sensors, SensorSpec
from virtual_bms.estimators.ecm_model import ecm_model_from_parameters
from virtual_bms.estimators.soc import EkfNoise, ekf_step, initial_ekf_state
from virtual_bms.estimators.soh import SohConfig, SohState, soh_accumulate, soh_after_charge

CONFIG = SohConfig(interval_s=3600.0, min_rest_s=900.0)


def test_capacity_is_charge_over_soc_swing() -> None:
    state = SohState.initial(nominal_capacity_ah=100.0, soh=0.9, n_cells=2)
    # Rest long enough at 20 % to anchor, then charge 60 Ah.
    for _ in range(10):
        state = soh_accumulate(state, current_a=0.0, soc=[0.2, 0.2], dt_s=100.0, config=CONFIG)
    assert np.all(state.anchor_soc == 0.2)
    for _ in range(60):
        state = soh_accumulate(state, current_a=-60.0, soc=[0.5, 0.5], dt_s=60.0, config=CONFIG)
    np.testing.assert_allclose(state.charge_in_ah, 60.0)
    state, est = soh_after_charge(state, soc=[0.95, 0.3], time_s=1e5, config=CONFIG)
    assert est is not None
    np.testing.assert_allclose(est.capacity_ah, [80.0, 600.0])
    np.testing.assert_array_equal(est.trusted, [True, False])  # swing 0.1 is too small
    np.testing.assert_allclose(state.soh, [0.8, 0.9])  # the untrusted cell keeps its SoH
    assert state.last_estimate_s == 1e5


def test_nothing_before_the_interval_and_no_trust_keeps_trying() -> None:
    state = SohState.initial(nominal_capacity_ah=10.0, n_cells=1)
    state, est = soh_after_charge(state, soc=0.9, time_s=0.0, config=CONFIG)
    assert est is not None and not est.trusted.any()  # never anchored: NaN swing
    assert state.last_estimate_s == -np.inf  # so the next charge tries again
    state = SohState(
        nominal_capacity_ah=state.nominal_capacity_ah,
        capacity_ah=state.capacity_ah,
        anchor_soc=np.array([0.1]),
        charge_in_ah=np.array([8.0]),
        rest_s=np.zeros(1),
        last_estimate_s=0.0,
    )
    assert soh_after_charge(state, soc=0.9, time_s=3599.0, config=CONFIG) == (state, None)
    _, est = soh_after_charge(state, soc=0.9, time_s=3600.0, config=CONFIG)
    assert est is not None and est.soh[0] == pytest.approx(1.0)


def test_anchor_moves_only_in_rest_and_explicit_rest_overrides() -> None:
    state = SohState.initial(nominal_capacity_ah=5.0, n_cells=2)
    for _ in range(20):  # 0.2 A on 5 Ah is above the 0.02C rest threshold
        state = soh_accumulate(state, current_a=0.2, soc=0.5, dt_s=60.0, config=CONFIG)
    assert np.isnan(state.anchor_soc).all()
    for _ in range(20):  # ... unless the BMS says it is resting (a noisy current sensor)
        state = soh_accumulate(
            state, current_a=0.2, soc=0.5, dt_s=60.0, config=CONFIG, resting=[True, False]
        )
    assert state.anchor_soc[0] == 0.5 and np.isnan(state.anchor_soc[1])
    assert state.charge_in_ah[0] == 0.0


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="min_soc_swing"):
        SohConfig(min_soc_swing=0.0)
    with pytest.raises(ValueError, match="interval_s"):
        SohConfig(interval_s=-1.0)
    with pytest.raises(ValueError, match="min_soh < max_soh"):
        SohConfig(min_soh=1.0, max_soh=0.5)


def test_soh_of_aged_twin_cells_after_a_full_charge() -> None:
    """16 second-life 100 Ah cells (SoH 0.7-0.9): rest at 10 %, CC-CV charge, estimate."""
    params = load_parameter_set("ecm_example")
    pack = Pack(
        params,
        spread=SecondLifeSpread(),
        soc=0.1,
        options=EcmOptions(ageing="none"),
        seed=3,
    )
    n, dt_s = pack.n_cells, 10.0
    sensors = Sensors(SensorSpec(), n_voltage=n, n_current=1, n_temperature=n, seed=3)
    assumed_soh = 0.8
    ekf = initial_ekf_state(np.full(n, 0.5), n_rc=params.n_rc, soc_std=0.3)
    soh = SohState.initial(
        nominal_capacity_ah=params.nominal_capacity_ah, soh=assumed_soh, n_cells=n
    )
    capacity_ah = assumed_soh * params.nominal_capacity_ah
    current_a, v_max = 0.0, params.limits.max_voltage_v
    charging, done = False, False
    steps = 0
    while not done:
        out = pack.step(current_a=current_a, dt_s=dt_s, ambient_c=25.0)
        reading = sensors.read(
            time_s=out.time_s,
            voltage_v=out.cells.voltage_v,
            current_a=out.current_a,
            temperature_c=out.cells.surface_temperature_c,
        )
        model = ecm_model_from_parameters(
            params,
            n_cells=n,
            temperature_c=reading.temperature_c,
            soc=ekf.soc,
            soh=soh.soh,
            resistance_factor=1.3,
        )
        ekf = ekf_step(
            ekf,
            model,
            current_a=reading.current_a[0],
            voltage_v=reading.voltage_v,
            dt_s=dt_s,
            noise=EkfNoise(),
        )
        soh = soh_accumulate(
            soh, current_a=reading.current_a[0], soc=ekf.soc, dt_s=dt_s, config=CONFIG
        )
        steps += 1
        if not charging and out.time_s >= 1800.0:  # rested half an hour: charge at 0.5C
            charging, current_a = True, -0.5 * capacity_ah
        elif charging and reading.voltage_v.max() >= v_max - 0.002:
            current_a *= 0.9  # constant voltage on the highest cell: taper
        done = charging and abs(current_a) < 0.05 * capacity_ah
        assert steps < 5000
    soh, estimate = soh_after_charge(soh, soc=ekf.soc, time_s=out.time_s, config=CONFIG)
    true_soh = pack.cells.capacity_ah / params.nominal_capacity_ah
    assert np.ptp(true_soh) > 0.1  # the cells really differ
    assert estimate is not None and estimate.trusted.all()
    assert np.all(estimate.soc_swing > 0.6)
    np.testing.assert_allclose(estimate.soh, true_soh, atol=0.02)
    np.testing.assert_allclose(soh.capacity_ah, pack.cells.capacity_ah, atol=2.0)
