"""RUL from a SoH trajectory: the band holds the true end of life of a known power law."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cloud.estimators.rul import RulConfig, RulStatus, degradation_model, remaining_useful_life

SOH_EOL = 0.7
YEARS = np.linspace(0.0, 3.0, 37)  # a monthly SoH estimate for three years


def _true_soh(t: np.ndarray) -> np.ndarray:
    return 0.9 - 0.05 * t**0.6


T_EOL = (0.2 / 0.05) ** (1 / 0.6)  # where the law reaches 0.7: 10.08 years


def _noisy(seed: int, sigma: float = 0.004) -> np.ndarray:
    return _true_soh(YEARS) + np.random.default_rng(seed).normal(0.0, sigma, YEARS.size)


def test_band_contains_the_true_end_of_life() -> None:
    result = remaining_useful_life(YEARS, _noisy(1), soh_eol=SOH_EOL)
    true_rul = T_EOL - YEARS[-1]
    assert result.status is RulStatus.ok
    assert result.rul_low <= true_rul <= result.rul_high
    assert result.rul_low <= result.rul <= result.rul_high
    assert abs(result.rul - true_rul) < 1.5
    assert result.x_eol == pytest.approx(YEARS[-1] + result.rul)
    assert result.residual_sigma == pytest.approx(0.004, rel=0.4)


def test_band_coverage_over_noise_draws() -> None:
    """A 90 % band should hold the truth about 90 % of the time (measured 90.5 % over
    200 draws); 40 fixed draws must reach 80 %."""
    true_rul = T_EOL - YEARS[-1]
    hits = [
        remaining_useful_life(YEARS, _noisy(seed), soh_eol=SOH_EOL, config=RulConfig(seed=seed))
        for seed in range(40)
    ]
    coverage = np.mean([r.rul_low <= true_rul <= r.rul_high for r in hits])
    assert coverage >= 0.8


def test_exact_power_law_is_recovered() -> None:
    result = remaining_useful_life(YEARS, _true_soh(YEARS), soh_eol=SOH_EOL)
    assert result.rul == pytest.approx(T_EOL - YEARS[-1], rel=0.01)
    s0, _a, b = result.params
    assert (s0, b) == pytest.approx((0.9, 0.6), abs=0.005)
    u = YEARS / YEARS[-1]
    assert degradation_model("power", u, result.params) == pytest.approx(_true_soh(YEARS), abs=1e-4)


def test_fec_axis_and_percent_units() -> None:
    fec = YEARS * 250.0  # the RUL comes back in FEC
    result = remaining_useful_life(fec, 100 * _true_soh(YEARS), soh_eol=70.0)
    assert result.rul == pytest.approx((T_EOL - YEARS[-1]) * 250.0, rel=0.01)


def test_linear_sqrt_model_recovers_its_own_law() -> None:
    t = YEARS
    soh = 0.85 - 0.02 * np.sqrt(t) - 0.01 * t
    result = remaining_useful_life(t, soh, soh_eol=0.7, config=RulConfig(model="linear_sqrt"))
    # 0.01 t + 0.02 sqrt(t) = 0.15  ->  sqrt(t) = (-0.02 + sqrt(0.0004 + 0.006)) / 0.02
    t_eol = ((-0.02 + math.sqrt(0.0004 + 4 * 0.01 * 0.15)) / 0.02) ** 2
    assert result.status is RulStatus.ok
    assert result.rul == pytest.approx(t_eol - t[-1], rel=1e-6)


@pytest.mark.parametrize("n", [0, 1, 2, 4])
def test_too_short_history_is_insufficient_data(n: int) -> None:
    result = remaining_useful_life(YEARS[:n], _true_soh(YEARS[:n]), soh_eol=SOH_EOL)
    assert result.status is RulStatus.insufficient_data
    assert "insufficient data" in result.message and f"got {n}" in result.message
    assert math.isnan(result.rul) and math.isnan(result.rul_low) and math.isnan(result.rul_high)


def test_repeated_age_is_insufficient_data() -> None:
    result = remaining_useful_life(np.ones(6), np.full(6, 0.8), soh_eol=SOH_EOL)
    assert result.status is RulStatus.insufficient_data


def test_flat_history_is_not_degrading() -> None:
    soh = 0.8 + np.random.default_rng(3).normal(0.0, 0.001, YEARS.size)
    soh[-1] = 0.8
    result = remaining_useful_life(YEARS, soh, soh_eol=SOH_EOL)
    assert result.status is RulStatus.not_degrading
    assert math.isinf(result.rul) and math.isinf(result.rul_high)


def test_history_at_end_of_life() -> None:
    t = np.linspace(0.0, 12.0, 25)
    result = remaining_useful_life(t, _true_soh(t), soh_eol=SOH_EOL)
    assert result.status is RulStatus.at_end_of_life
    assert result.rul == result.rul_low == result.rul_high == 0.0


def test_unsorted_and_nan_points_are_handled() -> None:
    soh = _true_soh(YEARS)
    order = np.random.default_rng(0).permutation(YEARS.size)
    x, y = YEARS[order].copy(), soh[order].copy()
    y[3] = np.nan
    result = remaining_useful_life(x, y, soh_eol=SOH_EOL)
    assert result.rul == pytest.approx(T_EOL - YEARS[-1], rel=0.01)


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="same length"):
        remaining_useful_life([0, 1, 2], [1.0, 0.9], soh_eol=SOH_EOL)
    with pytest.raises(ValueError, match="confidence"):
        RulConfig(confidence=1.5)
    with pytest.raises(ValueError, match="model"):
        RulConfig(model="cubic")  # type: ignore[arg-type]
