"""Modules and packs of ECM cells: series/parallel topology, current split, balancing.

Layout: a pack has ``strings_in_parallel`` strings; each string is ``modules_in_series``
modules of ``groups_per_module`` series groups of ``cells_per_group`` parallel cells.
Cell ``i`` sits at ``(string, series group, parallel cell)`` in a C-ordered reshape of
``(strings, modules * groups_per_module, cells_per_group)``.

Current split: over one step every cell behaves as ``V = E - Z * I`` (see
:meth:`twin.models.ecm.EcmTwin.thevenin`). Parallel cells share one terminal voltage,
groups in a string share the string current and strings share the pack voltage, which
gives a closed-form split: cells with lower resistance or higher OCV take more current,
and the cell currents always sum to the pack current.

Balancing currents (positive = drawn from the cell) flow between a cell and its
balancer, not through the pack terminals: a passive bypass draws positive current, an
active balancer moves charge from some cells (positive) to others (negative).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from twin.errors import TwinInputError
from twin.models.base import CellStep, FloatArray, TwinEvent, as_cell_array, check_dt
from twin.models.ecm import CellInit, EcmOptions, EcmTwin
from twin.models.ecm_params import EcmParameters

__all__ = ["Pack", "PackStep", "PackTopology", "SecondLifeSpread"]


_PACK_RE = re.compile(r"^(?:(\d+)x)?(\d+)s(\d+)p$")


@dataclass(frozen=True)
class PackTopology:
    """How cells are wired. Defaults: the domestic 16s1p pack."""

    cells_per_group: int = 1
    groups_per_module: int = 16
    modules_in_series: int = 1
    strings_in_parallel: int = 1

    def __post_init__(self) -> None:
        for name in (
            "cells_per_group",
            "groups_per_module",
            "modules_in_series",
            "strings_in_parallel",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise TwinInputError(f"PackTopology.{name} must be an integer >= 1, got {value!r}")

    @classmethod
    def parse(cls, spec: str, *, strings: int = 1) -> PackTopology:
        """``"16s1p"`` or ``"4x14s2p"`` (four 14s2p modules in series), plus parallel strings.

        Raises:
            TwinInputError: A spec in another form, with an example of the right one.
        """
        m = _PACK_RE.match(spec.strip().lower())
        if not m:
            raise TwinInputError(
                f"cannot read pack {spec!r}; write e.g. '16s1p' or '4x14s2p' "
                "(modules x series x parallel)"
            )
        return cls(
            modules_in_series=int(m[1] or 1),
            groups_per_module=int(m[2]),
            cells_per_group=int(m[3]),
            strings_in_parallel=strings,
        )

    @property
    def groups_per_string(self) -> int:
        return self.modules_in_series * self.groups_per_module

    @property
    def n_cells(self) -> int:
        return self.strings_in_parallel * self.groups_per_string * self.cells_per_group

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(strings, series groups per string, cells per group)``."""
        return (self.strings_in_parallel, self.groups_per_string, self.cells_per_group)

    def describe(self) -> str:
        s = f"{self.groups_per_module}s{self.cells_per_group}p"
        if self.modules_in_series > 1:
            s = f"{self.modules_in_series} x {s} modules"
        if self.strings_in_parallel > 1:
            s = f"{self.strings_in_parallel} strings of {s}"
        return s


@dataclass(frozen=True)
class SecondLifeSpread:
    """Cell-to-cell variation of retired EV cells (truncated normal distributions).

    Attributes:
        soh_mean: Mean usable capacity relative to nominal.
        soh_std: Standard deviation of the SoH.
        soh_range: Hard bounds of the SoH draw.
        resistance_factor_mean: Mean resistance relative to the tables (aged cells > 1).
        resistance_factor_std: Its standard deviation.
        ageing_rate_std: Standard deviation of the per-cell ageing rate factor (mean 1).
        soc_std: Spread of the initial SoC around the pack's initial SoC.
    """

    soh_mean: float = 0.8
    soh_std: float = 0.05
    soh_range: tuple[float, float] = (0.7, 0.9)
    resistance_factor_mean: float = 1.3
    resistance_factor_std: float = 0.1
    ageing_rate_std: float = 0.1
    soc_std: float = 0.01

    def __post_init__(self) -> None:
        lo, hi = self.soh_range
        if not 0 < lo <= hi:
            raise TwinInputError(
                f"SecondLifeSpread.soh_range must satisfy 0 < lo <= hi, got {self.soh_range}"
            )
        for name in ("soh_std", "resistance_factor_std", "ageing_rate_std", "soc_std"):
            if getattr(self, name) < 0:
                raise TwinInputError(
                    f"SecondLifeSpread.{name} must be >= 0, got {getattr(self, name)}"
                )
        if self.resistance_factor_mean <= 0:
            raise TwinInputError(
                "SecondLifeSpread.resistance_factor_mean must be > 0, "
                f"got {self.resistance_factor_mean}"
            )

    def draw(
        self, n_cells: int, *, soc: float, temperature_c: float, rng: np.random.Generator
    ) -> CellInit:
        """Draw one :class:`CellInit` for ``n_cells`` cells."""
        lo, hi = self.soh_range
        soh = np.clip(rng.normal(self.soh_mean, self.soh_std, n_cells), lo, hi)
        rf = np.clip(
            rng.normal(self.resistance_factor_mean, self.resistance_factor_std, n_cells), 0.5, None
        )
        rate = np.clip(rng.normal(1.0, self.ageing_rate_std, n_cells), 0.2, None)
        socs = np.clip(rng.normal(soc, self.soc_std, n_cells), 0.0, 1.0)
        return CellInit(
            soc=socs,
            temperature_c=temperature_c,
            soh=soh,
            resistance_factor=rf,
            ageing_rate_factor=rate,
        )


@dataclass(frozen=True, slots=True)
class PackStep:
    """One pack step: terminal quantities plus every cell's step."""

    time_s: float
    current_a: float
    voltage_v: float
    string_currents_a: FloatArray
    cells: CellStep
    balancing_current_a: FloatArray
    contactor_closed: bool
    events: tuple[TwinEvent, ...] = field(default=())

    @property
    def power_w(self) -> float:
        return self.current_a * self.voltage_v


class Pack:
    """A pack of ECM cells with a contactor and per-cell balancing inputs.

    Args:
        params: Cell parameter set.
        topology: Wiring.
        spread: Second-life variation; ``None`` makes every cell identical.
        soc: Initial pack SoC.
        temperature_c: Initial cell temperature.
        options: ECM options for all cells.
        conduction_w_per_k: Thermal conductance between neighbouring cells of a module.
        seed: Seed of the spread draw.
    """

    def __init__(
        self,
        params: EcmParameters,
        *,
        topology: PackTopology | None = None,
        spread: SecondLifeSpread | None = None,
        soc: float = 0.5,
        temperature_c: float = 25.0,
        options: EcmOptions | None = None,
        conduction_w_per_k: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.topology = topology or PackTopology()
        if conduction_w_per_k < 0:
            raise TwinInputError(f"conduction_w_per_k must be >= 0, got {conduction_w_per_k}")
        n = self.topology.n_cells
        self._rng = np.random.default_rng(seed)
        init = (
            spread.draw(n, soc=soc, temperature_c=temperature_c, rng=self._rng)
            if spread
            else CellInit(soc=soc, temperature_c=temperature_c)
        )
        self.spread = spread
        self.cells = EcmTwin(params, n_cells=n, init=init, options=options)
        self.conduction_w_per_k = conduction_w_per_k
        self._balancing = np.zeros(n)
        self._contactor_closed = True
        self._pending: list[TwinEvent] = []

    # --------------------------------------------------------------- controls
    @property
    def n_cells(self) -> int:
        return self.topology.n_cells

    @property
    def contactor_closed(self) -> bool:
        return self._contactor_closed

    def open_contactor(self, reason: str = "bms") -> None:
        """Open the main contactor: no pack current flows until it is closed again."""
        if self._contactor_closed:
            self._contactor_closed = False
            self._pending.append(
                TwinEvent(
                    time_s=self.cells.time_s,
                    kind=f"contactor_open:{reason}",
                    cells=(),
                    values=(),
                    limit=0.0,
                )
            )

    def close_contactor(self) -> None:
        self._contactor_closed = True

    def set_balancing(self, current_a: ArrayLike) -> None:
        """Per-cell balancing current (positive = drawn from the cell), held until changed."""
        self._balancing = as_cell_array(
            current_a, n_cells=self.n_cells, name="balancing current_a", source="Pack.set_balancing"
        ).copy()

    @property
    def balancing_current_a(self) -> FloatArray:
        return self._balancing.copy()

    def replace_cells(self, cells: list[int] | np.ndarray, *, init: CellInit | None = None) -> None:
        """Swap cells (e.g. an aged cell for a fresher one). Without ``init`` the new cells
        are drawn from the pack's spread at the pack's present mean SoC."""
        idx = np.asarray(cells, dtype=np.intp)
        if init is None:
            mean_soc = float(self.cells.soc.mean())
            temp = float(self.cells.temperature_c.mean())
            init = (
                self.spread.draw(idx.size, soc=mean_soc, temperature_c=temp, rng=self._rng)
                if self.spread
                else CellInit(soc=mean_soc, temperature_c=temp)
            )
        self.cells.replace_cells(idx, init=init)
        self._pending.append(
            TwinEvent(
                time_s=self.cells.time_s,
                kind="cells_replaced",
                cells=tuple(int(i) for i in idx),
                values=(),
                limit=0.0,
            )
        )

    # ---------------------------------------------------------------- physics
    def _split(
        self, dt: float, pack_current_sign: float
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
        """Per-cell (E', Z) and per-string (E, Z) of the coming step."""
        flags = self.cells._direction_tables(np.full(self.n_cells, pack_current_sign))
        e, z = self.cells.thevenin(dt_s=dt, charging=flags)
        e_bal = (e - z * self._balancing).reshape(self.topology.shape)
        g = 1.0 / z.reshape(self.topology.shape)
        g_sum = g.sum(axis=2)
        e_group = (e_bal * g).sum(axis=2) / g_sum
        z_group = 1.0 / g_sum
        return e_bal, g, e_group, z_group, np.stack((e_group.sum(axis=1), z_group.sum(axis=1)))

    def _cell_currents(self, pack_current: float, dt: float) -> tuple[FloatArray, FloatArray]:
        e_bal, g, e_group, z_group, (e_str, z_str) = self._split(dt, float(np.sign(pack_current)))
        g_str = 1.0 / z_str
        v_pack = (np.sum(e_str * g_str) - pack_current) / np.sum(g_str)
        i_str = (e_str - v_pack) * g_str
        v_group = e_group - z_group * i_str[:, None]
        branch = (e_bal - v_group[:, :, None]) * g
        return branch.reshape(-1) + self._balancing, i_str

    def _conduction_heat(self) -> FloatArray | None:
        if self.conduction_w_per_k == 0.0:
            return None
        t = self.cells.temperature_c
        per_module = self.topology.groups_per_module * self.topology.cells_per_group
        chain = t.reshape(-1, per_module)
        flow = self.conduction_w_per_k * np.diff(chain, axis=1)  # heat from i+1 into i
        heat = np.zeros_like(chain)
        heat[:, :-1] += flow
        heat[:, 1:] -= flow
        return heat.reshape(-1)

    def _finish(self, cells_step: CellStep, i_pack: float, i_str: FloatArray) -> PackStep:
        v_cells = cells_step.voltage_v.reshape(self.topology.shape)
        v_pack = float(v_cells.mean(axis=2).sum(axis=1).mean())
        events = (*self._pending, *cells_step.events)
        self._pending = []
        return PackStep(
            time_s=cells_step.time_s,
            current_a=i_pack,
            voltage_v=v_pack,
            string_currents_a=i_str,
            cells=cells_step,
            balancing_current_a=self._balancing.copy(),
            contactor_closed=self._contactor_closed,
            events=events,
        )

    def _check(
        self, value: float, name: str, dt_s: float, ambient_c: ArrayLike
    ) -> tuple[float, float, FloatArray]:
        dt = check_dt(dt_s, source="Pack.step")
        x = float(value)
        if not np.isfinite(x):
            raise TwinInputError(f"pack {name} must be finite, got {value!r} (Pack.step)")
        amb = as_cell_array(ambient_c, n_cells=self.n_cells, name="ambient_c", source="Pack.step")
        if self.conduction_w_per_k:
            c = self.cells.params.thermal.heat_capacity_j_per_k
            if 2.0 * self.conduction_w_per_k * dt / c > 1.0:
                raise TwinInputError(
                    f"dt_s={dt} is too long for cell-to-cell conduction "
                    f"{self.conduction_w_per_k} W/K "
                    f"(explicit coupling needs dt_s <= {c / (2 * self.conduction_w_per_k):.0f} s)"
                )
        return x, dt, amb

    def step(self, *, current_a: float, dt_s: float, ambient_c: ArrayLike) -> PackStep:
        """Hold the pack current (positive = discharge) for ``dt_s``; zero if the
        contactor is open."""
        i_pack, dt, amb = self._check(current_a, "current_a", dt_s, ambient_c)
        if not self._contactor_closed:
            i_pack = 0.0
        currents, i_str = self._cell_currents(i_pack, dt)
        out = self.cells._advance(currents, dt, amb, self._conduction_heat())
        return self._finish(out, i_pack, i_str)

    def step_power(self, *, power_w: float, dt_s: float, ambient_c: ArrayLike) -> PackStep:
        """Hold the pack power (positive = discharge). Power beyond what the pack can
        deliver is limited to its maximum and reported as ``power_limited``."""
        p, dt, amb = self._check(power_w, "power_w", dt_s, ambient_c)
        if not self._contactor_closed or p == 0.0:
            return self.step(current_a=0.0, dt_s=dt, ambient_c=amb)
        *_, (e_str, z_str) = self._split(dt, float(np.sign(p)))
        g = 1.0 / z_str
        z_pack = 1.0 / g.sum()
        e_pack = float(np.sum(e_str * g) * z_pack)
        disc = e_pack * e_pack - 4.0 * z_pack * p
        limited = disc < 0
        i_pack = (e_pack - np.sqrt(max(disc, 0.0))) / (2.0 * z_pack)
        if limited:
            self._pending.append(
                TwinEvent(
                    time_s=self.cells.time_s + dt,
                    kind="power_limited",
                    cells=(),
                    values=(p,),
                    limit=e_pack**2 / (4 * z_pack),
                )
            )
        currents, i_str = self._cell_currents(float(i_pack), dt)
        out = self.cells._advance(currents, dt, amb, self._conduction_heat())
        return self._finish(out, float(i_pack), i_str)
