"""An FMU cell model in a Pillar 2 scenario, under the virtual BMS (``--model fmu``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scenarios.config import Scenario, ScenarioError, load_scenario, with_overrides
from scenarios.engine import simulate

HOME = Path("scenarios/pillar2_home.toml")


def _home(fmu: Path | None, *, days: float, initial_soc: float) -> Scenario:
    overrides: dict[str, object] = {
        "simulation.years": None,
        "simulation.days": days,
        "simulation.full_resolution_days": [],
        # The FMU is the calibrated 5 Ah cell: 32 in parallel make the home's 160 Ah groups.
        "pack.cell_capacity_ah": None,
        "pack.cells_per_group": 32,
        "pack.initial_soc": initial_soc,
        "bms.enabled": True,
        "bms.soc_min": 0.15,
    }
    if fmu is not None:
        overrides["fmu"] = {
            "path": str(fmu),
            "spread_parameters": {"soh": "soh", "resistance_factor": "resistance_factor"},
        }
    return with_overrides(load_scenario(HOME), overrides)


def test_bms_on_an_fmu_string_estimates_and_limits_it(python_ecm_fmu: Path) -> None:
    # A winter night from a low SoC: the house drains the battery to the BMS's window.
    result = simulate(_home(python_ecm_fmu, days=0.5, initial_soc=0.3), model="fmu")
    s, hourly = result.summary, result.hourly
    assert s["model"] == "fmu"
    assert s["battery_discharge_kwh"] > 1.0
    # The BMS estimates the FMU cells' SoC from noisy sensors with its own ECM.
    assert 0.0 < s["bms_soc_rmse_pct"] <= 2.0
    # ... and its SoC window stops the discharge (true SoC, not the estimate).
    assert np.min(hourly["soc_min_cell"]) >= 0.15 - 0.03
    assert np.min(hourly["soc_min_cell"]) < 0.2  # it did get there
    # Second-life spread reached the FMU parameters: the cells differ in capacity.
    assert s["soh_start"] == pytest.approx(0.8, abs=0.03)
    assert s["soh_weakest_cell_end"] < s["soh_start"] - 0.02


def test_model_fmu_needs_an_fmu_table() -> None:
    with pytest.raises(ScenarioError, match=r"needs an \[fmu\] table"):
        simulate(_home(None, days=0.1, initial_soc=0.5), model="fmu")


def test_missing_fmu_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such file"):
        simulate(_home(tmp_path / "gone.fmu", days=0.1, initial_soc=0.5), model="fmu")
