"""The two demo sites: their passports and devices in the cloud, their twins and BMSs.

Each site is a second-life pack twin (:class:`~twin.pack.Pack`) with its load, a
:class:`~virtual_bms.runtime.VirtualBms` on it, and in the cloud a battery with its
module, cells, diagnostic-sizing record and a device with its own MQTT password. The
demo's subclasses only *record* (the truth at each EIS sweep, each ECM update the edge
applied, energies); they change nothing the twin or the BMS does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from cloud.mqtt.contract import AckMessage, CommandMessage, EcmUpdateCommand
from demo.config import CoolingFailure, DemoConfig, SiteConfig
from twin.models.base import FloatArray
from twin.models.ecm import CellInit
from twin.pack import Pack, PackTopology, SecondLifeSpread
from twin.params import load_parameter_set
from virtual_bms.assembly import pillar_load
from virtual_bms.config import BmsConfig, EisSchedule
from virtual_bms.messages import timestamp
from virtual_bms.runtime import VirtualBms
from virtual_bms.sources import Actuation, SensorFrame, TwinSource

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from twin.eis import EisConfig, EisRecord
    from twin.models.ecm_params import EcmParameters
    from virtual_bms.outbox import Outbox

__all__ = [
    "AcceleratedSpread",
    "Ambient",
    "DemoBms",
    "DemoTwinSource",
    "EcmUpdateRecord",
    "SiteAccount",
    "build_site_bms",
    "register_site",
]

_TRUTH_LOG_S = 3600.0  # how often the twin's capacity and resistance are logged
_SOH_AT_EOL = 0.6


@dataclass(frozen=True)
class AcceleratedSpread(SecondLifeSpread):
    """The second-life spread, with every cell's ageing rate factor multiplied by
    ``ageing_rate_factor`` (the twin's own per-cell knob, ``CellInit.ageing_rate_factor``)."""

    ageing_rate_factor: float = 1.0

    def draw(
        self, n_cells: int, *, soc: float, temperature_c: float, rng: np.random.Generator
    ) -> CellInit:
        init = super().draw(n_cells, soc=soc, temperature_c=temperature_c, rng=rng)
        rate = np.asarray(init.ageing_rate_factor, dtype=float) * self.ageing_rate_factor
        return replace(init, ageing_rate_factor=rate)


@dataclass(frozen=True)
class Ambient:
    """Air temperature around a pack over twin time: steady, or with a cooling failure."""

    base_c: float = 25.0
    failure: CoolingFailure | None = None

    def __call__(self, time_s: float) -> float:
        f = self.failure
        if f is not None and f.start_s <= time_s < f.start_s + f.duration_s:
            return f.ambient_c
        return self.base_c


@dataclass(frozen=True)
class SweepTruth:
    """The twin's small-signal parameters per cell when a sweep was measured."""

    time_s: float
    r0_ohm: FloatArray
    rc_resistance_ohm: FloatArray
    """R1..Rk per cell, ``(k, n)``."""
    soc: FloatArray
    temperature_c: FloatArray


@dataclass
class DemoTwinSource(TwinSource):
    """A :class:`TwinSource` that also keeps the truth at each EIS sweep, by event id."""

    sweep_truth: dict[str, SweepTruth] = field(default_factory=dict, init=False)

    def measure_eis(
        self, *, event_id: str, groups: Sequence[int] | None, config: EisConfig
    ) -> list[EisRecord]:
        cells = self.pack.cells
        now = cells.ecm_parameters_now()
        k = sum(1 for name in now if name.startswith("c"))
        self.sweep_truth[event_id] = SweepTruth(
            time_s=self.time_s,
            r0_ohm=now["r0_ohm"].copy(),
            rc_resistance_ohm=np.array([now[f"r{j + 1}_ohm"] for j in range(k)]),
            soc=cells.soc.copy(),
            temperature_c=cells.temperature_c.copy(),
        )
        return super().measure_eis(event_id=event_id, groups=groups, config=config)


@dataclass(frozen=True)
class EcmUpdateRecord:
    """An ECM update as the edge took it: when, and its model before and after."""

    command_id: int
    time_s: float
    status: str
    detail: str
    n_rc_before: int
    n_rc_after: int
    r0_before_ohm: float
    r0_after_ohm: float
    r_dc_before_ohm: float
    r_dc_after_ohm: float


@dataclass
class SiteLog:
    """What the demo counts on top of the BMS's own counters."""

    energy_discharged_wh: float = 0.0
    energy_charged_wh: float = 0.0
    balancing_wh: float = 0.0
    balancing_s: float = 0.0
    fault_s: float = 0.0
    max_temperature_c: float = -math.inf
    truth_time_s: list[float] = field(default_factory=list)
    truth_capacity_ah: list[FloatArray] = field(default_factory=list)
    truth_r0_ohm: list[FloatArray] = field(default_factory=list)
    ecm_updates: list[EcmUpdateRecord] = field(default_factory=list)


class DemoBms(VirtualBms):
    """A :class:`VirtualBms` on a :class:`DemoTwinSource` that logs for the summary."""

    def __init__(self, config: BmsConfig, *, source: DemoTwinSource, **kwargs: object) -> None:
        super().__init__(config, source=source, **kwargs)  # type: ignore[arg-type]
        self.twin = source
        self.log = SiteLog()
        self.time_s = 0.0
        self._balancing_w = 0.0
        self._next_truth_s = 0.0

    def step(self, frame: SensorFrame) -> Actuation:
        dt_s = max(frame.time_s - self.time_s, 0.0) if self.counters.cycles else 0.0
        self.time_s = frame.time_s
        actuation = super().step(frame)
        log = self.log
        power_w = float(np.dot(frame.voltage_v, frame.group_current_a))  # + discharge
        if power_w > 0:
            log.energy_discharged_wh += power_w * dt_s / 3600.0
        else:
            log.energy_charged_wh -= power_w * dt_s / 3600.0
        log.balancing_wh += self._balancing_w * dt_s / 3600.0
        log.balancing_s += dt_s if self._balancing_w > 0 else 0.0
        log.fault_s += dt_s if not actuation.contactor_closed else 0.0
        log.max_temperature_c = max(log.max_temperature_c, float(np.max(frame.temperature_c)))
        currents = actuation.balancing_current_a
        self._balancing_w = (
            float(np.sum(np.abs(currents) * frame.voltage_v)) if currents is not None else 0.0
        )
        if frame.time_s >= self._next_truth_s:
            self._next_truth_s = frame.time_s + _TRUTH_LOG_S
            truth = self.twin.truth()
            log.truth_time_s.append(frame.time_s)
            log.truth_capacity_ah.append(truth.capacity_ah.copy())
            log.truth_r0_ohm.append(truth.r0_ohm.copy())
        return actuation

    async def handle_command(self, command: CommandMessage) -> AckMessage:
        before = self.model
        ack = await super().handle_command(command)
        if isinstance(command, EcmUpdateCommand) and before is not None:
            after = self.model if ack.status == "ok" else before
            assert after is not None
            self.log.ecm_updates.append(
                EcmUpdateRecord(
                    command_id=command.command_id,
                    time_s=self.time_s,
                    status=ack.status,
                    detail=ack.detail or "",
                    n_rc_before=before.n_rc,
                    n_rc_after=after.n_rc,
                    r0_before_ohm=float(np.mean(before.r0_ohm)),
                    r0_after_ohm=float(np.mean(after.r0_ohm)),
                    r_dc_before_ohm=_r_dc(before.r0_ohm, before.rc_resistance_ohm),
                    r_dc_after_ohm=_r_dc(after.r0_ohm, after.rc_resistance_ohm),
                )
            )
        return ack


def _r_dc(r0_ohm: FloatArray, rc_ohm: FloatArray) -> float:
    """Mean DC resistance (R0 plus every RC pair's R) over the cells."""
    return float(np.mean(r0_ohm + np.sum(rc_ohm, axis=0)))


def build_site_bms(site: SiteConfig, *, config: DemoConfig, outbox: Outbox, seed: int) -> DemoBms:
    """The site's twin pack (accelerated ageing, its pillar's load) and its BMS."""
    params: EcmParameters = load_parameter_set(site.parameters).scaled_to(site.capacity_ah)
    pack = Pack(
        params,
        topology=PackTopology(groups_per_module=site.cells),
        spread=AcceleratedSpread(
            ageing_rate_factor=config.ageing_rate_factor, soc_std=site.soc_spread
        ),
        soc=0.5,
        seed=seed,
    )
    energy_wh = site.cells * params.nominal_capacity_ah * float(np.mean(params.ocv_v))
    failure = config.cooling_failure if site.pillar == 1 else None
    source = DemoTwinSource(
        pack,
        load=pillar_load(site.pillar, pack_energy_wh=energy_wh, seed=seed),
        ambient_c=Ambient(failure=failure),
        seed=seed,
    )
    eis = (
        EisSchedule(interval_s=config.eis_interval_s, f_min_hz=0.01, f_max_hz=1000.0, points=31)
        if site.pillar == 1
        else EisSchedule(interval_s=None)
    )
    bms_config = BmsConfig(
        device=site.name,
        pillar=site.pillar,
        sample_period_s=config.sample_period_s,
        reporting_interval_s=config.reporting_interval_s,
        eis=eis,
    )
    return DemoBms(bms_config, source=source, parameters=params, outbox=outbox, trace=True)


@dataclass(frozen=True)
class SiteAccount:
    """A site as the cloud knows it."""

    device_id: int
    battery_id: int
    mqtt_password: str
    cell_positions: dict[int, int]
    """``Cell.id`` -> position (the BMS's channel)."""


def register_site(
    session: Session,
    site: SiteConfig,
    *,
    nominal_voltage_v: float,
    fecs_per_day: float,
    reporting_interval_s: float,
) -> SiteAccount:
    """Battery passport, module, cells, diagnostic-sizing record and device of ``site``.

    The sizing record plans a second life from SoH 0.8 to 0.6 over ten years or
    ``3650 * fecs_per_day`` cycles (the SoW's expected curves).
    """
    from cloud.models import Battery, BatteryStatus, Cell, Device, DiagnosticParameters, Module
    from cloud.mqtt.credentials import issue_device_password

    what = "charging hub" if site.pillar == 1 else "home storage"
    energy_wh = site.cells * site.capacity_ah * nominal_voltage_v
    battery = Battery(
        serial_number=f"SN-{site.name}",
        battery_name=f"{what} pack ({site.name})",
        status=BatteryStatus.repurposed,
        model=f"second-life {site.cells}s1p",
        chemistry="NMC",
        capacity=round(energy_wh),
        rated_energy=energy_wh / 1000.0,
        nominal_voltage=site.cells * nominal_voltage_v,
        max_voltage=site.cells * 4.2,
        min_voltage=site.cells * 2.5,
        min_temperature=-20.0,
        max_temperature=60.0,
    )
    session.add(battery)
    session.flush()
    module = Module(
        module_name=f"{site.name}-m0",
        battery_id=battery.id,
        position=0,
        nominal_capacity=site.capacity_ah,
        nominal_voltage=site.cells * nominal_voltage_v,
        nominal_energy=energy_wh,
        state_of_health=80.0,
    )
    session.add(module)
    session.flush()
    cells = [
        Cell(
            cell_name=f"{site.name}-c{i}",
            module_id=module.id,
            position=i,
            nominal_capacity=round(site.capacity_ah),
            nominal_voltage=nominal_voltage_v,
            nominal_energy=round(site.capacity_ah * nominal_voltage_v),
        )
        for i in range(site.cells)
    ]
    session.add_all(cells)
    lifespan_years = 10.0
    session.add(
        DiagnosticParameters(
            battery_id=battery.id,
            recorded_at=timestamp(0.0),
            soh_at_eol=_SOH_AT_EOL,
            lifespan_years=lifespan_years,
            lifespan_fecs=lifespan_years * 365.0 * fecs_per_day,
            fecs_per_day=fecs_per_day,
            days_per_year=365.0,
            number_of_cells=float(site.cells),
            # E(x) = 0.8 - a x^0.75: SoH 0.6 at the end of the planned life on each axis
            xh0_time=[0.8, 0.2 / lifespan_years**0.75, 0.75, 0.0, 1.0],
            xh0_fec=[0.8, 0.2 / (lifespan_years * 365.0 * fecs_per_day) ** 0.75, 0.75, 0.0, 1.0],
        )
    )
    device = Device(
        name=site.name,
        battery_id=battery.id,
        pillar=site.pillar,
        reporting_interval_s=reporting_interval_s,
    )
    session.add(device)
    session.flush()
    password = issue_device_password(session, device)
    return SiteAccount(
        device_id=device.id,
        battery_id=battery.id,
        mqtt_password=password,
        cell_positions={c.id: i for i, c in enumerate(cells)},
    )
