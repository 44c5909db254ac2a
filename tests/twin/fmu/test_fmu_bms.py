"""A virtual BMS on a string of FMU cells (``batterytwin bms run --fmu``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batterytwin.cli import app
from virtual_bms.assembly import twin_bms

runner = CliRunner()


def test_bms_estimates_soc_of_fmu_cells_it_does_not_know(c_ecm_fmu3: Path) -> None:
    bms = twin_bms(
        device="fmu-bms", pillar=2, cells=4, twin="fmu", fmu=c_ecm_fmu3, soc=0.7, trace=True
    )
    asyncio.run(bms.run(duration_s=3600.0))
    assert bms.counters.cycles == 3600
    assert bms.trace is not None
    assert 0.0 < bms.trace.soc_rmse_pct() <= 2.0


def test_cli_runs_a_bms_on_an_fmu_and_names_a_missing_file(
    c_ecm_fmu3: Path, tmp_path: Path
) -> None:
    ok = runner.invoke(
        app,
        ["bms", "run", "--device-id", "f1", "--fmu", str(c_ecm_fmu3), "--cells", "2",
         "--duration", "10min", "--broker", "none"],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert "soc_rmse_pct" in ok.output
    gone = runner.invoke(
        app,
        ["bms", "run", "--device-id", "f1", "--fmu", str(tmp_path / "gone.fmu"),
         "--broker", "none"],
    )  # fmt: skip
    assert gone.exit_code == 2 and "gone.fmu: no such file" in gone.output


def test_fmu_twin_needs_the_file() -> None:
    with pytest.raises(ValueError, match="needs the FMU file"):
        twin_bms(device="x", pillar=2, twin="fmu")
