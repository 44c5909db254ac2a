"""Tests for twin.calibrate: the pulse fitter, the shipped sets and a reduced calibration."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from twin.calibrate import (
    CalibrationConfig,
    PulseRecord,
    calibrate_from_pybamm,
    fit_pulses,
    parse_source,
    rc_response,
    validation_profile,
)
from twin.errors import ParameterSetError
from twin.models.ecm import CellInit, EcmOptions, EcmTwin
from twin.models.ecm_params import CHARGE, DISCHARGE, EcmParameters, Limits
from twin.params import load_parameter_set

# PyBaMM asks about telemetry on first import unless told not to.
os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")


def _synthetic_set(
    r0: tuple[float, float], r_rc: list[tuple[float, float]], tau_s: list[float]
) -> EcmParameters:
    """Constant tables (discharge, charge) on a uniform SoC grid at one temperature."""
    soc = np.linspace(0.0, 1.0, 11)
    ones = np.ones((1, soc.size))

    def table(pair: tuple[float, float]) -> np.ndarray:
        return np.stack([pair[DISCHARGE] * ones, pair[CHARGE] * ones])

    return EcmParameters(
        name="synthetic",
        source="test",
        chemistry="nmc",
        nominal_capacity_ah=5.0,
        soc_grid=soc,
        ocv_v=3.3 + 0.8 * soc + 0.1 * soc**2,
        entropic_v_per_k=np.zeros(soc.size),
        temperature_grid_c=np.array([25.0]),
        r0_ohm=table(r0),
        rc_resistance_ohm=np.stack([table(r) for r in r_rc]),
        rc_capacitance_f=np.stack(
            [table((t / r[0], t / r[1])) for r, t in zip(r_rc, tau_s, strict=True)]
        ),
        limits=Limits(min_voltage_v=2.5, max_voltage_v=4.2),
    )


def _ecm_record(params: EcmParameters, segments: list[tuple[float, float]]) -> PulseRecord:
    """Run ``segments`` of (current, duration) through EcmTwin in 0.5 s steps."""
    twin = EcmTwin(
        params,
        init=CellInit(soc=0.5, temperature_c=25.0),
        options=EcmOptions(ageing="none", thermal=False),
    )
    times, volts, ocvs = [], [], []
    t = 0.0
    for current, duration in segments:
        for _ in range(round(duration / 0.5)):
            out = twin.step(current_a=current, dt_s=0.5, ambient_c=25.0)
            t += 0.5
            times.append(t)
            volts.append(out.voltage_v[0])
            ocvs.append(float(params.ocv_at(out.truth.soc[0], 25.0)))
    edges = np.concatenate([[0.0], np.cumsum([d for _, d in segments])])
    return PulseRecord(
        edges_s=edges,
        current_a=np.array([c for c, _ in segments]),
        time_s=np.array(times),
        voltage_v=np.array(volts),
        ocv_v=np.array(ocvs),
    )


PULSES = [(10.0, 30.0), (0.0, 120.0), (-10.0, 30.0), (0.0, 120.0)]


def test_fit_recovers_one_rc_pair_from_ecm_pulse() -> None:
    params = _synthetic_set((0.012, 0.015), [(0.008, 0.006)], [20.0])
    fit = fit_pulses([_ecm_record(params, PULSES)], n_rc=1)
    np.testing.assert_allclose(fit.r0_ohm[0], [0.012, 0.015], rtol=0.02)
    np.testing.assert_allclose(fit.rc_resistance_ohm[0, 0], [0.008, 0.006], rtol=0.02)
    np.testing.assert_allclose(fit.rc_capacitance_f[0, 0], [2500.0, 20.0 / 0.006], rtol=0.02)
    assert fit.rms_mv[0] < 0.1


def test_fit_recovers_two_rc_pairs_from_ecm_pulses() -> None:
    params = _synthetic_set((0.02, 0.02), [(0.005, 0.004), (0.010, 0.012)], [4.0, 250.0])
    long_pulses = [(2.5, 300.0), (0.0, 1800.0), (-2.5, 300.0), (0.0, 1800.0)]
    fit = fit_pulses([_ecm_record(params, PULSES + long_pulses)], n_rc=2)
    np.testing.assert_allclose(fit.tau_s, [4.0, 250.0], rtol=0.02)
    np.testing.assert_allclose(fit.r0_ohm[0], [0.02, 0.02], rtol=0.02)
    np.testing.assert_allclose(
        fit.rc_resistance_ohm[:, 0], [[0.005, 0.004], [0.010, 0.012]], rtol=0.02
    )


def test_fit_leaves_unexcited_direction_nan() -> None:
    params = _synthetic_set((0.012, 0.015), [(0.008, 0.006)], [20.0])
    fit = fit_pulses([_ecm_record(params, [(10.0, 30.0), (0.0, 120.0)])], n_rc=1)
    assert np.isnan(fit.r0_ohm[0, CHARGE])
    np.testing.assert_allclose(fit.r0_ohm[0, DISCHARGE], 0.012, rtol=0.02)


def test_rc_response_is_the_exact_exponential() -> None:
    edges = np.array([0.0, 10.0, 30.0])
    t = np.array([5.0, 10.0, 20.0])
    v = rc_response(edges_s=edges, current_a=np.array([2.0, 0.0]), time_s=t, tau_s=5.0)
    end = 2.0 * (1 - np.exp(-2.0))
    np.testing.assert_allclose(v, [2.0 * (1 - np.exp(-1.0)), end, end * np.exp(-2.0)])


def test_validation_profile_is_seeded_and_stays_in_the_window() -> None:
    edges, current = validation_profile(capacity_ah=5.0, hours=4.0, seed=3, initial_soc=0.8)
    again, _ = validation_profile(capacity_ah=5.0, hours=4.0, seed=3, initial_soc=0.8)
    np.testing.assert_array_equal(edges, again)
    soc = 0.8 - np.cumsum(current * np.diff(edges)) / 3600.0 / 5.0
    assert edges[-1] >= 4 * 3600 and soc.min() >= 0.1 - 1e-9 and soc.max() <= 0.95 + 1e-9
    assert current.max() > 5.0 and current.min() < -0.5  # spikes above 1C and charging


@pytest.mark.parametrize("name", ["nmc_okane2022", "nmc_chen2020", "lfp_prada2013"])
def test_shipped_sets_load_and_step(name: str) -> None:
    params = load_parameter_set(name)
    assert params.n_rc == 2 and params.temperature_grid_c.size >= 3
    assert params.chemistry == name.split("_")[0]
    assert "PyBaMM" in params.source
    twin = EcmTwin(
        params,
        n_cells=2,
        init=CellInit(soc=[0.3, 0.8], temperature_c=20.0),
        options=EcmOptions(ageing="none"),
    )
    for current in (params.nominal_capacity_ah, 0.0, -0.5 * params.nominal_capacity_ah):
        out = twin.step(current_a=current, dt_s=60.0, ambient_c=20.0)
        assert np.all(np.isfinite(out.voltage_v))
        assert np.all(out.voltage_v > params.limits.min_voltage_v)
        assert np.all(out.voltage_v < params.limits.max_voltage_v)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("pybamm:Nope2099", ["Nope2099", "pybamm:OKane2022", "pybamm:Prada2013"]),
        ("ecm:OKane2022", ["ecm:OKane2022", "pybamm:<set>"]),
        ("pybamm:", ["pybamm:<set>"]),
    ],
)
def test_bad_source_is_a_clear_error(spec: str, words: list[str]) -> None:
    with pytest.raises(ParameterSetError) as info:
        calibrate_from_pybamm(spec)
    for word in words:
        assert word in str(info.value)


def test_source_spec_parsing() -> None:
    assert parse_source("pybamm:okane2022") == "OKane2022"
    assert parse_source(" Prada2013 ") == "Prada2013"


def test_cli_reports_bad_source() -> None:
    from typer.testing import CliRunner

    from batterytwin.cli import app

    result = CliRunner().invoke(app, ["twin", "calibrate", "--from", "pybamm:Nope2099"])
    assert result.exit_code == 2
    assert "Nope2099" in result.output and "OKane2022" in result.output


@pytest.mark.pybamm
def test_reduced_calibration_meets_target(tmp_path: Path) -> None:
    pytest.importorskip("pybamm")
    config = CalibrationConfig(
        hppc_soc=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
        validation_hours=2.0,
        validate_all_temperatures=False,
    )
    calls: list[tuple[int, int, str]] = []
    result = calibrate_from_pybamm(
        "pybamm:OKane2022",
        n_rc=2,
        temperatures_c=(25.0,),
        config=config,
        progress=lambda done, total, msg: calls.append((done, total, msg)),
    )
    assert result.validation_rms_mv <= 15.0
    assert result.fit_rms_mv < 15.0
    params = result.parameters
    assert params.name == "nmc_okane2022" and params.n_rc == 2
    assert params.limits.min_voltage_v == 2.5 and params.limits.max_voltage_v == 4.2
    assert params.nominal_capacity_ah == 5.0
    assert np.all(np.diff(params.soc_grid) > 0) and np.all(np.diff(params.ocv_v) >= 0)
    assert calls[-1][0] == calls[-1][1] and [c[0] for c in calls] == sorted(c[0] for c in calls)
    path = tmp_path / "set.json"
    params.to_json(path)
    again = EcmParameters.from_json(path)
    np.testing.assert_allclose(again.r0_ohm, params.r0_ohm)
