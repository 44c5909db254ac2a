"""``batterytwin bms run`` (a virtual BMS on its twin) and ``batterytwin bms gateway``
(the CAN gateway of a physical BMS)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from batterytwin.console import clear_errors

if TYPE_CHECKING:
    from virtual_bms.runtime import VirtualBms
    from virtual_bms.uplink import BrokerEndpoint

app = typer.Typer(help="Virtual edge BMSs and the CAN gateway.", no_args_is_help=True)

_UNITS_S = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86_400.0}


def parse_duration_s(text: str) -> float:
    """``90``, ``90s``, ``15min``, ``2h``, ``1.5d`` -> seconds.

    Raises:
        ValueError: If ``text`` is not a positive number with one of those units.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|min|h|d)?\s*", text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"duration {text!r} must be a positive number with s, min, h or d")
    return float(match.group(1)) * _UNITS_S[match.group(2) or "s"]


@app.command()
def run(
    device_id: Annotated[str, typer.Option(help="Device name (its topics and MQTT user).")],
    pillar: Annotated[int, typer.Option(min=1, max=2, help="1: charging hub; 2: home.")] = 2,
    cells: Annotated[int, typer.Option(min=1, max=4096, help="Cells in series.")] = 16,
    twin: Annotated[str, typer.Option(help="ecm, pybamm or fmu (with --fmu).")] = "ecm",
    fmu: Annotated[
        Path | None, typer.Option(help="A cell FMU: one instance per cell (implies --twin fmu).")
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(help="mqtt://user:password@host:port or mqtts://...; none: offline."),
    ] = None,
    ca_file: Annotated[
        Path | None, typer.Option(help="CA of an mqtts:// broker (and of an https:// --api).")
    ] = None,
    api: Annotated[
        str | None,
        typer.Option(
            help="Cloud API URL (https://host[:port]) for the HTTPS bulk-POST fallback: the "
            "outbox goes there while MQTT has been down for 30 s. Needs --broker."
        ),
    ] = None,
    api_user: Annotated[
        str | None, typer.Option(help="API user of the device (role device) for --api.")
    ] = None,
    api_password: Annotated[
        str | None,
        typer.Option(envvar="BATTERYTWIN_BMS_API_PASSWORD", help="Password of --api-user."),
    ] = None,
    duration: Annotated[str, typer.Option(help="Twin time to run: 90s, 15min, 2h, 1d.")] = "1h",
    speed: Annotated[
        float | None, typer.Option(help="Twin seconds per wall second (default: flat out).")
    ] = None,
    sample_period: Annotated[float, typer.Option(help="BMS cycle, s.")] = 1.0,
    reporting_interval: Annotated[float, typer.Option(help="Telemetry interval, s.")] = 10.0,
    parameters: Annotated[
        str | None,
        typer.Option(help="Cell parameter set (default: nmc_eis_arc, pillar 2 nmc_okane2022)."),
    ] = None,
    outbox: Annotated[
        Path | None, typer.Option(help="Store-and-forward file (default: <device>.outbox.db).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the pack, load and sensors.")] = 0,
) -> None:
    """Run one virtual BMS on a second-life twin pack, online with the cloud."""
    from virtual_bms.assembly import twin_bms
    from virtual_bms.outbox import Outbox
    from virtual_bms.uplink import BrokerEndpoint

    with clear_errors(ValueError, OSError, RuntimeError):
        if fmu is not None:
            twin = "fmu"
        if twin not in ("ecm", "pybamm", "fmu"):
            raise ValueError(f"--twin must be ecm, pybamm or fmu, got {twin!r}")
        duration_s = parse_duration_s(duration)
        endpoint = (
            BrokerEndpoint.from_url(broker, ca_file=str(ca_file) if ca_file else None)
            if broker and broker != "none"
            else None
        )
        if api is not None and (endpoint is None or not api_user or not api_password):
            raise ValueError(
                "--api is the fallback of the MQTT uplink: give --broker, --api-user and "
                "--api-password (or BATTERYTWIN_BMS_API_PASSWORD) too"
            )
        box = Outbox(outbox or Path(f"{device_id}.outbox.db")) if endpoint else None
        bms = twin_bms(
            device=device_id,
            pillar=1 if pillar == 1 else 2,
            cells=cells,
            twin="pybamm" if twin == "pybamm" else "fmu" if twin == "fmu" else "ecm",
            fmu=fmu,
            parameters=parameters,
            seed=seed,
            outbox=box,
            trace=True,
            sample_period_s=sample_period,
            reporting_interval_s=reporting_interval,
        )
        if endpoint is None:
            asyncio.run(bms.run(duration_s=duration_s, speed=speed))
            summary = {
                "device": device_id,
                "cycles": bms.counters.cycles,
                "events": bms.counters.events,
                "soc_rmse_pct": bms.trace.soc_rmse_pct() if bms.trace else float("nan"),
            }
        else:
            api_login = (api, api_user or "", api_password or "") if api else None
            summary = asyncio.run(
                _run_online(
                    bms,
                    endpoint=endpoint,
                    duration_s=duration_s,
                    speed=speed,
                    api=api_login,
                    ca_file=ca_file,
                )
            )
    for key, value in summary.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        typer.echo(f"{key:>16}: {shown}")


async def _run_online(
    bms: VirtualBms,
    *,
    endpoint: BrokerEndpoint,
    duration_s: float,
    speed: float | None,
    api: tuple[str, str, str] | None,
    ca_file: Path | None,
) -> dict[str, Any]:
    """``run_online``, with the HTTPS fallback made (and closed) in the event loop."""
    from virtual_bms.assembly import run_online
    from virtual_bms.http_fallback import HttpFallback

    if api is None:
        return await run_online(bms, endpoint=endpoint, duration_s=duration_s, speed=speed)
    url, user, password = api
    async with HttpFallback(url, user, password, ca_file=ca_file) as fallback:
        return await run_online(
            bms, endpoint=endpoint, duration_s=duration_s, speed=speed, fallback=fallback
        )


@app.command()
def gateway(
    device_id: Annotated[str, typer.Option(help="Device name of the BMS behind the gateway.")],
    broker: Annotated[str, typer.Option(help="mqtt://user:password@host:port or mqtts://...")],
    interface: Annotated[str, typer.Option(help="python-can interface.")] = "socketcan",
    channel: Annotated[str, typer.Option(help="CAN channel, e.g. can0.")] = "can0",
    bitrate: Annotated[int, typer.Option(help="Bit rate, bit/s.")] = 500_000,
    ca_file: Annotated[Path | None, typer.Option(help="CA of an mqtts:// broker.")] = None,
    outbox: Annotated[
        Path | None, typer.Option(help="Store-and-forward file (default: <device>.outbox.db).")
    ] = None,
) -> None:
    """Forward a physical BMS's CAN frames to the cloud (Raspberry Pi + CAN HAT)."""
    from virtual_bms.can.gateway import GatewayError, run_gateway
    from virtual_bms.uplink import BrokerEndpoint

    with clear_errors(ValueError, GatewayError, OSError):
        endpoint = BrokerEndpoint.from_url(broker, ca_file=str(ca_file) if ca_file else None)
        counters = run_gateway(
            interface=interface,
            channel=channel,
            bitrate=bitrate,
            device=device_id,
            endpoint=endpoint,
            outbox_path=outbox or Path(f"{device_id}.outbox.db"),
        )
    typer.echo(str(counters))
