"""Sweeps: designs, cached and resumable runs on a process pool and on Dask, the report."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from scenarios.config import Scenario, ScenarioError, load_scenario, scenario_hash, with_overrides
from scenarios.sweep import SweepError, design_full, design_lhs, run_sweep, write_sweep_report

HOME = Path(__file__).resolve().parents[2] / "scenarios" / "pillar2_home.toml"
CALLS_ENV = "BATTERYTWIN_TEST_SWEEP_CALLS"  # file each fake run appends its hash to
FAIL_ENV = "BATTERYTWIN_TEST_SWEEP_FAIL_KW"  # PV size whose run crashes


def fake_run(scenario: Scenario) -> dict[str, object]:
    """Stands in for a simulation: sleeps a little, KPIs follow from the scenario."""
    time.sleep(0.05)
    calls = os.environ.get(CALLS_ENV)
    if calls:
        with open(calls, "a", encoding="utf-8") as f:
            f.write(scenario_hash(scenario) + "\n")
    fail = os.environ.get(FAIL_ENV)
    if fail and scenario.pv.peak_kw == float(fail):
        raise RuntimeError("simulated crash")
    fade = 0.001 * scenario.pv.peak_kw / scenario.pack.cells_per_group
    return {
        "pv_kwh": np.float64(900.0 * scenario.pv.peak_kw),  # numpy scalars are fine
        "cells": scenario.pack.cells_per_group,
        "soh_trajectory": [[0, 0.8], [365, 0.8 - fade]],
    }


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calls.txt"
    path.touch()
    monkeypatch.setenv(CALLS_ENV, str(path))
    return path


def n_calls(path: Path) -> int:
    return len(path.read_text().splitlines())


VARY: dict[str, list[Any]] = {"pv.peak_kw": [4.0, 8.0], "pack.cells_per_group": [16, 32]}


# -------------------------------------------------------------------------------- designs
def test_full_design_is_every_combination() -> None:
    points = design_full({"a": [1, 2], "b": ["x", "y", "z"]})
    assert len(points) == 6
    assert points[0] == {"a": 1, "b": "x"} and points[-1] == {"a": 2, "b": "z"}
    assert len({tuple(p.values()) for p in points}) == 6
    assert design_full({}) == [{}]
    with pytest.raises(ValueError, match="--vary a: give a list of at least one value"):
        design_full({"a": []})


def test_lhs_design_is_stratified_in_every_field() -> None:
    n = 12
    points = design_lhs({"pv.peak_kw": (2.0, 14.0), "bms.soc_min": (0.0, 0.3)}, n, seed=7)
    assert len(points) == n
    for name, (lo, hi) in {"pv.peak_kw": (2.0, 14.0), "bms.soc_min": (0.0, 0.3)}.items():
        values = np.array([p[name] for p in points])
        assert np.all((values >= lo) & (values < hi))
        strata = np.floor((values - lo) / (hi - lo) * n).astype(int)
        assert sorted(strata) == list(range(n))  # exactly one point per stratum
    assert design_lhs({"x": (0.0, 1.0)}, 5, seed=7) == design_lhs({"x": (0.0, 1.0)}, 5, seed=7)
    assert design_lhs({"x": (0.0, 1.0)}, 5, seed=7) != design_lhs({"x": (0.0, 1.0)}, 5, seed=8)
    ints = [p["n"] for p in design_lhs({"n": (16, 19)}, 4, seed=1)]
    assert sorted(ints) == [16, 17, 18, 19] and all(isinstance(v, int) for v in ints)
    with pytest.raises(ValueError, match="lo <= hi"):
        design_lhs({"x": (1.0, 0.0)}, 3, seed=0)


# ----------------------------------------------------------------------------------- runs
def test_process_pool_runs_then_cache_runs_nothing(tmp_path: Path, calls: Path) -> None:
    base = load_scenario(HOME)
    progress: list[tuple[int, int]] = []
    points = design_full(VARY)
    df = run_sweep(
        base,
        points,
        run_one=fake_run,
        out_dir=tmp_path / "out",
        workers=2,
        progress=lambda done, total: progress.append((done, total)),
    )
    assert n_calls(calls) == 4
    assert progress[0] == (0, 4) and progress[-1] == (4, 4)
    assert list(df.columns[:3]) == ["pv.peak_kw", "pack.cells_per_group", "hash"]
    assert df["pv_kwh"].tolist() == [3600.0, 3600.0, 7200.0, 7200.0]
    assert df["pack.cells_per_group"].tolist() == [16, 32, 16, 32]
    trajectory = json.loads(df["soh_trajectory"].iloc[3])
    assert trajectory == [[0, 0.8], [365, pytest.approx(0.8 - 0.001 * 8 / 32)]]
    assert len(list((tmp_path / "out" / "runs").glob("*.json"))) == 4
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out" / "sweep.parquet"), df)

    again = run_sweep(base, points, run_one=fake_run, out_dir=tmp_path / "out")
    assert n_calls(calls) == 4  # every run came from the cache
    pd.testing.assert_frame_equal(again, df)


def test_interrupted_sweep_resumes(
    tmp_path: Path, calls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = load_scenario(HOME)
    points = design_full(VARY)
    out = tmp_path / "out"
    run_sweep(base, points[:1], run_one=fake_run, out_dir=out, workers=1)  # stopped early
    monkeypatch.setenv(FAIL_ENV, "8.0")
    with pytest.raises(SweepError, match=r"2 run\(s\) failed") as info:
        run_sweep(base, points, run_one=fake_run, out_dir=out)
    assert "RuntimeError: simulated crash" in str(info.value)
    assert "'pv.peak_kw': 8.0" in str(info.value)
    assert n_calls(calls) == 1 + 3
    assert len(list((out / "runs").glob("*.json"))) == 2
    monkeypatch.delenv(FAIL_ENV)
    df = run_sweep(base, points, run_one=fake_run, out_dir=out)
    assert n_calls(calls) == 4 + 2  # only the two failed runs ran again
    assert len(df) == 4 and df["pv_kwh"].notna().all()


def test_dask_local_cluster(tmp_path: Path, calls: Path) -> None:
    base = load_scenario(HOME)
    points = design_full(VARY)
    df = run_sweep(base, points, run_one=fake_run, out_dir=tmp_path / "dask", executor="dask-local")
    assert n_calls(calls) == 4
    local = run_sweep(base, points, run_one=fake_run, out_dir=tmp_path / "dask")
    assert n_calls(calls) == 4
    pd.testing.assert_frame_equal(df, local)
    assert df["hash"].tolist() == [scenario_hash(with_overrides(base, p)) for p in points]


def test_dask_scheduler_address(tmp_path: Path, calls: Path) -> None:
    from distributed import LocalCluster

    # An in-process cluster stands in for a remote scheduler at a tcp:// address.
    with LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=1, processes=False, protocol="tcp://", dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://")
        df = run_sweep(
            load_scenario(HOME),
            design_full({"pv.peak_kw": [3.0, 5.0]}),
            run_one=fake_run,
            out_dir=tmp_path / "tcp",
            executor=address,
        )
    assert df["pv_kwh"].tolist() == [2700.0, 4500.0] and n_calls(calls) == 2


@pytest.mark.parametrize(
    ("vary", "expected"),
    [
        ({"pv.peek_kw": [1.0]}, "unknown field 'pv.peek_kw' (did you mean 'pv.peak_kw'?)"),
        (
            {"pv.peak_kw": [4.0, -1.0]},
            "sweep point 1 {'pv.peak_kw': -1.0}: pv.peak_kw must be >= 0",
        ),
        ({"pack.cells_per_group": [8.5]}, "pack.cells_per_group must be an integer"),
    ],
)
def test_bad_vary_field_fails_before_anything_runs(
    tmp_path: Path, calls: Path, vary: dict[str, list[float]], expected: str
) -> None:
    with pytest.raises(ScenarioError) as info:
        run_sweep(load_scenario(HOME), design_full(vary), run_one=fake_run, out_dir=tmp_path)
    assert expected in str(info.value)
    assert n_calls(calls) == 0 and not (tmp_path / "runs").exists()


def test_bad_arguments(tmp_path: Path) -> None:
    base = load_scenario(HOME)
    with pytest.raises(ValueError, match="executor must be"):
        run_sweep(base, [{}], run_one=fake_run, out_dir=tmp_path, executor="threads")
    with pytest.raises(TypeError, match="top-level function"):
        run_sweep(base, [{}], run_one=lambda s: {"x": 1.0}, out_dir=tmp_path)


# --------------------------------------------------------------------------------- report
def test_report_plots_kpis_and_trajectories(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "pv.peak_kw": [4.0, 8.0],
            "hash": ["a" * 64, "b" * 64],
            "self_sufficiency": [0.4, 0.6],
            "soh_trajectory": [json.dumps([[0, 0.8], [365, 0.79]]), json.dumps([[0, 0.8]])],
        }
    )
    path = write_sweep_report(df, ["pv.peak_kw"], tmp_path / "sweep.html")
    html = path.read_text(encoding="utf-8")
    assert "self_sufficiency" in html and "soh_trajectory" in html
    assert "pv.peak_kw=4" in html  # runs labelled by their varied values
    assert html.count("<script") >= 2


def test_workers_fork_only_while_the_parent_runs_no_other_thread() -> None:
    import sys
    import threading

    from scenarios.sweep import _start_method

    if sys.platform == "linux" and threading.active_count() == 1:
        assert _start_method() == "fork"
    stop = threading.Event()
    helper = threading.Thread(target=stop.wait)
    helper.start()
    try:
        assert _start_method() == "spawn"  # forking a threaded parent can deadlock
    finally:
        stop.set()
        helper.join()
