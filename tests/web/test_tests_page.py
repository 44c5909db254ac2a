"""The test bench page in Chromium: counts per level and status, filters kept in the URL,
a test's details and trend chart, the "Run a test" form and who may use it.

Tests are real runs of the virtual bench (ECM twin, no broker: ``POST /api/tests/`` runs
them in the server's process); each test names its units with its own tag, since the
served database is shared with the other page tests.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import httpx
import pytest

from cloud.models import Manufacturer, Role
from cloud.users import add_user
from tests.web.conftest import LiveCloud, auth_headers, screenshot, sign_in

FINAL = ("completed", "failed", "stopped_by_safety")


def _run(cloud: LiveCloud, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(f"{cloud.url}/api/tests/", json=body, headers=headers, timeout=30)
    assert answer.status_code == 201, answer.text
    test: dict[str, Any] = answer.json()
    return test


def _wait(cloud: LiveCloud, headers: dict[str, str], test_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        test: dict[str, Any] = httpx.get(
            f"{cloud.url}/api/tests/{test_id}/", headers=headers
        ).json()
        if test["status"] in FINAL:
            return test
        assert time.monotonic() < deadline, f"test {test_id} still {test['status']}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def seeded(live_cloud: LiveCloud) -> dict[str, Any]:
    """Four tests of one tag: a capacity test (cell), a short custom procedure (module),
    an FMU that does not exist (pack, fails) and a physical-bench test (waits, started)."""
    tag = uuid.uuid4().hex[:6]
    admin = auth_headers(live_cloud)
    capacity = _run(
        live_cloud,
        admin,
        {"unit_under_test": f"Cell-{tag}", "test_type": "capacity", "level": "cell"},
    )
    custom = _run(
        live_cloud,
        admin,
        {
            "unit_under_test": f"Module-{tag}",
            "name": f"Short discharge {tag}",
            "test_type": "custom",
            "level": "module",
            "procedure": ["Discharge at 1C for 10 minutes", "Rest for 5 minutes"],
            "dt_s": 5,
        },
    )
    broken = _run(
        live_cloud,
        admin,
        {
            "unit_under_test": f"Pack-{tag}",
            "test_type": "capacity",
            "level": "pack",
            "model": {"kind": "fmu", "model_id": 999_999},
        },
    )
    physical = _run(
        live_cloud,
        admin,
        {
            "unit_under_test": f"Pack-{tag}",
            "test_type": "hppc",
            "level": "pack",
            "bench": "physical",
        },
    )
    done = {t["id"]: _wait(live_cloud, admin, t["id"]) for t in (capacity, custom, broken)}
    assert done[capacity["id"]]["status"] == "completed"
    assert done[custom["id"]]["status"] == "completed"
    assert done[broken["id"]]["status"] == "failed"
    return {
        "tag": tag,
        "capacity": done[capacity["id"]],
        "custom": done[custom["id"]],
        "broken": done[broken["id"]],
        "physical": physical,
    }


def _rows(page: Any) -> list[int]:
    ids = page.eval_on_selector_all("[data-testid=test-row]", "rs => rs.map(r => r.dataset.id)")
    return [int(v) for v in ids]


def _wait_rows(page: Any, n: int) -> None:
    page.wait_for_function(
        "n => document.querySelectorAll('[data-testid=test-row]').length === n", arg=n
    )


def _open(page: Any, cloud: LiveCloud, path: str = "/ui/tests", username: str = "admin") -> None:
    sign_in(page, cloud, username=username, path=path)
    page.wait_for_selector("body[data-ready=yes]")


def test_counts_per_level_and_status_match_the_api(
    page: Any, live_cloud: LiveCloud, seeded: dict[str, Any]
) -> None:
    counts = httpx.get(
        f"{live_cloud.url}/api/tests/analytics/", headers=auth_headers(live_cloud)
    ).json()
    assert counts["by_level_and_status"]["pack"]["started"] >= 1  # the physical bench's
    _open(page, live_cloud)
    assert page.text_content("[data-testid=kpi-total] .value") == str(counts["total"])
    for status, n in counts["by_status"].items():
        assert page.text_content(f"[data-testid=kpi-{status}] .value") == str(n)
    for level, statuses in counts["by_level_and_status"].items():
        row = f"[data-testid=level-status-table] tr[data-level={level}]"
        for status, n in statuses.items():
            assert page.text_content(f"{row} td[data-status={status}]") == str(n)
        assert page.text_content(f"{row} td[data-status=all]") == str(counts["by_level"][level])
    # the stacked bar chart: one trace per status present, bars per level
    traces = page.evaluate(
        "() => document.getElementById('counts-plot').data.map(t => [t.name, t.x, t.y])"
    )
    by_name = {name: dict(zip(x, y, strict=True)) for name, x, y in traces}
    assert by_name["failed"]["pack"] == counts["by_level_and_status"]["pack"]["failed"]
    assert by_name["completed"]["module"] == counts["by_level_and_status"]["module"]["completed"]


def test_filters_narrow_the_table_and_live_in_the_url(
    page: Any, live_cloud: LiveCloud, seeded: dict[str, Any]
) -> None:
    tag = seeded["tag"]
    ours = {seeded[k]["id"] for k in ("capacity", "custom", "broken", "physical")}
    _open(page, live_cloud)
    assert ours <= set(_rows(page))
    page.fill("[data-testid=filter-text]", tag)
    _wait_rows(page, 4)
    assert set(_rows(page)) == ours
    assert f"q={tag}" in page.url

    page.select_option("[data-testid=filter-status]", "failed")
    _wait_rows(page, 1)
    assert _rows(page) == [seeded["broken"]["id"]]
    assert "status=failed" in page.url
    assert page.text_content("[data-testid=list-count]") == "1 test"

    page.select_option("[data-testid=filter-status]", "")
    page.select_option("[data-testid=filter-level]", "module")
    _wait_rows(page, 1)
    assert _rows(page) == [seeded["custom"]["id"]]

    # the filters come back from the URL (a shared link, a reload)
    page.reload()
    page.wait_for_selector("body[data-ready=yes]")
    assert page.input_value("[data-testid=filter-level]") == "module"
    assert page.input_value("[data-testid=filter-text]") == tag
    assert _rows(page) == [seeded["custom"]["id"]]

    page.fill("[data-testid=filter-text]", "no-such-unit-anywhere")
    page.wait_for_selector("#tests-empty:not([hidden])")
    assert "No test matches" in (page.text_content("#tests-empty") or "")
    page.click("#filter-clear")
    page.wait_for_function("() => document.querySelectorAll('[data-testid=test-row]').length >= 4")
    assert "?" not in page.url


def test_details_and_the_trend_chart_of_chosen_variables(
    page: Any, live_cloud: LiveCloud, seeded: dict[str, Any]
) -> None:
    custom = seeded["custom"]
    _open(page, live_cloud, path=f"/ui/tests?q={seeded['tag']}")
    page.click(f"[data-testid=test-row][data-id='{custom['id']}']")
    page.wait_for_selector("[data-testid=details]:not([hidden])")
    assert custom["name"] in (page.text_content("#details-title") or "")
    assert page.text_content("[data-testid=verdict]") == custom["outcome"]["summary"]
    facts = page.text_content("#details-facts") or ""
    assert custom["unit_under_test"] in facts and "Discharge at 1C for 10 minutes" in facts
    assert custom["uuid"] in facts
    discharged = custom["outcome"]["kpis"]["discharged_ah"]
    shown = page.text_content("[data-kpi=discharged_ah]") or ""
    assert float(shown.split()[0]) == pytest.approx(discharged, abs=1e-3)
    assert '"procedure"' in (page.text_content("[data-testid=details-request]") or "")
    assert f"test={custom['id']}" in page.url

    def traces() -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = page.evaluate(
            "() => (document.getElementById('trend-plot').data || [])"
            ".map(t => ({name: t.name, axis: t.yaxis, n: t.y.length}))"
        )
        return result

    page.wait_for_function("() => (document.getElementById('trend-plot').data || []).length === 2")
    assert [(t["name"], t["axis"]) for t in traces()] == [
        ("voltage_v [V]", "y"),
        ("current_a [A]", "y2"),
    ]
    assert {t["n"] for t in traces()} == {custom["n_samples"]}  # 180 samples, none thinned
    page.check("[data-variable=temperature_c]")
    page.wait_for_function("() => document.getElementById('trend-plot').data.length === 3")
    assert traces()[2]["name"] == "temperature_c [degC]" and traces()[2]["axis"] == "y3"
    assert "vars=voltage_v%2Ccurrent_a%2Ctemperature_c" in page.url
    page.uncheck("[data-variable=current_a]")
    page.uncheck("[data-variable=temperature_c]")
    page.wait_for_function("() => document.getElementById('trend-plot').data.length === 1")
    layout = page.evaluate("() => Object.keys(document.getElementById('trend-plot').layout)")
    assert "yaxis2" not in layout  # one unit: one axis
    page.check("[data-variable=current_a]")
    page.wait_for_function("() => document.getElementById('trend-plot').data.length === 2")
    page.wait_for_timeout(400)  # the smooth scroll to the details ends
    page.evaluate("window.scrollTo({top: 0, behavior: 'instant'})")
    screenshot(page, "tests")

    # a failed test says why
    page.click(f"[data-testid=test-row][data-id='{seeded['broken']['id']}']")
    page.wait_for_function(
        "id => document.querySelector('#details-title').textContent.startsWith('#' + id)",
        arg=seeded["broken"]["id"],
    )
    assert "999999" in (page.text_content("#details-verdict") or "")


def test_the_run_form_runs_a_test_and_shows_refusals(page: Any, live_cloud: LiveCloud) -> None:
    tag = uuid.uuid4().hex[:6]
    _open(page, live_cloud)
    page.click("#run-details summary")
    page.fill("#run-unit", f"Form-{tag}")
    page.select_option("#run-type", "custom")
    page.fill("#run-procedure", "Rest for 1 minute\nJump")
    page.click("#run-submit")
    page.wait_for_selector("#message.error")
    message = page.text_content("#message") or ""
    assert "step 1" in message and "Jump" in message and "422" in message

    page.fill("#run-procedure", "Discharge at 1C for 5 minutes\nRest for 1 minute")
    page.fill("#run-dt", "5")
    page.select_option("#run-level", "module")
    page.click("#run-submit")
    page.wait_for_selector("#message.info")
    assert re.search(r"Test #\d+", page.text_content("#message") or "")
    # the page follows the test until the bench has finished it
    page.wait_for_selector("#details-title .badge[data-status=completed]", timeout=60_000)
    page.wait_for_function("() => (document.getElementById('trend-plot').data || []).length === 2")
    assert f"Form-{tag}" in (page.text_content("#details-facts") or "")


def test_a_role_that_may_not_request_tests_gets_no_form(page: Any, live_cloud: LiveCloud) -> None:
    username = f"maker-{uuid.uuid4().hex[:6]}"
    password = "maker-password-1"
    with live_cloud.sessions() as session, session.begin():
        maker = Manufacturer(name=f"Maker {username}")
        session.add(maker)
        session.flush()
        add_user(
            session,
            username=username,
            password=password,
            role=Role.manufacturer,
            manufacturer_id=maker.id,
        )
    page.goto(f"{live_cloud.url}/ui/tests")
    page.wait_for_url("**/ui/login**")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#sign-in")
    page.wait_for_selector("body[data-ready=yes]")
    assert page.is_hidden("#run-card")
    assert "may read tests but not request them" in (page.text_content("#run-refused") or "")
