"""``batterytwin simulate`` and ``batterytwin sweep``: what-if runs of both pillars."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from batterytwin.console import clear_errors, progress_bar
from scenarios.config import Scenario, ScenarioError, load_scenario, with_overrides
from twin.errors import TwinInputError

console = Console()

_KEY_KPIS = (
    "soh_start",
    "soh_end",
    "full_equivalent_cycles",
    "self_consumption_pct",
    "self_consumption_without_storage_pct",
    "autarky_pct",
    "autarky_without_storage_pct",
    "energy_cost_eur",
    "energy_cost_without_storage_eur",
    "peak_grid_kw",
    "peak_grid_without_storage_kw",
    "energy_not_delivered_kwh",
    "ev_wait_mean_min",
    "storage_throughput_kwh",
    "time_outside_temperature_limits_h",
    "energy_balance_error_pct",
)


def _with_length(scenario: Scenario, years: float | None, days: float | None) -> Scenario:
    """Apply --years/--days; full-resolution days beyond the new length are dropped."""
    if years is not None and days is not None:
        raise ScenarioError("command line", ["give --years or --days, not both"])
    if years is None and days is None:
        return scenario
    n_days = days if days is not None else (years or 0.0) * 365.0
    keep = [d for d in scenario.simulation.full_resolution_days if d < n_days]
    return with_overrides(
        scenario,
        {
            "simulation.years": years,
            "simulation.days": days,
            "simulation.full_resolution_days": keep,
        },
    )


def simulate(
    file: Annotated[Path, typer.Argument(help="Scenario TOML, e.g. scenarios/pillar2_home.toml.")],
    years: Annotated[float | None, typer.Option(help="Run length in years.")] = None,
    days: Annotated[float | None, typer.Option(help="Run length in days.")] = None,
    model: Annotated[
        str,
        typer.Option(
            help="ecm (cell by cell, fast), pybamm (one PyBaMM cell, slow) or fmu (the "
            "scenario's [fmu] cell model, one FMU per series group)."
        ),
    ] = "ecm",
    seed: Annotated[int | None, typer.Option(help="Seed (default: the file's).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default out/<name>).")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the run whose folder this is.")
    ] = None,
    realtime: Annotated[
        float | None, typer.Option(help="Run at this many simulated seconds per second.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run a Pillar 1 or Pillar 2 scenario for days or years and write a report."""
    from scenarios.engine import simulate as run
    from scenarios.outputs import write_outputs

    with clear_errors(ScenarioError, TwinInputError, ValueError):
        if model not in ("ecm", "pybamm", "fmu"):
            raise ScenarioError("--model", [f"must be ecm, pybamm or fmu, got {model!r}"])
        scenario = _with_length(load_scenario(file), years, days)
        folder = resume or out or Path("out") / scenario.name
        folder.mkdir(parents=True, exist_ok=True)
        if resume is not None and not (resume / "checkpoint.pkl").is_file():
            raise ScenarioError(str(resume), ["no checkpoint.pkl here: nothing to resume"])
        (folder / "scenario.json").write_text(scenario.model_dump_json(indent=1))
        with progress_bar(f"simulating {scenario.name}") as bar:
            result = run(
                scenario,
                seed=seed,
                progress=bar,
                realtime_factor=realtime,
                checkpoint_path=folder / "checkpoint.pkl" if model == "ecm" else None,
                resume=resume is not None,
                model=model,
            )
        paths = write_outputs(result, folder)
    summary = result.summary
    if as_json:
        from scenarios.outputs import jsonable

        print(json.dumps(jsonable({k: v for k, v in summary.items() if k != "soh_trajectory"})))
        return
    table = Table(title=f"{scenario.name}: {summary['simulated_days']:.0f} days")
    table.add_column("KPI")
    table.add_column("value", justify="right")
    for key in _KEY_KPIS:
        if key in summary:
            table.add_row(key, f"{summary[key]:,.4g}")
    console.print(table)
    console.print(f"report: [bold]{paths['report']}[/]  summary: {paths['summary']}")


def _parse_vary(items: list[str], design: str) -> dict[str, Any]:
    vary: dict[str, Any] = {}
    for item in items:
        field, sep, values = item.partition("=")
        if not sep or not field.strip() or not values.strip():
            raise ScenarioError("--vary", [f"write field=v1,v2,..., got {item!r}"])
        parts = [v.strip() for v in values.split(",")]
        if design == "lhs":
            if len(parts) != 2:
                raise ScenarioError(
                    "--vary", [f"{field}: an lhs design needs a range lo,hi, got {values!r}"]
                )
            lo, hi = (json.loads(p) for p in parts)
            vary[field.strip()] = (lo, hi)
        else:
            vary[field.strip()] = parts
    return vary


def sweep(
    file: Annotated[Path, typer.Argument(help="Base scenario TOML.")],
    vary: Annotated[
        list[str], typer.Option(help="field=v1,v2,... (lhs: field=lo,hi); repeatable.")
    ],
    design: Annotated[str, typer.Option(help="full or lhs.")] = "full",
    samples: Annotated[int, typer.Option(help="Points of an lhs design.")] = 8,
    dask: Annotated[
        str | None, typer.Option(help="'local' for a LocalCluster or tcp://host:8786.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Local workers.")] = 2,
    years: Annotated[float | None, typer.Option(help="Run length of every point.")] = None,
    days: Annotated[float | None, typer.Option(help="Run length of every point.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
) -> None:
    """Run a scenario over a design of varied fields (cached, resumable, Dask-ready)."""
    from scenarios.runner import run_kpis
    from scenarios.sweep import design_full, design_lhs, run_sweep, write_sweep_report

    with clear_errors(ScenarioError, TwinInputError, ValueError):
        if design not in ("full", "lhs"):
            raise ScenarioError("--design", [f"must be full or lhs, got {design!r}"])
        base = _with_length(load_scenario(file), years, days)
        parsed = _parse_vary(vary, design)
        points = (
            design_full(parsed)
            if design == "full"
            else design_lhs(parsed, samples, seed=base.simulation.seed)
        )
        folder = out or Path("out") / f"sweep_{base.name}"
        executor = "process" if dask is None else ("dask-local" if dask == "local" else dask)
        with progress_bar(f"sweep of {len(points)} runs") as bar:
            frame = run_sweep(
                base,
                points,
                run_one=run_kpis,
                out_dir=folder,
                executor=executor,
                workers=workers,
                progress=lambda d, t: bar(float(d), float(t)),
            )
        report = write_sweep_report(frame, list(parsed), folder / "sweep.html")
    table = Table(title=f"sweep of {base.name}: {len(frame)} runs")
    shown = [
        *parsed,
        *(
            k
            for k in (
                "soh_end",
                "self_consumption_pct",
                "autarky_pct",
                "peak_grid_kw",
                "savings_eur",
            )
            if k in frame.columns
        ),
    ]
    for col in shown:
        table.add_column(col, justify="right")
    for _, row in frame.iterrows():
        table.add_row(
            *(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in shown)
        )
    console.print(table)
    console.print(f"results: {folder / 'sweep.parquet'}  report: [bold]{report}[/]")
