"""SoC estimation against the twin's truth: EKF, ECM-based SoC, their combination, ECM updates."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest

from cloud.mqtt.contract import EcmUpdateParams
from twin.models.base import FloatArray
from twin.models.ecm import EcmOptions
from twin.pack import Pack, SecondLifeSpread
from twin.params import load_parameter_set
from twin.sensors import Sensors, SensorSpec
from virtual_bms.estimators.ecm_model import (
    EcmModel,
    apply_ecm_update,
    ecm_model_from_parameters,
)
from virtual_bms.estimators.soc import (
    CoulombState,
    EkfNoise,
    EkfState,
    ThreeStepSocState,
    combine_soc,
    coulomb_step,
    ekf_step,
    initial_ekf_state,
    three_step_soc,
)

NO_AGEING = EcmOptions(ageing="none")
DT_S = 5.0
ASSUMED_SOH = 0.8  # the BMS does not know each second-life cell's capacity (true: 0.7-0.9)
ASSUMED_RESISTANCE_FACTOR = 1.3  # nor its resistance (true: 1.3 +- 0.1 per cell)


def dynamic_profile(rng: np.random.Generator, *, dt_s: float = DT_S) -> FloatArray:
    """C-rates of a home-storage-like day in 3 h: charge, rest, discharge, rest, charge.

    Each phase is a chain of 10-300 s pulses scattered around the phase's mean, with
    15 % idle pulses; the true SoC of a pack started at 0.6 spans about 0.3..0.85.
    """
    phases = ((-0.35, 2400.0), (0.0, 600.0), (0.53, 4800.0), (0.0, 600.0), (-0.47, 2400.0))
    out = []
    for mean, duration_s in phases:
        n = int(duration_s / dt_s)
        seg = np.zeros(n)
        k = 0
        while k < n:
            length = int(rng.integers(10, 300) / dt_s) + 1
            idle = mean == 0.0 or rng.random() < 0.15
            seg[k : k + length] = 0.0 if idle else np.clip(mean + rng.normal(0, 0.4), -0.9, 1.2)
            k += length
        out.append(seg)
    return np.concatenate(out)


@dataclass
class Run:
    """Errors (estimate - truth) per step and cell."""

    ekf: FloatArray
    combined: FloatArray
    coulomb: FloatArray
    truth: FloatArray

    def convergence_s(self, tolerance: float = 0.02) -> float:
        """Time until every cell's EKF error is first below ``tolerance``."""
        below = np.flatnonzero(np.abs(self.ekf).max(axis=1) < tolerance)
        return float((below[0] + 1) * DT_S) if below.size else np.inf


def rmse(errors: FloatArray) -> float:
    return float(np.sqrt(np.mean(errors**2)))


def run_pack(
    name: str,
    *,
    initial_error: float,
    soc_std: float = 0.25,
    ambient_c: float = 25.0,
    current_offset_c: float | None = None,
    seed: int = 1,
) -> Run:
    """A 16-cell second-life pack through :func:`dynamic_profile`, read by noisy sensors
    and tracked by the three-step estimator on a model rebuilt every step at the measured
    temperatures."""
    params = load_parameter_set(name)
    pack = Pack(
        params,
        spread=SecondLifeSpread(),
        soc=0.6,
        temperature_c=ambient_c,
        options=NO_AGEING,
        seed=seed,
    )
    n = pack.n_cells
    spec = SensorSpec()
    if current_offset_c is not None:
        offset_a = current_offset_c * params.nominal_capacity_ah
        spec = dataclasses.replace(
            spec, current=dataclasses.replace(spec.current, offset=offset_a, offset_std=0.0)
        )
    sensors = Sensors(spec, n_voltage=n, n_current=1, n_temperature=n, seed=seed)
    c_rate = dynamic_profile(np.random.default_rng(seed))
    capacity_ah = ASSUMED_SOH * params.nominal_capacity_ah
    state = ThreeStepSocState.initial(
        np.clip(pack.cells.soc + initial_error, 0.0, 1.0), n_rc=params.n_rc, soc_std=soc_std
    )
    noise = EkfNoise()
    ekf, combined, coulomb, truth = (np.empty((c_rate.size, n)) for _ in range(4))
    for k, c in enumerate(c_rate):
        out = pack.step(current_a=c * capacity_ah, dt_s=DT_S, ambient_c=ambient_c)
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
            soc=state.ekf.soc,
            soh=ASSUMED_SOH,
            resistance_factor=ASSUMED_RESISTANCE_FACTOR,
        )
        state, estimate = three_step_soc(
            state,
            model,
            current_a=reading.current_a[0],
            voltage_v=reading.voltage_v,
            dt_s=DT_S,
            noise=noise,
        )
        truth[k] = out.cells.truth.soc
        ekf[k] = state.ekf.soc - truth[k]
        combined[k] = estimate.soc - truth[k]
        coulomb[k] = state.coulomb.soc - truth[k]
    return Run(ekf=ekf, combined=combined, coulomb=coulomb, truth=truth)


@pytest.mark.parametrize(("name", "initial_error"), [("ecm_example", 0.2), ("nmc_okane2022", -0.2)])
def test_ekf_tracks_second_life_pack_from_20_points_wrong(name: str, initial_error: float) -> None:
    run = run_pack(name, initial_error=initial_error)
    assert np.ptp(run.truth) > 0.4  # the profile really moves the SoC
    assert run.convergence_s() <= 60.0
    assert rmse(run.ekf) <= 0.02
    assert rmse(run.combined) <= 0.02
    after = int(600 / DT_S)
    assert np.abs(run.ekf[after:]).max() <= 0.04
    # The ECM-based SoC alone never recovers from the wrong start.
    assert rmse(run.coulomb) > 0.1


def test_overconfident_wrong_start_still_converges_in_the_cold() -> None:
    """Temperature through the model (10 degC); the filter believes +-2 % but is 20 off."""
    run = run_pack("nmc_okane2022", initial_error=0.2, soc_std=0.02, ambient_c=10.0)
    assert run.convergence_s() <= 900.0
    assert rmse(run.ekf) <= 0.02


def test_current_offset_drifts_coulomb_counting_but_not_the_ekf() -> None:
    # 1 % of C offset: the ECM-based SoC drifts about 1 % per hour on top of its start error.
    run = run_pack("ecm_example", initial_error=0.0, soc_std=0.02, current_offset_c=0.01)
    drift = run.coulomb[-1] - run.coulomb[0]
    assert np.all(drift < -0.015)  # reads more discharge than there is
    assert rmse(run.ekf) <= 0.01
    assert abs(float(np.mean(run.ekf[-100:]))) <= 0.01


def _okane_model(n: int, **kwargs: object) -> EcmModel:
    return ecm_model_from_parameters(
        load_parameter_set("nmc_okane2022"),
        n_cells=n,
        soc=0.6,
        soh=ASSUMED_SOH,
        resistance_factor=ASSUMED_RESISTANCE_FACTOR,
        **kwargs,  # type: ignore[arg-type]
    )


def test_ecm_update_takes_effect_in_the_next_step() -> None:
    n = 4
    wrong = _okane_model(n, n_rc=1)
    state = initial_ekf_state(np.full(n, 0.6), n_rc=1, soc_std=0.05)
    update = EcmUpdateParams(voltage=3.8, r0=0.05, r1=0.02, c1=2000.0, r2=0.01, c2=30000.0)
    right = apply_ecm_update(wrong, update)
    current, voltage = 3.0, np.full(n, 3.6)
    after = ekf_step(state, right, current_a=current, voltage_v=voltage, dt_s=1.0, noise=EkfNoise())
    assert after.n_rc == 2 and after.covariance.shape == (n, 3, 3)
    # The innovation is the measured voltage minus the *updated* model's prediction.
    soc = 0.6 - current / 3600.0 / right.capacity_ah
    a = np.exp(-1.0 / right.tau_s)
    rc = right.rc_resistance_ohm * (1 - a) * current
    predicted = right.ocv_v(soc) - 0.05 * current - rc.sum(axis=0)
    np.testing.assert_allclose(after.innovation_v, voltage - predicted, atol=1e-12)


def test_ecm_update_from_wrong_to_right_parameters_improves_accuracy() -> None:
    """Pillar 1: a fixed model (from the cloud), wrong at first, updated half-way."""
    params = load_parameter_set("nmc_okane2022")
    pack = Pack(params, spread=SecondLifeSpread(), soc=0.6, options=NO_AGEING, seed=1)
    n = pack.n_cells
    sensors = Sensors(SensorSpec(), n_voltage=n, n_current=1, n_temperature=n, seed=1)
    c_rate = dynamic_profile(np.random.default_rng(1))
    half = c_rate.size // 2
    base = _okane_model(n, n_rc=1)
    wrong = dataclasses.replace(  # R0 three times too high, the RC pair three times too low
        base,
        r0_ohm=3 * base.r0_ohm,
        rc_resistance_ohm=base.rc_resistance_ohm / 3,
        rc_capacitance_f=base.rc_capacitance_f * 3,
    )
    models = {"kept": wrong, "updated": wrong}
    states = {key: initial_ekf_state(pack.cells.soc, n_rc=1, soc_std=0.05) for key in models}
    errors = {key: np.empty((c_rate.size, n)) for key in models}
    for k, c in enumerate(c_rate):
        out = pack.step(current_a=c * ASSUMED_SOH * 5.0, dt_s=DT_S, ambient_c=25.0)
        reading = sensors.read(
            time_s=out.time_s,
            voltage_v=out.cells.voltage_v,
            current_a=out.current_a,
            temperature_c=out.cells.surface_temperature_c,
        )
        if k == half:
            # What the cloud would fit from an EIS now: the cells' mean small-signal ECM.
            now = pack.cells.ecm_parameters_now()
            update = EcmUpdateParams(
                voltage=float(np.mean(params.ocv_at(pack.cells.soc))),
                r0=float(now["r0_ohm"].mean()),
                r1=float(now["r1_ohm"].mean()),
                c1=float(now["c1_f"].mean()),
                r2=float(now["r2_ohm"].mean()),
                c2=float(now["c2_f"].mean()),
            )
            models["updated"] = apply_ecm_update(wrong, update)
            np.testing.assert_allclose(models["updated"].valid_at_soc, pack.cells.soc, atol=0.03)
        for key, model in models.items():
            states[key] = ekf_step(
                states[key],
                model,
                current_a=reading.current_a[0],
                voltage_v=reading.voltage_v,
                dt_s=DT_S,
                noise=EkfNoise(),
            )
            errors[key][k] = states[key].soc - out.cells.truth.soc
    np.testing.assert_array_equal(errors["kept"][:half], errors["updated"][:half])
    kept, updated = rmse(errors["kept"][half:]), rmse(errors["updated"][half:])
    assert updated <= 0.5 * kept
    assert updated <= 0.01


def test_missing_voltage_predicts_only() -> None:
    model = _okane_model(3)
    state = initial_ekf_state(np.full(3, 0.5), n_rc=model.n_rc)
    out = ekf_step(
        state,
        model,
        current_a=2.0,
        voltage_v=np.array([np.nan, 3.7, np.nan]),
        dt_s=10.0,
        noise=EkfNoise(),
    )
    coulomb = 0.5 - 2.0 * 10.0 / 3600.0 / model.capacity_ah
    np.testing.assert_allclose(out.soc[[0, 2]], coulomb[[0, 2]])
    assert np.isnan(out.innovation_v[[0, 2]]).all() and np.isfinite(out.innovation_v[1])
    assert out.soc_std[0] > state.soc_std[0] > out.soc_std[1]


def test_fewer_rc_pairs_keep_the_total_polarisation() -> None:
    model2 = _okane_model(2)
    model1 = _okane_model(2, n_rc=1)
    state = initial_ekf_state(np.full(2, 0.5), n_rc=2)
    for _ in range(30):
        state = ekf_step(
            state, model2, current_a=4.0, voltage_v=np.nan, dt_s=10.0, noise=EkfNoise()
        )
    total = state.rc_voltage_v.sum(axis=0)
    out = ekf_step(state, model1, current_a=0.0, voltage_v=np.nan, dt_s=1e-6, noise=EkfNoise())
    np.testing.assert_allclose(out.rc_voltage_v.sum(axis=0), total, rtol=1e-6)


def test_combination_weights_by_variance() -> None:
    ekf = initial_ekf_state(np.array([0.5, 0.5, 0.5]), n_rc=1, soc_std=0.1)
    coulomb = CoulombState(soc=np.array([0.7, 0.7, 0.7]), variance=np.array([0.01, 1e-8, 1e4]))
    est = combine_soc(coulomb, ekf)
    np.testing.assert_allclose(est.soc, [0.6, 0.7, 0.5], atol=1e-3)
    np.testing.assert_allclose(est.ekf_weight, [0.5, 0.0, 1.0], atol=1e-3)
    assert est.std[0] == pytest.approx(np.sqrt(0.005))


def test_coulomb_step_counts_charge_and_grows_variance() -> None:
    model = _okane_model(2)
    state = CoulombState(soc=np.array([0.2, 0.9]), variance=np.zeros(2))
    out = coulomb_step(state, model, current_a=[-4.0, 4.0], dt_s=900.0, noise=EkfNoise())
    np.testing.assert_allclose(out.soc, [0.2 + 1.0 / 4.0, 0.9 - 1.0 / 4.0])
    assert np.all(out.variance > 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dt_s": 0.0}, "dt_s"),
        ({"current_a": [1.0, 2.0]}, "current_a"),
        ({"current_a": np.inf}, "current_a"),
        ({"iterations": 0}, "iterations"),
    ],
)
def test_ekf_step_rejects_bad_input(kwargs: dict[str, object], match: str) -> None:
    model = _okane_model(3)
    args: dict[str, object] = {
        "current_a": 1.0,
        "voltage_v": 3.7,
        "dt_s": 1.0,
        "noise": EkfNoise(),
    }
    args.update(kwargs)
    state = initial_ekf_state(np.full(3, 0.5), n_rc=2)
    with pytest.raises(ValueError, match=match):
        ekf_step(state, model, **args)  # type: ignore[arg-type]


def test_state_and_noise_validation() -> None:
    with pytest.raises(ValueError, match="voltage_std_v"):
        EkfNoise(voltage_std_v=0.0)
    with pytest.raises(ValueError, match="soc_drift_per_sqrt_h"):
        EkfNoise(soc_drift_per_sqrt_h=-1.0)
    with pytest.raises(ValueError, match="covariance"):
        EkfState(
            soc=np.zeros(2),
            rc_voltage_v=np.zeros((1, 2)),
            covariance=np.zeros((2, 3, 3)),
            innovation_v=np.zeros(2),
        )
    with pytest.raises(ValueError, match="cells"):
        ekf_step(
            initial_ekf_state(np.full(2, 0.5), n_rc=2),
            _okane_model(3),
            current_a=0.0,
            voltage_v=3.7,
            dt_s=1.0,
            noise=EkfNoise(),
        )
