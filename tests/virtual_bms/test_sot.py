"""SoT from the EIS phase, calibrated on and checked against the ECM twin's impedance.

The calibrated parameter sets shipped with the twin come from HPPC pulses: their RC pairs
have time constants of seconds and more, and their phase barely moves with temperature
(``ecm_example``'s not at all). An EIS-capable cell needs the millisecond charge-transfer
arc, so these tests build one: R0 with a weak Arrhenius law (electrolyte, 12 kJ/mol), a
charge-transfer arc with a strong one (55 kJ/mol) whose time constants follow its
resistance (double-layer capacitance kept), spread over three RC pairs a decade apart as
an ECM stand-in for a depressed arc, and a slow diffusion pair. Charge transfer also rises
at low SoC. That is the physics that makes the phase at a mid frequency a thermometer.
"""

from __future__ import annotations

import numpy as np
import pytest

from twin.eis import EisConfig, EisRecord, log_frequencies, measure_eis
from twin.models.base import FloatArray
from twin.models.ecm import CellInit, EcmOptions, EcmTwin
from twin.models.ecm_params import EcmParameters
from twin.params import load_parameter_set
from virtual_bms.estimators.sot import (
    PhaseTable,
    SotError,
    fit_sot_calibration,
    phase_at_frequency,
    phase_table_from_parameters,
    scan_frequencies,
    sot_from_eis,
    temperature_from_phase,
)

SWEEP_HZ = log_frequencies(0.1, 5000.0, points_per_decade=10)  # the twin's default EIS sweep
CAL_TEMPERATURE_C = np.arange(-5.0, 56.0, 5.0)
CAL_SOC = np.linspace(0.1, 0.95, 18)


def eis_cell_parameters() -> EcmParameters:
    return load_parameter_set("nmc_eis_arc")


@pytest.fixture(scope="module")
def params() -> EcmParameters:
    return eis_cell_parameters()


@pytest.fixture(scope="module")
def table(params: EcmParameters) -> PhaseTable:
    return phase_table_from_parameters(
        params, frequency_hz=SWEEP_HZ, temperature_c=CAL_TEMPERATURE_C, soc=CAL_SOC
    )


def _fleet(params: EcmParameters, n: int, seed: int) -> tuple[EcmTwin, FloatArray]:
    """Second-life cells at random temperatures, SoCs and resistance factors."""
    rng = np.random.default_rng(seed)
    temperature_c = rng.uniform(0.0, 50.0, n)
    init = CellInit(
        soc=rng.uniform(0.2, 0.9, n),
        temperature_c=temperature_c,
        resistance_factor=rng.uniform(0.9, 1.5, n),
    )
    return EcmTwin(params, n_cells=n, init=init, options=EcmOptions(ageing="none")), temperature_c


def test_scan_picks_a_mid_frequency_where_phase_follows_temperature_not_soc(
    table: PhaseTable,
) -> None:
    scan = scan_frequencies(table)
    # Measured: 39.8 Hz, 0.87 K (0.18 K from SoC, 0.85 K from 0.5 deg phase noise).
    assert 20.0 < scan.best_frequency_hz < 80.0
    best = int(np.flatnonzero(scan.frequency_hz == scan.best_frequency_hz)[0])
    assert scan.temperature_error_k[best] < 1.0
    assert scan.soc_error_k[best] < 0.3
    assert scan.min_sensitivity_deg_per_k[best] > 0.3
    # Where the charge-transfer arc turns through the range, one phase means two
    # temperatures: those frequencies are ruled out.
    turning = (scan.frequency_hz > 100.0) & (scan.frequency_hz < 1000.0)
    assert not scan.monotone[turning].any()
    assert np.isinf(scan.temperature_error_k[~scan.monotone]).all()
    assert f"{scan.best_frequency_hz:10.4g} Hz" in scan.describe()


def test_sot_recovers_twin_temperature_from_noise_free_eis(
    params: EcmParameters, table: PhaseTable
) -> None:
    calibration = fit_sot_calibration(table)
    twin, truth_c = _fleet(params, 200, seed=1)
    config = EisConfig(z_noise_rel=0.0, phase_noise_deg=0.0)
    estimate = sot_from_eis(calibration, measure_eis(twin, event_id="sot_1", config=config))
    error_k = estimate.temperature_c - truth_c
    # Measured: RMS 0.28 K, worst 0.79 K (unknown SoC, resistance factors 0.9-1.5).
    assert np.sqrt(np.mean(error_k**2)) < 0.5
    assert np.abs(error_k).max() < 1.5
    assert estimate.cell_id.tolist() == list(range(200))


def test_sot_with_phase_noise_stays_within_two_kelvin(
    params: EcmParameters, table: PhaseTable
) -> None:
    calibration = fit_sot_calibration(table)
    twin, truth_c = _fleet(params, 200, seed=2)
    records = measure_eis(twin, event_id="sot_2", config=EisConfig())  # 1 % |Z|, 0.5 deg
    error_k = sot_from_eis(calibration, records).temperature_c - truth_c
    # Measured: RMS 0.87 K, 95th percentile 1.8 K, worst 2.9 K of 200 cells.
    assert np.sqrt(np.mean(error_k**2)) < 1.2
    assert np.percentile(np.abs(error_k), 95) < 2.0


def test_non_monotone_frequency_is_rejected_with_its_name(table: PhaseTable) -> None:
    with pytest.raises(SotError, match=r"phase at 158\.5 Hz .* not monotone .* turns near"):
        fit_sot_calibration(table, frequency_hz=158.49)


def test_hppc_set_without_fast_dynamics_cannot_serve_as_thermometer() -> None:
    table = phase_table_from_parameters(
        load_parameter_set("ecm_example"),
        frequency_hz=SWEEP_HZ,
        temperature_c=CAL_TEMPERATURE_C,
        soc=CAL_SOC,
    )
    with pytest.raises(SotError, match=r"no frequency of the phase table"):
        scan_frequencies(table)
    with pytest.raises(SotError, match=r"phase at 1 Hz over -5\.\.55 degC changes by only 0 deg/K"):
        fit_sot_calibration(table, frequency_hz=1.0)


def test_temperature_from_phase_is_elementwise_and_nan_outside_the_range(
    table: PhaseTable,
) -> None:
    calibration = fit_sot_calibration(table)
    p_cold, p_hot = np.interp([0.0, 50.0], calibration.temperature_c, calibration.phase_deg)
    phases = np.array([[p_cold, p_hot], [np.nan, 0.5 * (p_cold + p_hot)]])
    temps = temperature_from_phase(calibration, phases)
    assert temps.shape == (2, 2)
    assert temps[0] == pytest.approx([0.0, 50.0], abs=0.01)
    assert np.isnan(temps[1, 0])
    beyond = calibration.phase_deg[-1] + np.sign(calibration.phase_deg[-1] - p_hot) * 1.0
    assert np.isnan(temperature_from_phase(calibration, beyond))
    assert temperature_from_phase(calibration, beyond, extrapolate=True) > 55.0


def test_phase_at_frequency_interpolates_in_log_frequency_and_skips_gaps() -> None:
    f = np.array([10.0, 100.0, 1000.0])
    phase = np.array([[-10.0, -20.0, -30.0], [-10.0, np.nan, -30.0], [np.nan, np.nan, -30.0]])
    out = phase_at_frequency(f, phase, target_hz=10.0**1.5)
    assert out[0] == pytest.approx(-15.0)
    assert out[1] == pytest.approx(-15.0)  # bridged over the failed 100 Hz point
    assert np.isnan(out[2])


def test_sot_from_eis_uses_only_good_points_and_one_sweep(
    params: EcmParameters, table: PhaseTable
) -> None:
    calibration = fit_sot_calibration(table)
    twin, truth_c = _fleet(params, 3, seed=3)
    records = measure_eis(
        twin, event_id="sot_3", config=EisConfig(z_noise_rel=0.0, phase_noise_deg=0.0)
    )
    near = min(records, key=lambda r: abs(np.log(r.frequency_hz / calibration.frequency_hz)))
    broken = [
        EisRecord(**{**_fields(r), "status": "fail", "z_phz_deg": 0.0})
        if r.frequency_hz == near.frequency_hz and r.cell_id == 1
        else r
        for r in records
    ]
    estimate = sot_from_eis(calibration, broken)
    assert estimate.temperature_c == pytest.approx(truth_c, abs=1.5)
    with pytest.raises(SotError, match=r"cell 0 has two EIS points"):
        sot_from_eis(calibration, records + records[:1])
    with pytest.raises(SotError, match="no EIS records"):
        sot_from_eis(calibration, [])


def _fields(record: EisRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


def test_phase_table_validation_names_the_field() -> None:
    f, t, soc = np.array([1.0, 10.0]), np.array([0.0, 10.0, 20.0]), np.array([0.5])
    with pytest.raises(SotError, match=r"temperature_c must be 1-D with at least 3"):
        PhaseTable(frequency_hz=f, temperature_c=t[:2], soc=soc, phase_deg=np.zeros((2, 2, 1)))
    with pytest.raises(SotError, match=r"soc must be finite and strictly increasing"):
        PhaseTable(
            frequency_hz=f, temperature_c=t, soc=np.array([0.5, 0.4]), phase_deg=np.zeros((2, 3, 2))
        )
    with pytest.raises(SotError, match=r"phase_deg must have shape .*\(2, 3, 1\), got \(3, 3, 1\)"):
        PhaseTable(frequency_hz=f, temperature_c=t, soc=soc, phase_deg=np.zeros((3, 3, 1)))
