"""The storage a scenario drives: the ECM pack (fast, cell by cell) or a PyBaMM cell.

All offer the same small interface to the engine: run a chunk of steps under the
storage controller (:func:`twin.pack_kernel.control_request`, one controller for all)
and report per-cell SoC, capacity, resistance and stored energy. :class:`BmsStorage` is
the ECM pack with a virtual BMS attached (``[bms] enabled = true``), stepped in Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from scenarios.config import BmsConfig, FmuConfig, PackConfig, ScenarioError
from twin.models.base import FloatArray
from twin.models.ecm import CellInit
from twin.models.ecm_params import EcmParameters
from twin.pack import Pack
from twin.pack_kernel import OUTPUT_COLUMNS, ControlLimits, PackKernel, control_request

if TYPE_CHECKING:
    from virtual_bms.runtime import VirtualBms
    from virtual_bms.sources import Actuation, TwinSource

__all__ = [
    "BMS_COLUMNS",
    "BmsStorage",
    "EcmStorage",
    "PybammStorage",
    "Storage",
    "make_storage",
]

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


def grid_exchange(
    wanted_w: float, *, grid_limit_w: float, export_limit_w: float
) -> tuple[float, float, float]:
    """What the grid connection makes of the power the site wants from it (positive =
    import): ``(grid_w, unserved_w, pv_curtailed_w)`` within the import and export limits.
    """
    unserved = max(wanted_w - grid_limit_w, 0.0)
    curtailed = max(-export_limit_w - wanted_w, 0.0)
    return min(max(wanted_w, -export_limit_w), grid_limit_w), unserved, curtailed


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


BMS_COLUMNS = (
    "bms_soc_mean",
    "bms_soc_sq_error",
    "bms_charge_limit_a",
    "bms_discharge_limit_a",
    "bms_soh_mean",
    "bms_limited",
)
"""Per-step BMS record of :class:`BmsStorage`: mean SoC estimate at the step's end, mean
squared SoC error (estimate - truth, over groups and cycles), smallest charge and
discharge current limits (A, inf = none), mean SoH estimate, and the share of the step in
which the BMS's limits cut what the controller asked for."""


@dataclass
class _Setpoint:
    """A value held until changed, read as a function of time (a picklable callable)."""

    value: float = 0.0

    def __call__(self, time_s: float) -> float:
        return self.value


class BmsStorage(EcmStorage):
    """The ECM pack with a :class:`~virtual_bms.runtime.VirtualBms` attached.

    Per BMS cycle (``bms.sample_period_s``, a divisor of the scenario's step) the
    scenario's controller asks for a power from the pack's state
    (:func:`~twin.pack_kernel.control_request` with the engine's :class:`ControlLimits`,
    as in the kernel), the BMS's last charge and discharge current limits (SoF table,
    SoC window on its estimate, voltage derating) clip it, the pack is stepped through
    a :class:`~virtual_bms.sources.TwinSource` over the same :class:`Pack` (noisy
    sensors; contactor and balancing set by the BMS), and the BMS runs one cycle on
    what the sensors read. Ageing is the twin's own (``EcmTwin`` closes its stress
    windows as the kernel does). Pure Python: tens of times slower than the kernel.

    Output columns are those of :data:`twin.pack_kernel.OUTPUT_COLUMNS`, per scenario
    step: powers, currents, grid and losses are means over the step's BMS cycles; SoC
    and pack voltage are the step's end values; cell voltage and temperature extremes
    are over the step's cycles. The DC power is the pack's terminal power (current x
    voltage at the end of each cycle); the cell losses are the chemical energy the cells
    gave up (stored energy from SoC and OCV) minus that terminal energy, so they hold
    Joule heat and the balancing bleed.
    """

    def __init__(
        self,
        pack_cfg: PackConfig,
        params: EcmParameters,
        *,
        seed: int,
        bms: BmsConfig,
        pillar: Literal[1, 2],
    ) -> None:
        from virtual_bms.config import BmsConfig as VirtualBmsConfig
        from virtual_bms.estimators.sof import load_sof_table
        from virtual_bms.runtime import VirtualBms
        from virtual_bms.sources import TwinSource

        super().__init__(pack_cfg, params, seed=seed)
        self.sample_period_s = float(bms.sample_period_s)
        self._power_w = _Setpoint()
        self._ambient_c = _Setpoint(20.0)
        self.source: TwinSource = TwinSource(
            self.pack, load=self._power_w, ambient_c=self._ambient_c, seed=seed + 1
        )
        config = VirtualBmsConfig(
            device="scenario-bms",
            pillar=pillar,
            sample_period_s=self.sample_period_s,
            reporting_interval_s=bms.reporting_interval_s,
            soc_window=(bms.soc_min, bms.soc_max),
            # What the installer tells the BMS about the batch of retired cells.
            assumed_soh=pack_cfg.soh_mean,
            assumed_resistance_factor=pack_cfg.resistance_factor_mean,
        )
        self.bms: VirtualBms = VirtualBms(
            config,
            source=self.source,
            parameters=params,
            cells_per_group=pack_cfg.cells_per_group,
            sof=load_sof_table(bms.sof_table) if bms.sof_table else None,
        )
        # A first cycle before the pack moves, so the BMS's limits hold from the first step
        # (TwinSource.read gives the pack a 1 ms rest step to have voltages to read).
        self._actuation: Actuation = self.bms.step(self.source.read())
        self.source.apply(self._actuation)
        self.estimates = np.empty((0, len(BMS_COLUMNS)))
        """:data:`BMS_COLUMNS` of the last :meth:`run`, one row per step."""
        self._sq_error_sum = 0.0
        self._sq_error_n = 0

    def run(
        self, *, net_w: FloatArray, ambient_c: FloatArray, dt_s: float, control: ControlLimits
    ) -> FloatArray:
        period = self.sample_period_s
        cycles = round(dt_s / period)
        if cycles < 1 or abs(cycles * period - dt_s) > 1e-9:
            raise ScenarioError(
                "bms.sample_period_s", [f"must divide the step dt_s={dt_s:g}, got {period:g}"]
            )
        ctrl = control.as_array()
        eta, grid_limit, export_limit = (
            control.inverter_efficiency,
            control.grid_limit_w,
            control.export_limit_w,
        )
        cells = self.pack.cells
        source, bms = self.source, self.bms
        out = np.empty((net_w.size, len(OUTPUT_COLUMNS)))
        est = np.empty((net_w.size, len(BMS_COLUMNS)))
        self.fade_loss_wh = 0.0
        energy = cells.stored_energy_wh()
        for k in range(net_w.size):
            net = float(net_w[k])
            self._ambient_c.value = float(ambient_c[k])
            acc = np.zeros(len(OUTPUT_COLUMNS))
            v_lo = t_lo = math.inf
            v_hi = t_hi = -math.inf
            sq_error = 0.0
            limited = 0
            charge_limit = discharge_limit = math.inf
            for _ in range(cycles):
                last = source.last_step
                assert last is not None  # the first BMS cycle read the pack
                soc = last.cells.truth.soc
                volt = last.cells.voltage_v
                temp = last.cells.surface_temperature_c
                v_pack = float(last.voltage_v)
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
                wanted_dc = allowed / eta if allowed > 0 else allowed * eta
                p_dc = self._within_bms_limits(wanted_dc, v_pack)
                limited += p_dc != wanted_dc
                self._power_w.value = p_dc
                capacity = cells.capacity_ah
                source.advance(period)
                step = source.last_step
                assert step is not None
                after = cells.stored_energy_wh()
                faded = cells.capacity_ah
                # An ageing window that closed in this cycle shrank the capacity at constant
                # SoC: that part of the stored energy is capacity fade, not delivered energy.
                before_fade = after if np.array_equal(faded, capacity) else after * capacity / faded
                self.fade_loss_wh += float(before_fade.sum() - after.sum())
                released_w = float(energy.sum() - before_fade.sum()) * 3600.0 / period
                energy = after
                dc_w = float(step.current_a * step.voltage_v)
                ac_w = dc_w * eta if dc_w > 0 else dc_w / eta
                grid, unserved, curtailed = grid_exchange(
                    net - ac_w, grid_limit_w=grid_limit, export_limit_w=export_limit
                )
                acc[_C["battery_ac_w"]] += ac_w
                acc[_C["battery_dc_w"]] += dc_w
                acc[_C["pack_current_a"]] += step.current_a
                acc[_C["grid_w"]] += grid
                acc[_C["unserved_w"]] += unserved
                acc[_C["pv_curtailed_w"]] += curtailed
                acc[_C["joule_loss_w"]] += released_w - dc_w
                acc[_C["inverter_loss_w"]] += abs(ac_w - dc_w)
                acc[_C["request_w"]] += request
                v_cells = step.cells.voltage_v
                t_cells = step.cells.surface_temperature_c
                v_lo, v_hi = min(v_lo, float(v_cells.min())), max(v_hi, float(v_cells.max()))
                t_lo, t_hi = min(t_lo, float(t_cells.min())), max(t_hi, float(t_cells.max()))
                # ---- the BMS cycle on what the sensors read; it acts from the next cycle
                actuation = bms.step(source.read())
                source.apply(actuation)
                self._actuation = actuation
                error = bms.soc - source.truth().soc
                sq_error += float(np.mean(error**2))
                charge_limit = min(charge_limit, _limit(actuation.charge_limit_a))
                discharge_limit = min(discharge_limit, _limit(actuation.discharge_limit_a))
            row = out[k]
            row[:] = acc / cycles
            end = source.last_step
            assert end is not None
            row[_C["pack_voltage_v"]] = end.voltage_v
            row[_C["soc_mean"]] = float(end.cells.truth.soc.mean())
            row[_C["v_cell_min"]], row[_C["v_cell_max"]] = v_lo, v_hi
            row[_C["t_cell_min"]], row[_C["t_cell_max"]] = t_lo, t_hi
            self._sq_error_sum += sq_error
            self._sq_error_n += cycles
            est[k] = (
                float(np.mean(bms.soc)),
                sq_error / cycles,
                charge_limit,
                discharge_limit,
                float(np.mean(bms.soh_state.soh)),
                limited / cycles,
            )
        self.estimates = est
        return out

    def _within_bms_limits(self, power_w: float, pack_voltage_v: float) -> float:
        """DC power clipped to the BMS's current limits, as the source applies them."""
        act = self._actuation
        voltage = max(pack_voltage_v, 1e-3)
        if power_w < 0 and act.charge_limit_a is not None:
            power_w = max(power_w, -act.charge_limit_a * voltage)
        if power_w > 0 and act.discharge_limit_a is not None:
            power_w = min(power_w, act.discharge_limit_a * voltage)
        if not act.contactor_closed:
            power_w = 0.0
        return power_w

    def kpis(self) -> dict[str, float | int]:
        """The BMS's view at the end of the run, for ``summary.json``."""
        counters = self.bms.counters
        n = self._sq_error_n
        return {
            "bms_soc_rmse_pct": math.sqrt(self._sq_error_sum / n) * 100.0 if n else math.nan,
            "bms_events": counters.events,
            "bms_faults": counters.faults,
            "bms_soh_estimates": counters.soh_estimates,
            "bms_soh_estimate_mean": float(np.mean(self.bms.soh_state.soh)),
        }


def _limit(value: float | None) -> float:
    return math.inf if value is None else float(value)


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
            grid, unserved, curtailed = grid_exchange(
                float(net_w[k]) - ac_w, grid_limit_w=grid_limit, export_limit_w=export_limit
            )
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


def make_storage(
    model: str,
    pack_cfg: PackConfig,
    params: EcmParameters,
    *,
    seed: int,
    bms: BmsConfig | None = None,
    pillar: Literal[1, 2] = 2,
    fmu: FmuConfig | None = None,
) -> Storage:
    """The storage model named ``model`` (``"ecm"``, ``"pybamm"`` or ``"fmu"``); with
    ``bms`` enabled, the ECM pack (or the FMU string) with a virtual BMS of ``pillar``
    attached."""
    if model == "fmu":
        if fmu is None:
            raise ScenarioError(
                "--model fmu", ["the scenario needs an [fmu] table naming the FMU (path = ...)"]
            )
        from scenarios.fmu_storage import FmuStorage

        return FmuStorage(pack_cfg, params, fmu=fmu, seed=seed, bms=bms, pillar=pillar)
    if bms is not None and bms.enabled:
        if model != "ecm":
            raise ScenarioError(
                f"--model {model}",
                [
                    "bms.enabled needs the cell-by-cell ECM pack or an FMU: "
                    "run it with --model ecm or fmu"
                ],
            )
        return BmsStorage(pack_cfg, params, seed=seed, bms=bms, pillar=pillar)
    if model == "ecm":
        return EcmStorage(pack_cfg, params, seed=seed)
    if model == "pybamm":
        return PybammStorage(pack_cfg, params)
    raise ScenarioError("--model", [f"must be ecm, pybamm or fmu, got {model!r}"])
