"""The ``batterytwin`` command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batterytwin.cli import app

runner = CliRunner()


def test_day_writes_report_and_prints_summary(tmp_path: Path) -> None:
    out = tmp_path / "day.html"
    result = runner.invoke(app, ["twin", "day", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert out.is_file() and summary["report"] == str(out)
    assert summary["pv_energy_kwh"] > 0


def test_day_table_output() -> None:
    result = runner.invoke(app, ["twin", "day", "--out", "/dev/null"])
    assert result.exit_code == 0, result.output
    assert "Self-consumption" in result.stdout and "Largest cell-voltage spread" in result.stdout


def test_run_experiment_on_pack_writes_csv(tmp_path: Path) -> None:
    out = tmp_path / "run.csv"
    args = ["twin", "run", "--experiment", "Discharge at 0.5C for 10 min; Rest for 5 min"]
    result = runner.invoke(app, [*args, "--pack", "4x14s2p", "--strings", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = out.read_text().splitlines()
    assert rows[0] == "time_s,step,current_a,voltage_v,temperature_c,soc"
    assert len(rows) == 1 + 90  # 15 min at 10 s


def test_run_profile_and_bad_profile(tmp_path: Path) -> None:
    good = tmp_path / "p.csv"
    good.write_text("time_s,current_a\n0,50\n60,-20\n120,0\n")
    result = runner.invoke(app, ["twin", "run", "--profile", str(good), "--dt", "30"])
    assert result.exit_code == 0, result.output
    bad = tmp_path / "bad.csv"
    bad.write_text("time_s,current_a\n0,50\n60,nan\n")
    result = runner.invoke(app, ["twin", "run", "--profile", str(bad)])
    assert result.exit_code == 2
    assert "current_a is nan on data row 2" in result.output


def test_bad_inputs_exit_2_with_a_sentence() -> None:
    cases = [
        (["twin", "run", "--experiment", "Dance"], "cannot parse experiment step 'Dance'"),
        (
            ["twin", "run", "--experiment", "Rest for 1 min", "--params", "nope"],
            "unknown ECM parameter set 'nope'",
        ),
        (
            ["twin", "run", "--experiment", "Rest for 1 min", "--pack", "16q"],
            "cannot read pack '16q'",
        ),
        (
            ["twin", "run", "--experiment", "Rest for 1 min", "--dt", "0"],
            "dt_s must be a finite number > 0",
        ),
        (["twin", "impedance", "--f-min", "10", "--f-max", "1"], "need 0 < --f-min < --f-max"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), result.output


def test_impedance_json_limits() -> None:
    result = runner.invoke(
        app, ["twin", "impedance", "--json", "--f-min", "1e-5", "--f-max", "1e5"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows[0]["frequency_hz"] == 1e5 and rows[-1]["frequency_hz"] == 1e-5
    assert rows[-1]["z_re_ohm"] > rows[0]["z_re_ohm"] > 0  # R0 + R1 at DC, R0 at high frequency
    assert abs(rows[0]["z_im_ohm"]) < 1e-6


@pytest.mark.pybamm
def test_run_pybamm_experiment(tmp_path: Path) -> None:
    out = tmp_path / "pybamm.csv"
    args = ["twin", "run", "--params", "pybamm:Chen2020", "--soc", "0.9", "--dt", "30"]
    steps = "Discharge at 1C until 3.3 V; Hold at 3.3 V for 5 min"
    result = runner.invoke(app, [*args, "--experiment", steps, "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    cc = [r for r in rows if r[1] == "0"]
    assert float(cc[0][2]) == pytest.approx(5.0)  # 1C of Chen2020's 5 Ah cell
    assert float(cc[-1][3]) <= 3.3 < float(cc[-2][3])
    cv = [float(r[3]) for r in rows if r[1] == "1"]
    assert all(abs(v - 3.3) < 1e-3 for v in cv)


def test_impedance_emulate_prints_wire_records() -> None:
    args = ["twin", "impedance", "--emulate", "--json", "--points", "8"]
    args += ["--noise", "0", "--phase-noise", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert len(records) == 8
    assert set(records[0]) >= {"frequency", "Z_re", "Z_im", "Z_mod", "Z_phz", "status", "cell_id"}
    exact = json.loads(runner.invoke(app, ["twin", "impedance", "--json", "--points", "8"]).stdout)
    by_f = {round(r["frequency_hz"], 6): r["z_re_ohm"] for r in exact}
    for r in records:  # noiseless emulation reproduces the analytic spectrum
        assert r["Z_re"] == pytest.approx(by_f[round(r["frequency"], 6)], rel=1e-9)


@pytest.mark.pybamm
def test_run_pybamm_lfp_isothermal_and_bad_thermal() -> None:
    base = [
        "twin",
        "run",
        "--params",
        "pybamm:Prada2013",
        "--experiment",
        "Discharge at 1C for 5 min",
    ]
    result = runner.invoke(app, [*base, "--thermal", "isothermal"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, base)  # Prada2013 ships no thermal parameters
    assert result.exit_code == 2 and "thermal='isothermal'" in result.output
    result = runner.invoke(app, [*base, "--thermal", "warm"])
    assert result.exit_code == 2 and "--thermal must be lumped or isothermal" in result.output
