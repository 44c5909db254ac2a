"""Compiled fast path for long pack runs: controller + pack physics, many steps per call.

A year at 60 s is half a million pack steps; in numpy each step of a small pack costs
tens of microseconds of call overhead. This module runs the same physics as
:meth:`twin.pack.Pack.step_power` and :meth:`twin.models.ecm.EcmTwin._advance`, operation
for operation, inside one numba-compiled loop over time steps (and cells), together with
a storage controller. ``tests/twin/test_pack_kernel.py`` checks it against the numpy
reference step by step; a change to the physics must change both.

Ageing windows are closed by the numpy twin between kernel calls (the kernel stops at
each window boundary), so the ageing laws stay in one place.

This is the only module that imports numba.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from twin.errors import TwinInputError
from twin.models.base import FloatArray
from twin.pack import Pack

__all__ = ["OUTPUT_COLUMNS", "ControlLimits", "PackKernel", "control_request"]

OUTPUT_COLUMNS = (
    "battery_ac_w",
    "battery_dc_w",
    "pack_current_a",
    "pack_voltage_v",
    "grid_w",
    "unserved_w",
    "pv_curtailed_w",
    "soc_mean",
    "v_cell_min",
    "v_cell_max",
    "t_cell_min",
    "t_cell_max",
    "joule_loss_w",
    "inverter_loss_w",
    "request_w",
)
"""Per-step outputs; powers positive for battery discharge and grid import."""
_C = {name: i for i, name in enumerate(OUTPUT_COLUMNS)}
_KELVIN = 273.15


@dataclass(frozen=True)
class ControlLimits:
    """Storage controller and BMS limits (AC powers at the inverter, W).

    Net demand is load (+ EV charging) minus PV. The storage discharges what exceeds
    ``discharge_above_w`` (0 = self-consumption; the grid threshold for peak shaving),
    charges from any PV surplus, and recharges from the grid up to
    ``grid_charge_max_w`` while net demand is below ``charge_below_w``. The BMS
    refuses discharge at ``soc_min``, a cell at ``v_cell_min_ok`` or above
    ``max_temperature_c``; it refuses charge at ``soc_max``, a cell at ``v_cell_max_ok``,
    below ``min_charge_temperature_c`` or above ``max_temperature_c``; and it caps the
    pack current. Grid import above ``grid_limit_w`` is load that cannot be served;
    export above ``export_limit_w`` is PV curtailed.
    """

    discharge_above_w: float = 0.0
    charge_below_w: float = 0.0
    grid_charge_max_w: float = 0.0
    inverter_max_w: float = 5000.0
    inverter_efficiency: float = 0.96
    soc_min: float = 0.1
    soc_max: float = 0.95
    max_charge_a: float = 50.0
    max_discharge_a: float = 100.0
    v_cell_min_ok: float = 3.0
    v_cell_max_ok: float = 4.18
    min_charge_temperature_c: float = 0.0
    max_temperature_c: float = 55.0
    grid_limit_w: float = float("inf")
    export_limit_w: float = float("inf")

    def __post_init__(self) -> None:
        if not 0 < self.inverter_efficiency <= 1:
            raise TwinInputError(
                f"inverter_efficiency must be in (0, 1], got {self.inverter_efficiency}"
            )
        if not 0 <= self.soc_min < self.soc_max <= 1:
            raise TwinInputError(
                f"need 0 <= soc_min < soc_max <= 1, got {self.soc_min} and {self.soc_max}"
            )
        for name in ("inverter_max_w", "max_charge_a", "max_discharge_a", "grid_limit_w"):
            if not getattr(self, name) > 0:
                raise TwinInputError(f"{name} must be > 0, got {getattr(self, name)}")

    def as_array(self) -> FloatArray:
        return np.array(
            [
                self.discharge_above_w,
                self.charge_below_w,
                self.grid_charge_max_w,
                self.inverter_max_w,
                self.inverter_efficiency,
                self.soc_min,
                self.soc_max,
                self.max_charge_a,
                self.max_discharge_a,
                self.v_cell_min_ok,
                self.v_cell_max_ok,
                self.min_charge_temperature_c,
                self.max_temperature_c,
                self.grid_limit_w,
                self.export_limit_w,
            ]
        )


@numba.njit(cache=True, inline="always")
def _lookup(table, idx, f_s, f_t, npar, nt, out):  # type: ignore[no-untyped-def]
    """Bilinear table value, same operation order as EcmTwin._lookup_at."""
    for j in range(npar):
        c0 = table[j, idx]
        c1 = table[npar + j, idx]
        if nt > 1:
            c2 = table[2 * npar + j, idx]
            c3 = table[3 * npar + j, idx]
            out[j] = (c2 * f_t + c0) + (c3 * f_t + c1) * f_s
        else:
            out[j] = c1 * f_s + c0


@numba.njit(cache=True)
def _soc_index(soc, s0, inv_ds, ns):  # type: ignore[no-untyped-def]
    x = (soc - s0) * inv_ds
    x = min(max(x, 0.0), ns - 1.000001)
    i = int(x)
    return i, x - i


@numba.njit(cache=True)
def _t_index(temp, t0, inv_dt, nt):  # type: ignore[no-untyped-def]
    if nt == 1:
        return 0, 0.0
    x = (temp - t0) * inv_dt
    x = min(max(x, 0.0), nt - 1.000001)
    i = int(x)
    return i, x - i


@numba.njit(cache=True)
def control_request(  # type: ignore[no-untyped-def]
    net, soc_min_c, soc_max_c, v_min_c, v_max_c, t_min_c, t_max_c, v_pack, ctrl
):
    """The storage controller and BMS limits of :class:`ControlLimits` for one step.

    Compiled, and callable from Python too (the PyBaMM storage uses it), so there is
    one controller. Returns ``(request_w, allowed_w)``: what the controller asked for
    and what the BMS and inverter let through, AC side, positive = discharge.
    """
    d_above, c_below, grid_chg, inv_max, eta, soc_lo, soc_hi, i_chg, i_dis = ctrl[:9]
    v_lo_ok, v_hi_ok, t_chg_min, t_max = ctrl[9], ctrl[10], ctrl[11], ctrl[12]
    if net > d_above:
        req = net - d_above
    elif net < 0.0:
        req = net
    elif net < c_below:
        req = -min(grid_chg, c_below - net)
    else:
        req = 0.0
    req = min(max(req, -inv_max), inv_max)
    request = req
    if req > 0.0:
        if soc_min_c <= soc_lo or v_min_c <= v_lo_ok or t_max_c >= t_max:
            req = 0.0
        else:
            req = min(req, i_dis * v_pack * eta)
    elif req < 0.0:
        if soc_max_c >= soc_hi or v_max_c >= v_hi_ok or t_min_c <= t_chg_min or t_max_c >= t_max:
            req = 0.0
        else:
            req = max(req, -i_chg * v_pack / eta)
    return request, req


@numba.njit(cache=True)
def _run(  # type: ignore[no-untyped-def]
    table,
    ocv_table,
    geo,  # s0, inv_ds, ns, t0, inv_dt, nt, n_rc, t_ref, heat_cap, h, thermal, ce, g_cond
    shape,  # strings, groups per string, cells per group, cells per module
    soc,
    temp,
    v_rc,
    voltage,
    cap,
    rf,
    q_start,
    thresh,
    last_dir,
    soc_turn,
    run_ah,
    run_i_ah,
    w_soc,
    w_temp,
    w_ah,
    w_dod_ah,
    w_crate_ah,
    w_cyc_soc_ah,
    w_elapsed,  # array of 1
    last_current,
    balancing,
    net_w,
    ambient,
    ctrl,
    dt,
    interval,
    start,
    out,
):
    s0, inv_ds, ns = geo[0], geo[1], int(geo[2])
    t0, inv_dt, nt = geo[3], geo[4], int(geo[5])
    n_rc, t_ref, heat_cap, h_tr = int(geo[6]), geo[7], geo[8], geo[9]
    thermal, ce, g_cond = geo[10] > 0.5, geo[11], geo[12]
    n_str, n_grp, n_par, per_module = shape[0], shape[1], shape[2], shape[3]
    n = soc.shape[0]
    npar = 1 + 2 * n_rc
    m_dir = nt * ns
    par = np.empty(npar)
    e = np.empty(n)
    z = np.empty(n)
    cur = np.empty(n)
    extra = np.zeros(n)
    e_grp = np.empty((n_str, n_grp))
    z_grp = np.empty((n_str, n_grp))
    e_str = np.empty(n_str)
    g_str = np.empty(n_str)
    decay = np.exp(-dt * h_tr / heat_cap)
    half_dt = 0.5 * dt
    eta, grid_lim, exp_lim = ctrl[4], ctrl[13], ctrl[14]
    k = start
    steps = net_w.shape[0]
    while k < steps:
        # ---- measurements of the last step, as the controller sees them
        soc_min_c, soc_max_c, v_min_c, v_max_c = 1e9, -1e9, 1e9, -1e9
        t_min_c, t_max_c = 1e9, -1e9
        v_pack_meas = 0.0
        for i in range(n):
            soc_min_c = min(soc_min_c, soc[i])
            soc_max_c = max(soc_max_c, soc[i])
            v_min_c = min(v_min_c, voltage[i])
            v_max_c = max(v_max_c, voltage[i])
            t_min_c = min(t_min_c, temp[i])
            t_max_c = max(t_max_c, temp[i])
        for i in range(n):
            v_pack_meas += voltage[i]
        v_pack_meas /= n_par * n_str  # mean over strings of the sum of group means
        # ---- controller (AC side)
        net = net_w[k]
        request, req = control_request(
            net, soc_min_c, soc_max_c, v_min_c, v_max_c, t_min_c, t_max_c, v_pack_meas, ctrl
        )
        p_dc = req / eta if req > 0.0 else req * eta
        # ---- Pack.step_power: Thevenin form of every cell at the start of the step
        sign = 1.0 if p_dc > 0.0 else (-1.0 if p_dc < 0.0 else 0.0)
        for i in range(n):
            charging = sign < 0.0 or (sign == 0.0 and last_dir[i] < 0.0)
            i_s, f_s = _soc_index(soc[i], s0, inv_ds, ns)
            i_t, f_t = _t_index(temp[i], t0, inv_dt, nt)
            idx = (m_dir if charging else 0) + i_t * ns + i_s
            _lookup(table, idx, f_s, f_t, npar, nt, par)
            zi = par[0] * rf[i]
            ocv = ocv_table[1, i_s] * f_s + ocv_table[0, i_s]
            dudt = ocv_table[3, i_s] * f_s + ocv_table[2, i_s]
            ei = ocv + dudt * (temp[i] - t_ref)
            for r in range(n_rc):
                a = np.exp(-dt / par[1 + n_rc + r])
                ei = ei - a * v_rc[r, i]
                zi = zi + par[1 + r] * rf[i] * (1.0 - a)
            zi = zi + ocv_table[1, i_s] * inv_ds * dt / (3600.0 * cap[i])
            e[i] = ei - zi * balancing[i]
            z[i] = zi
        for s in range(n_str):
            es = 0.0
            zs = 0.0
            for g in range(n_grp):
                gsum = 0.0
                egs = 0.0
                base = (s * n_grp + g) * n_par
                for c in range(n_par):
                    gi = 1.0 / z[base + c]
                    gsum += gi
                    egs += e[base + c] * gi
                e_grp[s, g] = egs / gsum
                z_grp[s, g] = 1.0 / gsum
                es += e_grp[s, g]
                zs += z_grp[s, g]
            e_str[s] = es
            g_str[s] = 1.0 / zs
        g_tot = 0.0
        eg_tot = 0.0
        for s in range(n_str):
            g_tot += g_str[s]
            eg_tot += e_str[s] * g_str[s]
        if p_dc == 0.0:
            i_pack = 0.0
        else:
            z_pack = 1.0 / g_tot
            e_pack = eg_tot * z_pack
            disc = e_pack * e_pack - 4.0 * z_pack * p_dc
            i_pack = (e_pack - np.sqrt(max(disc, 0.0))) / (2.0 * z_pack)
        v_pack = (eg_tot - i_pack) / g_tot
        for s in range(n_str):
            i_s_str = (e_str[s] - v_pack) * g_str[s]
            for g in range(n_grp):
                v_g = e_grp[s, g] - z_grp[s, g] * i_s_str
                base = (s * n_grp + g) * n_par
                for c in range(n_par):
                    cur[base + c] = (e[base + c] - v_g) / z[base + c] + balancing[base + c]
        # ---- cell-to-cell conduction from the start temperatures
        if g_cond > 0.0:
            for i in range(n):
                extra[i] = 0.0
            for mod in range(n // per_module):
                for j in range(per_module - 1):
                    a_i = mod * per_module + j
                    flow = g_cond * (temp[a_i + 1] - temp[a_i])
                    extra[a_i] += flow
                    extra[a_i + 1] -= flow
        # ---- EcmTwin._advance for every cell
        w_elapsed[0] += dt
        dc_w = 0.0
        joule_w = 0.0
        for i in range(n):
            cur_i = cur[i]
            charging = cur_i < 0.0 or (cur_i == 0.0 and last_dir[i] < 0.0)
            stored = cur_i * ce if charging else cur_i
            soc_start = soc[i]
            t_start = temp[i]
            soc_end = soc_start - stored * (dt / 3600.0) / cap[i]
            i_s, f_s = _soc_index(soc_end, s0, inv_ds, ns)
            i_t, f_t = _t_index(t_start, t0, inv_dt, nt)
            idx = (m_dir if charging else 0) + i_t * ns + i_s
            _lookup(table, idx, f_s, f_t, npar, nt, par)
            r0_drop = par[0] * rf[i] * cur_i
            mean_sum = 0.0
            end_sum = 0.0
            for r in range(n_rc):
                tau = par[1 + n_rc + r]
                r_i = par[1 + r] * (rf[i] * cur_i)
                a = np.exp(-dt / tau)
                dv = v_rc[r, i] - r_i
                v_rc[r, i] = r_i + dv * a
                mean_sum += r_i + dv * (tau * (1.0 / dt)) * (1.0 - a)
                end_sum += v_rc[r, i]
            ocv_ref = ocv_table[1, i_s] * f_s + ocv_table[0, i_s]
            dudt = ocv_table[3, i_s] * f_s + ocv_table[2, i_s]
            if thermal:
                heat = cur_i * (r0_drop + mean_sum - (t_start + _KELVIN) * dudt) + extra[i]
                t_inf = ambient[k] + heat * (1.0 / h_tr)
                t_end = t_inf + (t_start - t_inf) * decay
            else:
                t_end = ambient[k]
            v_end = ocv_ref + dudt * (t_end - t_ref) - r0_drop - end_sum
            # Mean terminal power over the step: mean OCV (trapezoid) minus the drops.
            i0, f0 = _soc_index(soc_start, s0, inv_ds, ns)
            ocv_start = ocv_table[1, i0] * f0 + ocv_table[0, i0]
            dc_w += cur_i * (0.5 * (ocv_start + ocv_ref) - r0_drop - mean_sum)
            joule_w += cur_i * (r0_drop + mean_sum)
            voltage[i] = v_end
            soc[i] = soc_end
            temp[i] = t_end
            last_current[i] = cur_i
            # ---- EcmTwin._accumulate_stress
            w_soc[i] += (soc_start + soc_end) * half_dt
            w_temp[i] += (t_start + t_end) * half_dt
            abs_i = abs(cur_i)
            moving = abs_i >= thresh[i]
            if moving and cur_i * last_dir[i] < 0.0:
                dod = abs(soc_start - soc_turn[i])
                w_ah[i] += run_ah[i]
                w_dod_ah[i] += dod * run_ah[i]
                w_crate_ah[i] += run_i_ah[i] / q_start[i]
                w_cyc_soc_ah[i] += 0.5 * (soc_start + soc_turn[i]) * run_ah[i]
                run_ah[i] = 0.0
                run_i_ah[i] = 0.0
                soc_turn[i] = soc_start
            if moving:
                last_dir[i] = 1.0 if cur_i > 0.0 else -1.0
            ah = abs_i * (dt / 3600.0)
            run_ah[i] += ah
            run_i_ah[i] += ah * abs_i
        # ---- bookkeeping at the inverter and the grid
        ac_w = dc_w * eta if dc_w > 0.0 else dc_w / eta
        grid = net - ac_w
        unserved = 0.0
        curtailed = 0.0
        if grid > grid_lim:
            unserved = grid - grid_lim
            grid = grid_lim
        elif grid < -exp_lim:
            curtailed = -exp_lim - grid
            grid = -exp_lim
        v_pack_out = 0.0
        for i in range(n):
            v_pack_out += voltage[i]
        soc_sum = 0.0
        v_lo, v_hi, tt_lo, tt_hi = 1e9, -1e9, 1e9, -1e9
        for i in range(n):
            soc_sum += soc[i]
            v_lo = min(v_lo, voltage[i])
            v_hi = max(v_hi, voltage[i])
            tt_lo = min(tt_lo, temp[i])
            tt_hi = max(tt_hi, temp[i])
        out[k, 0] = ac_w
        out[k, 1] = dc_w
        out[k, 2] = i_pack
        out[k, 3] = v_pack_out / (n_par * n_str)
        out[k, 4] = grid
        out[k, 5] = unserved
        out[k, 6] = curtailed
        out[k, 7] = soc_sum / n
        out[k, 8] = v_lo
        out[k, 9] = v_hi
        out[k, 10] = tt_lo
        out[k, 11] = tt_hi
        out[k, 12] = joule_w
        out[k, 13] = abs(ac_w - dc_w)
        out[k, 14] = request
        k += 1
        if w_elapsed[0] >= interval:
            break
    return k


class PackKernel:
    """Runs a :class:`Pack` and a storage controller for many steps in compiled code.

    The pack's own state (cells, ageing, stress windows) is read before and written
    back after every call, so numpy steps and kernel runs can be mixed freely.
    """

    def __init__(self, pack: Pack) -> None:
        cells = pack.cells
        if cells.options.coulombic_efficiency <= 0:
            raise TwinInputError("coulombic_efficiency must be > 0")
        self.pack = pack
        self.fade_loss_wh = 0.0
        """Stored energy lost to capacity fade during the last :meth:`run`."""
        topo = pack.topology
        p = cells.params
        self._geo = np.array(
            [
                cells._s0,
                cells._inv_ds,
                cells._ns,
                cells._t0,
                cells._inv_dt,
                cells._nt,
                cells.n_rc,
                p.reference_temperature_c,
                p.thermal.heat_capacity_j_per_k,
                p.thermal.heat_transfer_w_per_k,
                1.0 if cells.options.thermal else 0.0,
                cells.options.coulombic_efficiency,
                pack.conduction_w_per_k,
            ]
        )
        per_module = topo.groups_per_module * topo.cells_per_group
        self._shape = np.array(
            [topo.strings_in_parallel, topo.groups_per_string, topo.cells_per_group, per_module],
            dtype=np.int64,
        )

    def run(
        self,
        *,
        net_w: FloatArray,
        ambient_c: FloatArray,
        dt_s: float,
        control: ControlLimits,
    ) -> FloatArray:
        """Step the pack once per entry of ``net_w`` (W, + = demand) at ``dt_s``.

        Returns:
            Array of shape ``(len(net_w), len(OUTPUT_COLUMNS))``.
        """
        net = np.ascontiguousarray(net_w, dtype=np.float64)
        amb = np.ascontiguousarray(ambient_c, dtype=np.float64)
        if net.shape != amb.shape or net.ndim != 1:
            raise TwinInputError("net_w and ambient_c must be 1-D arrays of the same length")
        if not np.all(np.isfinite(net)) or not np.all(np.isfinite(amb)):
            raise TwinInputError("net_w and ambient_c must be finite")
        if not self.pack.contactor_closed:
            raise TwinInputError("the kernel runs a pack with a closed contactor")
        cells = self.pack.cells
        if self.pack.conduction_w_per_k:
            c = cells.params.thermal.heat_capacity_j_per_k
            if 2.0 * self.pack.conduction_w_per_k * dt_s / c > 1.0:
                raise TwinInputError(f"dt_s={dt_s} too long for cell-to-cell conduction")
        out = np.empty((net.size, len(OUTPUT_COLUMNS)))
        self.fade_loss_wh = 0.0
        ctrl = control.as_array()
        interval = cells.options.ageing_interval_s
        done = 0
        while done < net.size:
            soc = cells._soc.copy()
            temp = cells._temp.copy()
            voltage = np.array(cells._voltage, dtype=np.float64, copy=True)
            last_current = np.array(cells._last_current, dtype=np.float64, copy=True)
            w_elapsed = np.array([cells._w_elapsed])
            done = _run(
                cells._table,
                cells._ocv_table,
                self._geo,
                self._shape,
                soc,
                temp,
                cells._v_rc,
                voltage,
                cells._capacity,
                cells._r_factor,
                cells._q_start,
                cells._threshold_a,
                cells._last_dir,
                cells._soc_turn,
                cells._run_ah,
                cells._run_i_ah,
                cells._w_soc,
                cells._w_temp,
                cells._w_ah,
                cells._w_dod_ah,
                cells._w_crate_ah,
                cells._w_cyc_soc_ah,
                w_elapsed,
                last_current,
                self.pack._balancing,
                net,
                amb,
                ctrl,
                float(dt_s),
                float(interval),
                done,
                out,
            )
            for arr in (soc, temp, voltage):
                arr.setflags(write=False)
            cells._soc, cells._temp, cells._voltage = soc, temp, voltage
            cells._last_current = last_current
            cells._w_elapsed = float(w_elapsed[0])
            if cells._w_elapsed >= interval:
                before = float(cells.stored_energy_wh().sum())
                cells._close_window()
                # Capacity fade at constant SoC removes stored energy: book it as a loss.
                self.fade_loss_wh += before - float(cells.stored_energy_wh().sum())
        cells._time_s += dt_s * net.size
        cells._last_current = np.array(cells._last_current)
        return out
