"""Vectorised equivalent-circuit twin: R0 + 1..4 RC pairs, lumped thermal, ageing.

Every quantity is an array over cells, so a fleet of thousands of cells steps with a
few dozen numpy operations. Within a step the current is held constant, and the RC
voltages, the SoC and the temperature are advanced with their exact solutions for
that piecewise-constant input (zero-order hold), so results barely depend on the step
length. R/C values are looked up (bilinear in SoC and temperature, by current
direction) at the start of the step; OCV at the end.

Heat (Bernardi, positive current = discharge)::

    q = I * (R0 * I + sum_k v_k) - I * T_K * dOCV/dT

where the RC voltages ``v_k`` are averaged exactly over the step, and the lumped
cell temperature relaxes to ``T_amb + q / hA`` with time constant ``C_th / hA``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from twin.errors import TwinInputError
from twin.models.ageing import AgeingModel, AgeingState, NoAgeing, StressWindow
from twin.models.base import (
    CellStep,
    CellTruth,
    FloatArray,
    LimitCheck,
    LimitMonitor,
    TwinEvent,
    as_cell_array,
    check_dt,
)
from twin.models.ecm_params import CHARGE, DISCHARGE, MAX_RC_PAIRS, EcmParameters

__all__ = ["CellInit", "EcmOptions", "EcmTwin"]

_KELVIN = 273.15
_MAX_GRID = 401


@dataclass(frozen=True)
class CellInit:
    """Initial state of each cell: scalars apply to all cells, arrays give one per cell.

    Attributes:
        soc: State of charge, 0..1.
        temperature_c: Cell temperature.
        soh: Usable capacity relative to the set's nominal capacity (second life: 0.7-0.9).
        resistance_factor: Resistance relative to the set's tables (ageing, spread).
        ageing_rate_factor: Multiplies every ageing increment of the cell.
    """

    soc: ArrayLike = 0.5
    temperature_c: ArrayLike = 25.0
    soh: ArrayLike = 1.0
    resistance_factor: ArrayLike = 1.0
    ageing_rate_factor: ArrayLike = 1.0


@dataclass(frozen=True)
class EcmOptions:
    """Model options.

    Attributes:
        n_rc: RC pairs to use (at most the set's); ``None`` uses all of them.
        ageing: Ageing law name (``"auto"`` = the set's chemistry, ``"none"`` = off) or an
            :class:`~twin.models.ageing.AgeingModel` instance.
        ageing_interval_s: How often accumulated stress is turned into fade and growth.
        thermal: Lumped thermal model on; if off, cells sit at ambient temperature.
        coulombic_efficiency: Fraction of charging current stored.
        reversal_threshold_c_rate: |current| below this (in C) is rest for cycle counting.
        prior_calendar_share: Share of a second-life cell's lost capacity (1 - SoH) put
            down to calendar ageing, the rest to cycling. It places the cell on its fade
            curves: power laws slow down with accumulated loss, so a cell at 80 % SoH fades
            much more slowly than a fresh one under the same stress.
    """

    n_rc: int | None = None
    ageing: str | AgeingModel = "auto"
    ageing_interval_s: float = 3600.0
    thermal: bool = True
    coulombic_efficiency: float = 1.0
    reversal_threshold_c_rate: float = 0.01
    prior_calendar_share: float = 0.5


def _check_cell_init(
    *,
    soh: FloatArray,
    soc: FloatArray,
    resistance_factor: FloatArray,
    rate: FloatArray,
    source: str,
) -> None:
    for name, arr in (("soh", soh), ("resistance_factor", resistance_factor)):
        if np.any(arr <= 0):
            i = int(np.flatnonzero(arr <= 0)[0])
            raise TwinInputError(
                f"{source}: {name} must be > 0 (a capacity or resistance cannot be negative "
                f"or zero), got {arr[i]} for cell {i}"
            )
    if np.any(rate < 0):
        raise TwinInputError(f"{source}: ageing_rate_factor must be >= 0")
    bad = (soc < 0) | (soc > 1)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise TwinInputError(f"{source}: soc must be within 0..1, got {soc[i]} for cell {i}")


def _uniform(grid: FloatArray) -> FloatArray:
    if grid.size == 1:
        return grid.copy()
    n = int(min(_MAX_GRID, max(grid.size, round((grid[-1] - grid[0]) / np.diff(grid).min()) + 1)))
    return np.linspace(grid[0], grid[-1], n)


def _resolve_ageing(ageing: str | AgeingModel, chemistry: str) -> AgeingModel:
    if not isinstance(ageing, str):
        return ageing
    if ageing == "none":
        return NoAgeing()
    from twin.models.ageing_models import ageing_model

    return ageing_model(chemistry if ageing == "auto" else ageing)


class EcmTwin:
    """A fleet of ``n_cells`` equivalent-circuit cells stepped together.

    Example:
        >>> from twin.params import load_parameter_set
        >>> twin = EcmTwin(load_parameter_set("ecm_example"), n_cells=1000)
        >>> out = twin.step(current_a=50.0, dt_s=1.0, ambient_c=25.0)
    """

    def __init__(
        self,
        params: EcmParameters,
        *,
        n_cells: int = 1,
        init: CellInit | None = None,
        options: EcmOptions | None = None,
    ) -> None:
        if n_cells < 1:
            raise TwinInputError(f"n_cells must be >= 1, got {n_cells}")
        self.params = params
        self.options = options or EcmOptions()
        self._init = init or CellInit()
        n_rc = params.n_rc if self.options.n_rc is None else self.options.n_rc
        if not 1 <= n_rc <= min(params.n_rc, MAX_RC_PAIRS):
            raise TwinInputError(
                f"options.n_rc must be between 1 and {params.n_rc} for parameter set "
                f"{params.name!r}, got {n_rc}"
            )
        if not 0 <= self.options.prior_calendar_share <= 1:
            raise TwinInputError(
                "options.prior_calendar_share must be within 0..1, got "
                f"{self.options.prior_calendar_share}"
            )
        if not 0 < self.options.coulombic_efficiency <= 1:
            raise TwinInputError(
                "options.coulombic_efficiency must be in (0, 1], got "
                f"{self.options.coulombic_efficiency}"
            )
        check_dt(self.options.ageing_interval_s, source="options.ageing_interval_s")
        self.n_rc = n_rc
        self._n = n_cells
        self._ageing = _resolve_ageing(self.options.ageing, params.chemistry)
        self._build_tables()
        self.reset()

    # ------------------------------------------------------------------ tables
    def _build_tables(self) -> None:
        p = self.params
        soc = _uniform(p.soc_grid)
        temp = _uniform(p.temperature_grid_c)
        self._s0, self._ns = float(soc[0]), soc.size
        self._inv_ds = (soc.size - 1) / (soc[-1] - soc[0])
        self._t0, self._nt = float(temp[0]), temp.size
        self._inv_dt = (temp.size - 1) / (temp[-1] - temp[0]) if temp.size > 1 else 0.0

        def resample(table: FloatArray) -> FloatArray:
            out = np.empty((2, temp.size, soc.size))
            for d in (DISCHARGE, CHARGE):
                by_soc = np.array([np.interp(soc, p.soc_grid, row) for row in table[d]])
                for j in range(soc.size):
                    out[d, :, j] = np.interp(temp, p.temperature_grid_c, by_soc[:, j])
            return out

        cols = [resample(p.r0_ohm)]
        cols += [resample(p.rc_resistance_ohm[k]) for k in range(self.n_rc)]
        cols += [resample(p.rc_resistance_ohm[k] * p.rc_capacitance_f[k]) for k in range(self.n_rc)]
        # Bilinear coefficients per grid cell, so value = c0 + c1 fs + c2 ft + c3 fs ft.
        # Layout (4 * n_par, 2 * nT * nS): one gather along axis 1 gives contiguous
        # (n_par, N) blocks, which keeps every later operation on contiguous memory.
        v = np.stack(cols)  # (n_par, 2, nT, nS)
        d_s = np.zeros_like(v)
        d_s[..., :-1] = np.diff(v, axis=-1)
        d_t = np.zeros_like(v)
        d_t[:, :, :-1, :] = np.diff(v, axis=-2)
        d_st = np.zeros_like(v)
        d_st[:, :, :-1, :] = np.diff(d_s, axis=-2)
        n_par = v.shape[0]
        self._table = np.ascontiguousarray(
            np.concatenate([c.reshape(n_par, -1) for c in (v, d_s, d_t, d_st)])
        )
        ocv = np.interp(soc, p.soc_grid, p.ocv_v)
        self._ocv = ocv
        self._ocv_step = np.append(np.diff(ocv), 0.0)  # per grid index
        self._dudt = np.interp(soc, p.soc_grid, p.entropic_v_per_k)
        self._dudt_step = np.append(np.diff(self._dudt), 0.0)
        # Energy content: integral of the reference OCV over SoC from the grid's start
        # (V per unit SoC; times capacity in Ah gives Wh). Exact for the linear segments.
        seg = 0.5 * (ocv[1:] + ocv[:-1]) / self._inv_ds
        self._ocv_integral = np.concatenate(([0.0], np.cumsum(seg)))
        self._ocv_table = np.ascontiguousarray(
            np.stack((self._ocv, self._ocv_step, self._dudt, self._dudt_step))
        )

    def _soc_index(self, soc: FloatArray) -> tuple[np.ndarray, FloatArray]:
        x = (soc - self._s0) * self._inv_ds
        np.clip(x, 0.0, self._ns - 1.000001, out=x)
        i = x.astype(np.intp)
        return i, x - i

    def _lookup(
        self, soc: FloatArray, temperature_c: FloatArray, charging: np.ndarray
    ) -> FloatArray:
        """R0, R1..Rn, tau1..taun at each cell's state, shape ``(1 + 2 n_rc, N)``."""
        return self._lookup_at(*self._soc_index(soc), temperature_c, charging)

    def _lookup_at(
        self,
        i_s: np.ndarray,
        f_s: FloatArray,
        temperature_c: FloatArray,
        charging: np.ndarray,
        *,
        cached: bool = False,
    ) -> FloatArray:
        """As :meth:`_lookup`, from a precomputed SoC grid index and fraction.

        With ``cached``, the gathered table coefficients are kept per cell and only the
        cells whose grid cell changed are gathered again (a cell at 1C crosses a 1 % SoC
        grid line about once a minute). The tables are immutable, so this is exact.
        """
        idx = charging * (self._nt * self._ns) + i_s
        if self._nt > 1:
            x = (temperature_c - self._t0) * self._inv_dt
            np.clip(x, 0.0, self._nt - 1.000001, out=x)
            i_t = x.astype(np.intp)
            f_t = x - i_t
            idx += i_t * self._ns
        if cached:
            changed = idx != self._gather_idx
            if changed.any():
                cols = np.flatnonzero(changed)
                self._gather[:, cols] = np.take(self._table, idx[cols], axis=1)
                self._gather_idx[cols] = idx[cols]
            g = self._gather.reshape(4, -1, self._n)
            # (n_par, N) blocks exceed malloc's mmap threshold: fresh temporaries would
            # cost a page-faulting allocation each, so the hot path reuses two buffers.
            out, tmp = self._buf_out, self._buf_tmp
        else:
            g = np.take(self._table, idx, axis=1, mode="clip").reshape(4, -1, self._n)
            out, tmp = np.empty(g.shape[1:]), np.empty(g.shape[1:])
        if self._nt > 1:
            # (c0 + c2 ft) + fs (c1 + c3 ft): bilinear in SoC and temperature.
            np.multiply(g[2], f_t, out=out)
            np.add(out, g[0], out=out)
            np.multiply(g[3], f_t, out=tmp)
            np.add(tmp, g[1], out=tmp)
            np.multiply(tmp, f_s, out=tmp)
            np.add(out, tmp, out=out)
        else:
            np.multiply(g[1], f_s, out=out)
            np.add(out, g[0], out=out)
        return out

    def _ocv_at(self, soc: FloatArray, temperature_c: FloatArray) -> tuple[FloatArray, FloatArray]:
        """OCV and dOCV/dT at each cell's SoC and temperature."""
        ocv, dudt = self._ocv_at_index(*self._soc_index(soc))
        ocv += dudt * (temperature_c - self.params.reference_temperature_c)
        return ocv, dudt

    def _ocv_at_index(
        self, i: np.ndarray, f: FloatArray, *, cached: bool = False
    ) -> tuple[FloatArray, FloatArray]:
        """OCV at the reference temperature and dOCV/dT, from a SoC grid index."""
        if cached:
            changed = i != self._ocv_gather_idx
            if changed.any():
                cols = np.flatnonzero(changed)
                self._ocv_gather[:, cols] = np.take(self._ocv_table, i[cols], axis=1)
                self._ocv_gather_idx[cols] = i[cols]
            g = self._ocv_gather
        else:
            g = np.take(self._ocv_table, i, axis=1, mode="clip")
        ocv = g[1] * f
        ocv += g[0]
        dudt = g[3] * f
        dudt += g[2]
        return ocv, dudt

    # ------------------------------------------------------------------- state
    @property
    def n_cells(self) -> int:
        return self._n

    @property
    def time_s(self) -> float:
        return self._time_s

    @property
    def ageing_model(self) -> AgeingModel:
        return self._ageing

    @property
    def ageing_state(self) -> AgeingState:
        return self._ageing_state

    @property
    def soc(self) -> FloatArray:
        """True SoC per cell (a copy)."""
        return self._soc.copy()

    @property
    def temperature_c(self) -> FloatArray:
        return self._temp.copy()

    @property
    def capacity_ah(self) -> FloatArray:
        """Present usable capacity per cell (a copy)."""
        return self._capacity.copy()

    @property
    def resistance_factor(self) -> FloatArray:
        """Present resistance relative to the tables (spread x ageing), a copy."""
        return self._r_factor.copy()

    @property
    def rc_voltages_v(self) -> FloatArray:
        """Voltage across each RC pair, shape ``(n_rc, N)`` (a copy)."""
        return self._v_rc.copy()

    def _cell_array(self, value: ArrayLike, name: str) -> FloatArray:
        return as_cell_array(value, n_cells=self._n, name=name, source="CellInit")

    def reset(self) -> CellStep:
        """Return every cell to its :class:`CellInit` state."""
        init, n = self._init, self._n
        self._soc = self._cell_array(init.soc, "soc").copy()
        self._temp = self._cell_array(init.temperature_c, "temperature_c").copy()
        soh = self._cell_array(init.soh, "soh")
        rf = self._cell_array(init.resistance_factor, "resistance_factor")
        rate = self._cell_array(init.ageing_rate_factor, "ageing_rate_factor")
        _check_cell_init(soh=soh, soc=self._soc, resistance_factor=rf, rate=rate, source="CellInit")
        self._q_start = self.params.nominal_capacity_ah * np.maximum(soh, 1.0)
        self._r_start = rf.copy()
        self._rate = rate.copy()
        self._ageing_state = self._prior_ageing(soh)
        self._apply_ageing()
        self._v_rc = np.zeros((self.n_rc, n))
        # Per-cell caches of gathered table coefficients (see _lookup_at); -1 = empty.
        self._gather = np.empty((self._table.shape[0], n))
        self._gather_idx = np.full(n, -1, dtype=np.intp)
        self._buf_out = np.empty((self._table.shape[0] // 4, n))
        self._buf_tmp = np.empty_like(self._buf_out)
        self._ocv_gather = np.empty((4, n))
        self._ocv_gather_idx = np.full(n, -1, dtype=np.intp)
        self._time_s = 0.0
        self._reset_window()
        self._last_dir = np.zeros(n)  # sign of the last non-rest current
        self._soc_turn = self._soc.copy()
        self._run_ah = np.zeros(n)
        self._run_i_ah = np.zeros(n)
        self._limits = LimitMonitor()
        self._last_current = np.zeros(n)
        ocv, _ = self._ocv_at(self._soc, self._temp)
        self._voltage = ocv
        for arr in (self._soc, self._temp, self._voltage):
            arr.setflags(write=False)
        return self._report(self.ecm_parameters_now()["r0_ohm"], ())

    def _prior_ageing(self, soh: FloatArray) -> AgeingState:
        """Ageing state of cells that have already lost ``1 - soh`` of their capacity."""
        state = AgeingState.fresh(soh.size)
        lost = 1.0 - np.minimum(soh, 1.0)
        share = self.options.prior_calendar_share
        state.capacity_loss_calendar[:] = share * lost
        state.capacity_loss_cycle[:] = (1.0 - share) * lost
        return state

    def _apply_ageing(self) -> None:
        self._threshold_a = self.options.reversal_threshold_c_rate * self._q_start
        self._capacity = self._q_start * self._ageing_state.capacity_fraction
        self._capacity.setflags(write=False)
        self._r_factor = self._r_start * self._ageing_state.resistance_factor

    def _reset_window(self) -> None:
        n = self._n
        self._w_elapsed = 0.0
        self._w_soc = np.zeros(n)
        self._w_temp = np.zeros(n)
        self._w_ah = np.zeros(n)
        self._w_dod_ah = np.zeros(n)
        self._w_crate_ah = np.zeros(n)
        self._w_cyc_soc_ah = np.zeros(n)

    def replace_cells(self, cells: list[int] | np.ndarray, *, init: CellInit) -> None:
        """Swap ``cells`` for fresh ones described by ``init`` (scalars or per-replaced-cell).

        The replaced cells start with the ageing history their SoH implies and zero RC
        voltages.
        """
        idx = np.asarray(cells, dtype=np.intp)
        if idx.size and (idx.min() < 0 or idx.max() >= self._n):
            raise TwinInputError(
                f"replace_cells: cell index out of range 0..{self._n - 1}: {cells}"
            )
        m = idx.size

        def arr(value: ArrayLike, name: str) -> FloatArray:
            return as_cell_array(value, n_cells=m, name=name, source="replace_cells init")

        soh = arr(init.soh, "soh")
        soc = arr(init.soc, "soc")
        rf = arr(init.resistance_factor, "resistance_factor")
        rate = arr(init.ageing_rate_factor, "ageing_rate_factor")
        _check_cell_init(soh=soh, soc=soc, resistance_factor=rf, rate=rate, source="replace_cells")
        # Steps hand these arrays out read-only: copy, change, freeze.
        self._soc = self._soc.copy()
        self._soc[idx] = soc
        self._temp = self._temp.copy()
        self._temp[idx] = arr(init.temperature_c, "temperature_c")
        self._soc.setflags(write=False)
        self._temp.setflags(write=False)
        self._q_start[idx] = self.params.nominal_capacity_ah * np.maximum(soh, 1.0)
        self._r_start[idx] = rf
        self._rate[idx] = rate
        self._ageing_state = self._ageing_state.replace_cells(idx, self._prior_ageing(soh))
        self._apply_ageing()
        # The new cells inherit none of the old cells' stress in the open ageing window.
        self._w_ah[idx] = 0.0
        self._w_dod_ah[idx] = 0.0
        self._w_crate_ah[idx] = 0.0
        self._w_cyc_soc_ah[idx] = 0.0
        self._w_soc[idx] = self._soc[idx] * self._w_elapsed
        self._w_temp[idx] = self._temp[idx] * self._w_elapsed
        self._limits.forget_cells(idx)
        self._v_rc[:, idx] = 0.0
        self._last_dir[idx] = 0
        self._soc_turn[idx] = self._soc[idx]
        self._run_ah[idx] = 0.0
        self._run_i_ah[idx] = 0.0

    # ----------------------------------------------------------------- physics
    def _direction_tables(self, current: FloatArray) -> np.ndarray:
        """Which direction's tables apply: charge while charging, and during a rest
        those of the direction the cell last moved in (relaxation after a charge
        pulse follows the charge time constants)."""
        charging = current < 0
        resting = current == 0.0
        if resting.any():
            charging |= resting & (self._last_dir < 0)
        return charging

    def thevenin(self, *, dt_s: float, charging: np.ndarray) -> tuple[FloatArray, FloatArray]:
        """Linear model of the coming step: ``V_end = E - Z * I`` per cell.

        Exact for the RC pairs and R0; the OCV change over the step enters ``Z`` through
        the local OCV slope. Used to solve power/voltage-controlled steps and the
        current split of parallel cells.
        """
        i_s, f_s = self._soc_index(self._soc)
        p = self._lookup_at(i_s, f_s, self._temp, charging)
        n = self.n_rc
        rf = self._r_factor
        z = p[0] * rf
        e, dudt = self._ocv_at_index(i_s, f_s)
        e += dudt * (self._temp - self.params.reference_temperature_c)
        for k in range(n):
            a = np.exp(-dt_s / p[1 + n + k])
            e = e - a * self._v_rc[k]
            z = z + p[1 + k] * rf * (1.0 - a)
        docv_dsoc = self._ocv_step[i_s] * self._inv_ds
        z = z + docv_dsoc * dt_s / (3600.0 * self._capacity)
        return e, z

    def _advance(
        self,
        current: FloatArray,
        dt: float,
        ambient: FloatArray,
        extra_heat_w: FloatArray | None = None,
    ) -> CellStep:
        n = self.n_rc
        charging = self._direction_tables(current)
        stored = (
            current
            if self.options.coulombic_efficiency == 1.0
            else np.where(charging, current * self.options.coulombic_efficiency, current)
        )
        soc_start = self._soc
        temp_start = self._temp
        soc_end = soc_start - stored * (dt / 3600.0) / self._capacity
        # Zero-order hold: R, C (and OCV) are taken at the end-of-step SoC, so one grid
        # index serves the R/C tables and the OCV curve.
        i_s, f_s = self._soc_index(soc_end)
        p = self._lookup_at(i_s, f_s, temp_start, charging, cached=True)
        rf = self._r_factor
        r0 = p[0] * rf
        r0_drop = r0 * current
        # All RC pairs at once, as (n_rc, N) blocks.
        tau = p[1 + n :]
        r_i = p[1 : 1 + n] * (rf * current)
        a = np.exp(-dt / tau)
        dv = self._v_rc - r_i
        self._v_rc = r_i + dv * a
        # Mean RC voltage over the step (for heat) and the voltage at its end.
        mean_rc = r_i + dv * (tau * (1.0 / dt)) * (1.0 - a)
        ocv_ref, dudt = self._ocv_at_index(i_s, f_s, cached=True)
        if self.options.thermal:
            # Exact relaxation towards the steady state for this step's heat.
            th = self.params.thermal
            heat = current * (r0_drop + mean_rc.sum(axis=0) - (temp_start + _KELVIN) * dudt)
            if extra_heat_w is not None:
                heat += extra_heat_w
            t_inf = ambient + heat * (1.0 / th.heat_transfer_w_per_k)
            decay = np.exp(-dt * th.heat_transfer_w_per_k / th.heat_capacity_j_per_k)
            temp_end = t_inf + (temp_start - t_inf) * decay
        else:
            temp_end = ambient.copy()
        ocv_end = ocv_ref + dudt * (temp_end - self.params.reference_temperature_c)
        ocv_end -= r0_drop
        ocv_end -= self._v_rc.sum(axis=0)
        # These arrays are replaced every step, never changed in place, so the step can
        # hand them out read-only instead of copying them.
        for arr in (ocv_end, soc_end, temp_end):
            arr.setflags(write=False)
        self._voltage = ocv_end
        self._soc = soc_end
        self._temp = temp_end
        self._time_s += dt
        self._last_current = current
        self._accumulate_stress(current, soc_start, temp_start, dt)
        return self._report(r0, self._check_limits())

    def _accumulate_stress(
        self, current: FloatArray, soc_start: FloatArray, temp_start: FloatArray, dt: float
    ) -> None:
        self._w_elapsed += dt
        half_dt = 0.5 * dt
        self._w_soc += (soc_start + self._soc) * half_dt
        self._w_temp += (temp_start + self._temp) * half_dt
        abs_i = np.abs(current)
        moving = abs_i >= self._threshold_a
        # Reversals are rare: one reduction tells whether any cell might have one.
        flips = current * self._last_dir
        if flips.min() < 0:
            reversed_ = moving & (flips < 0)
            if reversed_.any():
                self._close_half_cycles(np.flatnonzero(reversed_), soc_start)
        np.copyto(self._last_dir, np.sign(current), where=moving)
        ah = abs_i * (dt / 3600.0)
        self._run_ah += ah
        ah *= abs_i
        self._run_i_ah += ah  # sum of |I| * Ah; divided by the capacity at closure
        if self._w_elapsed >= self.options.ageing_interval_s:
            self._close_window()

    def _close_half_cycles(self, idx: np.ndarray, soc_now: FloatArray) -> None:
        dod = np.abs(soc_now[idx] - self._soc_turn[idx])
        self._w_ah[idx] += self._run_ah[idx]
        self._w_dod_ah[idx] += dod * self._run_ah[idx]
        self._w_crate_ah[idx] += self._run_i_ah[idx] / self._q_start[idx]
        self._w_cyc_soc_ah[idx] += 0.5 * (soc_now[idx] + self._soc_turn[idx]) * self._run_ah[idx]
        self._run_ah[idx] = 0.0
        self._run_i_ah[idx] = 0.0
        self._soc_turn[idx] = soc_now[idx]

    def _close_window(self) -> None:
        duration = self._w_elapsed
        with np.errstate(invalid="ignore", divide="ignore"):
            has = self._w_ah > 0
            mean_dod = np.where(has, self._w_dod_ah / np.where(has, self._w_ah, 1.0), 0.0)
            mean_c = np.where(has, self._w_crate_ah / np.where(has, self._w_ah, 1.0), 0.0)
        mean_soc = self._w_soc / duration
        window = StressWindow(
            duration_s=duration,
            mean_soc=mean_soc,
            mean_temperature_c=self._w_temp / duration,
            throughput_ah=self._w_ah.copy(),
            mean_dod=mean_dod,
            mean_c_rate=mean_c,
            nominal_capacity_ah=self._q_start.copy(),
            cycle_mean_soc=np.where(
                has, self._w_cyc_soc_ah / np.where(has, self._w_ah, 1.0), mean_soc
            ),
        )
        self._ageing_state = self._ageing.update(self._ageing_state, window, rate_factor=self._rate)
        self._apply_ageing()
        self._reset_window()

    def flush_ageing(self) -> None:
        """Close the open half-cycles and ageing window now (e.g. at the end of a run)."""
        open_ = np.flatnonzero(self._run_ah > 0)
        if open_.size:
            self._close_half_cycles(open_, self._soc)
        if self._w_elapsed > 0:
            self._close_window()

    def _check_limits(self) -> tuple[TwinEvent, ...]:
        lim = self.params.limits
        return self._limits.check(
            time_s=self._time_s,
            checks=(
                LimitCheck("over_voltage", self._voltage, lim.max_voltage_v, above=True),
                LimitCheck("under_voltage", self._voltage, lim.min_voltage_v, above=False),
                LimitCheck("over_temperature", self._temp, lim.max_temperature_c, above=True),
                LimitCheck("under_temperature", self._temp, lim.min_temperature_c, above=False),
                LimitCheck("soc_above_1", self._soc, 1.0, above=True),
                LimitCheck("soc_below_0", self._soc, 0.0, above=False),
            ),
        )

    def _report(self, r0: FloatArray, events: tuple[TwinEvent, ...]) -> CellStep:
        return CellStep(
            time_s=self._time_s,
            current_a=np.array(self._last_current, dtype=np.float64, copy=True),
            voltage_v=self._voltage,
            surface_temperature_c=self._temp,
            truth=CellTruth.basic(soc=self._soc, capacity_ah=self._capacity, r0_ohm=r0),
            events=events,
        )

    # --------------------------------------------------------------- interface
    def _inputs(
        self, value: ArrayLike, name: str, dt_s: float, ambient_c: ArrayLike
    ) -> tuple[FloatArray, float, FloatArray]:
        dt = check_dt(dt_s, source=f"{type(self).__name__}.step")
        x = as_cell_array(value, n_cells=self._n, name=name, source=f"{type(self).__name__}.step")
        amb = as_cell_array(ambient_c, n_cells=self._n, name="ambient_c", source="EcmTwin.step")
        return x, dt, amb

    def step(self, *, current_a: ArrayLike, dt_s: float, ambient_c: ArrayLike) -> CellStep:
        """Hold ``current_a`` (positive = discharge) for ``dt_s`` at ``ambient_c``."""
        current, dt, amb = self._inputs(current_a, "current_a", dt_s, ambient_c)
        return self._advance(current, dt, amb)

    def current_for_power(self, power_w: FloatArray, dt: float) -> tuple[FloatArray, np.ndarray]:
        """Current that delivers ``power_w`` over the step, and where it cannot be reached."""
        e, z = self.thevenin(dt_s=dt, charging=power_w < 0)
        disc = e * e - 4.0 * z * power_w
        limited = disc < 0
        root = np.sqrt(np.maximum(disc, 0.0))
        return (e - root) / (2.0 * z), limited

    def step_power(self, *, power_w: ArrayLike, dt_s: float, ambient_c: ArrayLike) -> CellStep:
        """Hold a per-cell power (positive = discharge). Where the cell cannot deliver
        it, the maximum-power current is applied and a ``power_limited`` event raised."""
        power, dt, amb = self._inputs(power_w, "power_w", dt_s, ambient_c)
        current, limited = self.current_for_power(power, dt)
        out = self._advance(current, dt, amb)
        if limited.any():
            cells = np.flatnonzero(limited)
            event = TwinEvent(
                time_s=self._time_s,
                kind="power_limited",
                cells=tuple(int(c) for c in cells),
                values=tuple(float(v) for v in power[cells]),
                limit=float("nan"),
            )
            out = CellStep(
                out.time_s,
                out.current_a,
                out.voltage_v,
                out.surface_temperature_c,
                out.truth,
                (*out.events, event),
            )
        return out

    def step_voltage(self, *, voltage_v: ArrayLike, dt_s: float, ambient_c: ArrayLike) -> CellStep:
        """Hold the terminal voltage (constant-voltage phase) for ``dt_s``."""
        target, dt, amb = self._inputs(voltage_v, "voltage_v", dt_s, ambient_c)
        e, z = self.thevenin(dt_s=dt, charging=target > self._voltage)
        return self._advance((e - target) / z, dt, amb)

    def impedance(self, frequency_hz: ArrayLike) -> np.ndarray:
        """Small-signal impedance ``Z(f)`` of every cell at its present state.

        Averages the charge and discharge tables (an EIS excitation is symmetric).

        Returns:
            Complex array of shape ``(n_cells, n_freq)`` in ohm.
        """
        f = np.atleast_1d(np.asarray(frequency_hz, dtype=np.float64))
        if np.any(~np.isfinite(f)) or np.any(f <= 0):
            raise TwinInputError(f"frequency_hz must be finite and > 0, got {f}")
        p = self._small_signal_table()
        rf = self._r_factor[:, None]
        w = 2.0 * np.pi * f[None, :]
        z: np.ndarray = (p[0][:, None] * rf + 1j * w * self.params.inductance_h).astype(
            np.complex128
        )
        n = self.n_rc
        for k in range(n):
            r = p[1 + k][:, None] * rf
            tau = p[1 + n + k][:, None]
            z += r / (1.0 + 1j * w * tau)
        return z

    def _small_signal_table(self) -> FloatArray:
        """R0, R_k, tau_k at the present state, averaged over both current directions
        (an EIS excitation or a small pulse is symmetric)."""
        zeros = np.zeros(self._n, dtype=np.intp)
        return 0.5 * (
            self._lookup(self._soc, self._temp, zeros)
            + self._lookup(self._soc, self._temp, zeros + CHARGE)
        )

    def stored_energy_wh(self) -> FloatArray:
        """Energy each cell holds above the bottom of its SoC grid, from the reference
        OCV curve (the counterpart of the terminal energy for energy balances)."""
        i, f = self._soc_index(self._soc)
        seg = (self._ocv[i] + 0.5 * f * self._ocv_step[i]) * f / self._inv_ds
        return np.asarray((self._ocv_integral[i] + seg) * self._capacity)

    def ecm_parameters_now(self) -> dict[str, FloatArray]:
        """Small-signal R0, R1..Rn (ohm) and C1..Cn (F) per cell at the present state:
        the values whose circuit has the impedance :meth:`impedance` returns."""
        p = self._small_signal_table()
        rf = self._r_factor
        out = {"r0_ohm": p[0] * rf}
        for k in range(self.n_rc):
            r = p[1 + k] * rf
            out[f"r{k + 1}_ohm"] = r
            out[f"c{k + 1}_f"] = p[1 + self.n_rc + k] / r
        return out
