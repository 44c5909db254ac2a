"""The battery page in Chromium: passport, the live heatmap following new measurements,
trends, ECM history, Nyquist and Bode with the fitted model, and commands from the form to
their acknowledgement (through an embedded MQTT broker), plus empty states and roles."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, update

from cloud.models import Command
from tests.web.conftest import LiveCloud, screenshot, sign_in
from tests.web.dashboard_seed import Site, seed_site, telemetry

PREFIX = "batpg-"


@pytest.fixture(scope="module")
def site(live_cloud: LiveCloud) -> Site:
    return seed_site(live_cloud.sessions, PREFIX)


@pytest.fixture
def mqtt_on(live_cloud: LiveCloud) -> Iterator[None]:
    """An open embedded broker the served cloud publishes commands to, for one test."""
    from cloud.mqtt.broker import EmbeddedBroker
    from cloud.mqtt.commands import MqttEndpoint

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-broker", daemon=True)
    thread.start()
    broker = EmbeddedBroker()
    asyncio.run_coroutine_threadsafe(broker.start(), loop).result(30)
    live_cloud.app.state.mqtt = MqttEndpoint(host="127.0.0.1", port=broker.port)
    try:
        yield
    finally:
        live_cloud.app.state.mqtt = None
        asyncio.run_coroutine_threadsafe(broker.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _open(page: Any, live_cloud: LiveCloud, battery_id: int, username: str = "admin") -> None:
    sign_in(page, live_cloud, username=username, path=f"/ui/battery/{battery_id}")
    page.wait_for_selector("#passport dd")


def _plot_names(page: Any, plot_id: str) -> list[str]:
    return list(
        page.evaluate(f"(document.getElementById('{plot_id}').data || []).map((t) => t.name)")
    )


def test_the_battery_page_shows_passport_plots_and_a_live_heatmap(
    page: Any, live_cloud: LiveCloud, site: Site
) -> None:
    _open(page, live_cloud, site.hub_id)
    assert page.text_content("#title") == f"{PREFIX} hub"
    assert f"{PREFIX}HUB-001" in (page.text_content("#passport") or "")
    assert "1 alarm" in (page.text_content("[data-testid=alarm-badge]") or "")
    page.wait_for_function("document.getElementById('live-status').textContent === 'live'")
    card = page.locator("#live-card")
    first = dt.datetime.fromisoformat(card.get_attribute("data-updated") or "")
    assert first == site.newest_at
    z = page.evaluate("document.getElementById('heat-voltage').data[0].z")
    assert len(z) == 2 and len(z[0]) == 8  # 16 cells, 8 a row

    # EIS: measured points and the fitted model, for the newest sweep
    page.wait_for_function("(document.getElementById('nyquist').data || []).length === 2")
    assert _plot_names(page, "nyquist")[0] == "measured"
    assert _plot_names(page, "nyquist")[1].startswith("fitted ECM #")
    assert _plot_names(page, "bode") == ["|Z| measured", "phase measured", "|Z| fit", "phase fit"]
    assert "fitted from this sweep" in (page.text_content("#eis-fit-note") or "")
    assert page.input_value("#eis-sweep") == site.sweep
    page.select_option("#eis-cell", str(site.hub_cells[5]))
    page.wait_for_function(
        "Math.abs(document.getElementById('nyquist').data[0].x.slice(-1)[0]"
        " - document.getElementById('nyquist').data[1].x.slice(-1)[0]) < 1e-6"
    )
    # ECM history and trends
    assert _plot_names(page, "ecm-r") == ["R0", "R1", "R2"]
    assert _plot_names(page, "ecm-c") == ["C1", "C2"]
    assert "SoH (cloud)" in _plot_names(page, "trends")
    assert page.locator("#sow-history .sow-chip").count() == 1
    assert page.locator("[data-testid=event-row][data-severity=alarm]").count() == 1
    screenshot(page, "battery")

    # a new sample arrives: the stream pushes it and the heatmap follows
    newer = site.newest_at + dt.timedelta(seconds=30)
    rows = telemetry(site.hub_cells, newer, pillar=1, device_id=site.hub_device, step=0)
    rows[5].voltage = 3.987
    with live_cloud.sessions() as session, session.begin():
        session.add_all(rows)
    before = card.get_attribute("data-updated")
    page.wait_for_function(f"document.getElementById('live-card').dataset.updated !== '{before}'")
    assert dt.datetime.fromisoformat(card.get_attribute("data-updated") or "") == newer
    assert page.text_content("[data-testid=v-max] b") == "3.987 V"
    assert page.evaluate("document.getElementById('heat-voltage').data[0].z[0][5]") == 3.987
    assert int(card.get_attribute("data-events") or "0") >= 2
    screenshot(page, "battery-live-update")


def test_an_ecm_update_from_the_form_goes_from_sent_to_acked(
    page: Any, live_cloud: LiveCloud, site: Site, mqtt_on: None
) -> None:
    _open(page, live_cloud, site.hub_id)
    page.wait_for_selector("[data-testid=command-row]")
    queued = page.locator("[data-testid=command-row][data-status=pending]")
    assert queued.count() == 1  # the estimator's, waiting for the scheduler
    assert page.input_value("#ecm-form [name=r0]") != ""  # prefilled from the newest set

    page.fill("#ecm-form [name=r1]", "")
    page.click("#ecm-form-send")
    assert "R1 is required" in (page.text_content("[data-testid=ecm-form-error]") or "")
    page.fill("#ecm-form [name=r0]", "1.5")  # mΩ
    page.fill("#ecm-form [name=r1]", "0.5")
    page.fill("#ecm-form [name=c1]", "150")
    page.click("#ecm-form-send")
    page.wait_for_selector("[data-testid=ecm-form-ok]:has-text('waiting for the BMS')")
    with live_cloud.sessions() as session:
        command = session.scalars(
            select(Command)
            .where(Command.device_id == site.hub_device, Command.created_by_id.is_not(None))
            .order_by(Command.id.desc())
        ).first()
        assert command is not None and command.kind == "ecm_update"
        assert command.payload["r0"] == pytest.approx(0.0015)
        assert command.status == "sent"
    row = page.locator(f"[data-testid=command-row][data-command-id='{command.id}']")
    assert row.locator("[data-testid=command-status]").text_content() == "sent · awaiting ack"
    screenshot(page, "battery-command-sent")

    with live_cloud.sessions() as session, session.begin():  # the BMS's ack, as the ingest books it
        session.execute(
            update(Command)
            .where(Command.id == command.id, Command.status.in_(("pending", "sent")))
            .values(status="acked", acked_at=dt.datetime.now(dt.UTC), ack_detail="applied")
        )
    page.wait_for_selector(
        f"[data-testid=command-row][data-command-id='{command.id}'][data-status=acked]"
    )
    assert row.locator("td").nth(5).text_content() == "applied"
    page.locator("#commands-card").scroll_into_view_if_needed()
    screenshot(page, "battery-command-acked")


def test_without_a_broker_the_form_says_why_nothing_was_sent(
    page: Any, live_cloud: LiveCloud, site: Site
) -> None:
    _open(page, live_cloud, site.home_id)
    page.wait_for_selector("#interval-form")
    assert page.input_value("#interval-form [name=interval_s]") == "5"
    page.fill("#interval-form [name=interval_s]", "0")
    page.click("#interval-form-send")
    assert "must be > 0" in (page.text_content("[data-testid=interval-form-error]") or "")
    page.fill("#interval-form [name=interval_s]", "2")
    page.click("#interval-form-send")
    page.wait_for_selector("[data-testid=interval-form-error]:has-text('MQTT is off')")


def test_a_battery_without_spectra_says_what_to_do(
    page: Any, live_cloud: LiveCloud, site: Site
) -> None:
    _open(page, live_cloud, site.home_id, username="operator")
    page.wait_for_selector("[data-testid=eis-empty]:not([hidden])")
    assert (
        page.text_content("[data-testid=eis-empty]")
        == "No EIS sweep stored yet — send an EIS request below."
    )
    assert "No ECM parameters" in (page.text_content("#ecm-empty") or "")
    # Pillar 2: the BMS's own SoC/SoH/SoT/SoS trends
    page.wait_for_function("(document.getElementById('trends').data || []).length === 4")
    assert _plot_names(page, "trends") == ["SoC (BMS)", "SoH (BMS)", "SoT (BMS)", "SoS (BMS)"]
    assert page.locator("#eis-form").count() == 1  # operators may send commands
    screenshot(page, "battery-home")


def test_an_operator_cannot_open_a_battery_it_does_not_operate(
    page: Any, live_cloud: LiveCloud, site: Site
) -> None:
    sign_in(page, live_cloud, username="operator", path=f"/ui/battery/{site.hub_id}")
    page.wait_for_selector("#message.error")
    assert f"battery {site.hub_id} not found" in (page.text_content("#message") or "")
    assert page.locator("#passport-card").is_hidden()
