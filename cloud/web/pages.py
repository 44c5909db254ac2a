"""Serves the dashboard's pages, its scripts and the vendored Plotly bundle.

The pages are plain HTML and ES modules, no build step: every number they show comes
from the REST API, read with the JWT the login page obtained. Nothing here needs a
login of its own; the data behind the pages does.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse

STATIC_DIR = Path(__file__).parent / "static"

PAGES = {
    "": "fleet.html",
    "login": "login.html",
    "tests": "tests.html",
    "models": "models.html",
    "analytics": "analytics.html",
}
"""Path under ``/ui/`` -> page file; ``/ui/battery/{id}`` is served separately."""

_NO_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


def _page(name: str) -> FileResponse:
    path = STATIC_DIR / name
    if not path.is_file():
        raise HTTPException(404, detail=f"no dashboard page {name!r}")
    return FileResponse(path, media_type="text/html", headers=_NO_CACHE)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui")
def ui_without_slash() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/battery/{battery_id}")
def battery_page(battery_id: int) -> FileResponse:
    return _page("battery.html")


@router.get("/ui/static/{name}")
def static_file(name: str) -> FileResponse:
    path = (STATIC_DIR / name).resolve()
    if path.parent != STATIC_DIR.resolve() or not path.is_file():
        raise HTTPException(404, detail=f"no dashboard file {name!r}")
    return FileResponse(path, headers=_NO_CACHE)


@router.get("/ui/vendor/plotly.min.js")
def plotly_bundle() -> FileResponse:
    """Plotly's browser bundle, shipped inside the plotly Python package (no CDN)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    cache = {"Cache-Control": "max-age=86400"}
    return FileResponse(path, media_type="text/javascript", headers=cache)


@router.get("/ui/{page}")
def page(page: str) -> FileResponse:
    name = PAGES.get(page.strip("/"))
    if name is None:
        raise HTTPException(404, detail=f"no dashboard page /ui/{page}; pages: {sorted(PAGES)}")
    return _page(name)


@router.get("/ui/")
def fleet_page() -> FileResponse:
    return _page(PAGES[""])
