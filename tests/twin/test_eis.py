"""Tests for twin.eis: analytic spectra, emulated sweeps and their wire records."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from twin.eis import (
    STATUS_FAIL,
    STATUS_NOISY,
    STATUS_SUCCESS,
    WIRE_KEYS,
    EisConfig,
    EisRecord,
    impedance_spectrum,
    log_frequencies,
    measure_eis,
)
from twin.errors import TwinInputError
from twin.models.ecm import CellInit, EcmOptions, EcmTwin
from twin.models.ecm_params import CHARGE, DISCHARGE, EcmParameters, Limits
from twin.params import load_parameter_set

R0, R1, R2 = 1.0e-3, 2.0e-3, 0.5e-3  # ohm
F1, F2 = 10.0, 0.5  # Hz, corner frequencies 1 / (2 pi R C)
C1, C2 = 1 / (2 * math.pi * R1 * F1), 1 / (2 * math.pi * R2 * F2)  # F
NOISELESS = EisConfig(z_noise_rel=0.0, phase_noise_deg=0.0, amplitude_a=1.0)


def _flat(value: float) -> np.ndarray:
    """A table constant in SoC (2 points), temperature (1 point) and direction."""
    return np.full((2, 1, 2), value)


def _synthetic(
    rc: Sequence[tuple[float, float]] = ((R1, C1),), *, limits: Limits | None = None
) -> EcmParameters:
    return EcmParameters(
        name="synthetic",
        source="tests/twin/test_eis.py",
        chemistry="nmc",
        nominal_capacity_ah=10.0,
        soc_grid=np.array([0.0, 1.0]),
        ocv_v=np.array([3.0, 4.2]),
        entropic_v_per_k=np.zeros(2),
        temperature_grid_c=np.array([25.0]),
        r0_ohm=_flat(R0),
        rc_resistance_ohm=np.stack([_flat(r) for r, _ in rc]),
        rc_capacitance_f=np.stack([_flat(c) for _, c in rc]),
        limits=limits or Limits(min_voltage_v=2.5, max_voltage_v=4.3),
    )


def _twin(params: EcmParameters, *, n_cells: int = 1, init: CellInit | None = None) -> EcmTwin:
    return EcmTwin(params, n_cells=n_cells, init=init, options=EcmOptions(ageing="none"))


@pytest.fixture(scope="module")
def example() -> EcmParameters:
    return load_parameter_set("ecm_example")


# ---------------------------------------------------------------- frequencies
def test_log_frequencies_spans_the_range_with_the_density_asked() -> None:
    f = log_frequencies()
    assert f[0] == 0.1 and f[-1] == 5000.0
    assert f.size == 48  # 4.7 decades at >= 10 points per decade
    steps = np.diff(np.log10(f))
    np.testing.assert_allclose(steps, steps[0])
    assert steps[0] <= 0.1
    np.testing.assert_allclose(log_frequencies(1.0, 1000.0), np.logspace(0, 3, 31))
    assert log_frequencies(1.0, 10.0, n_points=2).tolist() == [1.0, 10.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"f_min_hz": 10.0, "f_max_hz": 10.0}, "f_max_hz must be finite and > f_min_hz"),
        ({"f_min_hz": 0.0}, "f_min_hz must be finite and > 0, got 0.0"),
        ({"n_points": 1}, "n_points must be >= 2, got 1"),
        ({"points_per_decade": 0}, "points_per_decade must be >= 1, got 0"),
    ],
)
def test_log_frequencies_rejects_bad_input(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(TwinInputError, match=match):
        log_frequencies(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------ analytic Z(f)
def test_one_rc_limits_and_exact_shape() -> None:
    twin = _twin(_synthetic())
    z_hi, z_lo = impedance_spectrum(twin, [1e8, 1e-6])[0]
    assert z_hi.real == pytest.approx(R0, rel=1e-9) and abs(z_hi.imag) < 1e-9
    assert z_lo.real == pytest.approx(R0 + R1, rel=1e-9) and abs(z_lo.imag) < 1e-9
    f = log_frequencies(points_per_decade=20)
    expected = R0 + R1 / (1 + 2j * math.pi * f * R1 * C1)
    z = impedance_spectrum(twin, f)
    assert z.shape == (1, f.size) and z.dtype == np.complex128
    np.testing.assert_allclose(z[0], expected, rtol=1e-12)


def test_imaginary_peak_sits_at_the_rc_corner_frequency() -> None:
    twin = _twin(_synthetic())
    f = log_frequencies(points_per_decade=20)
    z = impedance_spectrum(twin, f)[0]
    f_peak = f[np.argmax(-z.imag)]
    assert abs(math.log10(f_peak / F1)) <= 1 / 20  # within one grid step
    assert (-z.imag).max() == pytest.approx(R1 / 2, rel=0.01)  # semicircle radius


def test_two_rc_low_frequency_limit_adds_every_resistance() -> None:
    twin = _twin(_synthetic(((R1, C1), (R2, C2))))
    z_lo = impedance_spectrum(twin, 1e-7)[0, 0]
    assert z_lo.real == pytest.approx(R0 + R1 + R2, rel=1e-9)
    f = np.array([0.05, 0.5, 5.0, 50.0])
    w = 2 * math.pi * f
    expected = R0 + R1 / (1 + 1j * w * R1 * C1) + R2 / (1 + 1j * w * R2 * C2)
    np.testing.assert_allclose(impedance_spectrum(twin, f)[0], expected, rtol=1e-12)


def test_bad_frequencies_are_rejected() -> None:
    twin = _twin(_synthetic())
    with pytest.raises(TwinInputError, match="frequency_hz must be finite and > 0"):
        impedance_spectrum(twin, [1.0, -2.0])


def _table_at(table: np.ndarray, params: EcmParameters, *, soc: float, temp_c: float) -> float:
    """Bilinear value of an R table at (SoC, T), averaged over both current directions."""
    vals = []
    for d in (DISCHARGE, CHARGE):
        by_t = [np.interp(soc, params.soc_grid, table[d, t]) for t in range(table.shape[1])]
        vals.append(np.interp(temp_c, params.temperature_grid_c, by_t))
    return float(np.mean(vals))


def test_spectrum_follows_soc_temperature_and_resistance_factor(example: EcmParameters) -> None:
    soc = np.array([0.2, 0.5, 0.9, 0.5, 0.5, 0.5])
    temp = np.array([20.0, 20.0, 20.0, 0.0, 40.0, 20.0])
    rf = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.5])
    twin = _twin(
        example, n_cells=6, init=CellInit(soc=soc, temperature_c=temp, resistance_factor=rf)
    )
    z = impedance_spectrum(twin, [5000.0, 1e-6])
    for i in range(6):
        r0 = rf[i] * _table_at(example.r0_ohm, example, soc=soc[i], temp_c=temp[i])
        r1 = rf[i] * _table_at(example.rc_resistance_ohm[0], example, soc=soc[i], temp_c=temp[i])
        assert z[i, 0].real == pytest.approx(r0, rel=2e-3), f"cell {i}: R0"
        assert z[i, 1].real == pytest.approx(r0 + r1, rel=2e-3), f"cell {i}: R0 + R1"
    # The table's ordering: resistance falls with temperature, is lowest mid-SoC ...
    assert z[3, 0].real > z[1, 0].real > z[4, 0].real
    assert z[0, 0].real > z[1, 0].real and z[2, 0].real > z[1, 0].real
    # ... and the resistance factor scales the whole spectrum.
    np.testing.assert_allclose(z[5], 1.5 * z[1], rtol=1e-12)


# ------------------------------------------------------------ emulated sweep
def test_noiseless_records_reproduce_the_analytic_spectrum() -> None:
    twin = _twin(_synthetic(((R1, C1), (R2, C2))), n_cells=3, init=CellInit(soc=[0.3, 0.5, 0.8]))
    twin.step(current_a=5.0, dt_s=30.0, ambient_c=25.0)
    records = measure_eis(twin, event_id="7_1", config=NOISELESS)
    f = NOISELESS.sweep_frequencies_hz()
    assert len(records) == 3 * f.size
    z = impedance_spectrum(twin, f)
    for j in range(3):
        cell = records[j * f.size : (j + 1) * f.size]
        assert [r.cell_id for r in cell] == [j] * f.size
        np.testing.assert_array_equal([r.frequency_hz for r in cell], f)
        np.testing.assert_array_equal([r.z_ohm for r in cell], z[j])
        for r in cell:
            assert r.z_mod_ohm == pytest.approx(math.hypot(r.z_re_ohm, r.z_im_ohm), rel=1e-14)
            assert r.z_phz_deg == pytest.approx(
                math.degrees(math.atan2(r.z_im_ohm, r.z_re_ohm)), abs=1e-12
            )
            assert r.phase_deg == r.z_phz_deg
            assert r.status == STATUS_SUCCESS and r.status_reason == ""
            assert r.event_id == "7_1" and r.amplitude_a == 1.0


def test_zero_offset_sweep_leaves_the_twin_untouched() -> None:
    twin = _twin(_synthetic(), n_cells=2)
    twin.step(current_a=[10.0, -10.0], dt_s=60.0, ambient_c=25.0)
    before = (twin.time_s, twin.soc, twin.temperature_c, twin.rc_voltages_v)
    records = measure_eis(twin, event_id="1_1", config=NOISELESS)
    after = (twin.time_s, twin.soc, twin.temperature_c, twin.rc_voltages_v)
    assert before[0] == after[0]
    for a, b in zip(before[1:], after[1:], strict=True):
        np.testing.assert_array_equal(a, b)
    # At zero DC current the RC voltages relax during the sweep; the record says so.
    first = records[0]
    assert first.v_start_v == first.voltage_v
    assert first.v_end_v == records[NOISELESS.sweep_frequencies_hz().size - 1].voltage_v
    assert first.v_end_v > first.v_start_v  # cell 0 was discharged, it recovers


def test_current_offset_steps_the_twin_over_the_sweep() -> None:
    config = EisConfig(current_offset_a=10.0, amplitude_a=0.5, f_min_hz=1.0, n_points=12)
    twin = _twin(_synthetic(), n_cells=2, init=CellInit(soc=0.5))
    records = measure_eis(twin, event_id="2_1", config=config, cells=[1])
    duration = config.sweep_duration_s()
    assert duration == pytest.approx(float(np.sum(3.0 / config.sweep_frequencies_hz())))
    assert twin.time_s == pytest.approx(duration)
    soc = twin.soc
    assert soc[0] == 0.5  # unmeasured cell rested
    assert soc[1] == pytest.approx(0.5 - 10.0 * duration / 3600 / 10.0, rel=1e-9)
    assert len(records) == 12 and {r.cell_id for r in records} == {1}
    volts = [r.voltage_v for r in records]
    assert records[0].v_start_v == volts[0] and records[0].v_end_v == volts[-1]
    assert records[0].v_end_v < records[0].v_start_v  # discharging
    assert all(np.diff(volts) < 0)
    assert all(r.current_offset_a == 10.0 for r in records)
    np.testing.assert_allclose(
        [r.time_s for r in records],
        np.concatenate(([0.0], np.cumsum(config.point_durations_s())[:-1])),
    )


def test_noise_statistics_match_the_config() -> None:
    config = EisConfig(z_noise_rel=0.02, phase_noise_deg=1.0, amplitude_a=1.0, n_points=20)
    twin = _twin(_synthetic(), n_cells=200)
    records = measure_eis(twin, event_id="9_3", config=config)
    z = impedance_spectrum(twin, config.sweep_frequencies_hz())[0]
    true = np.tile(z, 200)  # records are cell by cell, sweep order within a cell
    mod = np.array([r.z_mod_ohm for r in records])
    phz = np.array([r.z_phz_deg for r in records])
    rel = mod / np.abs(true) - 1.0
    dphi = phz - np.degrees(np.angle(true))
    # 4,000 samples: standard error 1.1 % on a std, 0.03 % / 0.016 deg on a mean.
    assert rel.std() == pytest.approx(0.02, rel=0.05)
    assert abs(rel.mean()) < 0.0015
    assert dphi.std() == pytest.approx(1.0, rel=0.05)
    assert abs(dphi.mean()) < 0.08
    for r in records:  # noisy values stay self-consistent
        assert r.z_mod_ohm == pytest.approx(abs(r.z_ohm), rel=1e-12)


def test_noise_is_reproducible_per_seed_and_event() -> None:
    twin = _twin(_synthetic(), n_cells=2)
    config = EisConfig(amplitude_a=1.0, n_points=5)

    def run(event_id: str, seed: int = 0) -> list[float]:
        records = measure_eis(twin, event_id=event_id, config=replace(config, seed=seed))
        return [r.z_re_ohm for r in records]

    assert run("5_1") == run("5_1")
    assert run("5_1") != run("5_2")
    assert run("5_1") != run("5_1", seed=1)


def test_record_dicts_have_exactly_the_wire_keys() -> None:
    twin = _twin(_synthetic())
    records = measure_eis(twin, event_id="207_1", config=EisConfig(n_points=3))
    for r in records:
        d = r.to_dict()
        assert tuple(d) == WIRE_KEYS
        assert len(WIRE_KEYS) == 15
        assert isinstance(d["cell_id"], int) and isinstance(d["event_id"], str)
        numbers = [k for k in WIRE_KEYS if k not in ("status", "event_id", "cell_id")]
        assert all(isinstance(d[k], float) for k in numbers)
        assert d["phase"] == d["Z_phz"]
        assert EisRecord.from_dict(json.loads(json.dumps(d))).to_dict() == d
    with pytest.raises(TwinInputError, match="lacks Z_re"):
        EisRecord.from_dict({k: 0 for k in WIRE_KEYS if k != "Z_re"})


def test_default_amplitude_is_c_over_20(example: EcmParameters) -> None:
    twin = _twin(example)
    records = measure_eis(twin, event_id="1_1", config=EisConfig(n_points=2))
    assert {r.amplitude_a for r in records} == {5.0}  # 100 Ah cell


def test_status_noisy_below_the_minimum_response() -> None:
    twin = _twin(_synthetic())
    config = EisConfig(amplitude_a=0.02, min_response_v=3e-5, n_points=30)
    records = measure_eis(twin, event_id="3_1", config=config)
    for r in records:
        response = 0.02 * abs(impedance_spectrum(twin, r.frequency_hz)[0, 0])
        if response < 3e-5:
            assert r.status == STATUS_NOISY and "min_response_v" in r.status_reason
        else:
            assert r.status == STATUS_SUCCESS
    # 0.02 A gives 20 uV at the high-frequency end (R0) and 60 uV at the low end.
    assert records[0].status == STATUS_NOISY and records[-1].status == STATUS_SUCCESS


def test_status_fail_where_the_excitation_crosses_a_voltage_limit() -> None:
    # At SoC 0.5 the rest voltage is 3.6 V; a 1 A excitation swings it by |Z| * 1 A:
    # 1 mV at high frequency (inside 3.6015 V), up to 3 mV at low frequency (beyond).
    params = _synthetic(limits=Limits(min_voltage_v=3.0, max_voltage_v=3.6015))
    twin = _twin(params, init=CellInit(soc=0.5))
    records = measure_eis(twin, event_id="4_1", config=NOISELESS)
    assert records[0].status == STATUS_SUCCESS
    assert records[-1].status == STATUS_FAIL and "beyond limits" in records[-1].status_reason
    for r in records:
        swing = abs(r.z_ohm)
        assert (r.status == STATUS_FAIL) == (r.voltage_v + swing > 3.6015)


def test_cells_subset_and_bad_cells() -> None:
    twin = _twin(_synthetic(), n_cells=4)
    records = measure_eis(twin, event_id="6_1", config=EisConfig(n_points=2), cells=[3, 1])
    assert [r.cell_id for r in records] == [3, 3, 1, 1]
    with pytest.raises(TwinInputError, match="out of range"):
        measure_eis(twin, event_id="6_2", cells=[4])
    with pytest.raises(TwinInputError, match="duplicates"):
        measure_eis(twin, event_id="6_3", cells=[1, 1])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"f_min_hz": 100.0, "f_max_hz": 100.0}, "f_max_hz"),
        ({"f_min_hz": 200.0, "f_max_hz": 100.0}, "f_max_hz"),
        ({"f_min_hz": -1.0}, "f_min_hz"),
        ({"n_points": 1}, "n_points"),
        ({"z_noise_rel": -0.01}, "z_noise_rel"),
        ({"phase_noise_deg": -0.5}, "phase_noise_deg"),
        ({"amplitude_a": 0.0}, "amplitude_a"),
        ({"periods_per_point": 0.0}, "periods_per_point"),
        ({"current_offset_a": math.inf}, "current_offset_a"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, float], field: str) -> None:
    value = next(iter(kwargs.values())) if field != "f_max_hz" else kwargs["f_max_hz"]
    with pytest.raises(TwinInputError, match=rf"EisConfig\.{field} must be .*got {value!r}"):
        EisConfig(**kwargs)  # type: ignore[arg-type]
