"""``batterytwin fleet``: thousands of virtual BMSs against a cloud, with a report."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from batterytwin.console import clear_errors


def fleet(
    count: Annotated[int, typer.Option(min=1, max=100_000, help="Virtual BMSs.")] = 100,
    pillar: Annotated[str, typer.Option(help="1 (charging hubs), 2 (homes) or mix.")] = "2",
    broker: Annotated[
        str, typer.Option(help="mqtt://host:port the BMSs connect to.")
    ] = "mqtt://127.0.0.1:1883",
    cloud: Annotated[
        str, typer.Option(help="The cloud's REST API (provisioning, accounting).")
    ] = "http://127.0.0.1:8000",
    rate: Annotated[float, typer.Option(help="Telemetry messages per BMS per second.")] = 0.3,
    duration: Annotated[float, typer.Option(help="Publishing time, s (then a drain).")] = 60.0,
    report: Annotated[
        Path | None, typer.Option(help="Folder for report.json and report.html.")
    ] = None,
    user: Annotated[
        str, typer.Option(envvar="BATTERYTWIN_FLEET_USER", help="Cloud user (admin).")
    ] = "admin",
    password: Annotated[
        str,
        typer.Option(
            envvar="BATTERYTWIN_FLEET_PASSWORD", help="Its password.", prompt=True, hide_input=True
        ),
    ] = "",
    credentials: Annotated[
        Path | None,
        typer.Option(help="name,password CSV of existing devices instead of provisioning."),
    ] = None,
    save_credentials: Annotated[
        Path | None,
        typer.Option(help="Write the provisioned devices' credentials here (for Locust)."),
    ] = None,
    prefix: Annotated[str, typer.Option(help="Device name prefix.")] = "fleet-",
    api_users: Annotated[
        int, typer.Option(help="Clients querying measurements once a second during the run.")
    ] = 0,
    probe_devices: Annotated[int, typer.Option(help="Devices sampled for latency.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the fleet's cells and loads.")] = 0,
) -> None:
    """Run COUNT virtual BMSs (one MQTT connection each) against a cloud and report.

    Provisions the devices through the cloud's API (admin), or takes --credentials. With
    Mosquitto, refresh its files after provisioning (batterytwin cloud broker-files, then
    kill -HUP); the embedded broker sees new devices at once. Raise the open-file limit
    first for thousands of connections (ulimit -n; docs/fleet.md).
    """
    from virtual_bms.fleet.app import FleetOptions, run_fleet

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    with clear_errors(ValueError, OSError, RuntimeError):
        if pillar not in ("1", "2", "mix"):
            raise ValueError(f"--pillar must be 1, 2 or mix, got {pillar!r}")
        _raise_open_files(count)
        options = FleetOptions(
            count=count,
            pillar=pillar,  # type: ignore[arg-type]
            broker_url=broker,
            cloud_url=cloud,
            username=user,
            password=password,
            rate_hz=rate,
            duration_s=duration,
            report_dir=report,
            prefix=prefix,
            credentials_csv=credentials,
            save_credentials=save_credentials,
            probe_devices=probe_devices,
            api_users=api_users,
            seed=seed,
        )
        options.broker()

        def progress(row: dict[str, float]) -> None:
            if int(row["t_s"]) % 10 == 0:
                typer.echo(
                    f"t={row['t_s']:>5.0f} s  connected {row['connected']:>6.0f}  "
                    f"generated {row['generated']:>6.0f}/s  acked {row['acked']:>6.0f}/s  "
                    f"backlog {row['backlog']:>7.0f}",
                    err=True,
                )

        result = asyncio.run(run_fleet(options, on_second=progress))
    figures = result.get("figures", {})
    width = max((len(k) for k in figures), default=10)
    for key, value in figures.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        typer.echo(f"{key:<{width}}  {shown}")
    if report is not None:
        typer.echo(f"report: {report / 'report.html'}  json: {report / 'report.json'}")


def _raise_open_files(count: int) -> None:
    from virtual_bms.fleet.limits import raise_open_files

    wanted = count + 256
    _, hard = raise_open_files(wanted)
    if hard < wanted:
        print(
            f"warning: the open-file limit ({hard}) is below {wanted}: raise it "
            "(ulimit -Hn / LimitNOFILE, docs/fleet.md) or some BMSs cannot connect",
            file=sys.stderr,
        )
