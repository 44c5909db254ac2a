"""Ready-made virtual BMSs: a twin pack with its load, a BMS on it, and running it online.

Used by ``batterytwin bms run``, the benches and the fleet tools, so each builds the same
thing from a few numbers.

Example::

    bms = twin_bms(device="bms-7", pillar=2, cells=16, outbox=Outbox("bms-7.sqlite"))
    summary = asyncio.run(run_online(bms, endpoint=BrokerEndpoint(...), duration_s=3600))
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cloud.mqtt.contract import Topics
from twin.models.ecm_params import EcmParameters
from twin.pack import Pack, PackTopology, SecondLifeSpread
from twin.params import load_parameter_set
from virtual_bms.config import BmsConfig
from virtual_bms.http_fallback import HttpFallback
from virtual_bms.outbox import Outbox
from virtual_bms.runtime import VirtualBms
from virtual_bms.sources import (
    CellStringSource,
    LoadProfile,
    SensorSource,
    TwinSource,
    charging_hub_load,
    household_load,
)
from virtual_bms.uplink import BrokerEndpoint, Uplink

__all__ = ["pillar_load", "run_online", "twin_bms"]

DEFAULT_CAPACITY_AH = {1: 160.0, 2: 100.0}
DEFAULT_PARAMETERS = {1: "nmc_eis_arc", 2: "nmc_okane2022"}
"""Second-life EV cells: the Pillar 1 hub's 160 Ah cells, 100 Ah for a home pack."""


def pillar_load(pillar: int, *, pack_energy_wh: float, seed: int) -> LoadProfile:
    """The load of a pillar, scaled to the pack: Pillar 2 a household with PV sized to
    the pack; Pillar 1 EV sessions at 1C with a 0.3C recharge in between."""
    if pillar == 1:
        return charging_hub_load(
            session_power_w=pack_energy_wh,
            recharge_power_w=0.3 * pack_energy_wh,
            sessions_per_day=8,
            seed=seed,
        )
    scale = pack_energy_wh / 6000.0
    return household_load(
        pv_peak_w=4000.0 * scale,
        daily_load_kwh=9.0 * scale,
        max_power_w=2500.0 * scale,
        seed=seed,
    )


def _pybamm_source(
    params_name: str, *, cells: int, load: LoadProfile, soc: float, seed: int
) -> SensorSource:
    from twin.models.pybamm_twin import PybammTwin, PybammTwinConfig

    name = params_name.removeprefix("pybamm:")
    twin = PybammTwin(PybammTwinConfig(parameter_set=name, n_cells=cells, initial_soc=soc))
    return CellStringSource(twin, load=load, seed=seed)


def _fmu_source(
    path: Path, *, cells: int, soc: float, pillar: Literal[1, 2], seed: int
) -> tuple[SensorSource, float]:
    """A string of ``cells`` FMU cells (one instance each) and the cells' capacity in Ah
    (from the FMU's capacity output; NaN when it has none)."""
    from twin.fmu.twin import FmuTwin

    twin = FmuTwin(path, n_cells=cells, initial_soc=soc)
    capacities = twin.last_step.truth.capacity_ah
    finite = capacities[np.isfinite(capacities)]
    capacity_ah = float(finite.mean()) if finite.size else float("nan")
    voltage_v = float(np.mean(twin.last_step.voltage_v))
    energy = cells * (capacity_ah if np.isfinite(capacity_ah) else 5.0) * voltage_v
    load = pillar_load(pillar, pack_energy_wh=energy, seed=seed)
    return CellStringSource(twin, load=load, seed=seed), capacity_ah


def twin_bms(
    *,
    device: str,
    pillar: Literal[1, 2],
    cells: int = 16,
    twin: Literal["ecm", "pybamm", "fmu"] = "ecm",
    fmu: Path | None = None,
    parameters: str | None = None,
    capacity_ah: float | None = None,
    soc: float = 0.5,
    seed: int = 0,
    outbox: Outbox | None = None,
    trace: bool = False,
    **config: Any,
) -> VirtualBms:
    """A BMS of ``pillar`` on a fresh ``cells``-in-series second-life twin pack.

    Args:
        device: The device name.
        pillar: 1 (charging hub, EIS) or 2 (home storage).
        cells: Series cells (one voltage channel each).
        twin: ``ecm`` (a pack with second-life spread), ``pybamm`` (identical PyBaMM
            cells, PyBaMM's own 5 Ah cell; slower) or ``fmu`` (one instance of ``fmu`` per
            cell; the BMS's own model is ``parameters`` at the FMU's capacity).
        fmu: The cell FMU for ``twin="fmu"`` (see :class:`twin.fmu.twin.FmuTwin`).
        parameters: Cell parameter set the twin is made of and the BMS believes in; default
            ``nmc_eis_arc`` for Pillar 1 (its phase carries temperature, so SoT works) and
            ``nmc_okane2022`` for Pillar 2.
        capacity_ah: Cell capacity (ECM twin); default per pillar.
        soc: Initial SoC.
        seed: Seed of the pack's spread, its load and its sensors.
        outbox: The BMS's store-and-forward buffer.
        trace: Record estimates against the truth.
        **config: More :class:`~virtual_bms.config.BmsConfig` fields.
    """
    bms_config = BmsConfig(device=device, pillar=pillar, **config)
    parameters = parameters or DEFAULT_PARAMETERS[pillar]
    if twin == "fmu":
        if fmu is None:
            raise ValueError("twin='fmu' needs the FMU file (--fmu)")
        source, fmu_capacity_ah = _fmu_source(fmu, cells=cells, soc=soc, pillar=pillar, seed=seed)
        believed = load_parameter_set(parameters)
        if np.isfinite(fmu_capacity_ah):
            believed = believed.scaled_to(fmu_capacity_ah)
        return VirtualBms(
            bms_config, source=source, parameters=believed, outbox=outbox, trace=trace
        )
    if twin == "pybamm":
        params: EcmParameters = load_parameter_set("nmc_okane2022")
        energy = cells * 5.0 * 3.7
        source = _pybamm_source(
            parameters if parameters.startswith("pybamm:") else "OKane2022",
            cells=cells,
            load=pillar_load(pillar, pack_energy_wh=energy, seed=seed),
            soc=soc,
            seed=seed,
        )
        params = params.scaled_to(5.0)
    else:
        base = load_parameter_set(parameters)
        params = base.scaled_to(capacity_ah or DEFAULT_CAPACITY_AH[pillar])
        pack = Pack(
            params,
            topology=PackTopology(groups_per_module=cells),
            spread=SecondLifeSpread(),
            soc=soc,
            seed=seed,
        )
        energy = cells * params.nominal_capacity_ah * float(np.mean(params.ocv_v))
        source = TwinSource(
            pack, load=pillar_load(pillar, pack_energy_wh=energy, seed=seed), seed=seed
        )
    return VirtualBms(bms_config, source=source, parameters=params, outbox=outbox, trace=trace)


async def run_online(
    bms: VirtualBms,
    *,
    endpoint: BrokerEndpoint,
    duration_s: float,
    speed: float | None = None,
    topics: Topics | None = None,
    drain_timeout_s: float = 30.0,
    fallback: HttpFallback | None = None,
    fallback_after_s: float = 30.0,
) -> dict[str, Any]:
    """Run ``bms`` with its uplink for ``duration_s`` of twin time; a summary after.

    The uplink gets ``drain_timeout_s`` at the end to send what is still queued (what it
    cannot send stays in the outbox for the next run). With ``fallback``, the outbox goes
    over HTTPS while MQTT has been down for ``fallback_after_s``; the caller closes it.
    """
    if bms.outbox is None:
        raise ValueError("an online BMS needs an outbox (its store-and-forward buffer)")
    link = Uplink(
        device=bms.config.device,
        outbox=bms.outbox,
        endpoint=endpoint,
        on_command=bms.handle_command,
        topics=topics,
        fallback=fallback,
        fallback_after_s=fallback_after_s,
    )
    link_task = asyncio.create_task(link.run())
    pump = asyncio.create_task(_wake_on_new(bms, link))
    try:
        await bms.run(duration_s=duration_s, speed=speed)
        link.wake()
        with contextlib.suppress(TimeoutError):
            await link.wait_drained(drain_timeout_s)
    finally:
        pump.cancel()
        link.stop()
        await link_task
    summary: dict[str, Any] = {
        "device": bms.config.device,
        "cycles": bms.counters.cycles,
        "telemetry": bms.counters.telemetry,
        "eis_sweeps": bms.counters.eis_sweeps,
        "events": bms.counters.events,
        "commands": link.counters.commands,
        "published": link.counters.published,
        "posted_https": link.counters.http_posted,
        "left_in_outbox": len(bms.outbox),
        "dropped": bms.outbox.dropped,
    }
    if bms.trace is not None:
        summary["soc_rmse_pct"] = bms.trace.soc_rmse_pct()
    return summary


async def _wake_on_new(bms: VirtualBms, link: Uplink) -> None:
    """Nudge the uplink whenever the outbox grew (the BMS writes it synchronously)."""
    assert bms.outbox is not None
    seen = len(bms.outbox)
    while True:
        await asyncio.sleep(0.05)
        size = len(bms.outbox)
        if size > seen or (size and link.connected):
            link.wake()
        seen = size
