"""``batterytwin demo`` end to end: a short run on the embedded defaults (SQLite file,
amqtt broker, uvicorn on a free port), and the command line's argument errors."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from batterytwin.cli import app
from demo import DemoConfig, run_demo
from demo.config import SiteConfig
from demo.serve import DemoError, bind_port

runner = CliRunner()


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """Half a day, paced at an hour per second so the cloud's DRT fits keep up, with EIS
    every 3 h (4-cell hub: quick fits) and the default cooling failure at 2-3 h."""
    out = tmp_path_factory.mktemp("demo")
    config = DemoConfig(
        days=0.5,
        out_dir=out,
        speed=3600.0,
        eis_interval_s=3 * 3600.0,
        hub=SiteConfig(
            name="test-hub", pillar=1, cells=4, capacity_ah=160.0, parameters="nmc_eis_arc"
        ),
        ingest_timeout_wall_s=30.0,
    )
    summary, outputs = run_demo(config)
    assert outputs.summary_json == out / "summary.json"
    return summary, out


def test_summary_json_has_both_sites(short_run: tuple[dict[str, Any], Path]) -> None:
    summary, out = short_run
    stored = json.loads((out / "summary.json").read_text())
    assert stored == summary
    assert set(stored["sites"]) == {"hub", "home"}
    assert stored["sites"]["hub"]["pillar"] == 1 and stored["sites"]["home"]["pillar"] == 2
    for site in stored["sites"].values():
        assert site["kpis"]["energy_discharged_kwh"] > 0
        assert site["kpis"]["soh_true_end"] <= site["kpis"]["soh_true_start"]


def test_the_loop_closes(short_run: tuple[dict[str, Any], Path]) -> None:
    """An ECM update the cloud fitted from the hub's EIS reached the hub, was acked and
    replaced the model its EKF estimates with."""
    summary, _ = short_run
    loop = summary["sites"]["hub"]["loop"]
    assert summary["loop_closed"] and loop["closed"], loop
    assert loop["acked"] >= 1 and loop["applied_by_edge"] >= 1
    assert loop["edge_model_from_cloud"]
    first = loop["first_update"]
    assert first["cloud_status"] == "acked" and first["edge_ack"] == "ok"
    assert first["command_id"] in loop["command_ids"]
    assert first["r0_after_mohm"] != first["r0_before_mohm"]
    ecm = summary["sites"]["hub"]["accuracy"]["ecm"]
    assert ecm["fits"] >= 4 and ecm["r0_mean_abs_error_pct"] < 25.0


def test_nothing_is_lost_and_estimates_are_sane(short_run: tuple[dict[str, Any], Path]) -> None:
    summary, _ = short_run
    assert summary["messages"]["lost"] == 0 and summary["messages"]["sent"] > 0
    for site in summary["sites"].values():
        messages = site["messages"]
        assert messages["lost"] == 0 and messages["stored"] == messages["sent"], messages
        assert messages["events_stored"] == messages["events_sent"]
        assert site["accuracy"]["soc_rmse_pct"] < 3.0


def test_the_cooling_failure_is_an_alarm_in_the_cloud(
    short_run: tuple[dict[str, Any], Path],
) -> None:
    summary, _ = short_run
    alarms = summary["sites"]["hub"]["alarms"]
    assert summary["alarms_stored"] >= 1
    assert alarms["kinds"].get("over_temperature", 0) >= 1, alarms
    assert 2.0 <= alarms["first"]["at_h"] <= 4.0


def test_report_html_is_written(short_run: tuple[dict[str, Any], Path]) -> None:
    _, out = short_run
    html = (out / "report.html").read_text()
    assert "plotly" in html.lower() and "Events" in html and "test-hub" in html


def test_days_must_be_positive(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--days", "0", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "--days" in result.output
    assert not (tmp_path / "summary.json").exists()


def test_a_taken_port_is_named_with_the_option_to_change_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DemoError, match=rf"port {port} .*--port"):
            bind_port(port)
