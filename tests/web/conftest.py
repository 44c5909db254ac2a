"""The dashboard in a real browser: the cloud served by uvicorn on a free port (SQLite,
no broker) and Debian's Chromium driven by Playwright. Screenshots go to
``out/screenshots/`` (kept by CI as artefacts, ignored by git).

Without Chromium the tests skip on a developer's machine and fail under ``CI=true``:
``.ci/run`` installs it (``apt-get install chromium``)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SCREENSHOTS = Path(__file__).resolve().parents[2] / "out" / "screenshots"
SECRET = "dashboard-tests-secret-0123456789abcdef"
PASSWORDS = {"admin": "admin-password-1", "operator": "operator-password-1"}


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class LiveCloud:
    """The served cloud: its URL and the app's session factory for seeding data."""

    url: str
    app: Any
    sessions: Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def live_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCloud]:
    import uvicorn

    from cloud.main import create_app
    from cloud.models import ModelsAccess, Role
    from cloud.settings import CloudSettings
    from cloud.users import add_user

    folder = tmp_path_factory.mktemp("dashboard")
    settings = CloudSettings(
        database_url=f"sqlite:///{folder / 'cloud.db'}",
        jwt_secret=SECRET,
        broker="none",
        estimator_interval_s=0,
        token_rate_per_minute=10_000,  # every test signs in
    )
    app = create_app(settings)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="dashboard-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the dashboard's uvicorn did not start within 30 s")
        time.sleep(0.05)
    with app.state.sessions() as session, session.begin():
        add_user(
            session,
            username="admin",
            password=PASSWORDS["admin"],
            role=Role.admin,
            models_access=ModelsAccess.write,
        )
        add_user(session, username="operator", password=PASSWORDS["operator"], role=Role.operator)
    try:
        yield LiveCloud(url=f"http://127.0.0.1:{port}", app=app, sessions=app.state.sessions)
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    if executable is None:
        message = "Chromium not found: install Debian's package (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no token) at a laptop's screen size."""
    context = browser.new_context(viewport={"width": 1366, "height": 800})
    context.set_default_timeout(15_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield tab
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def sign_in(page: Any, cloud: LiveCloud, *, username: str = "admin", path: str = "/ui/") -> None:
    """Signs in through the login page and lands on ``path``."""
    page.goto(f"{cloud.url}{path}")
    page.wait_for_url("**/ui/login**")
    page.fill("#username", username)
    page.fill("#password", PASSWORDS[username])
    page.click("#sign-in")
    page.wait_for_url(f"{cloud.url}{path}")


def auth_headers(cloud: LiveCloud, username: str = "admin") -> dict[str, str]:
    """The ``Authorization`` header of ``username`` (for calls beside the browser)."""
    import httpx

    answer = httpx.post(
        f"{cloud.url}/api/token/",
        json={"username": username, "password": PASSWORDS[username]},
    )
    answer.raise_for_status()
    return {"Authorization": f"Bearer {answer.json()['access']}"}


def screenshot(page: Any, name: str) -> Path:
    """Saves a full-page screenshot as ``out/screenshots/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
