"""Write a run's results: ``summary.json``, Parquet time series and ``report.html``."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from scenarios.engine import RunResult

__all__ = ["jsonable", "write_outputs"]


def jsonable(value: Any) -> Any:
    """Plain JSON data: numpy scalars unwrapped, NaN and inf as null."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_outputs(result: RunResult, out_dir: Path) -> dict[str, Path]:
    """Write everything a run produced into ``out_dir`` and return the paths."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "summary": out_dir / "summary.json",
        "hourly": out_dir / "hourly.parquet",
        "daily": out_dir / "daily.parquet",
        "report": out_dir / "report.html",
    }
    paths["summary"].write_text(json.dumps(jsonable(result.summary), indent=1))
    pd.DataFrame(result.hourly).to_parquet(paths["hourly"], index=False)
    pd.DataFrame(result.daily).to_parquet(paths["daily"], index=False)
    if result.full_resolution:
        frames = [
            pd.DataFrame({"day": day, **cols})
            for day, cols in sorted(result.full_resolution.items())
        ]
        paths["full_resolution"] = out_dir / "full_resolution.parquet"
        pd.concat(frames).to_parquet(paths["full_resolution"], index=False)
    _write_report(result, paths["report"])
    return paths


def _write_report(result: RunResult, path: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    s = result.summary
    daily, hourly = result.daily, result.hourly
    pillar1 = s["kind"] == "pillar1_charging_hub"
    titles = [
        "State of health over the run",
        "Daily energy flows",
        "State of charge (hourly mean): distribution",
        "Hottest cell (hourly maximum): distribution",
    ]
    if pillar1:
        titles.append("Grid power duration curve: with and without storage")
    fig = make_subplots(rows=len(titles), cols=1, subplot_titles=titles, vertical_spacing=0.06)
    years = daily["day"] / 365.0
    fig.add_trace(go.Scatter(x=years, y=daily["soh_pack"], name="pack SoH"), row=1, col=1)
    fig.add_trace(
        go.Scatter(x=years, y=daily["soh_weakest_cell"], name="weakest cell SoH"), row=1, col=1
    )
    for name, sign in (
        ("pv_kwh", 1),
        ("load_kwh", -1),
        ("ev_kwh", -1),
        ("grid_import_kwh", 1),
        ("grid_export_kwh", -1),
        ("battery_discharge_kwh", 1),
        ("battery_charge_kwh", -1),
    ):
        if daily[name].any():
            fig.add_trace(go.Bar(x=daily["day"], y=sign * daily[name], name=name), row=2, col=1)
    fig.update_layout(barmode="relative")
    fig.add_trace(go.Histogram(x=hourly["soc_mean"], nbinsx=40, name="SoC"), row=3, col=1)
    fig.add_trace(go.Histogram(x=hourly["t_cell_max_c"], nbinsx=40, name="T max"), row=4, col=1)
    if pillar1:
        hours = np.arange(hourly["peak_grid_kw"].size)
        fig.add_trace(
            go.Scatter(x=hours, y=np.sort(hourly["peak_grid_kw"])[::-1], name="grid with storage"),
            row=5,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=hours, y=np.sort(hourly["peak_net_kw"])[::-1], name="grid without storage"
            ),
            row=5,
            col=1,
        )
        fig.update_xaxes(title_text="hours of the run, sorted", row=5, col=1)
        fig.update_yaxes(title_text="hourly peak kW", row=5, col=1)
    fig.update_xaxes(title_text="years", row=1, col=1)
    fig.update_yaxes(title_text="SoH", row=1, col=1)
    fig.update_xaxes(title_text="day", row=2, col=1)
    fig.update_yaxes(title_text="kWh/day (+ into the site)", row=2, col=1)
    fig.update_xaxes(title_text="SoC", row=3, col=1)
    fig.update_xaxes(title_text="degC", row=4, col=1)
    fig.update_layout(height=420 * len(titles), template="plotly_white")
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>"
        for k, v in s.items()
        if k != "soh_trajectory"
    )
    doc = f"""<!doctype html><html><head><meta charset="utf-8">
<title>batterytwin: {html.escape(str(s["scenario"]))}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto}}td{{padding:2px 12px}}
tr:nth-child(even){{background:#f3f3f3}}</style></head><body>
<h1>{html.escape(str(s["scenario"]))}</h1>
<p>{html.escape(str(s["kind"]))}, {s["simulated_days"]:.0f} days, seed {s["seed"]}.
Positive battery power discharges.</p>
<table>{rows}</table>
{fig.to_html(full_html=False, include_plotlyjs=True)}
</body></html>"""
    path.write_text(doc, encoding="utf-8")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    return html.escape(str(value))
