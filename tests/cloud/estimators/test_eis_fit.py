"""Tests for the EIS -> DRT -> ECM estimator (cloud.estimators.drt, ecm_fit, eis_cli)
against the twin's known small-signal parameters."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from batterytwin.cli import app
from cloud.estimators.drt import DrtConfig, compute_drt
from cloud.estimators.ecm_fit import EcmFit, EcmFitConfig, fit_ecm, fit_records
from cloud.estimators.eis_files import Spectrum, SpectrumError
from cloud.mqtt.contract import EcmUpdateParams
from twin.eis import EisConfig, EisRecord, measure_eis
from twin.models.ecm import CellInit, EcmOptions, EcmTwin
from twin.params import load_parameter_set

# Each set's band reaches a decade past its slowest pair (50-150 s arc, 26-300 s pairs).
BAND_HZ = {"nmc_eis_arc": (1e-3, 1e4), "nmc_okane2022": (1e-4, 1e3)}


def _sweep(
    name: str,
    *,
    soc: float = 0.5,
    temperature_c: float = 25.0,
    noise: float = 0.0,
    phase_noise_deg: float = 0.0,
    seed: int = 0,
) -> tuple[list[EisRecord], dict[str, float], int]:
    """One cell's emulated sweep, the twin's true parameters and its number of RC pairs."""
    twin = EcmTwin(
        load_parameter_set(name),
        init=CellInit(soc=soc, temperature_c=temperature_c),
        options=EcmOptions(ageing="none"),
    )
    f_min, f_max = BAND_HZ[name]
    config = EisConfig(
        f_min_hz=f_min,
        f_max_hz=f_max,
        n_points=61,
        z_noise_rel=noise,
        phase_noise_deg=phase_noise_deg,
        amplitude_a=0.1,
        seed=seed,
    )
    records = measure_eis(twin, event_id=f"t{seed}", config=config)
    truth = {k: float(v[0]) for k, v in twin.ecm_parameters_now().items()}
    return records, truth, twin.n_rc


def _true_taus(truth: dict[str, float], n_rc: int) -> list[float]:
    return sorted(truth[f"r{k}_ohm"] * truth[f"c{k}_f"] for k in range(1, n_rc + 1))


def _total(truth: dict[str, float], n_rc: int) -> float:
    return truth["r0_ohm"] + sum(truth[f"r{k}_ohm"] for k in range(1, n_rc + 1))


def _spectrum(records: list[EisRecord]) -> Spectrum:
    return Spectrum(
        np.array([r.frequency_hz for r in records]),
        np.array([r.z_re_ohm for r in records]),
        np.array([r.z_im_ohm for r in records]),
        source="test",
    )


@pytest.mark.parametrize(
    ("name", "soc", "temperature_c"),
    [
        ("nmc_eis_arc", 0.5, 25.0),
        ("nmc_eis_arc", 0.2, 10.0),
        ("nmc_eis_arc", 0.8, 0.0),
        ("nmc_okane2022", 0.5, 25.0),
        ("nmc_okane2022", 0.2, 10.0),
    ],
)
def test_noiseless_spectra_recover_r0_and_time_constants(
    name: str, soc: float, temperature_c: float
) -> None:
    records, truth, n_rc = _sweep(name, soc=soc, temperature_c=temperature_c)
    fit = fit_records(records)
    assert fit.r0_ohm == pytest.approx(truth["r0_ohm"], rel=0.02)
    assert len(fit.pairs) == n_rc
    fitted = [p.tau_s for p in fit.pairs]
    for tau in _true_taus(truth, n_rc):  # each true pair matched to the nearest fitted one
        nearest = min(fitted, key=lambda t: abs(math.log(t / tau)))
        assert nearest == pytest.approx(tau, rel=0.10)
    assert fit.relative_rms_residual < 1e-4
    assert fit.lin_kk.passed
    assert (fit.inductance_h is not None) == (name == "nmc_eis_arc")  # only it has an L


def test_drt_peaks_sit_at_the_true_pairs() -> None:
    records, truth, n_rc = _sweep("nmc_eis_arc")
    spectrum = _spectrum(records)
    drt = compute_drt(spectrum.frequency_hz, spectrum.z_ohm)
    assert len(drt.peaks) == n_rc
    true_r = sorted(
        (truth[f"r{k}_ohm"] * truth[f"c{k}_f"], truth[f"r{k}_ohm"]) for k in range(1, n_rc + 1)
    )
    for peak, (tau, r) in zip(drt.peaks, true_r, strict=True):
        assert peak.tau_s == pytest.approx(tau, rel=0.10)
        assert peak.r_ohm == pytest.approx(r, rel=0.05)
    assert drt.r_inf_ohm == pytest.approx(truth["r0_ohm"], rel=0.02)
    assert drt.polarisation_ohm == pytest.approx(_total(truth, n_rc) - truth["r0_ohm"], rel=0.02)


@pytest.mark.parametrize(
    ("name", "seed"), [("nmc_eis_arc", 1), ("nmc_eis_arc", 2), ("nmc_okane2022", 3)]
)
def test_one_percent_noise_keeps_total_resistance_within_5_percent(name: str, seed: int) -> None:
    records, truth, n_rc = _sweep(name, noise=0.01, phase_noise_deg=0.5, seed=seed)
    fit = fit_records(records)
    assert fit.total_resistance_ohm == pytest.approx(_total(truth, n_rc), rel=0.05)
    assert 0.005 < fit.relative_rms_residual < 0.03  # at the noise, no worse
    assert fit.lin_kk.passed
    assert all(math.isfinite(p.r_std_ohm) and p.r_std_ohm > 0 for p in fit.pairs)
    assert math.isfinite(fit.r0_std_ohm)


def test_gcv_picks_a_sensible_lambda_and_reports_it() -> None:
    noisy, _, _ = _sweep("nmc_eis_arc", noise=0.01, phase_noise_deg=0.5, seed=4)
    clean, _, _ = _sweep("nmc_eis_arc")
    s_noisy, s_clean = _spectrum(noisy), _spectrum(clean)
    reg = compute_drt(s_noisy.frequency_hz, s_noisy.z_ohm).regularisation
    assert reg.criterion == "gcv" and reg.lambda_used == reg.lambda_gcv
    assert 1e-5 < reg.lambda_used < 10 and not reg.at_grid_edge
    assert reg.gcv[np.flatnonzero(reg.lambdas == reg.lambda_used)[0]] == reg.gcv.min()
    clean_reg = compute_drt(s_clean.frequency_hz, s_clean.z_ohm).regularisation
    assert clean_reg.lambda_used < reg.lambda_used  # less noise, less smoothing
    reported = reg.to_dict(curves=True)
    assert {"criterion", "lambda", "lambda_gcv", "lambda_l_curve", "gcv", "lambdas"} <= set(
        reported
    )
    l_curve = compute_drt(
        s_noisy.frequency_hz, s_noisy.z_ohm, config=DrtConfig(criterion="l_curve")
    ).regularisation
    assert l_curve.lambda_used == l_curve.lambda_l_curve == reg.lambda_l_curve


def test_lin_kk_passes_twin_spectra_and_fails_a_drifting_one() -> None:
    records, _, _ = _sweep("nmc_eis_arc")
    spectrum = _spectrum(records)
    strict = EcmFitConfig(lin_kk_threshold=0.005)
    assert fit_ecm(spectrum, config=strict).lin_kk.passed
    # The cell drifts through the sweep (highest frequency first): by the last point its
    # real part has moved by 20 % of the largest |Z|, which no causal, linear,
    # stationary impedance explains.
    z = spectrum.z_ohm
    drift = 0.2 * np.abs(z).max() * np.linspace(0.0, 1.0, z.size)
    drifting = Spectrum.from_complex(spectrum.frequency_hz, z + drift, source="drift")
    kk = fit_ecm(drifting).lin_kk
    assert not kk.passed
    assert kk.rms_residual > kk.threshold == 0.02


def test_fit_records_skips_failed_points_and_refuses_mixed_sweeps() -> None:
    records, truth, _ = _sweep("nmc_okane2022")
    broken = [
        replace(r, status="fail", z_re_ohm=0.0, z_im_ohm=0.0) if i == 5 else r
        for i, r in enumerate(records)
    ]
    fit = fit_records(broken)
    assert fit.frequency_hz.size == len(records) - 1
    assert "1 points with status 'fail' skipped" in fit.notes
    assert fit.r0_ohm == pytest.approx(truth["r0_ohm"], rel=0.02)
    with pytest.raises(SpectrumError, match="records of 2 sweeps"):
        fit_records([*records[:10], replace(records[10], cell_id=3)])


def test_ecm_update_params_fit_the_command_contract() -> None:
    records, _, _ = _sweep("nmc_eis_arc", soc=0.8, temperature_c=0.0)
    fit = fit_records(records)
    params = fit.ecm_update_params()
    assert list(params) == ["r0", "r1", "c1", "r2", "c2", "r3", "c3", "r4", "c4"]
    EcmUpdateParams(voltage=3.8, **params)  # the caller adds the voltage
    taus = [p.tau_s for p in fit.pairs]
    assert taus == sorted(taus)


def test_too_few_points_for_the_circuit_is_a_clear_error() -> None:
    records, _, _ = _sweep("nmc_eis_arc")
    with pytest.raises(SpectrumError, match="measure more frequencies"):
        fit_records(records[::20])  # 4 points (8 numbers), 3 DRT peaks: 9 parameters


# --- CLI ------------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture(scope="module")
def spectrum_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    records, _, _ = _sweep("nmc_eis_arc", noise=0.01, phase_noise_deg=0.5, seed=5)
    path = tmp_path_factory.mktemp("eis") / "cell.csv"
    rows = [f"{r.frequency_hz:.8g},{r.z_re_ohm * 1e3:.8g},{-r.z_im_ohm * 1e3:.8g}" for r in records]
    path.write_text("\n".join(["Frequency (Hz),Z' (mOhm),-Im(Z) (mOhm)", *rows]) + "\n")
    return path


def test_cli_json_schema(spectrum_csv: Path, tmp_path: Path) -> None:
    plot = tmp_path / "fit.html"
    result = runner.invoke(app, ["eis", "fit", str(spectrum_csv), "--json", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert plot.is_file() and out["plot"] == str(plot)
    assert out["circuit"] == "L0-R0-p(R1,C1)-p(R2,C2)-p(R3,C3)-p(R4,C4)"
    for k in range(1, 5):
        assert {f"r{k}", f"r{k}_std", f"c{k}", f"c{k}_std", f"tau{k}_s"} <= set(out["parameters"])
    assert {"r0", "r0_std"} <= set(out["parameters"])
    assert 0 < out["relative_rms_residual"] < 0.03
    assert out["lin_kk"]["passed"] is True and out["lin_kk"]["threshold"] == 0.02
    assert out["drt"]["regularisation"]["criterion"] == "gcv"
    assert len(out["drt"]["peaks"]) >= 4
    assert {"tau_s", "frequency_hz", "r_ohm"} <= set(out["drt"]["peaks"][0])
    assert len(out["points"]) == 61
    assert {"frequency_hz", "residual_re", "residual_im", "lin_kk_residual_re"} <= set(
        out["points"][0]
    )


def test_cli_table_and_png(spectrum_csv: Path, tmp_path: Path) -> None:
    plot = tmp_path / "fit.png"
    result = runner.invoke(app, ["eis", "fit", str(spectrum_csv), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    for text in ("DRT peaks", "relative_rms_residual", "lin-KK: pass", "r4 (ohm)", "by gcv"):
        assert text in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("freq,Zre,phase\n1,2,3\n2,3,4\n3,4,5\n")
    result = runner.invoke(app, ["eis", "fit", str(bad)])
    assert result.exit_code == 2
    assert "no imaginary-part column" in result.output
    result = runner.invoke(app, ["eis", "fit", str(bad), "--plot", "x.pdf"])
    assert result.exit_code == 2 and "--plot must end in .html or .png" in result.output


def test_fit_object_round_trips_to_json() -> None:
    records, _, _ = _sweep("nmc_okane2022", noise=0.01, phase_noise_deg=0.5, seed=6)
    fit: EcmFit = fit_records(records)
    text = json.dumps(fit.to_dict(curves=True), allow_nan=False)
    assert "gamma_ohm" in text and fit.source == "EIS event t6 cell 0"
