"""``batterytwin fmu info|run|export`` from the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from batterytwin.cli import app
from twin.fmu.twin import FmuTwin

runner = CliRunner()


def test_info_lists_version_interfaces_platforms_and_variables(c_ecm_fmu3: Path) -> None:
    result = runner.invoke(app, ["fmu", "info", str(c_ecm_fmu3), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["fmi_version"].startswith("3.")
    assert info["interfaces"] == ["CoSimulation", "ModelExchange"]
    assert "c-code" in info["platforms"] and "x86_64-linux" in info["platforms"]
    by_name = {v["name"]: v for v in info["variables"]}
    assert by_name["current"]["causality"] == "input" and by_name["current"]["unit"] == "A"
    assert by_name["voltage"]["causality"] == "output" and by_name["voltage"]["unit"] == "V"
    text = runner.invoke(app, ["fmu", "info", str(c_ecm_fmu3)])
    assert text.exit_code == 0 and "runs here: yes" in text.output


def test_run_writes_time_then_outputs_and_matches_the_twin(
    c_ecm_fmu3: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "in.csv"
    inputs.write_text("time,current,ambient_temperature\n0,5,30\n600,5,30\n600,-2,30\n1200,-2,30\n")
    out = tmp_path / "out.csv"
    result = runner.invoke(
        app,
        ["fmu", "run", str(c_ecm_fmu3), "--input", str(inputs), "--stop-time", "1200",
         "--step", "10", "--out", str(out), "--start", "soc_initial=0.7"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with out.open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["time", "voltage", "soc", "temperature"]
    table = np.array(rows[1:], dtype=float)
    assert table[0, 0] == 0.0 and table[-1, 0] == 1200.0
    # The same profile through the twin interface.
    with FmuTwin(c_ecm_fmu3, initial_soc=0.7) as twin:
        for k in range(120):
            step = twin.step(current_a=5.0 if k < 60 else -2.0, dt_s=10.0, ambient_c=30.0)
    assert abs(table[-1, 1] - step.voltage_v[0]) < 1e-9
    assert abs(table[-1, 2] - step.truth.soc[0]) < 1e-12


def test_run_names_a_bad_input_column(c_ecm_fmu3: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("time,curent\n0,1\n")
    result = runner.invoke(app, ["fmu", "run", str(c_ecm_fmu3), "--input", str(bad)])
    assert result.exit_code == 2
    assert "curent are not inputs" in " ".join(result.output.split())
    junk = tmp_path / "x.fmu"
    junk.write_bytes(b"\x00")
    result = runner.invoke(app, ["fmu", "info", str(junk)])
    assert result.exit_code == 2 and "not a valid zip" in result.output


def test_export_both_formats_validated(tmp_path: Path) -> None:
    for args, name in (
        (["--params", "ecm_example"], "py.fmu"),
        (["--format", "c", "--fmi-version", "3", "--soh", "0.85"], "c3.fmu"),
    ):
        out = tmp_path / name
        result = runner.invoke(app, ["fmu", "export", "--out", str(out), *args])
        assert result.exit_code == 0, result.output
        assert "valid FMU" in result.output and out.is_file()
    refused = runner.invoke(
        app, ["fmu", "export", "--format", "c", "--pack", "4s1p", "--out", str(tmp_path / "p.fmu")]
    )
    assert refused.exit_code == 2 and "--pack works with --format python only" in refused.output
