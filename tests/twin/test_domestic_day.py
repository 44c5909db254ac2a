"""The quick-start job: a second-life pack through a domestic day, and its report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from twin.domestic_day import DayResult, DomesticDayConfig, run_domestic_day
from twin.report import write_day_report


@pytest.fixture(scope="module")
def day() -> DayResult:
    return run_domestic_day(DomesticDayConfig(dt_s=60.0))


def test_controller_respects_soc_window_and_voltage_limits(day: DayResult) -> None:
    cfg = day.config
    lo, hi = cfg.soc_window
    soc_step = cfg.max_power_w * cfg.dt_s / 3600 / (3.4 * 16 * 70)  # one step at full power
    assert day.cell_soc.max() <= hi + soc_step
    assert day.cell_soc.min() >= lo - soc_step
    assert day.cell_voltage_v.max() < 4.2 and day.cell_voltage_v.min() > 3.2
    assert np.all(np.abs(day.battery_w) <= cfg.max_power_w * 1.001)


def test_battery_follows_surplus_and_deficit(day: DayResult) -> None:
    surplus = day.pv_w - day.load_w
    charging = day.battery_w < -1
    discharging = day.battery_w > 1
    assert charging.any() and discharging.any()
    assert np.all(surplus[charging] > 0)  # only charges from PV surplus
    assert np.all(surplus[discharging] < 0)  # only discharges into a deficit
    # The power balance closes at every step.
    np.testing.assert_allclose(day.pv_w + day.grid_w + day.battery_w, day.load_w, atol=1e-9)


def test_second_life_cells_spread_and_age(day: DayResult) -> None:
    cap = day.cell_capacity_ah
    assert cap[0].min() >= 70.0 and cap[0].max() <= 90.0
    assert np.all(np.diff(cap, axis=0) <= 1e-12)  # capacity never grows
    fade_pct = 100 * (1 - cap[-1] / cap[0])
    assert np.all(fade_pct > 0) and np.all(fade_pct < 0.2)  # a day at 70-90 % SoH: small, not zero


def test_summary_is_consistent(day: DayResult) -> None:
    s = day.summary()
    assert 0 < s["self_consumption_pct"] <= 100 and 0 < s["autarky_pct"] <= 100
    assert s["battery_discharged_kwh"] < s["battery_charged_kwh"] + 0.3 * 16 * 3.7 * 80 / 1000
    assert s["load_energy_kwh"] == pytest.approx(day.config.daily_load_kwh)


def test_report_has_plots_and_summary(day: DayResult, tmp_path: Path) -> None:
    path = write_day_report(day, tmp_path / "r" / "day.html")
    text = path.read_text()
    assert (
        "Self-consumption" in text
        and "Cell voltages" in text
        and "Usable capacity per cell" in text
    )
    assert "plotly" in text.lower() and '<script src="http' not in text  # works offline
    assert len(text) < 8_000_000
