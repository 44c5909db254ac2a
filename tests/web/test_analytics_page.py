"""The analytics page in Chromium: a cycling file uploaded through the page, the seed's
dashboard cards checked against the API's own answer for the same file, the Plotly
plots' traces, a refused file, the CSV set, and a result kept on a battery and reopened.

The cells are the analytics tests' generators (``benches.analytics``); the battery has a
serial number of its own, since the served database is shared with the other page tests.
"""

from __future__ import annotations

import pickle
import uuid
from typing import Any

import httpx
import pytest

from benches.analytics import synthetic_cell, synthetic_pickle
from cloud.models import Battery
from tests.cloud.test_analytics import _csv_set
from tests.web.conftest import LiveCloud, auth_headers, screenshot, sign_in


@pytest.fixture(scope="module")
def cell() -> bytes:
    """30 cycles of a fading 58 Ah cell, with the quirks of real files."""
    return synthetic_pickle(cycles=30)


def _api_result(cloud: LiveCloud, files: list[tuple[str, bytes]]) -> Any:
    answer = httpx.post(
        f"{cloud.url}/api/upload",
        files=[("file", (name, data)) for name, data in files],
        headers=auth_headers(cloud),
        timeout=60,
    )
    return answer


def _choose(page: Any, files: list[tuple[str, bytes]]) -> None:
    page.set_input_files(
        "[data-testid=upload-file]",
        files=[
            {"name": name, "mimeType": "application/octet-stream", "buffer": data}
            for name, data in files
        ],
    )


def _value(page: Any, testid: str) -> str:
    return str(page.get_attribute(f"[data-testid={testid}]", "data-value"))


def _traces(page: Any, plot: str) -> list[dict[str, Any]]:
    traces: list[dict[str, Any]] = page.evaluate(
        "id => document.getElementById(id).data.map(t => ({name: t.name, n: t.y.length}))",
        plot,
    )
    return traces


def _assert_cards_match(page: Any, result: dict[str, Any]) -> None:
    fade = result["capacity_fade"]
    life = result["statistical_metrics"]["cycle_life_projection"]
    health = result["battery_health"]
    assert float(_value(page, "card-health")) == pytest.approx(health["health_score"])
    assert health["health_status"] in (page.text_content("[data-testid=card-health]") or "")
    retention = fade["capacity_retention_percentage"]
    assert float(_value(page, "card-retention")) == pytest.approx(retention)
    assert f"{retention:.2f} %" in (page.text_content("[data-testid=card-retention]") or "")
    assert float(_value(page, "card-capacity")) == pytest.approx(fade["final_capacity_in_Ah"])
    assert float(_value(page, "card-fade-rate")) == pytest.approx(life["fade_rate"])
    assert int(_value(page, "card-cycles")) == result["metadata"]["total_cycles"]
    if life["projected_eol_cycle"] is None:
        assert _value(page, "card-eol") == ""
        assert life["note"] in (page.text_content("[data-testid=card-eol]") or "")
    else:
        assert int(_value(page, "card-eol")) == life["projected_eol_cycle"]
        eol_text = page.text_content("[data-testid=card-eol]") or ""
        assert f"cycle {life['projected_eol_cycle']}" in eol_text
        low, high = life["projected_eol_interval"]
        assert f"{low} – {high}" in eol_text


def _assert_plots_match(page: Any, result: dict[str, Any]) -> None:
    n_cycles = len(result["capacity_fade"]["cycle_numbers"])
    capacity = {t["name"]: t["n"] for t in _traces(page, "capacity-plot")}
    assert capacity["discharge"] == capacity["charge"] == n_cycles
    has_fit = result["statistical_metrics"]["cycle_life_projection"]["parameters"] is not None
    assert any(name.startswith("fit") for name in capacity) == has_fit
    voltage = _traces(page, "voltage-plot")
    assert len(voltage) == 2 * len(result["voltage_profile"]["voltage_curves"])
    ic = result["voltage_profile"]["incremental_capacity"]
    assert len(_traces(page, "ic-plot")) == len(ic["curves"]) + len(ic["peaks"])
    assert len(_traces(page, "dv-plot")) == len(result["voltage_profile"]["differential_voltage"])


def test_an_upload_shows_the_cards_and_plots_of_the_apis_result(
    page: Any, live_cloud: LiveCloud, cell: bytes
) -> None:
    expected = _api_result(live_cloud, [("SYNTH_25_B001.pkl", cell)]).json()
    sign_in(page, live_cloud, path="/ui/analytics")
    page.wait_for_selector("body[data-ready=yes]")
    assert page.is_visible("[data-testid=result-empty]")
    assert page.is_visible("[data-testid=earlier-empty]")

    _choose(page, [("SYNTH_25_B001.pkl", cell)])
    page.click("[data-testid=analyse]")
    page.wait_for_selector("[data-testid=result]:not([hidden])", timeout=60_000)
    assert page.text_content("[data-testid=result-title]") == "Cell SYNTH_25_B001"
    assert "not stored" in (page.text_content("#message") or "")
    _assert_cards_match(page, expected)
    assert expected["statistical_metrics"]["cycle_life_projection"]["projected_eol_cycle"]
    _assert_plots_match(page, expected)
    # this session's upload can be reopened from the list
    assert page.locator("[data-testid=earlier-item]").count() == 1
    page.wait_for_timeout(400)  # the smooth scroll to the result ends
    page.evaluate("window.scrollTo({top: 0, behavior: 'instant'})")
    screenshot(page, "analytics")


def test_a_bad_file_shows_the_servers_reason(page: Any, live_cloud: LiveCloud) -> None:
    broken = synthetic_cell(cycles=4, numpy_floats=False)
    del broken["cycle_data"][2]["current_in_A"]
    files = [("broken.pkl", pickle.dumps(broken))]
    refusal = _api_result(live_cloud, files)
    assert refusal.status_code == 400
    sign_in(page, live_cloud, username="operator", path="/ui/analytics")
    page.wait_for_selector("body[data-ready=yes]")
    assert page.is_hidden("#attach-label")  # operators may not keep results on a passport
    _choose(page, files)
    page.click("[data-testid=analyse]")
    page.wait_for_selector("#message.error")
    message = page.text_content("#message") or ""
    assert refusal.json()["detail"] in message and "HTTP 400" in message
    assert page.is_visible("[data-testid=result-empty]")

    # the CSV set of a short test: cards without a projection, and say why
    csv_files = _csv_set(synthetic_cell(cycles=5), name="CSV_CELL")
    expected = _api_result(live_cloud, csv_files).json()
    _choose(page, csv_files)
    page.click("[data-testid=analyse]")
    page.wait_for_selector("[data-testid=result]:not([hidden])", timeout=60_000)
    title = f"Cell {expected['metadata']['cell_id']}"
    page.wait_for_selector("[data-testid=result-subtitle]:has-text('CSV_CELL_cycles.csv')")
    assert page.text_content("[data-testid=result-title]") == title
    _assert_cards_match(page, expected)
    _assert_plots_match(page, expected)


def test_a_result_kept_on_a_battery_is_listed_and_reopened(
    page: Any, live_cloud: LiveCloud, cell: bytes
) -> None:
    serial = f"WEB-{uuid.uuid4().hex[:8]}"
    with live_cloud.sessions() as session, session.begin():
        battery = Battery(serial_number=serial, battery_name=f"Analytics {serial}")
        session.add(battery)
        session.flush()
        battery_id = battery.id
    sign_in(page, live_cloud, path="/ui/analytics")
    page.wait_for_selector("body[data-ready=yes]")
    page.select_option("[data-testid=attach]", str(battery_id))
    _choose(page, [("SYNTH_25_B001.pkl", cell)])
    page.click("[data-testid=analyse]")
    page.wait_for_selector("[data-testid=result]:not([hidden])", timeout=60_000)
    assert serial in (page.text_content("#message") or "")
    page.wait_for_selector("[data-testid=earlier-item][data-key^=r]")
    stored = httpx.get(
        f"{live_cloud.url}/api/analytics/results/?battery={battery_id}",
        headers=auth_headers(live_cloud),
    ).json()
    assert len(stored) == 1

    # a new visit: pick the battery, reopen the stored result (no plots stored: the page
    # draws them from the stored arrays)
    page.goto(f"{live_cloud.url}/ui/analytics")
    page.wait_for_selector("body[data-ready=yes]")
    page.select_option("[data-testid=earlier-battery]", str(battery_id))
    page.click(f"[data-testid=earlier-item][data-key=r{stored[0]['id']}]")
    page.wait_for_selector("[data-testid=result]:not([hidden])")
    assert f"result={stored[0]['id']}" in page.url
    kept = httpx.get(
        f"{live_cloud.url}/api/analytics/results/{stored[0]['id']}/",
        headers=auth_headers(live_cloud),
    ).json()
    _assert_cards_match(page, kept["result"])
    _assert_plots_match(page, kept["result"])
