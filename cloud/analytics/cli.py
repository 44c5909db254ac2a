"""``batterytwin analyze FILE...``: the Battery Analytics client (the seed's client script).

Without ``--url`` the files are analysed here, by the same function as the server's
``POST /api/upload``; with ``--url`` they are uploaded (a bearer token from ``--token``,
or from ``--user``/``--password`` through ``/api/token/``). Files are grouped into cells:
each ``.pkl`` is one cell, CSV files by their ``<cell>_`` prefix; one request per cell.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from batterytwin.console import clear_errors

if TYPE_CHECKING:
    import httpx

__all__ = ["analyze"]


class ClientError(RuntimeError):
    """The server refused the upload or could not be reached; the message says why."""


def analyze(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="One .pkl per cell, or CSV sets <cell>_cycles.csv (+ _metadata, _metrics).",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    url: Annotated[
        str | None,
        typer.Option(help="Server (http://host:8000) or its /api/upload URL; none: local."),
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="BATTERYTWIN_TOKEN", help="Bearer access token.")
    ] = None,
    user: Annotated[str | None, typer.Option(help="Log in as this user for a token.")] = None,
    password: Annotated[
        str | None, typer.Option(envvar="BATTERYTWIN_PASSWORD", help="The user's password.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Write the full results (JSON) to this file.")
    ] = None,
    show_plots: Annotated[
        bool, typer.Option(help="Write the plots as PNG files and open them.")
    ] = False,
) -> None:
    """Analyse battery cycling data: capacity fade, dQ/dV, EOL projection, health."""
    with clear_errors(ValueError, ClientError, OSError):
        cells = group_cells(files)
        if url is None:
            results = {name: _local(paths) for name, paths in cells.items()}
        else:
            upload_url = _upload_url(url)
            with http_client() as client:
                headers = _auth_headers(client, upload_url, token, user, password)
                results = {
                    name: _remote(client, upload_url, paths, headers)
                    for name, paths in cells.items()
                }
    document = next(iter(results.values())) if len(results) == 1 else results
    if output is not None:
        output.write_text(json.dumps(document, indent=1))
    _print_summary(results)
    if show_plots:
        _show_plots(results, output)


def group_cells(files: list[Path]) -> dict[str, list[Path]]:
    """Cells by name: each pickle alone, CSV files by the part before the last ``_``."""
    cells: dict[str, list[Path]] = {}
    for path in files:
        if path.suffix.lower() == ".csv":
            name = path.stem.rpartition("_")[0] or path.stem
        else:
            name = path.stem
        cells.setdefault(name, []).append(path)
    return cells


def _read(paths: list[Path]) -> list[tuple[str, bytes]]:
    from cloud.analytics import MAX_FILE_BYTES

    for path in paths:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(
                f"{path} is larger than {MAX_FILE_BYTES // 2**20} MB, the limit per file"
            )
    return [(path.name, path.read_bytes()) for path in paths]


def _local(paths: list[Path]) -> dict[str, Any]:
    from cloud.analytics import analyse_upload

    return analyse_upload(_read(paths))


def _upload_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/api/upload") else f"{url}/api/upload"


def http_client() -> httpx.Client:
    """The HTTP client (tests hand in FastAPI's TestClient here)."""
    try:
        import httpx
    except ImportError:
        raise ClientError("uploading needs httpx: pip install httpx") from None
    return httpx.Client(timeout=120.0)


def _auth_headers(
    client: httpx.Client, upload_url: str, token: str | None, user: str | None, pw: str | None
) -> dict[str, str]:
    if token:
        return {"Authorization": f"Bearer {token}"}
    if user is None:
        raise ClientError("the server needs a login: give --token, or --user and --password")
    if pw is None:
        pw = typer.prompt(f"password for {user}", hide_input=True)
    token_url = upload_url.removesuffix("/api/upload") + "/api/token/"
    response = _send(client, "POST", token_url, json={"username": user, "password": pw})
    return {"Authorization": f"Bearer {response.json()['access']}"}


def _send(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    import httpx

    try:
        response = client.request(method, url, **kwargs)
    except httpx.HTTPError as error:
        raise ClientError(f"{url}: {error}") from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise ClientError(f"{url} answered {response.status_code}: {detail}")
    return response


def _remote(
    client: httpx.Client, upload_url: str, paths: list[Path], headers: dict[str, str]
) -> dict[str, Any]:
    parts = [("file", (name, data, "application/octet-stream")) for name, data in _read(paths)]
    result: dict[str, Any] = _send(client, "POST", upload_url, files=parts, headers=headers).json()
    return result


def _print_summary(results: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("Cell", "Cycles", "Retention %", "Health", "EOL cycle (90 %)", "Indicators")
    for name, result in results.items():
        meta, health = result["metadata"], result["battery_health"]
        life = result["statistical_metrics"]["cycle_life_projection"]
        eol = life.get("projected_eol_cycle")
        interval = life.get("projected_eol_interval") or [None, None]
        span = f"{interval[0] or '?'}-{interval[1] or '?'}"
        table.add_row(
            str(meta.get("cell_id") or name),
            f"{meta['first_cycle_number']}-{meta['last_cycle_number']}",
            f"{health['capacity_retention']}",
            f"{health['health_status']} ({health['health_score']})",
            f"{eol} ({span})" if eol is not None else "not reached",
            ", ".join(health["degradation_indicators"]) or "-",
        )
    Console().print(table)


def _show_plots(results: dict[str, dict[str, Any]], output: Path | None) -> None:
    import base64

    folder = (
        output.with_name(output.stem + "_plots")
        if output is not None
        else Path(tempfile.mkdtemp(prefix="batterytwin-plots-"))
    )
    folder.mkdir(parents=True, exist_ok=True)
    for name, result in results.items():
        for section in result.values():
            if not isinstance(section, dict):
                continue
            for key, value in section.items():
                if key.endswith("_plot") and isinstance(value, str):
                    path = folder / f"{name}_{key.removesuffix('_plot')}.png"
                    path.write_bytes(base64.b64decode(value))
                    typer.echo(str(path))
                    typer.launch(str(path))
