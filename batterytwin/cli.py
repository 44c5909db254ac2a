"""The ``batterytwin`` command: one entry point, a sub-command group per package."""

from __future__ import annotations

import os

import typer

from cloud.analytics.cli import analyze
from cloud.cli import app as cloud_app
from cloud.estimators.eis_cli import app as eis_app
from cloud.testbench.cli import app as bench_app
from demo.cli import demo
from scenarios import cli as scenario_cli
from twin.cli import app as twin_app
from twin.fmu.cli import app as fmu_app
from virtual_bms.cli import app as bms_app
from virtual_bms.fleet.cli import fleet

app = typer.Typer(
    help="batterytwin: digital twins of second-life battery storage.", no_args_is_help=True
)
app.add_typer(twin_app, name="twin")
app.add_typer(cloud_app, name="cloud")
app.add_typer(bms_app, name="bms")
app.add_typer(eis_app, name="eis")
app.add_typer(fmu_app, name="fmu")
app.add_typer(bench_app, name="bench")
app.command()(scenario_cli.simulate)
app.command()(scenario_cli.sweep)
app.command()(analyze)
app.command()(fleet)
app.command()(demo)


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")
    app()
