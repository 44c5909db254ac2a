"""The demo's outputs: the summary table on the terminal, ``summary.json``, ``report.html``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rich.console import Console

    from demo.summary import SiteRun

__all__ = ["print_summary", "write_report_html", "write_summary_json"]

_MAX_POINTS = 4000  # per trace in the HTML report


def write_summary_json(summary: Mapping[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _rows(summary: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(what, hub, home) rows of the table."""
    hub, home = summary["sites"]["hub"], summary["sites"]["home"]

    def both(*keys: str) -> tuple[str, str]:
        def get(site: Mapping[str, Any]) -> Any:
            value: Any = site
            for key in keys:
                if not isinstance(value, Mapping):
                    return None
                value = value.get(key)
            return value

        return _fmt(get(hub)), _fmt(get(home))

    rows = [
        ("device", *both("device")),
        ("energy discharged [kWh]", *both("kpis", "energy_discharged_kwh")),
        ("energy charged [kWh]", *both("kpis", "energy_charged_kwh")),
        ("equivalent full cycles", *both("kpis", "equivalent_full_cycles")),
        ("true SoH start -> end", *_pair(hub, home, "soh_true_start", "soh_true_end")),
        ("cloud SoH first -> latest", *_pair(hub, home, "cloud_soh_first", "cloud_soh_latest")),
        ("SoW first -> latest (RH)", *_sow(hub), *_sow(home)),
        ("resistance growth [%]", *both("kpis", "resistance_growth_pct")),
        ("max temperature [degC]", *both("kpis", "max_temperature_c")),
        ("availability [%]", *both("kpis", "availability_pct")),
        ("SoC RMSE [%]", *both("accuracy", "soc_rmse_pct")),
        ("SoH error, latest [pts]", *both("accuracy", "soh", "latest_mean_abs_error_pts")),
        ("ECM R0 error [%]", *both("accuracy", "ecm", "r0_mean_abs_error_pct")),
        ("ECM R_dc error [%]", *both("accuracy", "ecm", "r_dc_mean_abs_error_pct")),
        ("EIS sweeps -> ECM acked", *_loop(hub), "-"),
        ("SoC RMSE pre -> post ECM [%]", *_before_after(hub), "-"),
        ("balancing [Wh, h]", "-", *_balancing(home)),
        ("SoC spread start -> end [%]", "-", *_spread(home)),
        ("alarms stored", *both("alarms", "stored")),
        ("messages sent / stored / lost", *_messages(hub), *_messages(home)),
    ]
    return [(r[0], r[1], r[2]) for r in rows]


def _pair(hub: Mapping[str, Any], home: Mapping[str, Any], a: str, b: str) -> tuple[str, str]:
    def one(site: Mapping[str, Any]) -> str:
        return f"{_fmt(site['kpis'].get(a))} -> {_fmt(site['kpis'].get(b))}"

    return one(hub), one(home)


def _sow(site: Mapping[str, Any]) -> tuple[str]:
    first, latest = site["kpis"].get("sow_first"), site["kpis"].get("sow_latest")
    if not first or not latest:
        return ("-",)
    return (f"{_fmt(first['rh'])} -> {_fmt(latest['rh'])} ({latest['state']})",)


def _loop(site: Mapping[str, Any]) -> tuple[str]:
    loop = site.get("loop") or {}
    return (f"{loop.get('eis_sweeps', 0)} -> {loop.get('acked', 0)}",)


def _before_after(site: Mapping[str, Any]) -> tuple[str]:
    loop = site.get("loop") or {}
    return (f"{_fmt(loop.get('soc_rmse_before_pct'))} -> {_fmt(loop.get('soc_rmse_after_pct'))}",)


def _balancing(site: Mapping[str, Any]) -> tuple[str]:
    b = site.get("balancing") or {}
    return (f"{_fmt(b.get('energy_wh'))}, {_fmt(b.get('active_h'))}",)


def _spread(site: Mapping[str, Any]) -> tuple[str]:
    b = site.get("balancing") or {}
    return (f"{_fmt(b.get('soc_spread_start_pct'))} -> {_fmt(b.get('soc_spread_end_pct'))}",)


def _messages(site: Mapping[str, Any]) -> tuple[str]:
    m = site["messages"]
    return (f"{m['sent']} / {m['stored']} / {m['lost']}",)


def print_summary(summary: Mapping[str, Any], console: Console) -> None:
    """The summary as one table, and the loop's verdict under it."""
    from rich.markup import escape
    from rich.table import Table

    demo = summary["demo"]
    table = Table(
        title=f"batterytwin demo: {demo['days']:g} days in {demo['wall_time_s']:.0f} s",
        title_justify="left",
    )
    table.add_column("")
    table.add_column("Pillar 1 hub", justify="right")
    table.add_column("Pillar 2 home", justify="right")
    for what, hub, home in _rows(summary):
        table.add_row(escape(what), escape(hub), escape(home))
    console.print(table)
    loop = summary["sites"]["hub"].get("loop") or {}
    first = loop.get("first_update")
    if summary["loop_closed"] and first:
        console.print(
            f"[green]loop closed[/]: ECM update {first['command_id']} {first['cloud_status']} "
            f"at {first['at_h']:g} h; the hub's estimator went from {first['n_rc_before']} to "
            f"{first['n_rc_after']} RC pairs, R0 {first['r0_before_mohm']:.3f} -> "
            f"{first['r0_after_mohm']:.3f} mOhm"
        )
    else:
        console.print("[red]loop not closed[/]: no ECM update from the cloud reached the hub")


def _thin(n: int) -> slice:
    return slice(None, None, max(1, n // _MAX_POINTS))


def write_report_html(summary: Mapping[str, Any], runs: Mapping[str, SiteRun], path: Path) -> Path:
    """Plots (SoC estimate vs truth, SoH trend, the ECM updates, alarms) and the summary."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from demo.scoring import soh_trend

    roles = list(runs)
    fig = make_subplots(
        rows=4,
        cols=len(roles),
        subplot_titles=[
            f"{title}: {runs[r].site.name}"
            for title in ("SoC, estimate vs truth", "SoH", "Edge model R0", "Events")
            for r in roles
        ],
        vertical_spacing=0.07,
    )
    for col, role in enumerate(roles, start=1):
        run = runs[role]
        trace = run.bms.trace
        assert trace is not None
        t_h = np.asarray(trace.time_s) / 3600.0
        every = _thin(t_h.size)
        est = np.asarray(trace.soc)[:, 0] * 100.0
        true = np.asarray(trace.soc_true)[:, 0] * 100.0
        fig.add_trace(
            go.Scatter(x=t_h[every], y=true[every], name="cell 0 true SoC [%]"), row=1, col=col
        )
        fig.add_trace(
            go.Scatter(x=t_h[every], y=est[every], name="cell 0 estimated SoC [%]"),
            row=1,
            col=col,
        )
        log = run.bms.log
        truth_h = np.asarray(log.truth_time_s) / 3600.0
        true_soh = np.mean(np.asarray(log.truth_capacity_ah), axis=1) / run.site.capacity_ah
        fig.add_trace(go.Scatter(x=truth_h, y=true_soh, name="true SoH (mean)"), row=2, col=col)
        trend = soh_trend(run.records.soh)
        fig.add_trace(
            go.Scatter(
                x=[t / 3600.0 for t, _ in trend],
                y=[s for _, s in trend],
                mode="markers+lines",
                name="cloud SoH (mean)",
            ),
            row=2,
            col=col,
        )
        r0_true = np.mean(np.asarray(log.truth_r0_ohm), axis=1) * 1000.0
        fig.add_trace(go.Scatter(x=truth_h, y=r0_true, name="true R0 [mOhm]"), row=3, col=col)
        updates = log.ecm_updates
        if updates:
            fig.add_trace(
                go.Scatter(
                    x=[u.time_s / 3600.0 for u in updates],
                    y=[u.r0_after_ohm * 1000.0 for u in updates],
                    mode="markers",
                    name="R0 the edge took from the cloud [mOhm]",
                    text=[f"command {u.command_id}: {u.status}" for u in updates],
                ),
                row=3,
                col=col,
            )
        events = run.records.events
        fig.add_trace(
            go.Scatter(
                x=[e.time_s / 3600.0 for e in events],
                y=[e.kind for e in events],
                mode="markers",
                marker={"color": ["red" if e.severity == "alarm" else "grey" for e in events]},
                text=[e.detail for e in events],
                name="events (red: alarm)",
            ),
            row=4,
            col=col,
        )
    for row in range(1, 5):
        for col in range(1, len(roles) + 1):
            fig.update_xaxes(title_text="twin time [h]", row=row, col=col)
    fig.update_layout(height=1400, title="batterytwin closed-loop demo", showlegend=True)
    body = fig.to_html(full_html=False, include_plotlyjs=True)
    text = json.dumps(summary, indent=2)
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>batterytwin demo</title>"
        "</head><body style='font-family:sans-serif'>"
        f"<h1>batterytwin closed-loop demo</h1>{body}"
        f"<h2>summary.json</h2><pre>{_escape(text)}</pre></body></html>\n",
        encoding="utf-8",
    )
    return path


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
