"""Scenarios with a virtual BMS attached: its KPIs, its SoF limit, and nothing when off.

The BMS-attached runs step the pack in Python (about 20 s per simulated day of the home
pack at 10 s BMS cycles), so they are one day long, or two at 60 s cycles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scenarios.config import Scenario, ScenarioError, load_scenario, with_overrides
from scenarios.engine import BMS_HOURLY_COLUMNS, simulate
from virtual_bms.estimators.sof import default_sof_table

HOME = Path("scenarios/pillar2_home.toml")
HUB = Path("scenarios/pillar1_charging_hub.toml")
BMS_KPIS = ("bms_soc_rmse_pct", "bms_events", "bms_soh_estimate_mean")


def short(path: Path, days: float, **extra: object) -> Scenario:
    return with_overrides(
        load_scenario(path),
        {
            "simulation.years": None,
            "simulation.days": days,
            "simulation.full_resolution_days": [],
            **extra,
        },
    )


def test_home_day_with_bms_reports_its_estimates_and_closes_the_books() -> None:
    plain = short(HOME, 1.0)
    without = simulate(plain).summary
    result = simulate(with_overrides(plain, {"bms.enabled": True, "bms.record": True}))
    s = result.summary
    for key in BMS_KPIS:
        assert key in s and key not in without, key
    assert 0.0 < s["bms_soc_rmse_pct"] <= 2.0
    assert s["bms_soh_estimate_mean"] == pytest.approx(plain.pack.soh_mean)  # no charge ended
    assert s["energy_balance_error_pct"] < 0.1
    # Cell losses are what the cells gave up minus their terminal energy: they agree with
    # the kernel's Joule heat (R0 and RC drops) for nearly the same duty.
    assert s["losses_kwh"] == pytest.approx(without["losses_kwh"], rel=0.1)
    assert s["battery_discharge_kwh"] == pytest.approx(without["battery_discharge_kwh"], rel=0.1)
    # The twin ages as in the kernel (EcmTwin closes its hourly stress windows).
    assert s["soh_end"] < s["soh_start"]
    assert s["soh_end"] == pytest.approx(without["soh_end"], abs=1e-5)
    for name in BMS_HOURLY_COLUMNS:
        assert result.hourly[name].shape == (24,), name
    assert np.nanmax(result.hourly["bms_soc_rmse_pct"]) <= 2.0


def test_cold_site_bms_sof_table_stops_the_charging_pv_asks_for(tmp_path: Path) -> None:
    # A battery room at -10 degC; the engine's own cold limit is moved out of the way, so
    # only the BMS's SoF table (no charging at or below 0 degC) can stop the charging.
    cold = short(
        HOME,
        1.0,
        **{
            "site.indoor_temperature_c": 0.0,
            "site.ambient_offset_c": -10.0,
            "bms.min_charge_temperature_c": -40.0,
            "bms.sample_period_s": 20,
            "simulation.full_resolution_days": [0],
        },
    )
    without = simulate(cold)
    assert without.summary["battery_charge_kwh"] > 0.05  # the PV surplus charges the pack
    result = simulate(with_overrides(cold, {"bms.enabled": True}))
    steps = result.full_resolution[0]
    assert steps["request_w"].min() < -100.0  # the controller still asks to charge
    assert result.summary["battery_charge_kwh"] == 0.0
    # Per step: no charge current beyond the table's most generous value for the warmest
    # cell (at SoC 0 and the largest cell capacity); cold cells get none at all.
    table = default_sof_table()
    capacity_ah = cold.pack.load_parameters().nominal_capacity_ah
    allowed_a = table.max_charge_current_a(
        temperature_c=steps["t_cell_max"], soc=0.0, capacity_ah=capacity_ah
    )
    assert np.all(-steps["pack_current_a"] <= allowed_a + 1e-9)
    assert np.all(steps["pack_current_a"] >= 0.0)
    assert result.summary["energy_balance_error_pct"] < 0.1
    # A configured table that allows 0.1C whatever the temperature lets the same pack charge.
    table_file = tmp_path / "sof.toml"
    table_file.write_text(
        'unit = "C"\ntemperature_grid_c = [-40.0, 60.0]\nsoc_grid = [0.0, 1.0]\n'
        "max_charge = [[0.1, 0.1], [0.1, 0.1]]\n"
    )
    permissive = with_overrides(cold, {"bms.enabled": True, "bms.sof_table": str(table_file)})
    assert simulate(permissive).summary["battery_charge_kwh"] > 0.05


def test_disabled_bms_leaves_the_run_unchanged() -> None:
    base = short(HOME, 1.0)
    # Every BMS key but `enabled` set to something else: still the kernel run of before.
    off = with_overrides(
        base,
        {
            "bms.enabled": False,
            "bms.sample_period_s": 7,
            "bms.reporting_interval_s": 60.0,
            "bms.record": True,
        },
    )
    a, b = simulate(base), simulate(off)
    assert a.summary == b.summary
    assert not any(key.startswith("bms_") for key in b.summary)
    assert a.hourly.keys() == b.hourly.keys()
    for name, column in a.hourly.items():
        np.testing.assert_array_equal(column, b.hourly[name])


def test_bms_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    scenario = short(HOME, 2.0, **{"bms.enabled": True, "bms.sample_period_s": 60})
    whole = simulate(scenario).summary
    checkpoint = tmp_path / "checkpoint.pkl"

    class Killed(Exception):
        pass

    def kill(done_s: float, total_s: float) -> None:
        if done_s >= 1.2 * 86_400:
            raise Killed

    with pytest.raises(Killed):
        simulate(scenario, checkpoint_path=checkpoint, progress=kill)
    resumed = simulate(scenario, checkpoint_path=checkpoint, resume=True).summary
    assert resumed == whole  # the BMS's estimator state travels with the checkpoint


def test_hub_with_bms_runs_the_pillar1_bms() -> None:
    s = simulate(short(HUB, 0.25, **{"bms.enabled": True, "bms.sample_period_s": 60})).summary
    assert s["bms_soc_rmse_pct"] <= 2.0
    assert s["energy_balance_error_pct"] < 0.1


def test_bms_config_problems_name_the_field() -> None:
    with pytest.raises(ScenarioError, match=r"bms\.sample_period_s must divide simulation\.dt_s"):
        short(HOME, 1.0, **{"bms.enabled": True, "bms.sample_period_s": 7})
    with pytest.raises(ScenarioError, match=r"bms\.enabled must be true or false, got 'yes'"):
        short(HOME, 1.0, **{"bms.enabled": "yes"})
    with pytest.raises(ScenarioError, match=r"bms\.sample_period_s must be <= 60"):
        short(HOME, 1.0, **{"bms.sample_period_s": 120})
    with pytest.raises(ScenarioError, match=r"bms\.enabled needs the cell-by-cell ECM pack"):
        simulate(short(HOME, 1.0, **{"bms.enabled": True}), model="pybamm")


def test_long_bms_run_warns_that_it_is_slow() -> None:
    class Stop(Exception):
        pass

    def stop(done_s: float, total_s: float) -> None:
        raise Stop

    scenario = short(HOME, 61.0, **{"bms.enabled": True, "bms.sample_period_s": 60})
    with pytest.warns(UserWarning, match="days or weeks"), pytest.raises(Stop):
        simulate(scenario, progress=stop)
