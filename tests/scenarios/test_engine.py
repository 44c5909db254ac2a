"""Scenario runs: energy balance, determinism, resume, replacements, real time, KPIs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from scenarios.config import Scenario, load_scenario, with_overrides
from scenarios.engine import simulate

HOME = Path("scenarios/pillar2_home.toml")
HUB = Path("scenarios/pillar1_charging_hub.toml")


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


@pytest.mark.parametrize("path", [HOME, HUB])
def test_energy_balance_closes(path: Path) -> None:
    # Three winter days: PV, storage, import and export (and peak shaving) all happen.
    summary = simulate(short(path, 3.0, **{"simulation.seed": 5})).summary
    assert summary["energy_balance_error_pct"] < 0.1
    assert summary["battery_charge_kwh"] > 0 and summary["battery_discharge_kwh"] > 0
    # The books: supply = use, with the storage's stored-energy change and losses.
    supply = summary["pv_kwh"] + summary["grid_import_kwh"]
    assert supply > 0 and summary["losses_kwh"] > 0


def test_same_seed_same_result_other_seed_differs() -> None:
    scenario = short(HUB, 2.0)
    a = simulate(scenario).summary
    b = simulate(scenario).summary
    c = simulate(scenario, seed=99).summary
    assert a == b
    assert a["ev_energy_kwh"] != c["ev_energy_kwh"]


class _Killed(Exception):
    pass


@pytest.mark.parametrize("path", [HOME, HUB])
def test_resume_after_a_killed_run_matches_an_uninterrupted_run(path: Path, tmp_path: Path) -> None:
    scenario = short(path, 4.0)
    whole = simulate(scenario).summary
    checkpoint = tmp_path / "checkpoint.pkl"

    def kill_after_two_days(done_s: float, total_s: float) -> None:
        if done_s >= 2.4 * 86_400:
            raise _Killed

    with pytest.raises(_Killed):
        simulate(scenario, checkpoint_path=checkpoint, progress=kill_after_two_days)
    assert checkpoint.is_file()
    resumed = simulate(scenario, checkpoint_path=checkpoint, resume=True).summary
    assert resumed.keys() == whole.keys()
    for key, value in whole.items():
        if isinstance(value, float):
            assert resumed[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
        else:
            assert resumed[key] == value, key


def test_resume_refuses_another_scenario(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.pkl"
    simulate(short(HOME, 1.0), checkpoint_path=checkpoint)
    with pytest.raises(ValueError, match="another scenario"):
        simulate(short(HOME, 2.0), checkpoint_path=checkpoint, resume=True)


def test_module_replacement_raises_capacity() -> None:
    replacement = [{"at_days": 1.0, "module": 0, "soh": 1.0}]
    base = short(HOME, 2.0)
    swapped = with_overrides(base, {"replacements": replacement})
    a, b = simulate(base).summary, simulate(swapped).summary
    assert b["soh_end"] > a["soh_end"] + 0.1  # 16 cells (the whole module) now near new


def test_realtime_pacing() -> None:
    scenario = short(HOME, 2 / 24)  # two hours
    start = time.perf_counter()
    simulate(scenario, realtime_factor=2 * 3600 / 1.0)  # two hours in one second
    assert time.perf_counter() - start >= 0.9


def test_hub_storage_shaves_the_peak() -> None:
    summary = simulate(short(HUB, 3.0)).summary
    limit = load_scenario(HUB).grid.limit_kw
    assert summary["peak_grid_kw"] <= limit + 1e-6
    assert summary["peak_grid_without_storage_kw"] > limit
    assert summary["evs_served"] > 0 and summary["ev_wait_mean_min"] >= 0


def test_ev_energy_booked_equals_what_the_sessions_charge() -> None:
    # A grid big enough that nothing is curtailed: the hub delivers what the sessions
    # charge (EVs leaving within a chunk included), and no more than the EVs wanted.
    scenario = short(HUB, 2.0, **{"grid.limit_kw": 5000.0, "controller.threshold_kw": 4000.0})
    s = simulate(scenario).summary
    assert (
        s["energy_not_delivered_kwh"] == pytest.approx(s["evs_lost"] * 0, abs=1e-9)
        or s["evs_lost"] > 0
    )
    # Sessions still charging at the end of the run are booked up to the end only.
    assert s["ev_energy_kwh"] == pytest.approx(s["ev_energy_sessions_kwh"], rel=0.02)
    assert s["ev_energy_sessions_kwh"] <= s["ev_energy_wanted_kwh"]


@pytest.mark.pybamm
def test_pybamm_storage_agrees_with_the_ecm_pack() -> None:
    scenario = short(HOME, 1.0)
    ecm = simulate(scenario).summary
    pybamm = simulate(scenario, model="pybamm").summary
    assert pybamm["model"] == "pybamm" and ecm["model"] == "ecm"
    # Same household, same controller: the electrochemical twin and the calibrated ECM
    # pack serve the house almost alike (the ECM pack has weak cells, PyBaMM one mean cell).
    assert pybamm["autarky_pct"] == pytest.approx(ecm["autarky_pct"], abs=3.0)
    assert pybamm["battery_discharge_kwh"] == pytest.approx(ecm["battery_discharge_kwh"], rel=0.2)
    assert (
        pybamm["energy_balance_error_pct"] != pybamm["energy_balance_error_pct"]
    )  # NaN: not tracked
    with pytest.raises(ValueError, match="need --model ecm"):
        simulate(scenario, model="pybamm", resume=True)
