"""The fleet overview in Chromium: status, SoC/SoH bars, SoW colours, alarms, the search and
filters kept in the address, the way to a battery, and what an operator sees."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.conftest import LiveCloud, screenshot, sign_in
from tests.web.dashboard_seed import Site, seed_site

PREFIX = "fleetpg-"


@pytest.fixture(scope="module")
def site(live_cloud: LiveCloud) -> Site:
    return seed_site(live_cloud.sessions, PREFIX)


def _rows(page: Any) -> dict[str, Any]:
    return {
        row.get_attribute("data-name"): row
        for row in page.query_selector_all("[data-testid=fleet-row]")
    }


def _search(page: Any, text: str) -> None:
    page.fill("#search", text)


def test_the_fleet_shows_status_states_and_alarms(
    page: Any, live_cloud: LiveCloud, site: Site
) -> None:
    sign_in(page, live_cloud, path="/ui/")
    page.wait_for_selector("[data-testid=fleet-row]")
    _search(page, PREFIX)
    page.wait_for_function("document.querySelectorAll('[data-testid=fleet-row]').length === 2")
    rows = _rows(page)
    hub, home = rows[f"{PREFIX} hub"], rows[f"{PREFIX} home"]
    assert hub.query_selector("[data-testid=online]").text_content() == "online"
    assert home.query_selector("[data-testid=online]").text_content() == "offline"
    assert hub.query_selector("[data-testid=alarms]").get_attribute("data-alarms") == "1"
    assert "58.2 degC" in hub.query_selector("[data-testid=newest-event]").text_content()
    assert "near the limit" in home.query_selector("[data-testid=newest-event]").text_content()
    assert "green" in hub.query_selector("[data-testid=sow]").get_attribute("class")
    assert "orange" in home.query_selector("[data-testid=sow]").get_attribute("class")
    hub_soh = float(hub.query_selector("[data-testid=soh]").get_attribute("data-value"))
    assert hub_soh == pytest.approx(0.884 - 0.0075, abs=1e-3)  # newest weekly estimate
    home_soc = hub.query_selector("[data-testid=soc]").text_content()
    assert home_soc.endswith("%")
    # the alarmed battery comes first
    names = [
        r.get_attribute("data-name") for r in page.query_selector_all("[data-testid=fleet-row]")
    ]
    assert names == [f"{PREFIX} hub", f"{PREFIX} home"]
    assert int(page.text_content("#kpi-batteries") or "0") >= 2
    screenshot(page, "fleet")


def test_filters_narrow_the_rows_and_stay_in_the_address(
    page: Any, live_cloud: LiveCloud, site: Site
) -> None:
    sign_in(page, live_cloud, path="/ui/")
    page.wait_for_selector("[data-testid=fleet-row]")
    _search(page, PREFIX)
    page.select_option("#severity", "alarm")
    page.wait_for_function("document.querySelectorAll('[data-testid=fleet-row]').length === 1")
    assert list(_rows(page)) == [f"{PREFIX} hub"]
    assert "severity=alarm" in page.url and "q=fleetpg-" in page.url

    page.reload()  # the filters come back from the address
    page.wait_for_function("document.querySelectorAll('[data-testid=fleet-row]').length === 1")
    assert page.input_value("#search") == PREFIX
    assert page.input_value("#severity") == "alarm"

    page.select_option("#severity", "")
    page.select_option("#pillar", "2")
    page.wait_for_function("document.querySelectorAll('[data-testid=fleet-row]').length === 1")
    assert list(_rows(page)) == [f"{PREFIX} home"]
    page.select_option("#pillar", "")
    page.select_option("#status", "online")
    page.wait_for_function("document.querySelectorAll('[data-testid=fleet-row]').length === 1")
    assert list(_rows(page)) == [f"{PREFIX} hub"]

    _search(page, "no battery is called this")
    page.wait_for_selector("[data-testid=empty]:not([hidden])")
    assert "No battery matches" in (page.text_content("[data-testid=empty]") or "")
    page.click("#clear")
    page.wait_for_selector("[data-testid=empty]", state="hidden")
    assert page.url.endswith("/ui/")


def test_a_row_opens_its_battery(page: Any, live_cloud: LiveCloud, site: Site) -> None:
    sign_in(page, live_cloud, path=f"/ui/?q={PREFIX}home")
    page.wait_for_selector("[data-testid=fleet-row]")
    page.click(f"[data-testid=fleet-row][data-battery-id='{site.home_id}'] td:nth-child(3)")
    page.wait_for_url(f"**/ui/battery/{site.home_id}")
    page.wait_for_function(f"document.getElementById('title').textContent === '{PREFIX} home'")


def test_an_operator_sees_only_the_batteries_it_operates(
    page: Any, live_cloud: LiveCloud, site: Site
) -> None:
    sign_in(page, live_cloud, username="operator", path=f"/ui/?q={PREFIX}")
    page.wait_for_selector("[data-testid=fleet-row]")
    page.wait_for_timeout(300)  # one render: nothing else is coming
    assert list(_rows(page)) == [f"{PREFIX} home"]
    row = _rows(page)[f"{PREFIX} home"]
    assert row.query_selector("[data-testid=online]").text_content() == "offline"
    screenshot(page, "fleet-operator")
