"""Signing in to the dashboard: the login page, wrong passwords, roles, signing out."""

from __future__ import annotations

from typing import Any

from tests.web.conftest import LiveCloud, screenshot, sign_in


def test_a_page_without_a_token_sends_to_the_login_and_back(
    page: Any, live_cloud: LiveCloud
) -> None:
    sign_in(page, live_cloud, path="/ui/")
    assert page.text_content("[data-testid=user]") == "admin (admin)"
    assert page.get_attribute("[data-nav=fleet]", "class") == "active"
    screenshot(page, "login-landed")


def test_a_wrong_password_is_refused_with_the_servers_reason(
    page: Any, live_cloud: LiveCloud
) -> None:
    page.goto(f"{live_cloud.url}/ui/login")
    screenshot(page, "login")
    page.fill("#username", "admin")
    page.fill("#password", "not-the-password")
    page.click("#sign-in")
    page.wait_for_selector("#message.error")
    assert "no active account" in (page.text_content("#message") or "")
    assert page.url.endswith("/ui/login")


def test_the_role_is_shown_and_logging_out_forgets_the_token(
    page: Any, live_cloud: LiveCloud
) -> None:
    sign_in(page, live_cloud, username="operator", path="/ui/")
    assert page.text_content("[data-testid=user]") == "operator (operator)"
    page.click("text=Log out")
    page.wait_for_url("**/ui/login")
    page.goto(f"{live_cloud.url}/ui/")
    page.wait_for_url("**/ui/login?next=%2Fui%2F")


def test_unknown_pages_answer_404_with_the_list_of_pages(live_cloud: LiveCloud) -> None:
    import httpx

    response = httpx.get(f"{live_cloud.url}/ui/nowhere")
    assert response.status_code == 404
    assert "analytics" in response.json()["detail"]
    assert httpx.get(f"{live_cloud.url}/", follow_redirects=False).headers["location"] == "/ui/"
    bundle = httpx.get(f"{live_cloud.url}/ui/vendor/plotly.min.js")
    assert bundle.status_code == 200 and len(bundle.content) > 1_000_000
