"""One day of domestic PV self-consumption duty for a second-life pack (the quick-start job).

The household profile is synthetic and seeded: PV as a clear-sky bell with passing
clouds, load as a base load with morning and evening peaks and appliance spikes. The
Pillar 2 scenario (``scenarios/``) replaces it with demandlib/pvlib profiles.

Controller: charge from PV surplus, discharge into the household deficit, within the
inverter's power limit, a SoC window and the cell-voltage limits a BMS would enforce. The
voltage limits act on the cell voltages as the emulated BMS sensors read them (noise,
offset, quantisation), not on the truth. The SoC window still uses the true SoC: the
edge SoC estimator arrives with the virtual BMS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from twin.models.base import FloatArray
from twin.models.ecm import EcmOptions
from twin.pack import Pack, PackTopology, SecondLifeSpread
from twin.params import DEFAULT_SET, load_parameter_set
from twin.sensors import Sensors, SensorSpec

__all__ = ["DayResult", "DomesticDayConfig", "household_profile", "run_domestic_day"]

_DAY_S = 86_400.0


@dataclass(frozen=True)
class DomesticDayConfig:
    """What the quick-start job runs. Defaults: a 16s1p pack of 100 Ah cells at 70-90 % SoH."""

    parameter_set: str = DEFAULT_SET
    topology: PackTopology = field(default_factory=PackTopology)
    spread: SecondLifeSpread = field(default_factory=SecondLifeSpread)
    pv_peak_w: float = 4000.0
    daily_load_kwh: float = 9.0
    max_power_w: float = 2500.0
    soc_window: tuple[float, float] = (0.10, 0.95)
    initial_soc: float = 0.25
    ambient_mean_c: float = 22.0
    ambient_swing_c: float = 4.0
    dt_s: float = 30.0
    ageing: str = "auto"
    seed: int = 7


def household_profile(
    time_s: FloatArray, *, config: DomesticDayConfig, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    """PV generation and household load in W at ``time_s`` (seconds since midnight)."""
    hour = (time_s % _DAY_S) / 3600.0
    sun = np.clip(np.sin(np.pi * (hour - 6.0) / 14.0), 0.0, None) ** 1.5
    clouds = 1.0 - 0.5 * np.clip(
        np.convolve(rng.normal(0, 1, hour.size), np.ones(20) / 20, "same") * 3, 0, 1
    )
    pv = config.pv_peak_w * sun * clouds
    shape = (
        0.35
        + 1.2 * np.exp(-0.5 * ((hour - 7.5) / 1.0) ** 2)
        + 0.6 * np.exp(-0.5 * ((hour - 13.0) / 1.5) ** 2)
        + 2.0 * np.exp(-0.5 * ((hour - 19.5) / 1.5) ** 2)
    )
    spikes = rng.random(hour.size) < 0.02
    shape = shape + spikes * rng.uniform(2.0, 6.0, hour.size)
    dt_h = float(time_s[1] - time_s[0]) / 3600.0 if time_s.size > 1 else 1.0
    load = shape * (config.daily_load_kwh * 1000.0 / (shape.sum() * dt_h))
    return pv, load


@dataclass
class DayResult:
    """Everything recorded during the day, one row per step (cells along axis 1)."""

    config: DomesticDayConfig
    pack_description: str
    time_s: FloatArray
    pv_w: FloatArray
    load_w: FloatArray
    battery_w: FloatArray
    grid_w: FloatArray
    pack_voltage_v: FloatArray
    pack_current_a: FloatArray
    ambient_c: FloatArray
    cell_voltage_v: FloatArray
    cell_soc: FloatArray
    cell_temperature_c: FloatArray
    cell_capacity_ah: FloatArray
    events: list[str]

    def summary(self) -> dict[str, float]:
        """Key figures of the day (energies in kWh, voltages in V, spread in mV)."""
        dt_h = self.config.dt_s / 3600.0
        kwh = dt_h / 1000.0
        charged = float(np.clip(-self.battery_w, 0, None).sum() * kwh)
        discharged = float(np.clip(self.battery_w, 0, None).sum() * kwh)
        pv = float(self.pv_w.sum() * kwh)
        load = float(self.load_w.sum() * kwh)
        exported = float(np.clip(-self.grid_w, 0, None).sum() * kwh)
        imported = float(np.clip(self.grid_w, 0, None).sum() * kwh)
        spread = (self.cell_voltage_v.max(axis=1) - self.cell_voltage_v.min(axis=1)) * 1000.0
        cap0, cap1 = self.cell_capacity_ah[0], self.cell_capacity_ah[-1]
        return {
            "pv_energy_kwh": pv,
            "load_energy_kwh": load,
            "battery_charged_kwh": charged,
            "battery_discharged_kwh": discharged,
            "grid_import_kwh": imported,
            "grid_export_kwh": exported,
            "self_consumption_pct": 100.0 * (pv - exported) / pv if pv > 0 else float("nan"),
            "autarky_pct": 100.0 * (load - imported) / load if load > 0 else float("nan"),
            "pack_soc_start_pct": 100.0 * float(self.cell_soc[0].mean()),
            "pack_soc_end_pct": 100.0 * float(self.cell_soc[-1].mean()),
            "min_cell_voltage_v": float(self.cell_voltage_v.min()),
            "max_cell_voltage_v": float(self.cell_voltage_v.max()),
            "max_cell_voltage_spread_mv": float(spread.max()),
            "max_cell_temperature_c": float(self.cell_temperature_c.max()),
            "weakest_cell_capacity_ah": float(cap1.min()),
            "mean_cell_capacity_ah": float(cap1.mean()),
            "capacity_fade_today_mah": float((cap0 - cap1).mean() * 1000.0),
            "events": float(len(self.events)),
        }


def run_domestic_day(
    config: DomesticDayConfig | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> DayResult:
    """Run the pack through one day and record it."""
    cfg = config or DomesticDayConfig()
    params = load_parameter_set(cfg.parameter_set)
    rng = np.random.default_rng(cfg.seed)
    n_steps = round(_DAY_S / cfg.dt_s)
    time_s: FloatArray = np.arange(n_steps, dtype=np.float64) * cfg.dt_s
    ambient = cfg.ambient_mean_c + cfg.ambient_swing_c * np.sin(
        2 * np.pi * (time_s / _DAY_S - 0.375)
    )
    pack = Pack(
        params,
        topology=cfg.topology,
        spread=cfg.spread,
        soc=cfg.initial_soc,
        temperature_c=float(ambient[0]),
        options=EcmOptions(ageing=cfg.ageing),
        conduction_w_per_k=0.5,
        seed=cfg.seed,
    )
    pv, load = household_profile(time_s, config=cfg, rng=rng)
    n = pack.n_cells
    rec = {k: np.empty((n_steps, n)) for k in ("v", "soc", "t", "cap")}
    pack_v, pack_i, batt = np.empty(n_steps), np.empty(n_steps), np.empty(n_steps)
    events: list[str] = []
    lim = params.limits
    lo_soc, hi_soc = cfg.soc_window
    sensors = Sensors(SensorSpec(), n_voltage=n, n_current=1, n_temperature=n, seed=cfg.seed)
    v_cells = pack.cells.params.ocv_at(pack.cells.soc, float(ambient[0]))
    soc = pack.cells.soc
    for k in range(n_steps):
        request = float(np.clip(load[k] - pv[k], -cfg.max_power_w, cfg.max_power_w))
        # What a BMS allows: stop at the SoC window and 20 mV before a cell-voltage limit.
        if request > 0 and (soc.min() <= lo_soc or v_cells.min() <= lim.min_voltage_v + 0.02):
            request = 0.0
        if request < 0 and (soc.max() >= hi_soc or v_cells.max() >= lim.max_voltage_v - 0.02):
            request = 0.0
        out = pack.step_power(power_w=request, dt_s=cfg.dt_s, ambient_c=ambient[k])
        reading = sensors.read(
            time_s=out.time_s,
            voltage_v=out.cells.voltage_v,
            current_a=out.current_a,
            temperature_c=out.cells.surface_temperature_c,
        )
        v_cells, soc = reading.voltage_v, out.cells.truth.soc
        rec["v"][k], rec["soc"][k] = v_cells, soc
        rec["t"][k], rec["cap"][k] = out.cells.surface_temperature_c, out.cells.truth.capacity_ah
        pack_v[k], pack_i[k], batt[k] = out.voltage_v, out.current_a, out.power_w
        events.extend(str(e) for e in out.events)
        if progress and (k % 100 == 0 or k == n_steps - 1):
            progress(k + 1, n_steps)
    pack.cells.flush_ageing()
    rec["cap"][-1] = pack.cells.capacity_ah
    return DayResult(
        config=cfg,
        pack_description=(
            f"{cfg.topology.describe()} of '{params.name}' cells "
            f"({params.nominal_capacity_ah:g} Ah nominal)"
        ),
        time_s=time_s + cfg.dt_s,
        pv_w=pv,
        load_w=load,
        battery_w=batt,
        grid_w=load - pv - batt,
        pack_voltage_v=pack_v,
        pack_current_a=pack_i,
        ambient_c=ambient,
        cell_voltage_v=rec["v"],
        cell_soc=rec["soc"],
        cell_temperature_c=rec["t"],
        cell_capacity_ah=rec["cap"],
        events=events,
    )
