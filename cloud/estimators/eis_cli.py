"""``batterytwin eis fit FILE``: DRT peaks, R0 + RC pairs and residuals of a measured spectrum."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from batterytwin.console import clear_errors

if TYPE_CHECKING:
    from cloud.estimators.ecm_fit import EcmFit

app = typer.Typer(help="Impedance spectra: validate, DRT, fit an ECM.", no_args_is_help=True)
console = Console()

_PLOT_SUFFIXES = (".html", ".png")


@app.callback()
def _group() -> None:
    """Impedance spectra: validate, DRT, fit an ECM."""


@app.command()
def fit(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help=(
                "Spectrum: .csv/.txt (freq, Z', Z''), BioLogic .mpt, Gamry .DTA, ZPlot .z, "
                ".json (EIS wire records)."
            ),
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    plot: Annotated[
        Path | None,
        typer.Option(help="Write a Nyquist + DRT plot: .html (plotly) or .png (matplotlib)."),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="csv, biologic, gamry, zplot or json (default: by suffix)."),
    ] = None,
    max_rc: Annotated[int, typer.Option(help="Most RC pairs to fit (1-4).")] = 4,
    criterion: Annotated[
        str, typer.Option(help="How the DRT regularisation is chosen: gcv or l_curve.")
    ] = "gcv",
    lin_kk_threshold: Annotated[
        float,
        typer.Option(help="lin-KK limit on the RMS relative residual (0.02 for 1 % noise)."),
    ] = 0.02,
    points: Annotated[bool, typer.Option(help="Also print the residual of every point.")] = False,
) -> None:
    """Fit R0 + up to 4 RC pairs to a measured spectrum, started from its DRT."""
    from cloud.estimators.drt import DrtConfig
    from cloud.estimators.ecm_fit import EcmFitConfig, fit_ecm
    from cloud.estimators.eis_files import SpectrumError, read_spectrum

    if plot is not None and plot.suffix.lower() not in _PLOT_SUFFIXES:
        raise typer.BadParameter(
            f"--plot must end in .html or .png, got {plot.name!r}", param_hint="--plot"
        )
    with clear_errors(SpectrumError):
        if criterion not in ("gcv", "l_curve"):
            raise SpectrumError(f"--criterion must be gcv or l_curve, got {criterion!r}")
        config = EcmFitConfig(
            max_rc=max_rc,
            lin_kk_threshold=lin_kk_threshold,
            drt=DrtConfig(criterion="gcv" if criterion == "gcv" else "l_curve"),
        )
        result = fit_ecm(read_spectrum(file, fmt=fmt), config=config)
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        write_plot(result, plot)
    if as_json:
        payload = result.to_dict(points=True)
        if plot is not None:
            payload["plot"] = str(plot)
        print(json.dumps(payload, allow_nan=False))
        return
    _print(result, points=points)
    if plot is not None:
        console.print(f"wrote {plot}")


def _print(result: EcmFit, *, points: bool) -> None:
    d = result.to_dict(points=points)
    console.print(
        f"[bold]{d['source']}[/]: {d['n_points']} points, "
        f"{d['frequency_min_hz']:.4g} - {d['frequency_max_hz']:.4g} Hz"
    )
    for note in d["notes"]:
        console.print(f"  [dim]note: {note}[/]")
    kk = d["lin_kk"]
    verdict = "[green]pass[/]" if kk["passed"] else "[bold red]FAIL[/]"
    console.print(
        f"lin-KK: {verdict}: RMS residual {kk['rms_residual']:.2%} (limit "
        f"{kk['threshold']:.2%}), max {kk['max_residual']:.2%}, {kk['n_rc']} RC elements"
    )
    reg = d["drt"]["regularisation"]
    edge = " (at the edge of the grid)" if reg["at_grid_edge"] else ""
    console.print(
        f"DRT: lambda {reg['lambda']:.3g} by {reg['criterion']}{edge} "
        f"(GCV {reg['lambda_gcv']:.3g}, L-curve corner {reg['lambda_l_curve']:.3g}); "
        f"R_inf {d['drt']['r_inf_ohm'] * 1e3:.4f} mOhm, L {d['drt']['inductance_h']:.3g} H"
    )
    peaks = Table(title="DRT peaks")
    for col in ("tau (s)", "f (Hz)", "R (mOhm)", "gamma (mOhm)"):
        peaks.add_column(col, justify="right")
    for p in d["drt"]["peaks"]:
        peaks.add_row(
            f"{p['tau_s']:.4g}",
            f"{p['frequency_hz']:.4g}",
            f"{p['r_ohm'] * 1e3:.4f}",
            f"{p['gamma_ohm'] * 1e3:.4f}",
        )
    console.print(peaks)
    params = Table(title=f"Fitted {d['circuit']}")
    for col in ("parameter", "value", "std", "std (%)"):
        params.add_column(col, justify="right")
    values = d["parameters"]
    rows = [(k, v) for k, v in values.items() if not k.endswith("_std")]
    if d["inductance_h"] is not None:
        rows.insert(0, ("l0 (H)", d["inductance_h"]))
    for name, value in rows:
        std = values.get(f"{name}_std") if not name.startswith("l0") else d["inductance_std_h"]
        unit = {"r": " (ohm)", "c": " (F)"}.get(name[0], "") if "(" not in name else ""
        rel = f"{std / value:.2%}" if std is not None and value else "-"
        params.add_row(
            f"{name}{unit}",
            f"{value:.5g}",
            "-" if std is None else f"{std:.3g}",
            rel,
        )
    console.print(params)
    console.print(
        f"residuals: relative_rms_residual {d['relative_rms_residual']:.3%}, "
        f"max {d['max_relative_residual']:.3%} of |Z|; "
        f"total resistance {d['total_resistance_ohm'] * 1e3:.4f} mOhm"
    )
    for w in d["warnings"]:
        console.print(f"  [yellow]fit warning: {w}[/]")
    if points:
        table = Table(title="Residuals per point (% of |Z|)")
        for col in ("f (Hz)", "Z' (mOhm)", "Z'' (mOhm)", "fit re", "fit im", "KK re", "KK im"):
            table.add_column(col, justify="right")
        for p in d["points"]:
            table.add_row(
                f"{p['frequency_hz']:.4g}",
                f"{p['z_re_ohm'] * 1e3:.4f}",
                f"{p['z_im_ohm'] * 1e3:.4f}",
                f"{p['residual_re']:+.2%}",
                f"{p['residual_im']:+.2%}",
                f"{p['lin_kk_residual_re']:+.2%}",
                f"{p['lin_kk_residual_im']:+.2%}",
            )
        console.print(table)


def write_plot(result: EcmFit, path: Path) -> None:
    """Nyquist plot (data and fit) and DRT ``gamma(tau)`` with its peaks, to .html or .png."""
    import numpy as np

    f = result.frequency_hz
    z = result.z_ohm
    z_fit = result.model_impedance(np.geomspace(f.min(), f.max(), 300))
    tau, gamma = result.drt.tau_s, result.drt.gamma_ohm
    peaks = result.drt.peaks
    if path.suffix.lower() == ".html":
        from plotly.subplots import make_subplots

        fig = make_subplots(
            rows=1,
            cols=2,
            subplot_titles=("Nyquist", f"DRT (lambda {result.drt.regularisation.lambda_used:.2g})"),
        )
        fig.add_scatter(
            x=z.real * 1e3, y=-z.imag * 1e3, mode="markers", name="measured", row=1, col=1
        )
        fig.add_scatter(
            x=z_fit.real * 1e3, y=-z_fit.imag * 1e3, mode="lines", name="ECM fit", row=1, col=1
        )
        fig.add_scatter(x=tau, y=gamma * 1e3, mode="lines", name="gamma", row=1, col=2)
        fig.add_scatter(
            x=[p.tau_s for p in peaks],
            y=[p.gamma_ohm * 1e3 for p in peaks],
            mode="markers",
            name="peaks",
            row=1,
            col=2,
        )
        fig.update_xaxes(title_text="Z' (mOhm)", row=1, col=1)
        fig.update_yaxes(title_text="-Z'' (mOhm)", scaleanchor="x", row=1, col=1)
        fig.update_xaxes(title_text="tau (s)", type="log", row=1, col=2)
        fig.update_yaxes(title_text="gamma (mOhm)", row=1, col=2)
        fig.update_layout(title=result.source)
        fig.write_html(path, include_plotlyjs="cdn")
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_n, ax_d) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax_n.plot(z.real * 1e3, -z.imag * 1e3, "o", ms=3, label="measured")
    ax_n.plot(z_fit.real * 1e3, -z_fit.imag * 1e3, "-", label="ECM fit")
    ax_n.set(xlabel="Z' (mOhm)", ylabel="-Z'' (mOhm)", title="Nyquist", aspect="equal")
    ax_n.legend()
    ax_d.semilogx(tau, gamma * 1e3)
    ax_d.plot([p.tau_s for p in peaks], [p.gamma_ohm * 1e3 for p in peaks], "v")
    ax_d.set(
        xlabel="tau (s)",
        ylabel="gamma (mOhm)",
        title=f"DRT (lambda {result.drt.regularisation.lambda_used:.2g})",
    )
    fig.suptitle(result.source)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
