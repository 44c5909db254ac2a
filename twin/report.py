"""HTML report of a pack run, with interactive plots (plotly, imported lazily)."""

from __future__ import annotations

import html
from dataclasses import replace
from pathlib import Path

import numpy as np

from twin.domestic_day import DayResult

__all__ = ["SUMMARY_LABELS", "write_day_report"]

SUMMARY_LABELS: dict[str, tuple[str, str]] = {
    "pv_energy_kwh": ("PV energy", "kWh"),
    "load_energy_kwh": ("Household load", "kWh"),
    "battery_charged_kwh": ("Battery charged", "kWh"),
    "battery_discharged_kwh": ("Battery discharged", "kWh"),
    "grid_import_kwh": ("Grid import", "kWh"),
    "grid_export_kwh": ("Grid export", "kWh"),
    "self_consumption_pct": ("Self-consumption", "%"),
    "autarky_pct": ("Autarky", "%"),
    "pack_soc_start_pct": ("Pack SoC at start", "%"),
    "pack_soc_end_pct": ("Pack SoC at end", "%"),
    "min_cell_voltage_v": ("Lowest cell voltage", "V"),
    "max_cell_voltage_v": ("Highest cell voltage", "V"),
    "max_cell_voltage_spread_mv": ("Largest cell-voltage spread", "mV"),
    "max_cell_temperature_c": ("Hottest cell", "degC"),
    "weakest_cell_capacity_ah": ("Weakest cell capacity", "Ah"),
    "mean_cell_capacity_ah": ("Mean cell capacity", "Ah"),
    "capacity_fade_today_mah": ("Capacity lost today (mean per cell)", "mAh"),
    "events": ("Limit events", ""),
}


def write_day_report(result: DayResult, path: Path) -> Path:
    """Write a self-contained HTML report (plots work offline) and return its path."""
    summary = result.summary()  # from the full-resolution run, before decimation
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    # Plot at most ~720 points per trace: the report stays small and fast to open.
    every = max(1, -(-result.time_s.size // 720))
    result = _decimated(result, every)
    hours = result.time_s / 3600.0
    n_cells = result.cell_voltage_v.shape[1]
    fig = make_subplots(
        rows=6,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.035,
        specs=[[{}], [{"secondary_y": True}], [{"secondary_y": True}], [{}], [{}], [{}]],
        subplot_titles=(
            "Household power flows",
            "Pack voltage and current",
            "Cell voltages: range across the pack, and spread",
            "State of charge per cell (truth)",
            "Cell temperature",
            "Usable capacity per cell",
        ),
    )
    for name, y in (
        ("PV", result.pv_w),
        ("Load", result.load_w),
        ("Battery (+ discharge)", result.battery_w),
        ("Grid (+ import)", result.grid_w),
    ):
        fig.add_trace(go.Scatter(x=hours, y=y / 1000.0, name=name, legendgroup="p"), row=1, col=1)
    fig.add_trace(go.Scatter(x=hours, y=result.pack_voltage_v, name="Pack voltage"), row=2, col=1)
    fig.add_trace(
        go.Scatter(x=hours, y=result.pack_current_a, name="Pack current (+ discharge)"),
        row=2,
        col=1,
        secondary_y=True,
    )
    v = result.cell_voltage_v
    fig.add_trace(
        go.Scatter(x=hours, y=v.max(axis=1), name="Max cell V", line={"width": 1}), row=3, col=1
    )
    fig.add_trace(
        go.Scatter(x=hours, y=v.min(axis=1), name="Min cell V", fill="tonexty", line={"width": 1}),
        row=3,
        col=1,
    )
    fig.add_trace(
        go.Scatter(x=hours, y=(v.max(axis=1) - v.min(axis=1)) * 1000.0, name="Spread [mV]"),
        row=3,
        col=1,
        secondary_y=True,
    )
    for row, data, scale in (
        (4, result.cell_soc, 100.0),
        (5, result.cell_temperature_c, 1.0),
        (6, result.cell_capacity_ah, 1.0),
    ):
        for c in range(n_cells):
            fig.add_trace(
                go.Scatter(
                    x=hours,
                    y=data[:, c] * scale,
                    name=f"cell {c}",
                    legendgroup=f"cell{c}",
                    showlegend=row == 4,
                    line={"width": 1},
                ),
                row=row,
                col=1,
            )
    fig.add_trace(
        go.Scatter(
            x=hours, y=result.ambient_c, name="Ambient", line={"dash": "dot", "color": "black"}
        ),
        row=5,
        col=1,
    )
    for row, label in ((1, "kW"), (2, "V"), (3, "V"), (4, "SoC [%]"), (5, "degC"), (6, "Ah")):
        fig.update_yaxes(title_text=label, row=row, col=1)
    fig.update_yaxes(title_text="A", row=2, col=1, secondary_y=True)
    fig.update_yaxes(title_text="mV", row=3, col=1, secondary_y=True)
    fig.update_xaxes(title_text="Hour of day", row=6, col=1)
    fig.update_layout(height=1900, template="plotly_white", margin={"t": 40})

    rows = "\n".join(
        f"<tr><td>{html.escape(SUMMARY_LABELS[k][0])}</td><td>{_fmt(val)}</td>"
        f"<td>{SUMMARY_LABELS[k][1]}</td></tr>"
        for k, val in summary.items()
    )
    events = "".join(f"<li>{html.escape(e)}</li>" for e in result.events[:200]) or "<li>none</li>"
    cfg = result.config
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>batterytwin: domestic day</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto}}td{{padding:2px 12px}}
tr:nth-child(even){{background:#f3f3f3}}</style></head><body>
<h1>Second-life pack through a domestic day</h1>
<p>{html.escape(result.pack_description)}; PV peak {cfg.pv_peak_w / 1000:g} kW, household
{cfg.daily_load_kwh:g} kWh/day, inverter limit {cfg.max_power_w / 1000:g} kW, step {cfg.dt_s:g} s,
seed {cfg.seed}. Sign convention: positive battery power/current = discharge.</p>
<table>{rows}</table>
<h2>Events</h2><ul>{events}</ul>
{fig.to_html(full_html=False, include_plotlyjs=True)}
</body></html>"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    return path


def _fmt(value: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _decimated(result: DayResult, every: int) -> DayResult:
    if every == 1:
        return result
    fields = {
        name: getattr(result, name)[::every]
        for name in result.__dataclass_fields__
        if isinstance(getattr(result, name), np.ndarray)
    }
    return replace(result, **fields)
