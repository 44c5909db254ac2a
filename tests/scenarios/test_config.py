"""Scenario configuration: the two TOML files, error messages, hashing and overrides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from scenarios.config import (
    Pillar1Scenario,
    Pillar2Scenario,
    ReplacementEvent,
    ScenarioError,
    SimulationConfig,
    get_field,
    load_scenario,
    scenario_hash,
    with_overrides,
)

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / "scenarios" / "pillar2_home.toml"
HUB = ROOT / "scenarios" / "pillar1_charging_hub.toml"
NOMINAL_CELL_V = 3.7
NOMINAL_SET_AH = 5.0  # the calibrated nmc_okane2022 cell, before scaling


def pack_kwh(scenario: Pillar1Scenario | Pillar2Scenario) -> float:
    cell_ah = scenario.pack.cell_capacity_ah or NOMINAL_SET_AH
    return scenario.pack.n_cells * NOMINAL_CELL_V * cell_ah / 1000


def edited(tmp_path: Path, old: str, new: str, *, source: Path = HOME) -> Path:
    text = source.read_text(encoding="utf-8")
    assert old in text, old
    path = tmp_path / source.name
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    for line in message.splitlines():
        assert line.startswith(f"{path}: "), line  # every line names the file
    return message


# ------------------------------------------------------------------------------ the files
def test_home_file_loads() -> None:
    home = load_scenario(HOME)
    assert isinstance(home, Pillar2Scenario)
    assert home.kind == "pillar2_home"
    assert home.household.annual_consumption_kwh == 4500
    assert home.pv.peak_kw == 8 and home.pv.azimuth_deg == 180
    assert home.pack.to_topology().describe() == "16s1p"  # 16 large (160 Ah) cells
    assert home.pack.load_parameters().nominal_capacity_ah == 160
    assert 8 < pack_kwh(home) < 11
    assert home.tariff.import_eur_per_kwh == 0.35 and home.inverter_max_kw == 5
    assert home.simulation.duration_days == 365


def test_hub_file_loads() -> None:
    hub = load_scenario(HUB)
    assert isinstance(hub, Pillar1Scenario)
    assert sum(g.count for g in hub.chargers) == 10
    assert {g.kind for g in hub.chargers} == {"ac", "dc"}
    assert hub.pack.n_modules == 4
    assert 200 < pack_kwh(hub) < 400
    assert 60 <= hub.ev.arrivals_per_day <= 120
    assert 100 <= hub.pv.peak_kw <= 200
    assert hub.controller.threshold_kw <= hub.grid.limit_kw


def test_pack_config_maps_onto_the_twin() -> None:
    pack = load_scenario(HUB).pack
    assert pack.to_topology().n_cells == pack.n_cells == 4 * 16 * 8
    assert pack.to_spread().soh_range == (pack.soh_min, pack.soh_max)
    assert pack.to_options().prior_calendar_share == pack.prior_calendar_share


# --------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("peak_kw = 8.0", "peak_kw = -3", "pv.peak_kw must be >= 0, got -3 (allowed: 0..100000)"),
        (
            "tilt_deg = 30.0",
            "tilt_deg = 100",
            "pv.tilt_deg must be <= 90, got 100 (allowed: 0..90)",
        ),
        ("soh_std = 0.05", "soh_std = -0.1", "pack.soh_std must be >= 0, got -0.1"),
        ("weather_region = 12", "weather_region = 16", "site.weather_region must be <= 15"),
        ("peak_kw = 8.0", 'peak_kw = "eight"', "pv.peak_kw must be a number within 0..100000"),
        (
            "cells_per_group = 1",
            "cells_per_group = 3.5",
            "pack.cells_per_group must be an integer within 1..10000, got 3.5",
        ),
        ('ageing = "auto"', 'ageing = "fast"', "pack.ageing must be 'auto', 'nmc', 'lfp' or"),
        ("[pv]", "[pv]\nvertical = true", "unknown field 'pv.vertical'"),
        ("dt_s = 60", "dt_s = 7", "simulation.dt_s must divide 900 s"),
        ("soh_mean = 0.8", "soh_mean = 0.95", "pack.soh_mean must be within soh_min..soh_max"),
        ("soc_max = 0.95", "soc_max = 0.05", "bms.soc_max must be > soc_min (0.1), got 0.05"),
        ('kind = "pillar2_home"', 'kind = "pillar3"', "kind must be one of"),
    ],
)
def test_errors_name_file_field_and_range(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert expected in load_error(edited(tmp_path, old, new))


def test_unknown_field_suggests_the_known_one(tmp_path: Path) -> None:
    message = load_error(edited(tmp_path, "peak_kw = 8.0", "peek_kw = 8.0"))
    assert "unknown field 'pv.peek_kw' (did you mean 'pv.peak_kw'?)" in message
    assert "pv.peak_kw is required (a number within 0..100000)" in message


def test_toml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = edited(tmp_path, "peak_kw = 8.0", "peak_kw = ")
    line = 1 + path.read_text().splitlines().index("peak_kw = ")
    message = load_error(path)
    assert "invalid TOML" in message and f"line {line}" in message


def test_missing_file() -> None:
    assert "cannot read the file" in load_error(Path("no/such/scenario.toml"))


@pytest.mark.parametrize(
    ("replacement", "expected"),
    [
        (
            "{ at_days = 30.0, cells = [1, 2], module = 0, soh = 0.85 }",
            "replacements[0].module must be omitted when cells is given",
        ),
        ("{ at_days = 30.0, soh = 0.85 }", "replacements[0].cells or module is required"),
        (
            "{ at_days = 30.0, cells = [1, 16], soh = 0.85 }",
            "replacements[0].cells must be within 0..15 (the pack has 16 cells), got 16",
        ),
        (
            "{ at_days = 30.0, module = 1, soh = 0.85 }",
            "replacements[0].module must be within 0..0",
        ),
        ("{ at_days = 30.0, cells = [-1], soh = 0.85 }", "replacements[0].cells[0] must be >= 0"),
        ("{ at_days = 400.0, module = 0, soh = 0.85 }", "replacements[0].at_days must be within"),
        ("{ at_days = 30.0, module = 0, soh = 1.2 }", "replacements[0].soh must be <= 1, got 1.2"),
    ],
)
def test_replacement_errors(tmp_path: Path, replacement: str, expected: str) -> None:
    path = edited(tmp_path, "replacements = []", f"replacements = [{replacement}]")
    assert expected in load_error(path)


def test_valid_replacement_and_exactly_one_target() -> None:
    assert ReplacementEvent(at_days=1.0, module=0, soh=0.9).cells is None
    with pytest.raises(ValidationError):
        ReplacementEvent(at_days=1.0, soh=0.9)


def test_every_problem_on_its_own_line(tmp_path: Path) -> None:
    path = edited(tmp_path, "peak_kw = 8.0", "peak_kw = -3")
    text = path.read_text().replace("soc_max = 0.95", "soc_max = 1.5")
    path.write_text(text.replace("seed = 2024", "seed = -1"))
    lines = load_error(path).splitlines()
    assert len(lines) == 3
    assert any("simulation.seed must be >= 0, got -1" in line for line in lines)
    assert any("bms.soc_max must be <= 1, got 1.5" in line for line in lines)


def test_hub_cross_checks(tmp_path: Path) -> None:
    path = edited(tmp_path, "threshold_kw = 230.0", "threshold_kw = 300.0", source=HUB)
    assert "controller.threshold_kw must be <= grid.limit_kw (250), got 300" in load_error(path)
    path = edited(tmp_path, "power_kw = 22.0", "power_kw = 50.0", source=HUB)
    assert "chargers[0].power_kw must be within 11..43 for an AC charger" in load_error(path)
    path = edited(tmp_path, "power_kw = 150.0", "power_kw = 500.0", source=HUB)
    assert "chargers[1].power_kw must be <= 400, got 500 (allowed: 11..400)" in load_error(path)


def test_simulation_length_and_steps() -> None:
    assert SimulationConfig().duration_days == 365
    assert SimulationConfig(days=2.0).duration_s == 2 * 86_400
    with pytest.raises(ValidationError, match="days must be omitted"):
        SimulationConfig(years=1.0, days=3.0)
    with pytest.raises(ValidationError, match="chunk_s must be a multiple of dt_s"):
        SimulationConfig(dt_s=60, chunk_s=90)
    with pytest.raises(ValidationError, match="full_resolution_days"):
        SimulationConfig(days=3.0, full_resolution_days=[3])


def test_models_are_frozen() -> None:
    home = load_scenario(HOME)
    with pytest.raises(ValidationError):
        home.pv.peak_kw = 3.0


# --------------------------------------------------------------------------------- hashes
def test_hash_is_stable_and_tracks_every_field(tmp_path: Path) -> None:
    home = load_scenario(HOME)
    h = scenario_hash(home)
    assert len(h) == 64 and h == scenario_hash(load_scenario(HOME))
    # A fresh interpreter (other hash seed, other dict history) agrees.
    code = (
        "from scenarios.config import load_scenario, scenario_hash; "
        f"print(scenario_hash(load_scenario({str(HOME)!r})))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert other.stdout.strip() == h
    # Defaults written out or left implicit: the same resolved scenario, the same hash.
    reordered = edited(tmp_path, "peak_kw = 8.0\n", "")
    reordered.write_text(reordered.read_text().replace("[pv]\n", "[pv]\npeak_kw = 8.0\n"))
    assert scenario_hash(load_scenario(reordered)) == h
    implicit = edited(tmp_path, "cell_voltage_margin_v = 0.02", "")
    assert scenario_hash(load_scenario(implicit)) == h
    assert scenario_hash(with_overrides(home, {"pv.tilt_deg": 31.0})) != h
    assert scenario_hash(with_overrides(home, {"simulation.seed": 1})) != h


# ------------------------------------------------------------------------------ overrides
def test_overrides_set_and_parse_values() -> None:
    home = load_scenario(HOME)
    new = with_overrides(
        home,
        {
            "pv.peak_kw": "12.5",  # a command-line string
            "pack.cells_per_group": 20.0,  # an integral float for an integer field
            "simulation.full_resolution_days": "[1, 2]",
            "pack.ageing": "none",
        },
    )
    assert new.pv.peak_kw == 12.5 and new.pack.cells_per_group == 20
    assert new.simulation.full_resolution_days == [1, 2] and new.pack.ageing == "none"
    assert home.pv.peak_kw == 8.0  # the base is untouched
    hub = with_overrides(load_scenario(HUB), {"chargers[1].count": 2, "chargers.0.count": 3})
    assert isinstance(hub, Pillar1Scenario)
    assert [g.count for g in hub.chargers] == [3, 2]
    assert get_field(hub, "chargers[1].count") == 2


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"pv.peak_kw": -3}, "overrides: pv.peak_kw must be >= 0, got -3"),
        ({"pv.peek_kw": 1.0}, "overrides: unknown field 'pv.peek_kw' (did you mean 'pv.peak_kw'?)"),
        ({"pack.cells_per_group": 20.5}, "pack.cells_per_group must be an integer within 1..10000"),
        ({"pv.peak_kw": "lots"}, "pv.peak_kw must be a number within 0..100000, got 'lots'"),
        ({"pv.peak_kw.x": 1}, "unknown field 'pv.peak_kw.x'"),
        ({"replacements[0].soh": 0.9}, "replacements[0] does not exist"),
        ({"bms.soc_min": 0.99}, "bms.soc_max must be > soc_min (0.99), got 0.95"),
    ],
)
def test_override_errors_name_the_field(overrides: dict[str, object], expected: str) -> None:
    with pytest.raises(ScenarioError) as info:
        with_overrides(load_scenario(HOME), overrides)
    assert expected in str(info.value)
