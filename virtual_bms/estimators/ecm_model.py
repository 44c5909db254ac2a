"""The equivalent-circuit model the BMS believes in: per-cell R0, R1..Rk, C1..Ck, capacity, OCV.

This is the BMS's own model, kept apart from the twin's truth: it is built from a parameter
set at the temperatures and SoCs the BMS measures or estimates, with an *assumed* SoH and
resistance factor (a second-life BMS does not know each cell's true capacity), and it is
corrected by the parameters the cloud fits from EIS (``ecm_update`` commands).

Circuit (positive current discharges, as everywhere in batterytwin)::

    V = OCV(SoC, T) - R0 I - sum_k v_k,      dv_k/dt = -v_k / (R_k C_k) + I / C_k

What ``voltage`` in an ECM update means here: the cell voltage at the operating point where
the cloud measured the EIS and fitted the parameters (the D1.2 EIS records carry it beside
the impedance). R and C depend on SoC and temperature, so a fit is valid around that point.
:func:`ecm_update_soc` converts ``voltage`` through this model's OCV curve into the SoC of
the fit, per cell. A voltage outside the OCV curve's range (more than ``OCV_MARGIN_V``
beyond it) means the fit belongs to another cell type, and the update is refused. An
update changes neither the OCV curve nor the capacity: EIS does not measure them.

How a BMS uses the cloud's ECM: as a *correction of its tables*, not a replacement.
:func:`ecm_correction` compares the update with the parameter set's model read at the
fit's SoC and temperature and returns one factor per element (R0, each R_k, each C_k; RC
pairs matched by time-constant order); :func:`apply_ecm_correction` puts the factors on a
model read from the tables, which the runtime does at every cycle, so R and C keep their
SoC and temperature dependence and each cell its own operating point. The factors are the
same for every cell: the cloud sends the cells' mean fit, so the update is compared with
the tables' mean over the cells. Only when the cloud fitted another number of RC pairs than
the parameter set has does the BMS fall back to :func:`apply_ecm_update`, which takes the
update's R0, R_k, C_k as they are for every cell and keeps the fit's SoC in
:attr:`EcmModel.valid_at_soc` (a runtime can compare it with the present SoC to know how far
the parameters are being extrapolated, and ask for a new EIS).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike

from twin.models.base import FloatArray
from twin.models.ecm_params import CHARGE, DISCHARGE, MAX_RC_PAIRS, EcmParameters

__all__ = [
    "CORRECTION_LIMITS",
    "OCV_MARGIN_V",
    "EcmCorrection",
    "EcmModel",
    "EcmModelError",
    "EcmUpdate",
    "apply_ecm_correction",
    "apply_ecm_update",
    "ecm_correction",
    "ecm_model_from_parameters",
    "ecm_update_soc",
]

OCV_MARGIN_V = 0.1
"""How far (V) an ECM update's ``voltage`` may lie outside the OCV curve before it is refused."""

CORRECTION_LIMITS = (0.2, 5.0)
"""Smallest and largest factor an ECM update may put on a table value; beyond, it is refused."""

_SLOPE_HALF_WIDTH = 0.01  # SoC; the OCV slope is a central difference over +-1 % SoC


class EcmModelError(ValueError):
    """An ECM the BMS cannot use: the message names the value and what to do."""


class EcmUpdate(Protocol):
    """An ECM update from the cloud: the fields of ``cloud.mqtt.contract.EcmUpdateParams``.

    ``voltage`` in V, resistances in ohm, capacitances in F; ``r1``/``c1`` always, the
    further pairs optional (``None`` = not fitted).
    """

    @property
    def voltage(self) -> float: ...
    @property
    def r0(self) -> float: ...
    @property
    def r1(self) -> float: ...
    @property
    def c1(self) -> float: ...
    @property
    def r2(self) -> float | None: ...
    @property
    def c2(self) -> float | None: ...
    @property
    def r3(self) -> float | None: ...
    @property
    def c3(self) -> float | None: ...
    @property
    def r4(self) -> float | None: ...
    @property
    def c4(self) -> float | None: ...


def _frozen(value: ArrayLike) -> FloatArray:
    arr = np.array(value, dtype=np.float64)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class EcmModel:
    """An immutable ECM of ``n`` cells with ``k`` RC pairs (1 <= k <= 4).

    The OCV curve is shared by all cells (one chemistry); everything else is per cell.
    OCV at a cell's temperature is ``OCV_ref(SoC) + dOCV/dT(SoC) (T - T_ref)``; beyond the
    tabulated SoC range it is extended linearly, so a filter state that wanders past the
    table still sees a slope that pulls it back.

    Attributes:
        capacity_ah: Usable capacity per cell, shape ``(n,)``.
        r0_ohm: Series resistance per cell, ``(n,)``.
        rc_resistance_ohm: R1..Rk per cell, ``(k, n)``.
        rc_capacitance_f: C1..Ck per cell, ``(k, n)``.
        temperature_c: Cell temperature the OCV is evaluated at, ``(n,)``.
        soc_grid: SoC points of the OCV curve, strictly increasing, ``(m,)``.
        ocv_grid_v: OCV at ``reference_temperature_c`` on ``soc_grid``, non-decreasing.
        entropic_grid_v_per_k: dOCV/dT on ``soc_grid``.
        valid_at_soc: SoC per cell at which R and C were taken (from the parameter set,
            corrected or not) or fitted (an ECM update taken as it is: from its
            ``voltage``), ``(n,)``.
        reference_temperature_c: Temperature of ``ocv_grid_v``.
        coulombic_efficiency: Fraction of charging current stored, in (0, 1].
        source: Where the values came from, for logs.

    Raises:
        EcmModelError: If a shape, sign or value is inconsistent.
    """

    capacity_ah: FloatArray
    r0_ohm: FloatArray
    rc_resistance_ohm: FloatArray
    rc_capacitance_f: FloatArray
    temperature_c: FloatArray
    soc_grid: FloatArray
    ocv_grid_v: FloatArray
    entropic_grid_v_per_k: FloatArray
    valid_at_soc: FloatArray
    reference_temperature_c: float = 25.0
    coulombic_efficiency: float = 1.0
    source: str = ""

    def __post_init__(self) -> None:
        names = (
            "capacity_ah",
            "r0_ohm",
            "rc_resistance_ohm",
            "rc_capacitance_f",
            "temperature_c",
            "soc_grid",
            "ocv_grid_v",
            "entropic_grid_v_per_k",
            "valid_at_soc",
        )
        for name in names:
            arr = _frozen(getattr(self, name))
            object.__setattr__(self, name, arr)
            if not np.all(np.isfinite(arr)):
                raise EcmModelError(f"EcmModel.{name} contains NaN or inf ({self.source})")
        n = self.capacity_ah.shape[0] if self.capacity_ah.ndim == 1 else -1
        if n < 1:
            raise EcmModelError(
                f"EcmModel.capacity_ah must be a 1-D array with one value per cell, got shape "
                f"{self.capacity_ah.shape}"
            )
        for name in ("r0_ohm", "temperature_c", "valid_at_soc"):
            if getattr(self, name).shape != (n,):
                raise EcmModelError(
                    f"EcmModel.{name} must have shape ({n},) like capacity_ah, "
                    f"got {getattr(self, name).shape}"
                )
        k = self.rc_resistance_ohm.shape[0] if self.rc_resistance_ohm.ndim == 2 else -1
        if not 1 <= k <= MAX_RC_PAIRS or self.rc_resistance_ohm.shape != (k, n):
            raise EcmModelError(
                f"EcmModel.rc_resistance_ohm must have shape (k, {n}) with k in "
                f"1..{MAX_RC_PAIRS} RC pairs, got {self.rc_resistance_ohm.shape}"
            )
        if self.rc_capacitance_f.shape != (k, n):
            raise EcmModelError(
                f"EcmModel.rc_capacitance_f must have shape ({k}, {n}) like rc_resistance_ohm, "
                f"got {self.rc_capacitance_f.shape}"
            )
        for name in ("capacity_ah", "r0_ohm", "rc_resistance_ohm", "rc_capacitance_f"):
            arr = getattr(self, name)
            if np.any(arr <= 0):
                raise EcmModelError(f"EcmModel.{name} must be > 0 everywhere, min is {arr.min()}")
        m = self.soc_grid.size
        if self.soc_grid.ndim != 1 or m < 2 or np.any(np.diff(self.soc_grid) <= 0):
            raise EcmModelError(
                "EcmModel.soc_grid must be a strictly increasing 1-D grid of >= 2 points"
            )
        for name in ("ocv_grid_v", "entropic_grid_v_per_k"):
            if getattr(self, name).shape != (m,):
                raise EcmModelError(
                    f"EcmModel.{name} must have one value per soc_grid point ({m}), "
                    f"got shape {getattr(self, name).shape}"
                )
        if np.any(np.diff(self.ocv_grid_v) < 0):
            raise EcmModelError("EcmModel.ocv_grid_v must not decrease with SoC")
        if not 0 < self.coulombic_efficiency <= 1:
            raise EcmModelError(
                f"EcmModel.coulombic_efficiency must be in (0, 1], got {self.coulombic_efficiency}"
            )

    @property
    def n_cells(self) -> int:
        return int(self.capacity_ah.shape[0])

    @property
    def n_rc(self) -> int:
        """Number of RC pairs, 1..4."""
        return int(self.rc_resistance_ohm.shape[0])

    @property
    def tau_s(self) -> FloatArray:
        """Time constants R_k C_k, shape ``(k, n)``."""
        return np.asarray(self.rc_resistance_ohm * self.rc_capacitance_f)

    def ocv_v(self, soc: ArrayLike) -> FloatArray:
        """OCV of each cell at ``soc`` (shape ``(n,)`` or broadcastable) and its temperature."""
        s = np.asarray(soc, dtype=np.float64)
        ocv = _interp_linear_ends(s, self.soc_grid, self.ocv_grid_v)
        dudt = np.interp(s, self.soc_grid, self.entropic_grid_v_per_k)
        return np.asarray(ocv + dudt * (self.temperature_c - self.reference_temperature_c))

    def docv_dsoc_v(self, soc: ArrayLike) -> FloatArray:
        """Slope of the OCV curve in V per unit SoC at ``soc`` (the EKF's linearisation).

        A central difference over +-1 % SoC rather than the slope of one table segment:
        the tabulated curve is piecewise linear, and its segment slopes jump at every grid
        point, which would make the filter gain jump too.
        """
        s = np.asarray(soc, dtype=np.float64)
        h = _SLOPE_HALF_WIDTH
        return np.asarray((self.ocv_v(s + h) - self.ocv_v(s - h)) / (2.0 * h))

    def soc_from_ocv(self, voltage_v: ArrayLike) -> FloatArray:
        """SoC whose OCV (at each cell's temperature) is ``voltage_v``, clamped to the grid.

        Use it on rested voltages, e.g. to start a SoC filter after a long rest.
        """
        v = np.broadcast_to(np.asarray(voltage_v, dtype=np.float64), (self.n_cells,))
        curves = self.ocv_grid_v[None, :] + self.entropic_grid_v_per_k[None, :] * (
            self.temperature_c[:, None] - self.reference_temperature_c
        )
        # The curves are monotonic per cell: count the grid points below the voltage.
        m = self.soc_grid.size
        i = np.clip((curves < v[:, None]).sum(axis=1) - 1, 0, m - 2)
        rows = np.arange(self.n_cells)
        lo, hi = curves[rows, i], curves[rows, i + 1]
        span = np.where(hi > lo, hi - lo, 1.0)
        f = np.clip((v - lo) / span, 0.0, 1.0)
        return np.asarray(self.soc_grid[i] + f * (self.soc_grid[i + 1] - self.soc_grid[i]))


def _interp_linear_ends(x: FloatArray, xp: FloatArray, fp: FloatArray) -> FloatArray:
    """``np.interp`` inside the grid, continued with the end segments' slopes outside."""
    y = np.interp(x, xp, fp)
    lo_slope = (fp[1] - fp[0]) / (xp[1] - xp[0])
    hi_slope = (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    y = np.where(x < xp[0], fp[0] + lo_slope * (x - xp[0]), y)
    return np.asarray(np.where(x > xp[-1], fp[-1] + hi_slope * (x - xp[-1]), y))


def grid_axis(grid: FloatArray, x: FloatArray) -> tuple[np.ndarray, np.ndarray, FloatArray]:
    """Lower and upper grid index and fraction of ``x`` on ``grid`` (clamped to its ends)."""
    if grid.size == 1:
        zeros = np.zeros(x.shape, dtype=np.intp)
        return zeros, zeros, np.zeros(x.shape)
    xc = np.clip(x, grid[0], grid[-1])
    i = np.clip(np.searchsorted(grid, xc, side="right") - 1, 0, grid.size - 2)
    f = (xc - grid[i]) / (grid[i + 1] - grid[i])
    return i, i + 1, f


def _table_at(
    table: FloatArray,
    temperature: tuple[np.ndarray, np.ndarray, FloatArray],
    soc: tuple[np.ndarray, np.ndarray, FloatArray],
) -> FloatArray:
    """Bilinear look-up of a ``(2, n_T, n_SoC)`` table, averaged over both directions.

    The average (as in an EIS fit, whose excitation is symmetric) gives one value per cell
    that serves charge and discharge alike.
    """
    t0, t1, ft = temperature
    s0, s1, fs = soc
    out = np.zeros(ft.shape)
    for d in (DISCHARGE, CHARGE):
        tab = table[d]
        low = tab[t0, s0] * (1.0 - fs) + tab[t0, s1] * fs
        high = tab[t1, s0] * (1.0 - fs) + tab[t1, s1] * fs
        out += 0.5 * (low * (1.0 - ft) + high * ft)
    return out


def ecm_model_from_parameters(
    params: EcmParameters,
    *,
    n_cells: int,
    temperature_c: ArrayLike = 25.0,
    soc: ArrayLike = 0.5,
    soh: ArrayLike = 1.0,
    resistance_factor: ArrayLike = 1.0,
    n_rc: int | None = None,
    coulombic_efficiency: float = 1.0,
) -> EcmModel:
    """The BMS's model of ``n_cells`` cells from a parameter set's tables.

    R and C are read at each cell's temperature and SoC (bilinear, clamped to the tables,
    mean of the charge and discharge tables). Call it again as temperature and estimated
    SoC change: it is a few dozen array operations.

    Args:
        params: Cell parameter set (e.g. ``twin.params.load_parameter_set("nmc_okane2022")``).
        n_cells: Number of cells.
        temperature_c: Measured cell temperature, scalar or per cell.
        soc: SoC at which to read R and C (the present estimate), scalar or per cell.
        soh: Assumed usable capacity relative to ``params.nominal_capacity_ah``.
        resistance_factor: Assumed resistance relative to the tables (second life: ~1.3);
            it multiplies R0 and R_k and divides C_k, keeping the time constants, as the
            twin does.
        n_rc: Use the first ``n_rc`` RC pairs of the set (default: all).
        coulombic_efficiency: Fraction of charging current stored.

    Raises:
        EcmModelError: If an argument is out of range.
    """
    if n_cells < 1:
        raise EcmModelError(f"n_cells must be >= 1, got {n_cells}")
    k = params.n_rc if n_rc is None else n_rc
    if not 1 <= k <= params.n_rc:
        raise EcmModelError(
            f"n_rc must be within 1..{params.n_rc} for parameter set {params.name!r}, got {k}"
        )

    def per_cell(value: ArrayLike, name: str) -> FloatArray:
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim > 1 or arr.size not in (1, n_cells):
            raise EcmModelError(
                f"{name} must be a scalar or have {n_cells} values, got {arr.shape}"
            )
        return np.broadcast_to(arr.reshape(-1), (n_cells,)).copy()

    temp = per_cell(temperature_c, "temperature_c")
    s = per_cell(soc, "soc")
    rf = per_cell(resistance_factor, "resistance_factor")
    capacity = params.nominal_capacity_ah * per_cell(soh, "soh")
    t_axis = grid_axis(params.temperature_grid_c, temp)
    s_axis = grid_axis(params.soc_grid, s)
    r_rc = np.stack([_table_at(params.rc_resistance_ohm[j], t_axis, s_axis) for j in range(k)])
    tau = np.stack(
        [
            _table_at(params.rc_resistance_ohm[j] * params.rc_capacitance_f[j], t_axis, s_axis)
            for j in range(k)
        ]
    )
    return EcmModel(
        capacity_ah=capacity,
        r0_ohm=_table_at(params.r0_ohm, t_axis, s_axis) * rf,
        rc_resistance_ohm=r_rc * rf,
        rc_capacitance_f=tau / (r_rc * rf),
        temperature_c=temp,
        soc_grid=params.soc_grid,
        ocv_grid_v=params.ocv_v,
        entropic_grid_v_per_k=params.entropic_v_per_k,
        valid_at_soc=np.clip(s, params.soc_grid[0], params.soc_grid[-1]),
        reference_temperature_c=params.reference_temperature_c,
        coulombic_efficiency=coulombic_efficiency,
        source=f"parameter set {params.name!r}",
    )


def _update_pairs(update: EcmUpdate) -> list[tuple[float, float]]:
    """The update's (R_k, C_k) in the order given, pairs left out skipped (gaps closed up)."""
    return [
        (float(r), float(c))
        for r, c in (
            (update.r1, update.c1),
            (update.r2, update.c2),
            (update.r3, update.c3),
            (update.r4, update.c4),
        )
        if r is not None and c is not None
    ]


def ecm_update_soc(model: EcmModel, update: EcmUpdate) -> FloatArray:
    """The SoC per cell at which the update was fitted: its ``voltage`` through the OCV.

    The OCV is evaluated at ``model``'s cell temperatures.

    Raises:
        EcmModelError: If ``voltage`` lies outside the OCV curve by more than
            ``OCV_MARGIN_V`` (the parameters belong to another cell type).
    """
    voltage = float(update.voltage)
    ocv_lo = float(model.ocv_v(model.soc_grid[0]).min())
    ocv_hi = float(model.ocv_v(model.soc_grid[-1]).max())
    if not np.isfinite(voltage) or not ocv_lo - OCV_MARGIN_V <= voltage <= ocv_hi + OCV_MARGIN_V:
        raise EcmModelError(
            f"ECM update fitted at {voltage} V, outside this model's OCV range "
            f"{ocv_lo:.3f}..{ocv_hi:.3f} V: the parameters belong to another cell type; "
            "check the device's parameter set or the cloud fit"
        )
    return model.soc_from_ocv(voltage)


@dataclass(frozen=True, eq=False)
class EcmCorrection:
    """Factors an ECM update puts on the parameter set's R and C, the same for every cell.

    Attributes:
        r0: Factor on R0.
        rc_resistance: Factor on R_k per RC pair, in the parameter set's pair order, ``(k,)``.
        rc_capacitance: Factor on C_k, ``(k,)``.
        fitted_at_soc: SoC per cell of the fit (from the update's ``voltage``), ``(n,)``.
        fitted_at_temperature_c: Cell temperatures the factors were computed at, ``(n,)``.
        voltage_v: The update's ``voltage``.
    """

    r0: float
    rc_resistance: FloatArray
    rc_capacitance: FloatArray
    fitted_at_soc: FloatArray
    fitted_at_temperature_c: FloatArray
    voltage_v: float

    def __post_init__(self) -> None:
        for name in (
            "rc_resistance",
            "rc_capacitance",
            "fitted_at_soc",
            "fitted_at_temperature_c",
        ):
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    @property
    def n_rc(self) -> int:
        return int(self.rc_resistance.shape[0])

    def describe(self) -> str:
        """``R0 x1.07, R1 x0.95, C1 x1.10, ... (fitted at SoC 0.55, 24.3 degC)``."""
        parts = [f"R0 x{self.r0:.2f}"]
        for j in range(self.n_rc):
            parts.append(f"R{j + 1} x{self.rc_resistance[j]:.2f}")
            parts.append(f"C{j + 1} x{self.rc_capacitance[j]:.2f}")
        return (
            f"{', '.join(parts)} (fitted at SoC {float(np.mean(self.fitted_at_soc)):.2f}, "
            f"{float(np.mean(self.fitted_at_temperature_c)):.1f} degC)"
        )


def ecm_correction(table: EcmModel, update: EcmUpdate) -> EcmCorrection | None:
    """Factors that make the parameter set's model agree with the cloud's fit where it was made.

    ``k_R0 = R0_fit / R0_table``, and per RC pair ``k_Rk = R_k,fit / R_k,table`` and
    ``k_Ck = C_k,fit / C_k,table``, with the table's values averaged over the cells (the
    update is the cells' mean fit). The cloud's pairs and the table's are matched by time
    constant: the shortest fitted pair corrects the table's shortest pair, and so on.

    Args:
        table: The BMS's model from its parameter set (with its assumed SoH and resistance
            factor, no correction), read at the fit's SoC (:func:`ecm_update_soc`) and at
            the cell temperatures of the fit.
        update: The cloud's ECM.

    Returns:
        The factors, or ``None`` if the update has another number of RC pairs than
        ``table``: the pairs cannot be matched, and the caller falls back to
        :func:`apply_ecm_update`.

    Raises:
        EcmModelError: If a factor is not finite or outside ``CORRECTION_LIMITS`` (a fit that
            far from the tables is more likely a bad fit or the wrong parameter set than a
            real change of the cells).
    """
    pairs = _update_pairs(update)
    k = table.n_rc
    if len(pairs) != k:
        return None
    r_fit = np.array([r for r, _ in pairs])
    c_fit = np.array([c for _, c in pairs])
    r_table = table.rc_resistance_ohm.mean(axis=1)
    c_table = table.rc_capacitance_f.mean(axis=1)
    by_tau_fit = np.argsort(r_fit * c_fit, kind="stable")
    by_tau_table = np.argsort(table.tau_s.mean(axis=1), kind="stable")
    k_r = np.empty(k)
    k_c = np.empty(k)
    k_r[by_tau_table] = r_fit[by_tau_fit] / r_table[by_tau_table]
    k_c[by_tau_table] = c_fit[by_tau_fit] / c_table[by_tau_table]
    k_r0 = float(update.r0) / float(np.mean(table.r0_ohm))
    lo, hi = CORRECTION_LIMITS
    named = [("R0", k_r0)]
    for j in range(k):
        named += [(f"R{j + 1}", float(k_r[j])), (f"C{j + 1}", float(k_c[j]))]
    for name, factor in named:
        if not (np.isfinite(factor) and lo <= factor <= hi):
            raise EcmModelError(
                f"ECM update's {name} is {factor:.3g}x the value of the BMS's "
                f"{table.source or 'tables'} at SoC {float(np.mean(table.valid_at_soc)):.2f} "
                f"and {float(np.mean(table.temperature_c)):.1f} degC, outside {lo:g}..{hi:g}: "
                "check the cloud's fit of the sweep and the device's parameter set"
            )
    return EcmCorrection(
        r0=k_r0,
        rc_resistance=k_r,
        rc_capacitance=k_c,
        fitted_at_soc=table.valid_at_soc,
        fitted_at_temperature_c=table.temperature_c,
        voltage_v=float(update.voltage),
    )


def apply_ecm_correction(model: EcmModel, correction: EcmCorrection) -> EcmModel:
    """``model`` (read from the tables) with the correction's factors on R0, R_k and C_k.

    OCV, capacity, temperature and :attr:`EcmModel.valid_at_soc` (the SoC the tables were
    read at) are kept.

    Raises:
        EcmModelError: If the correction has another number of RC pairs than ``model``.
    """
    if correction.n_rc != model.n_rc:
        raise EcmModelError(
            f"ECM correction for {correction.n_rc} RC pairs cannot apply to a model with "
            f"{model.n_rc}: compute it from a model of the same parameter set"
        )
    return replace(
        model,
        r0_ohm=model.r0_ohm * correction.r0,
        rc_resistance_ohm=model.rc_resistance_ohm * correction.rc_resistance[:, None],
        rc_capacitance_f=model.rc_capacitance_f * correction.rc_capacitance[:, None],
        source=f"{model.source} corrected by an ECM update ({correction.describe()})",
    )


def apply_ecm_update(model: EcmModel, update: EcmUpdate) -> EcmModel:
    """A new model with the cloud's R0, R_k, C_k for every cell (OCV and capacity kept).

    The replacement a BMS falls back to when it cannot use the update as a correction of
    its tables (:func:`ecm_correction`): the values hold at the fit's operating point only.
    The number of RC pairs becomes the number of pairs the update gives (pairs left out,
    e.g. ``r3``/``c3``, are simply not part of the new model; a gap such as ``r2`` missing
    but ``r3`` given is closed up). ``voltage`` becomes :attr:`EcmModel.valid_at_soc`
    (see the module docstring). The model is immutable, so the update takes effect in
    the first estimation step that is handed the returned model.

    Raises:
        EcmModelError: If ``voltage`` lies outside the OCV curve by more than
            ``OCV_MARGIN_V``, or a value is not finite and positive.
    """
    soc = ecm_update_soc(model, update)
    pairs = _update_pairs(update)
    n = model.n_cells
    return replace(
        model,
        r0_ohm=np.full(n, float(update.r0)),
        rc_resistance_ohm=np.array([np.full(n, r) for r, _ in pairs]),
        rc_capacitance_f=np.array([np.full(n, c) for _, c in pairs]),
        valid_at_soc=soc,
        source=f"ecm_update fitted at {float(update.voltage):.3f} V ({len(pairs)} RC pairs)",
    )
