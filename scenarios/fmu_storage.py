"""The storage of ``--model fmu``: a series string of FMU cells, optionally under a BMS.

One FMU instance per series group (:class:`twin.fmu.twin.FmuTwin`); the group's parallel
cells and the pack's parallel strings are taken as identical, so the pack current is
the string current times ``cells_per_group * strings_in_parallel``. The string is driven
through a :class:`virtual_bms.sources.CellStringSource` (current = power / string voltage,
contactor, current limits and balancing from the BMS), the same source the virtual BMS
uses with any cell twin. With ``[bms] enabled`` the BMS estimates from noisy sensors with
the ECM of ``pack.parameter_set`` as its own model, and its limits act on the FMU string.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from scenarios.config import BmsConfig, FmuConfig, PackConfig, ScenarioError
from scenarios.storage import grid_exchange
from twin.models.base import FloatArray
from twin.models.ecm_params import EcmParameters
from twin.pack_kernel import OUTPUT_COLUMNS, ControlLimits, control_request

if TYPE_CHECKING:
    from twin.fmu.twin import FmuTwin
    from virtual_bms.runtime import VirtualBms
    from virtual_bms.sources import Actuation, CellStringSource

__all__ = ["FmuStorage"]

_C = {name: i for i, name in enumerate(OUTPUT_COLUMNS)}


class _Setpoint:
    """A power held until changed, read as a function of time."""

    def __init__(self) -> None:
        self.value = 0.0

    def __call__(self, time_s: float) -> float:
        return self.value


def _build_twin(fmu: FmuConfig, pack_cfg: PackConfig, *, n_groups: int, seed: int) -> FmuTwin:
    from twin.fmu.twin import FmuMapping, FmuTwin

    path = Path(fmu.path)
    if not path.is_file():
        raise ScenarioError("fmu.path", [f"no such file: {path} (relative to {Path.cwd()})"])
    draw = pack_cfg.to_spread().draw(
        n_groups, soc=pack_cfg.initial_soc, temperature_c=20.0, rng=np.random.default_rng(seed)
    )
    spread = {
        "soh": draw.soh,
        "resistance_factor": draw.resistance_factor,
        "ageing_rate_factor": draw.ageing_rate_factor,
    }
    mapping = FmuMapping.from_dict(fmu.mapping) if fmu.mapping else None
    return FmuTwin(
        path,
        mapping=mapping,
        n_cells=n_groups,
        parameters=fmu.parameters,
        cell_parameters={
            fmu_name: np.asarray(spread[key], dtype=float)
            for key, fmu_name in fmu.spread_parameters.items()
        },
        initial_soc=pack_cfg.initial_soc,
    )


class FmuStorage:
    """A pack of FMU cells (see the module docstring) with an optional virtual BMS."""

    def __init__(
        self,
        pack_cfg: PackConfig,
        params: EcmParameters,
        *,
        fmu: FmuConfig,
        seed: int,
        bms: BmsConfig | None,
        pillar: Literal[1, 2],
    ) -> None:
        from virtual_bms.sources import CellStringSource

        topo = pack_cfg.to_topology()
        self.n_groups = topo.groups_per_string
        self.cells_per_group = topo.cells_per_group
        self.strings = topo.strings_in_parallel
        self.n_parallel = topo.cells_per_group * topo.strings_in_parallel
        self.n_cells = topo.n_cells
        self.cells_per_module = topo.groups_per_module * topo.cells_per_group
        self.fade_loss_wh = 0.0
        self.twin = _build_twin(fmu, pack_cfg, n_groups=self.n_groups, seed=seed)
        first = self.twin.last_step
        if not np.all(np.isfinite(first.truth.soc)):
            raise ScenarioError(
                "fmu.mapping", ["the FMU needs a SoC output for scenarios (mapping key soc)"]
            )
        nominal = params.nominal_capacity_ah * np.full(self.n_groups, pack_cfg.soh_mean)
        self._fallback_capacity_ah = nominal
        self._power_w = _Setpoint()
        self.source: CellStringSource = CellStringSource(
            cells=self.twin, load=self._power_w, ambient_c=20.0, seed=seed + 1
        )
        self.bms: VirtualBms | None = None
        self._actuation: Actuation | None = None
        self.sample_period_s: float | None = None
        if bms is not None and bms.enabled:
            self._attach_bms(pack_cfg, params, bms=bms, pillar=pillar)

    def _attach_bms(
        self, pack_cfg: PackConfig, params: EcmParameters, *, bms: BmsConfig, pillar: Literal[1, 2]
    ) -> None:
        from virtual_bms.config import BmsConfig as VirtualBmsConfig
        from virtual_bms.estimators.sof import load_sof_table
        from virtual_bms.runtime import VirtualBms

        self.sample_period_s = float(bms.sample_period_s)
        config = VirtualBmsConfig(
            device="scenario-fmu-bms",
            pillar=pillar,
            sample_period_s=self.sample_period_s,
            reporting_interval_s=bms.reporting_interval_s,
            soc_window=(bms.soc_min, bms.soc_max),
            assumed_soh=pack_cfg.soh_mean,
            assumed_resistance_factor=pack_cfg.resistance_factor_mean,
        )
        self.bms = VirtualBms(
            config,
            source=self.source,
            parameters=params,
            cells_per_group=1,
            sof=load_sof_table(bms.sof_table) if bms.sof_table else None,
        )
        self._actuation = self.bms.step(self.source.read())
        self.source.apply(self._actuation)
        self._sq_error_sum = 0.0
        self._sq_error_n = 0

    # ---------------------------------------------------------------- running
    def run(
        self, *, net_w: FloatArray, ambient_c: FloatArray, dt_s: float, control: ControlLimits
    ) -> FloatArray:
        period = self.sample_period_s or dt_s
        cycles = round(dt_s / period)
        if cycles < 1 or abs(cycles * period - dt_s) > 1e-9:
            raise ScenarioError(
                "bms.sample_period_s", [f"must divide the step dt_s={dt_s:g}, got {period:g}"]
            )
        ctrl = control.as_array()
        eta = control.inverter_efficiency
        out = np.zeros((net_w.size, len(OUTPUT_COLUMNS)))
        source = self.source
        for k in range(net_w.size):
            net = float(net_w[k])
            source.ambient_c = float(ambient_c[k])
            row = out[k]
            v_lo = t_lo = math.inf
            v_hi = t_hi = -math.inf
            for _ in range(cycles):
                last = self.twin.last_step if source.last_step is None else source.last_step
                soc, volt = last.truth.soc, last.voltage_v
                temp = last.surface_temperature_c
                v_pack = float(volt.sum())
                request, allowed = control_request(
                    net,
                    float(soc.min()),
                    float(soc.max()),
                    float(volt.min()),
                    float(volt.max()),
                    float(temp.min()),
                    float(temp.max()),
                    v_pack,
                    ctrl,
                )
                p_dc = allowed / eta if allowed > 0 else allowed * eta
                p_dc = self._within_bms_limits(p_dc, v_pack)
                self._power_w.value = p_dc / self.n_parallel
                source.advance(period)
                step = source.last_step
                assert step is not None
                current = float(step.current_a.mean()) * self.n_parallel
                dc_w = current * float(step.voltage_v.sum())
                ac_w = dc_w * eta if dc_w > 0 else dc_w / eta
                grid, unserved, curtailed = grid_exchange(
                    net - ac_w,
                    grid_limit_w=control.grid_limit_w,
                    export_limit_w=control.export_limit_w,
                )
                row[_C["battery_ac_w"]] += ac_w
                row[_C["battery_dc_w"]] += dc_w
                row[_C["pack_current_a"]] += current
                row[_C["grid_w"]] += grid
                row[_C["unserved_w"]] += unserved
                row[_C["pv_curtailed_w"]] += curtailed
                row[_C["inverter_loss_w"]] += abs(ac_w - dc_w)
                row[_C["request_w"]] += request
                v_lo, v_hi = (
                    min(v_lo, float(step.voltage_v.min())),
                    max(v_hi, float(step.voltage_v.max())),
                )
                t_cells = step.surface_temperature_c
                t_lo, t_hi = min(t_lo, float(t_cells.min())), max(t_hi, float(t_cells.max()))
                if self.bms is not None:
                    self._actuation = self.bms.step(source.read())
                    source.apply(self._actuation)
                    error = self.bms.soc - step.truth.soc
                    self._sq_error_sum += float(np.mean(error**2))
                    self._sq_error_n += 1
            row /= cycles
            end = source.last_step
            assert end is not None
            row[_C["pack_voltage_v"]] = float(end.voltage_v.sum())
            row[_C["soc_mean"]] = float(end.truth.soc.mean())
            row[_C["v_cell_min"]], row[_C["v_cell_max"]] = v_lo, v_hi
            row[_C["t_cell_min"]], row[_C["t_cell_max"]] = t_lo, t_hi
            row[_C["joule_loss_w"]] = math.nan  # the FMU does not split out its heat
        return out

    def _within_bms_limits(self, power_w: float, pack_voltage_v: float) -> float:
        act = self._actuation
        if act is None:
            return power_w
        voltage = max(pack_voltage_v, 1e-3)
        per_string = self.n_parallel
        if power_w < 0 and act.charge_limit_a is not None:
            power_w = max(power_w, -act.charge_limit_a * per_string * voltage)
        if power_w > 0 and act.discharge_limit_a is not None:
            power_w = min(power_w, act.discharge_limit_a * per_string * voltage)
        return power_w if act.contactor_closed else 0.0

    # ------------------------------------------------------------------ state
    def _per_cell(self, per_group: FloatArray) -> FloatArray:
        """Group values for every cell, in the pack's order (string, group, cell)."""
        return np.tile(np.repeat(per_group, self.cells_per_group), self.strings)

    def soc(self) -> FloatArray:
        step = self.source.last_step or self.twin.last_step
        return self._per_cell(step.truth.soc)

    def capacity_ah(self) -> FloatArray:
        step = self.source.last_step or self.twin.last_step
        cap = np.where(
            np.isfinite(step.truth.capacity_ah), step.truth.capacity_ah, self._fallback_capacity_ah
        )
        return self._per_cell(cap)

    def resistance_factor(self) -> FloatArray:
        return np.full(self.n_cells, math.nan)

    def stored_energy_wh(self) -> float:
        return math.nan

    def replace(self, cells: list[int], *, soh: float) -> None:
        raise ScenarioError(
            "--model fmu",
            ["replacements need the cell-by-cell ECM pack: run them with --model ecm"],
        )

    def kpis(self) -> dict[str, float | int]:
        """The BMS's view at the end of the run (empty without a BMS)."""
        if self.bms is None:
            return {}
        n = self._sq_error_n
        return {
            "bms_soc_rmse_pct": math.sqrt(self._sq_error_sum / n) * 100.0 if n else math.nan,
            "bms_events": self.bms.counters.events,
            "bms_faults": self.bms.counters.faults,
        }

    def close(self) -> None:
        self.twin.close()
