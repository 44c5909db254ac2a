"""``batterytwin twin ...``: run twins, calibrate the ECM, print impedance spectra."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from batterytwin.console import clear_errors, progress_bar
from twin.errors import TwinInputError
from twin.pack import PackTopology, SecondLifeSpread

app = typer.Typer(help="Battery twins: cells, packs, calibration, impedance.", no_args_is_help=True)
console = Console()


def parse_pack(spec: str, *, strings: int = 1) -> PackTopology:
    """``"16s1p"`` or ``"4x14s2p"``: see :meth:`twin.pack.PackTopology.parse`."""
    return PackTopology.parse(spec, strings=strings)


@app.command()
def day(
    out: Annotated[Path, typer.Option(help="HTML report to write.")] = Path(
        "out/domestic_day.html"
    ),
    params: Annotated[str, typer.Option(help="ECM parameter set (see 'sets').")] = "ecm_example",
    pack: Annotated[str, typer.Option(help="Pack wiring, e.g. 16s1p.")] = "16s1p",
    soh_min: Annotated[float, typer.Option(help="Lowest second-life SoH.")] = 0.7,
    soh_max: Annotated[float, typer.Option(help="Highest second-life SoH.")] = 0.9,
    seed: Annotated[int, typer.Option(help="Seed of the cell spread and the household.")] = 7,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run a second-life pack through a day of domestic PV duty and write a report."""
    from twin.domestic_day import DomesticDayConfig, run_domestic_day
    from twin.report import SUMMARY_LABELS, write_day_report

    with clear_errors(TwinInputError):
        spread = SecondLifeSpread(soh_mean=(soh_min + soh_max) / 2, soh_range=(soh_min, soh_max))
        config = DomesticDayConfig(
            parameter_set=params, topology=parse_pack(pack), spread=spread, seed=seed
        )
        with progress_bar("simulating 24 h") as progress:
            result = run_domestic_day(config, progress=progress)
        path = write_day_report(result, out)
    summary = result.summary()
    if as_json:
        print(json.dumps({**summary, "report": str(path)}))
        return
    table = Table(title=f"Domestic day: {result.pack_description}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("unit")
    for key, value in summary.items():
        label, unit = SUMMARY_LABELS[key]
        table.add_row(label, f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}", unit)
    console.print(table)
    console.print(f"report: [bold]{path}[/]")


@app.command()
def sets() -> None:
    """List the ECM parameter sets."""
    from twin.params import available_parameter_sets, load_parameter_set

    table = Table("name", "chemistry", "capacity (Ah)", "RC pairs", "source")
    for name in available_parameter_sets():
        try:
            p = load_parameter_set(name)
        except TwinInputError as exc:
            table.add_row(name, "-", "-", "-", f"[red]{exc}")
            continue
        table.add_row(name, p.chemistry, f"{p.nominal_capacity_ah:g}", str(p.n_rc), p.source[:80])
    console.print(table)


def _read_profile(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """CSV with ``time_s`` and ``current_a`` or ``power_w``; each row holds until the next."""
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise TwinInputError(f"cannot read profile {path}: {exc}") from exc
    if not rows:
        raise TwinInputError(f"profile {path} has no rows")
    cols = set(rows[0])
    kind = "current_a" if "current_a" in cols else "power_w" if "power_w" in cols else ""
    if "time_s" not in cols or not kind:
        raise TwinInputError(
            f"profile {path} needs columns time_s and current_a or power_w, found {sorted(cols)}"
        )
    try:
        t = np.array([float(r["time_s"]) for r in rows])
        v = np.array([float(r[kind]) for r in rows])
    except ValueError as exc:
        raise TwinInputError(f"profile {path}: {exc}") from exc
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        raise TwinInputError(f"profile {path}: {kind} is {v[bad[0]]} on data row {bad[0] + 1}")
    if np.any(np.diff(t) <= 0):
        raise TwinInputError(f"profile {path}: time_s must increase strictly")
    return t, v, kind


@app.command()
def run(
    experiment: Annotated[
        str | None, typer.Option(help="Steps separated by ';', e.g. 'Discharge at 1C for 1 hour'.")
    ] = None,
    profile: Annotated[
        Path | None, typer.Option(help="CSV with time_s and current_a or power_w.")
    ] = None,
    params: Annotated[
        str, typer.Option(help="ECM parameter set, or pybamm:<set>.")
    ] = "ecm_example",
    pack: Annotated[str | None, typer.Option(help="Run a pack, e.g. 16s1p or 4x14s2p.")] = None,
    strings: Annotated[int, typer.Option(help="Parallel strings of the pack.")] = 1,
    soc: Annotated[float, typer.Option(help="Initial SoC.")] = 0.5,
    ambient: Annotated[float, typer.Option(help="Ambient temperature [degC].")] = 25.0,
    dt: Annotated[float, typer.Option(help="Step length [s].")] = 10.0,
    thermal: Annotated[
        str, typer.Option(help="PyBaMM thermal model: lumped or isothermal.")
    ] = "lumped",
    out: Annotated[Path | None, typer.Option(help="CSV of the run.")] = None,
) -> None:
    """Run a cell or a pack through an experiment string or a current/power profile."""
    from twin.experiment import ExperimentTrace, run_experiment
    from twin.models.ecm import CellInit, EcmOptions, EcmTwin
    from twin.pack import Pack
    from twin.params import load_parameter_set

    with clear_errors(TwinInputError):
        if (experiment is None) == (profile is None):
            raise TwinInputError("give exactly one of --experiment or --profile")
        twin: Any
        if params.startswith("pybamm:"):
            if pack:
                raise TwinInputError("--pack runs ECM cells; use an ECM parameter set")
            from twin.models.pybamm_twin import PybammTwin, PybammTwinConfig

            if thermal not in ("lumped", "isothermal"):
                raise TwinInputError(f"--thermal must be lumped or isothermal, got {thermal!r}")
            twin = PybammTwin(
                PybammTwinConfig(
                    parameter_set=params.split(":", 1)[1],
                    initial_soc=soc,
                    thermal="lumped" if thermal == "lumped" else "isothermal",
                    initial_temperature_c=ambient,
                    ambient_temperature_c=ambient,
                )
            )
            capacity = twin.nominal_capacity_ah
        else:
            cell = load_parameter_set(params)
            if pack:
                topo = parse_pack(pack, strings=strings)
                twin = Pack(cell, topology=topo, soc=soc, temperature_c=ambient)
                capacity = cell.nominal_capacity_ah * topo.cells_per_group * strings
            else:
                twin = EcmTwin(
                    cell, init=CellInit(soc=soc, temperature_c=ambient), options=EcmOptions()
                )
                capacity = cell.nominal_capacity_ah
        if experiment is not None:
            with progress_bar("experiment") as bar:
                trace = run_experiment(
                    twin,
                    experiment,
                    capacity_ah=capacity,
                    dt_s=dt,
                    ambient_c=ambient,
                    progress=lambda i, n, _t: bar(i, n),
                )
        else:
            assert profile is not None
            t, values, kind = _read_profile(profile)
            trace = ExperimentTrace()
            ends = np.append(t[1:], t[-1] + (t[-1] - t[-2] if t.size > 1 else dt))
            with progress_bar("profile") as bar:
                for k, (start, end, value) in enumerate(zip(t, ends, values, strict=True)):
                    held = start
                    while held < end - 1e-9:
                        h = min(dt, end - held)
                        if kind == "current_a":
                            step = twin.step(current_a=value, dt_s=h, ambient_c=ambient)
                        else:
                            step = twin.step_power(power_w=value, dt_s=h, ambient_c=ambient)
                        held += h
                        trace.record(step, k)
                    bar(k + 1, t.size)
    data = trace.as_arrays()
    table = Table(title=f"run of {params}" + (f" ({pack})" if pack else ""))
    for col in ("duration (h)", "V min", "V max", "T max (degC)", "SoC end", "events"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{data['time_s'][-1] / 3600:.3g}",
        f"{data['voltage_v'].min():.4g}",
        f"{data['voltage_v'].max():.4g}",
        f"{data['temperature_c'].max():.3g}",
        f"{data['soc'][-1]:.3f}",
        str(len(trace.events)),
    )
    console.print(table)
    for event in trace.events[:20]:
        console.print(f"  [yellow]{event}")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(list(data))
            writer.writerows(zip(*(v.tolist() for v in data.values()), strict=True))
        console.print(f"wrote {out}")


@app.command()
def calibrate(
    source: Annotated[
        str, typer.Option("--from", help="pybamm:<set>, e.g. pybamm:OKane2022 or pybamm:Prada2013.")
    ],
    n_rc: Annotated[int, typer.Option(help="RC pairs to fit (1-4).")] = 2,
    temperatures: Annotated[
        str, typer.Option(help="Test temperatures [degC], comma-separated.")
    ] = "10,25,40",
    out: Annotated[Path | None, typer.Option(help="Write the fitted set as JSON.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Fit ECM tables to a PyBaMM model (OCV test + HPPC) and validate on a held-out profile."""
    from twin.calibrate import calibrate_from_pybamm

    with clear_errors(TwinInputError):
        try:
            temps = tuple(float(t) for t in temperatures.split(","))
        except ValueError:
            raise TwinInputError(
                f"--temperatures must be numbers separated by commas, got {temperatures!r}"
            ) from None
        with progress_bar("calibrating") as bar:
            result = calibrate_from_pybamm(
                source, n_rc=n_rc, temperatures_c=temps, progress=lambda d, t, _m: bar(d, t)
            )
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            result.parameters.to_json(out)
    figures = {
        "parameter_set": result.parameter_set,
        "n_rc": n_rc,
        "validation_rms_mv": result.validation_rms_mv,
        "validation_max_mv": result.validation_max_mv,
        "fit_rms_mv": result.fit_rms_mv,
        "validation_rms_mv_by_temperature": {
            f"{v.temperature_c:g}": v.rms_mv for v in result.validations
        },
        "elapsed_s": result.elapsed_s,
        "out": str(out) if out else None,
    }
    if as_json:
        print(json.dumps(figures))
        return
    table = Table(title=f"ECM fitted to PyBaMM {result.parameter_set} ({n_rc} RC pairs)")
    table.add_column("held-out profile at")
    table.add_column("RMS (mV)", justify="right")
    table.add_column("max (mV)", justify="right")
    for v in result.validations:
        table.add_row(f"{v.temperature_c:g} degC", f"{v.rms_mv:.2f}", f"{v.max_abs_mv:.1f}")
    console.print(table)
    console.print(f"HPPC fit residual {result.fit_rms_mv:.2f} mV RMS; {result.elapsed_s:.0f} s")
    for skipped in result.skipped:
        console.print(f"  [yellow]skipped: {escape(skipped)}")
    if out:
        console.print(f"wrote {out}")


@app.command()
def impedance(
    params: Annotated[str, typer.Option(help="ECM parameter set.")] = "ecm_example",
    soc: Annotated[float, typer.Option(help="State of charge.")] = 0.5,
    temperature: Annotated[float, typer.Option(help="Cell temperature [degC].")] = 25.0,
    resistance_factor: Annotated[float, typer.Option(help="Ageing: resistance x this.")] = 1.0,
    f_min: Annotated[float, typer.Option(help="Lowest frequency [Hz].")] = 0.1,
    f_max: Annotated[float, typer.Option(help="Highest frequency [Hz].")] = 5000.0,
    points: Annotated[int, typer.Option(help="Number of frequencies (log-spaced).")] = 25,
    emulate: Annotated[
        bool, typer.Option(help="Emulate an EIS measurement: noisy records as an edge uploads.")
    ] = False,
    noise: Annotated[float, typer.Option(help="Relative |Z| noise of --emulate.")] = 0.01,
    phase_noise: Annotated[float, typer.Option(help="Phase noise of --emulate [deg].")] = 0.5,
    seed: Annotated[int, typer.Option(help="Noise seed of --emulate.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print the cell's impedance spectrum Z(f) at a given state, or emulate an EIS sweep."""
    from twin.models.ecm import CellInit, EcmOptions, EcmTwin
    from twin.params import load_parameter_set

    with clear_errors(TwinInputError):
        if not 0 < f_min < f_max:
            raise TwinInputError(f"need 0 < --f-min < --f-max, got {f_min} and {f_max}")
        if points < 2:
            raise TwinInputError(f"--points must be >= 2, got {points}")
        cell = EcmTwin(
            load_parameter_set(params),
            init=CellInit(soc=soc, temperature_c=temperature, resistance_factor=resistance_factor),
            options=EcmOptions(ageing="none"),
        )
        if emulate:
            from twin.eis import EisConfig, measure_eis

            config = EisConfig(
                f_min_hz=f_min,
                f_max_hz=f_max,
                n_points=points,
                z_noise_rel=noise,
                phase_noise_deg=phase_noise,
                seed=seed,
            )
            records = measure_eis(cell, event_id="cli", config=config)
    if emulate:
        _print_eis(
            records,
            title=f"Emulated EIS of {params} at SoC {soc:g}, {temperature:g} degC",
            as_json=as_json,
        )
        return
    freq = np.geomspace(f_max, f_min, points)
    z = cell.impedance(freq)[0]
    rows = [
        {
            "frequency_hz": float(f),
            "z_re_ohm": float(v.real),
            "z_im_ohm": float(v.imag),
            "z_mod_ohm": float(abs(v)),
            "z_phase_deg": float(np.degrees(np.angle(v))),
        }
        for f, v in zip(freq, z, strict=True)
    ]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title=f"Z(f) of {params} at SoC {soc:g}, {temperature:g} degC")
    for col in ("f (Hz)", "Z' (mOhm)", "Z'' (mOhm)", "|Z| (mOhm)", "phase (deg)"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['frequency_hz']:.4g}",
            f"{r['z_re_ohm'] * 1e3:.4f}",
            f"{r['z_im_ohm'] * 1e3:.4f}",
            f"{r['z_mod_ohm'] * 1e3:.4f}",
            f"{r['z_phase_deg']:.2f}",
        )
    console.print(table)


def _print_eis(records: list[Any], *, title: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps([r.to_dict() for r in records]))
        return
    table = Table(title=title)
    for col in ("f (Hz)", "Z' (mOhm)", "Z'' (mOhm)", "|Z| (mOhm)", "phase (deg)", "status"):
        table.add_column(col, justify="right")
    for r in records:
        d = r.to_dict()
        table.add_row(
            f"{d['frequency']:.4g}",
            f"{d['Z_re'] * 1e3:.4f}",
            f"{d['Z_im'] * 1e3:.4f}",
            f"{d['Z_mod'] * 1e3:.4f}",
            f"{d['Z_phz']:.2f}",
            str(d["status"]),
        )
    console.print(table)
