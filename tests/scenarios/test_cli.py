"""``batterytwin simulate`` and ``batterytwin sweep`` end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from batterytwin.cli import app

runner = CliRunner()
HOME = "scenarios/pillar2_home.toml"


def test_simulate_writes_summary_series_and_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["simulate", HOME, "--days", "2", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["simulated_days"] == 2.0 and "soh_end" in summary
    assert json.loads(result.stdout)["soh_end"] == summary["soh_end"]
    hourly = pd.read_parquet(out / "hourly.parquet")
    assert len(hourly) == 48 and {"pv_kwh", "soc_mean"} <= set(hourly.columns)
    report = (out / "report.html").read_text()
    assert "State of health over the run" in report and '<script src="http' not in report


def test_bad_scenario_file_names_file_field_and_range(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(Path(HOME).read_text().replace("peak_kw = 8.0", "peak_kw = -3.0"))
    result = runner.invoke(app, ["simulate", str(bad), "--days", "1"])
    assert result.exit_code == 2
    assert f"{bad}: pv.peak_kw must be >= 0, got -3" in " ".join(result.output.split())
    result = runner.invoke(app, ["simulate", HOME, "--days", "1", "--years", "1"])
    assert result.exit_code == 2 and "not both" in result.output
    result = runner.invoke(app, ["simulate", HOME, "--days", "1", "--model", "dfn"])
    assert (
        result.exit_code == 2 and "--model: must be ecm, pybamm or fmu, got 'dfn'" in result.output
    )


def test_killed_run_resumes_from_its_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "batterytwin", "simulate", HOME, "--days", "6", "--out", str(out)]
    # Paced at 1.5 simulated days per second, so the kill lands mid-run.
    proc = subprocess.Popen(
        [*cmd, "--realtime", str(1.5 * 86_400)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = out / "checkpoint.pkl"
    deadline = time.monotonic() + 60
    while not checkpoint.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.is_file() and not (out / "summary.json").exists()
    result = runner.invoke(app, ["simulate", HOME, "--days", "6", "--resume", str(out), "--json"])
    assert result.exit_code == 0, result.output
    whole = runner.invoke(
        app, ["simulate", HOME, "--days", "6", "--out", str(tmp_path / "whole"), "--json"]
    )
    resumed, fresh = json.loads(result.stdout), json.loads(whole.stdout)
    assert resumed == fresh


def test_sweep_full_design_locally_and_cached(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = ["sweep", HOME, "--days", "2", "--vary", "site.ambient_offset_c=0,15", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "sweep.parquet")
    assert sorted(frame["site.ambient_offset_c"]) == [0.0, 15.0]
    assert (out / "sweep.html").is_file()
    stamp = {p.name: p.stat().st_mtime for p in (out / "runs").iterdir()}
    again = runner.invoke(app, args)  # cached: nothing runs again
    assert again.exit_code == 0
    assert {p.name: p.stat().st_mtime for p in (out / "runs").iterdir()} == stamp


def test_sweep_on_a_dask_local_cluster(tmp_path: Path) -> None:
    out = tmp_path / "dask"
    args = [
        "sweep",
        HOME,
        "--days",
        "1",
        "--vary",
        "pv.peak_kw=4,8",
        "--dask",
        "local",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "sweep.parquet")
    assert len(frame) == 2
    by_pv = frame.set_index("pv.peak_kw")["pv_kwh"]
    assert by_pv[8.0] == by_pv[4.0] * 2  # same weather, twice the array


def test_sweep_bad_vary_is_a_clear_error() -> None:
    result = runner.invoke(app, ["sweep", HOME, "--vary", "pv.peek_kw=1,2", "--days", "1"])
    assert result.exit_code == 2 and "pv.peek_kw" in result.output
    result = runner.invoke(app, ["sweep", HOME, "--vary", "pv.peak_kw"])
    assert result.exit_code == 2 and "field=v1,v2" in result.output


def test_sweep_latin_hypercube_design(tmp_path: Path) -> None:
    out = tmp_path / "lhs"
    args = ["sweep", HOME, "--days", "1", "--design", "lhs", "--samples", "3"]
    args += [
        "--vary",
        "site.ambient_offset_c=0.0,12.0",
        "--vary",
        "bms.soc_max=0.8,0.95",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "sweep.parquet")
    assert len(frame) == 3
    offsets = sorted(frame["site.ambient_offset_c"])
    # One point in each third of the range (Latin hypercube stratification).
    assert [int(o // 4.0) for o in offsets] == [0, 1, 2]
    assert frame["bms.soc_max"].between(0.8, 0.95).all()
    bad = runner.invoke(app, ["sweep", HOME, "--design", "lhs", "--vary", "pv.peak_kw=1,2,3"])
    assert bad.exit_code == 2 and "needs a range lo,hi" in bad.output
