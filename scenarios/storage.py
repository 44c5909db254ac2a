"""The storage a scenario drives: the ECM pack (fast, cell by cell) or a PyBaMM cell.

Both offer the same small interface to the engine: run a chunk of steps under the
storage controller (:func:`twin.pack_kernel.control_request`, one controller for both)
and report per-cell SoC, capacity, resistance and stored energy.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from scenarios.config import PackConfig, ScenarioError
from twin.models.base import FloatArray
from twin.models.ecm import CellInit
from twin.models.ecm_params import EcmParameters
from twin.pack import Pack
from twin.pack_kernel import OUTPUT_COLUMNS, ControlLimits, PackKernel, control_request

__all__ = ["EcmStorage", "PybammStorage", "Storage", "make_storage"]

_C = {name: i for i, name in enumerate(OUTPUT_COLUMNS)}
PYBAMM_COUNTERPARTS = {
    "nmc_okane2022": ("OKane2022", "solvent-diffusion limited", "lumped"),
    "nmc_chen2020": ("Chen2020", "solvent-diffusion limited", "lumped"),
    "lfp_prada2013": ("Prada2013", None, "isothermal"),
}
"""ECM set -> (PyBaMM set it was calibrated against, SEI option, thermal model)."""


class Storage(Protocol):
    """What the scenario engine needs from a storage model."""

    fade_loss_wh: float
    cells_per_module: int

    def run(
        self, *, net_w: FloatArray, ambient_c: FloatArray, dt_s: float, control: ControlLimits
    ) -> FloatArray: ...
    def soc(self) -> FloatArray: ...
    def capacity_ah(self) -> FloatArray: ...
    def resistance_factor(self) -> FloatArray: ...
    def stored_energy_wh(self) -> float: ...
    def replace(self, cells: list[int], *, soh: float) -> None: ...


class EcmStorage:
    """The second-life pack, cell by cell, stepped by the compiled kernel."""

    def __init__(self, pack_cfg: PackConfig, params: EcmParameters, *, seed: int) -> None:
        self.pack = Pack(
            params,
            topology=pack_cfg.to_topology(),
            spread=pack_cfg.to_spread(),
            soc=pack_cfg.initial_soc,
            temperature_c=20.0,
            options=pack_cfg.to_options(),
            conduction_w_per_k=pack_cfg.conduction_w_per_k,
            seed=seed,
        )
        self.kernel = PackKernel(self.pack)
        topo = self.pack.topology
        self.cells_per_module = topo.groups_per_module * topo.cells_per_group
        self.fade_loss_wh = 0.0

    def run(
        self, *, net_w: FloatArray, ambient_c: FloatArray, dt_s: float, control: ControlLimits
    ) -> FloatArray:
        out = self.kernel.run(net_w=net_w, ambient_c=ambient_c, dt_s=dt_s, control=control)
        self.fade_loss_wh = self.kernel.fade_loss_wh
        return out

    def soc(self) -> FloatArray:
        return self.pack.cells.soc

    def capacity_ah(self) -> FloatArray:
        return self.pack.cells.capacity_ah

    def resistance_factor(self) -> FloatArray:
        return self.pack.cells.resistance_factor

    def stored_energy_wh(self) -> float:
        return float(self.pack.cells.stored_energy_wh().sum())

    def replace(self, cells: list[int], *, soh: float) -> None:
        cells_ = self.pack.cells
        self.pack.replace_cells(
            cells,
            init=CellInit(
                soc=float(cells_.soc.mean()),
                soh=soh,
                temperature_c=float(cells_.temperature_c.mean()),
            ),
        )


class PybammStorage:
    """The pack as one PyBaMM cell (the average cell), scaled to the pack's capacity.

    Electrochemistry in place of the ECM: the PyBaMM set the ECM set was calibrated
    against, with SEI growth (LLI) as the ageing mechanism. The pack is ``n_series``
    such cells in series and enough in parallel to hold the pack's capacity at its mean
    SoH; PyBaMM's cells start new, so resistance is that of a new cell and the
    cell-to-cell spread is absent. Stored energy is not tracked, so the energy balance
    of a PyBaMM run is not checked (NaN). About 4 ms per step: use it for days or weeks.
    """

    def __init__(self, pack_cfg: PackConfig, params: EcmParameters) -> None:
        from twin.models.pybamm_twin import PybammTwin, PybammTwinConfig

        base = pack_cfg.parameter_set
        if base not in PYBAMM_COUNTERPARTS:
            raise ScenarioError(
                "--model pybamm",
                [
                    f"pack.parameter_set {base!r} has no PyBaMM counterpart; use one of "
                    f"{', '.join(sorted(PYBAMM_COUNTERPARTS))}"
                ],
            )
        pybamm_set, sei, thermal = PYBAMM_COUNTERPARTS[base]
        self.twin = PybammTwin(
            PybammTwinConfig(
                parameter_set=pybamm_set,
                sei=sei,
                thermal="lumped" if thermal == "lumped" else "isothermal",
                initial_soc=pack_cfg.initial_soc,
                initial_temperature_c=20.0,
                ambient_temperature_c=20.0,
            )
        )
        topo = pack_cfg.to_topology()
        self.n_cells = topo.n_cells
        self.n_series = topo.groups_per_string
        pack_ah = params.nominal_capacity_ah * pack_cfg.soh_mean * topo.cells_per_group
        pack_ah *= topo.strings_in_parallel
        self.n_parallel = pack_ah / self.twin.nominal_capacity_ah
        self.cell_ah_ratio = (
            params.nominal_capacity_ah * pack_cfg.soh_mean / self.twin.nominal_capacity_ah
        )
        self.cells_per_module = topo.groups_per_module * topo.cells_per_group
        self.fade_loss_wh = 0.0
        first = self.twin.last_step
        self._r0_start = float(first.truth.r0_ohm[0])
        self._last = first

    def run(
        self, *, net_w: FloatArray, ambient_c: FloatArray, dt_s: float, control: ControlLimits
    ) -> FloatArray:
        ctrl = control.as_array()
        eta, grid_limit, export_limit = (
            control.inverter_efficiency,
            control.grid_limit_w,
            control.export_limit_w,
        )
        n_equiv = self.n_series * self.n_parallel
        out = np.empty((net_w.size, len(OUTPUT_COLUMNS)))
        for k in range(net_w.size):
            last = self._last
            soc = float(last.truth.soc[0])
            volt = float(last.voltage_v[0])
            temp = float(last.surface_temperature_c[0])
            request, allowed = control_request(
                float(net_w[k]), soc, soc, volt, volt, temp, temp, volt * self.n_series, ctrl
            )
            p_dc = allowed / eta if allowed > 0 else allowed * eta
            if p_dc == 0.0:
                step = self.twin.step(current_a=0.0, dt_s=dt_s, ambient_c=float(ambient_c[k]))
            else:
                step = self.twin.step_power(
                    power_w=p_dc / n_equiv, dt_s=dt_s, ambient_c=float(ambient_c[k])
                )
            self._last = step
            current = float(step.current_a[0])
            dc_w = p_dc  # step_power holds the step's mean power at the request
            ac_w = dc_w * eta if dc_w > 0 else dc_w / eta
            grid = float(net_w[k]) - ac_w
            unserved = max(grid - grid_limit, 0.0)
            curtailed = max(-export_limit - grid, 0.0)
            grid = min(max(grid, -export_limit), grid_limit)
            v = float(step.voltage_v[0])
            t = float(step.surface_temperature_c[0])
            row = out[k]
            row[_C["battery_ac_w"]] = ac_w
            row[_C["battery_dc_w"]] = dc_w
            row[_C["pack_current_a"]] = current * self.n_parallel
            row[_C["pack_voltage_v"]] = v * self.n_series
            row[_C["grid_w"]] = grid
            row[_C["unserved_w"]] = unserved
            row[_C["pv_curtailed_w"]] = curtailed
            row[_C["soc_mean"]] = float(step.truth.soc[0])
            row[_C["v_cell_min"]] = row[_C["v_cell_max"]] = v
            row[_C["t_cell_min"]] = row[_C["t_cell_max"]] = t
            # An estimate (ohmic part only): PyBaMM's heat is not split out here.
            row[_C["joule_loss_w"]] = current**2 * float(step.truth.r0_ohm[0]) * n_equiv
            row[_C["inverter_loss_w"]] = abs(ac_w - dc_w)
            row[_C["request_w"]] = request
        return out

    def soc(self) -> FloatArray:
        return np.full(self.n_cells, float(self._last.truth.soc[0]))

    def capacity_ah(self) -> FloatArray:
        return np.full(self.n_cells, float(self._last.truth.capacity_ah[0]) * self.cell_ah_ratio)

    def resistance_factor(self) -> FloatArray:
        return np.full(self.n_cells, float(self._last.truth.r0_ohm[0]) / self._r0_start)

    def stored_energy_wh(self) -> float:
        return math.nan

    def replace(self, cells: list[int], *, soh: float) -> None:
        raise ScenarioError(
            "--model pybamm",
            ["replacements need the cell-by-cell ECM pack: run them with --model ecm"],
        )


def make_storage(model: str, pack_cfg: PackConfig, params: EcmParameters, *, seed: int) -> Storage:
    """The storage model named ``model`` (``"ecm"`` or ``"pybamm"``)."""
    if model == "ecm":
        return EcmStorage(pack_cfg, params, seed=seed)
    if model == "pybamm":
        return PybammStorage(pack_cfg, params)
    raise ScenarioError("--model", [f"must be ecm or pybamm, got {model!r}"])
