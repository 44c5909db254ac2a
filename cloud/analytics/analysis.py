"""The analysis sections of one cell, vectorised over all cycles with numpy.

Pure functions of a :class:`~cloud.analytics.formats.CellRecord`; no plotting and no I/O
(the plots take the arrays in :class:`Analysis`). Capacities are in Ah, voltages in V,
temperatures in degC; discharge current is negative (BatteryML's sign, see formats).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from cloud.analytics.formats import AnalyticsInputError, CellRecord, FloatArray, IntArray

__all__ = ["Analysis", "AnalysisConfig", "analyse"]

BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class AnalysisConfig:
    """Thresholds and resolutions; the defaults suit lithium-ion cells of any size."""

    eol_fraction: float = 0.8  # end of life: 80 % of the initial capacity
    voltage_tolerance_v: float = 0.02  # a limit counts as crossed beyond this margin
    ic_bin_v: float = 0.005  # dQ/dV bin width, widened to the median sample step
    ic_smooth_v: float = 0.012  # Gaussian smoothing of dQ/dV along voltage, sigma
    peak_window_v: float = 0.03  # how far a dQ/dV peak may move from one cycle to the next
    bootstrap_samples: int = 200
    interval_level: float = 0.9
    curve_points: int = 100  # points per curve in the response
    seed: int = 0


@dataclass
class Analysis:
    """The response sections (JSON-ready) plus the arrays the plots need."""

    sections: dict[str, dict[str, Any]]
    plot_data: dict[str, Any] = field(default_factory=dict)


def analyse(cell: CellRecord, config: AnalysisConfig | None = None) -> Analysis:
    """All sections of the response except the plots (see :mod:`cloud.analytics.plots`)."""
    cfg = config or AnalysisConfig()
    cycles = _cycle_table(cell)
    quality = cell.quality
    valid = cycles["valid"]
    if not valid.any():
        raise AnalyticsInputError(
            "no cycle has a discharge: the current never goes below "
            f"-{cell.current_threshold_a:.3g} A (discharge must be negative or the "
            "discharge_capacity_in_Ah must rise)"
        )
    skipped = cell.cycle_number[~valid]
    if skipped.size:
        quality["cycles_without_discharge"] = _head(skipped)
    quality["cycles_analysed"] = int(valid.sum())
    fade = _capacity_fade(cycles, quality)
    projection = _project_eol(cell, cycles, fade, cfg)
    ic = _incremental_capacity(cell, cycles, cfg)
    profile = _voltage_profile(cell, cycles, cfg)
    limits = _voltage_limits(cell, cfg)
    temperature = _temperature(cell, cycles)
    stats = _statistics(cell, cycles, limits, projection)
    health = _health(cell, cycles, fade, projection, ic, limits, temperature)
    sections: dict[str, dict[str, Any]] = {
        "metadata": _metadata(cell, temperature),
        "capacity_fade": fade["section"],
        "voltage_profile": {
            "voltage_curves": profile["curves"],
            "voltage_stats": {
                "min_voltage": _num(np.nanmin(cell.voltage_v)),
                "max_voltage": _num(np.nanmax(cell.voltage_v)),
                "avg_voltage": _num(np.nanmean(cell.voltage_v)),
            },
            "voltage_profile_plot": None,
            "differential_voltage_plot": None,
            "differential_voltage": profile["dvdq"],
            "incremental_capacity": ic["section"],
            "incremental_capacity_plot": None,
        },
        "temperature_analysis": temperature["section"],
        "statistical_metrics": stats,
        "battery_health": health,
        "data_quality": quality,
    }
    plot_data = {
        "capacity": {
            "cycles": cycles["number"][valid],
            "charge": cycles["q_charge"][valid],
            "discharge": cycles["q_discharge"][valid],
            "ce": cycles["ce"][valid],
            "outliers": fade["outliers"],
            "fit": projection["curve"],
            "eol_capacity": projection["eol_capacity"],
        },
        "profiles": profile["plot"],
        "dvdq": profile["dvdq"],
        "ic": ic["plot"],
        "temperature": temperature["plot"],
    }
    return Analysis(sections=sections, plot_data=plot_data)


# --- per-cycle table -----------------------------------------------------------------


def _cycle_table(cell: CellRecord) -> dict[str, Any]:
    """Per-cycle capacities (column or coulomb counting), CE, temperatures, voltages."""
    n, start, index = cell.n_cycles, cell.start, cell.cycle_index
    first = start[:-1]
    charging = cell.current_a > cell.current_threshold_a
    discharging = cell.current_a < -cell.current_threshold_a
    step = np.diff(cell.time_s, append=np.nan)
    step[start[1:] - 1] = 0.0  # the last sample of a cycle has no step inside it
    throughput = np.abs(cell.current_a) * np.nan_to_num(step) / 3600.0  # Ah per sample
    cc_charge = _per_cycle(index, np.where(charging, throughput, 0.0), n)
    cc_discharge = _per_cycle(index, np.where(discharging, throughput, 0.0), n)
    q_charge: FloatArray = cc_charge
    if cell.charge_column_usable:
        q_charge = _phase_range(cell.charge_capacity_ah, charging, start)
    q_discharge: FloatArray = cc_discharge
    if cell.discharge_column_usable:
        q_discharge = _phase_range(cell.discharge_capacity_ah, discharging, start)
    with np.errstate(invalid="ignore", divide="ignore"):
        if cell.charge_column_usable and cell.discharge_column_usable:
            ce = 100.0 * q_discharge / q_charge
        else:  # one method for both phases, so sampling errors cancel
            ce = 100.0 * cc_discharge / cc_charge
    ce = np.where(np.isfinite(ce) & (ce > 0), ce, np.nan)
    counts = np.diff(start).astype(np.float64)
    finite_t = np.isfinite(cell.temperature_c)
    t_count = np.bincount(index, weights=finite_t.astype(np.float64), minlength=n)
    t_sum = np.bincount(index, weights=np.where(finite_t, cell.temperature_c, 0.0), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        t_mean = np.where(t_count > 0, t_sum / t_count, np.nan)
    t_max = np.maximum.reduceat(np.where(finite_t, cell.temperature_c, -np.inf), first)
    t_max = np.where(np.isfinite(t_max), t_max, np.nan)
    scale = np.nanmedian(q_discharge[q_discharge > 0]) if (q_discharge > 0).any() else 0.0
    valid = np.isfinite(q_discharge) & (q_discharge > 0.02 * scale) & (scale > 0)
    # per-sample throughput of each phase, for the profiles and dQ/dV
    dq_discharge = np.where(discharging, throughput, 0.0)
    if cell.discharge_column_usable:
        rise = np.diff(cell.discharge_capacity_ah, prepend=np.nan)
        rise[first] = 0.0
        dq_discharge = np.where(discharging & np.isfinite(rise), np.clip(rise, 0, None), 0.0)
    dq_charge = np.where(charging, throughput, 0.0)
    return {
        "number": cell.cycle_number,
        "q_charge": q_charge,
        "q_discharge": q_discharge,
        "ce": ce,
        "t_mean": t_mean,
        "t_max": t_max,
        "valid": valid,
        "samples": counts,
        "charging": charging,
        "discharging": discharging,
        "dq_charge": dq_charge,
        "dq_discharge": dq_discharge,
    }


def _per_cycle(index: IntArray, weights: FloatArray, n: int) -> FloatArray:
    return np.asarray(np.bincount(index, weights=weights, minlength=n), dtype=np.float64)


def _phase_range(q: FloatArray, phase: BoolArray, start: IntArray) -> FloatArray:
    """Rise of a capacity column over each cycle's phase, from the sample before the
    phase to the sample after it (so a column that restarts at 0, runs on, or holds
    what passed before each sample all work)."""
    before = np.zeros_like(phase)
    before[:-1] = phase[1:]
    before[start[1:-1] - 1] = False  # not across a cycle boundary
    after = np.zeros_like(phase)
    after[1:] = phase[:-1]
    after[start[1:-1]] = False
    window = (phase | before | after) & np.isfinite(q)
    top = np.maximum.reduceat(np.where(window, q, -np.inf), start[:-1])
    bottom = np.minimum.reduceat(np.where(window, q, np.inf), start[:-1])
    with np.errstate(invalid="ignore"):
        rise = top - bottom
    return np.where(np.isfinite(rise), rise, np.nan)


# --- capacity fade and end of life ---------------------------------------------------


def _capacity_fade(cycles: dict[str, Any], quality: dict[str, Any]) -> dict[str, Any]:
    valid = cycles["valid"]
    numbers = cycles["number"][valid]
    q = cycles["q_discharge"][valid]
    outliers = _outliers(q)
    if outliers.any():
        quality["capacity_outlier_cycles"] = _head(numbers[outliers])
    clean_q, clean_n = q[~outliers], numbers[~outliers]
    k = min(3, clean_q.size)
    initial = float(np.median(clean_q[:k]))
    final = float(np.median(clean_q[-k:]))
    fade_pct = 100.0 * (initial - final) / initial if initial > 0 else math.nan
    span = int(clean_n[-1] - clean_n[0])
    section = {
        "cycle_numbers": numbers.tolist(),
        "charge_capacities": _list(cycles["q_charge"][valid]),
        "discharge_capacities": _list(q),
        "coulombic_efficiencies": _list(cycles["ce"][valid], 3),
        "capacity_fade_percentage": _num(fade_pct) if numbers.size > 1 else None,
        "capacity_fade_rate_per_cycle": _num(fade_pct / span) if span > 0 else None,
        "capacity_retention_percentage": _num(100.0 - fade_pct) if numbers.size > 1 else None,
        "capacity_plot": None,
        "initial_capacity_in_Ah": _num(initial),
        "final_capacity_in_Ah": _num(final),
        "method": "discharge capacity per cycle; initial and final are medians of the "
        "first and last 3 cycles without outliers; fade rate in % per cycle",
    }
    return {
        "section": section,
        "numbers": clean_n,
        "q": clean_q,
        "initial": initial,
        "retention": 100.0 - fade_pct if numbers.size > 1 else 100.0,
        "outliers": numbers[outliers],
    }


def _outliers(q: FloatArray) -> BoolArray:
    """Capacities far from their neighbours' median (check-ups, partial cycles)."""
    if q.size < 5:
        return np.zeros(q.size, dtype=bool)
    local = np.median(sliding_window_view(np.pad(q, 2, mode="edge"), 5), axis=-1)
    deviation = np.abs(q - local)
    mad = float(np.median(deviation)) * 1.4826
    limit = max(6.0 * mad, 0.02 * float(np.median(q)))
    return np.asarray(deviation > limit, dtype=bool)


_EXPONENTS = np.linspace(0.3, 3.0, 55)  # power-law exponents tried (b), steps of 0.05
_FIT_POINTS = 300  # longer histories are fitted on this many bin means


def _project_eol(
    cell: CellRecord, cycles: dict[str, Any], fade: dict[str, Any], cfg: AnalysisConfig
) -> dict[str, Any]:
    """Fit Q(x) = q0 - a * x^b (x: cycles since new) and project where Q reaches the EOL
    capacity; a moving-block bootstrap of the residuals gives the interval."""
    numbers, q = fade["numbers"], fade["q"]
    spent = cell.metadata.get("already_spent_cycles")
    spent = float(spent) if isinstance(spent, int | float) and spent > 0 else 0.0
    first, last = float(numbers[0]), float(numbers[-1])
    # cycle numbers count from the start of the test (1, or 0 in some files); a file
    # that starts later has dropped cycles (e.g. formation), which the cell did see
    to_cycle = min(first, 1.0) - 1.0 - spent  # x + to_cycle = cycle number
    x = numbers.astype(np.float64) - to_cycle
    eol_capacity = cfg.eol_fraction * fade["initial"]
    empty: dict[str, Any] = {
        "fade_rate": None,
        "projected_eol_cycle": None,
        "confidence": None,
        "projected_eol_interval": None,
        "interval_level": cfg.interval_level,
        "eol_capacity_in_Ah": _num(eol_capacity),
        "eol_threshold_percentage": 100 * cfg.eol_fraction,
        "model": "Q = q0 - a * x^b, x = cycles since new (already_spent_cycles + cycle "
        "number); b from 0.3 to 3 by least squares",
        "parameters": None,
        "r_squared": None,
        "reaching_eol_fraction": None,
        "curve": None,
        "eol_capacity": eol_capacity,
        "note": None,
    }
    if q.size < 5:
        empty["note"] = f"{q.size} usable cycles: at least 5 are needed for a projection"
        return empty
    if q.size > _FIT_POINTS:  # bin means: the bootstrap below is (samples x b x points)
        groups = np.linspace(0, q.size, _FIT_POINTS + 1).astype(np.int64)[:-1]
        counts = np.diff(np.r_[groups, q.size])
        q = np.add.reduceat(q, groups) / counts
        x = np.add.reduceat(x, groups) / counts
    scale = float(np.median(q))
    y = q / scale  # well conditioned
    powers = x[None, :] ** _EXPONENTS[:, None]  # (b, n)
    design = np.stack([np.ones_like(powers), -powers], axis=2)  # (b, n, 2)
    pinv = np.linalg.pinv(design)  # (b, 2, n)
    coef = pinv @ y  # (b, 2)
    fitted = np.einsum("bnk,bk->bn", design, coef)
    sse = ((y[None, :] - fitted) ** 2).sum(axis=1)
    best = int(np.argmin(sse))
    q0, a = coef[best] * scale
    b = float(_EXPONENTS[best])
    residual = y - fitted[best]
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(sse[best]) / total if total > 0 else None
    slope = -a * b * x[-1] ** (b - 1.0)  # Ah per cycle at the last cycle
    target = eol_capacity / scale
    eol_x = _eol_x(coef[best][None, :], np.array([b]), target)[0]
    # moving-block bootstrap of the residuals (they are correlated from cycle to cycle)
    rng = np.random.default_rng(cfg.seed)
    block = max(1, round(q.size ** (1 / 3)))
    n_blocks = -(-q.size // block)
    starts = rng.integers(0, q.size - block + 1, size=(cfg.bootstrap_samples, n_blocks))
    picks = (starts[:, :, None] + np.arange(block)).reshape(cfg.bootstrap_samples, -1)
    y_star = fitted[best][None, :] + residual[picks[:, : q.size]]  # (B, n)
    coef_star = np.einsum("bkn,sn->sbk", pinv, y_star)  # (B, b, 2)
    fit_star = np.einsum("bnk,sbk->sbn", design, coef_star)
    sse_star = ((y_star[:, None, :] - fit_star) ** 2).sum(axis=2)
    pick = np.argmin(sse_star, axis=1)
    chosen = coef_star[np.arange(cfg.bootstrap_samples), pick]
    eol_star = _eol_x(chosen, _EXPONENTS[pick], target)
    tail = (1.0 - cfg.interval_level) / 2.0
    reached = np.isfinite(eol_star)
    # a fade the noise could make is no fade: the fitted drop over the measured cycles
    # must stand clear of the residual noise of a mean of about half of them
    noise = math.sqrt(float(sse[best]) / max(q.size - 3, 1))
    seen = float(fitted[best][0] - fitted[best][-1])
    significant = seen > 8.0 * noise / math.sqrt(q.size)
    projected = eol_x + to_cycle if math.isfinite(eol_x) and significant else None
    interval: list[int | None] | None = None
    confidence = None
    if projected is not None:
        ends = np.quantile(
            np.where(reached, eol_star, np.inf), [tail, 1.0 - tail], method="inverted_cdf"
        )
        lo, hi = (float(e) + to_cycle if np.isfinite(e) else None for e in ends)
        interval = [_int(lo), _int(hi)]
        confidence = 0.0
        if lo is not None and hi is not None:
            confidence = max(0.0, min(1.0, 1.0 - (hi - lo) / (2.0 * (projected - to_cycle))))
    note = None
    if projected is None and not significant:
        note = (
            f"no significant fade: the fitted drop over the measured cycles "
            f"({100 * seen:.2g} %) is within the noise ({100 * noise:.2g} % rms per cycle)"
        )
    elif projected is None:
        note = "the fitted capacity does not fall to the EOL capacity: no measurable fade"
    elif projected > 50 * max(last, 1.0):
        note = "projection far beyond the measured cycles: an extrapolation, see the interval"
    grid_end = min(projected * 1.05, last * 3.0) if projected else last * 1.2
    grid = np.linspace(first, max(grid_end, last), 80)
    curve = q0 - a * (grid - to_cycle) ** b
    return {
        **empty,
        "fade_rate": _num(slope, 6),
        "projected_eol_cycle": _int(projected),
        "confidence": _num(confidence, 3),
        "projected_eol_interval": interval,
        "parameters": {"q0_in_Ah": _num(q0), "a_in_Ah": _num(a, 6), "b": _num(b, 3)},
        "r_squared": _num(r2, 4),
        "reaching_eol_fraction": _num(float(reached.mean()), 3),
        "curve": (grid, curve),
        "note": note,
    }


def _eol_x(coef: FloatArray, b: FloatArray, target: float) -> FloatArray:
    """x where q0 - a x^b = target (inf when the fit does not fade)."""
    q0, a = coef[:, 0], coef[:, 1]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        x = ((q0 - target) / a) ** (1.0 / b)
    ok = (a > 0) & (q0 > target) & np.isfinite(x)
    return np.where(ok, x, np.inf)


# --- voltage profiles, dV/dQ, dQ/dV --------------------------------------------------


def _selected(cycles: dict[str, Any], count: int = 5) -> IntArray:
    valid = np.flatnonzero(cycles["valid"])
    picks = np.unique(np.round(np.linspace(0, valid.size - 1, min(count, valid.size))))
    return valid[picks.astype(np.int64)]


def _voltage_profile(
    cell: CellRecord, cycles: dict[str, Any], cfg: AnalysisConfig
) -> dict[str, Any]:
    curves, plot, dvdq = [], [], []
    for c in _selected(cycles):
        lo, hi = cell.start[c], cell.start[c + 1]
        v = cell.voltage_v[lo:hi]
        entry: dict[str, Any] = {"cycle_number": int(cell.cycle_number[c])}
        shown: dict[str, Any] = {"cycle_number": int(cell.cycle_number[c])}
        for phase, mask_key, dq_key in (
            ("charge", "charging", "dq_charge"),
            ("discharge", "discharging", "dq_discharge"),
        ):
            mask = cycles[mask_key][lo:hi] & np.isfinite(v)
            if mask.sum() < 3:
                entry[f"{phase}_data"] = None
                continue
            q = np.cumsum(cycles[dq_key][lo:hi])[mask]
            q = q - q[0]
            keep = _thin(q.size, cfg.curve_points)
            entry[f"{phase}_data"] = {
                "capacities": _list(q[keep]),
                "voltages": _list(v[mask][keep]),
            }
            shown[phase] = (q[keep], v[mask][keep])
            if phase == "discharge":
                dvdq.append({"cycle_number": entry["cycle_number"], **_dv_dq(q, v[mask])})
        curves.append(entry)
        plot.append(shown)
    return {"curves": curves, "plot": plot, "dvdq": dvdq}


def _thin(n: int, points: int) -> IntArray:
    return np.unique(np.linspace(0, n - 1, min(n, points)).astype(np.int64))


def _dv_dq(q: FloatArray, v: FloatArray, bins: int = 80) -> dict[str, list[float | None]]:
    """dV/dQ of one discharge on a uniform capacity grid (mean voltage per bin, smoothed)."""
    span = float(q[-1] - q[0])
    if span <= 0:
        return {"capacities": [], "dv_dq": []}
    edges = np.linspace(q[0], q[-1], bins + 1)
    which = np.clip(np.searchsorted(edges, q, side="right") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    mean_v = np.bincount(which, weights=v, minlength=bins) / np.maximum(count, 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    have = count > 0
    mean_v = np.interp(centres, centres[have], mean_v[have])
    slope = _smooth(np.gradient(mean_v, centres), 1.5)
    # the ends of a discharge (polarisation steps) dwarf the features in between
    inner = slice(2, bins - 2)
    return {"capacities": _list(centres[inner]), "dv_dq": _list(-slope[inner], 5)}


def _smooth(values: FloatArray, sigma: float) -> FloatArray:
    """Gaussian smoothing along the last axis (edge values repeated beyond the ends)."""
    radius = max(1, int(4.0 * sigma + 0.5))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    pad = [(0, 0)] * (values.ndim - 1) + [(radius, radius)]
    windows = sliding_window_view(np.pad(values, pad, mode="edge"), 2 * radius + 1, axis=-1)
    return np.asarray(windows @ kernel, dtype=np.float64)


def _peaks(y: FloatArray, *, min_prominence: float, distance: int) -> list[int]:
    """Indices of local maxima of ``y`` by falling prominence (the height above the
    higher of the two lowest points before a higher peak on either side)."""
    inner = np.flatnonzero((y[1:-1] > y[:-2]) & (y[1:-1] >= y[2:])) + 1
    found: list[tuple[float, int]] = []
    for p in inner.tolist():
        higher_left = np.flatnonzero(y[:p] > y[p])
        higher_right = np.flatnonzero(y[p + 1 :] > y[p])
        left = y[higher_left[-1] if higher_left.size else 0 : p + 1].min()
        right = y[p : p + 1 + (higher_right[0] + 1 if higher_right.size else y.size)].min()
        prominence = float(y[p] - max(left, right))
        if prominence >= min_prominence:
            found.append((prominence, p))
    kept: list[int] = []
    for _, top in sorted(found, reverse=True):
        if all(abs(top - q) >= distance for q in kept):
            kept.append(top)
    return kept


def _track(dqdv: FloatArray, start_bin: int, half: int) -> tuple[FloatArray, FloatArray]:
    """A peak's position (in bins) and height in every row. Each row's maximum is
    searched within ``half`` bins of the median of the last five positions (the track
    follows a drifting peak, not the noise); the position is then the centroid of the
    top 30 % of the peak around it, steadier than the maximum of a broad, flat top."""
    rows, n_bins = dqdv.shape
    found = np.empty(rows, dtype=np.int64)
    recent = [int(start_bin)]
    for r in range(rows):
        centre = sorted(recent[-5:])[len(recent[-5:]) // 2]
        lo, hi = max(0, centre - half), min(n_bins, centre + half + 1)
        found[r] = lo + int(np.argmax(dqdv[r, lo:hi]))
        recent.append(int(found[r]))
    window = np.clip(found[:, None] + np.arange(-half, half + 1), 0, n_bins - 1)
    values = dqdv[np.arange(rows)[:, None], window]
    height = values.max(axis=1)
    weight = np.clip(values - 0.7 * height[:, None], 0.0, None)
    total = weight.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        position = np.where(total > 0, (weight * window).sum(axis=1) / total, found)
    return np.asarray(position, dtype=np.float64), np.asarray(height, dtype=np.float64)


def _trend(x: IntArray, y: FloatArray) -> tuple[float, float, float]:
    """A straight line through (x, y): its values at the first and the last x, and the
    standard error of their difference (inf with fewer than 3 points)."""
    if x.size < 3:
        return float(y[0]), float(y[-1]), math.inf
    xf = x.astype(np.float64)
    slope, intercept = np.polyfit(xf, y, 1)
    residual = y - (intercept + slope * xf)
    spread = float(((xf - xf.mean()) ** 2).sum())
    stderr = math.sqrt(float((residual**2).sum()) / (x.size - 2) / spread) if spread else math.inf
    span = float(xf[-1] - xf[0])
    return float(intercept + slope * xf[0]), float(intercept + slope * xf[-1]), stderr * span


def _incremental_capacity(
    cell: CellRecord, cycles: dict[str, Any], cfg: AnalysisConfig
) -> dict[str, Any]:
    """dQ/dV of every discharge on one voltage grid: the discharged charge Q(V) of each
    cycle, made monotonic (a running minimum of V), is interpolated at the bin edges, so
    each bin gets exactly the charge that passed between its edges (no derivative of
    noisy samples, no aliasing between sample and bin spacing); then a Gaussian smooth
    along voltage. Peaks found on the first cycles are followed cycle by cycle within
    ``peak_window_v``. All cycles in one ``np.interp`` call: each cycle's keys are
    offset by a voltage span, so the concatenation stays sorted."""
    mask = cycles["discharging"] & np.isfinite(cell.voltage_v) & (cycles["dq_discharge"] > 0)
    mask &= cycles["valid"][cell.cycle_index]
    empty: dict[str, Any] = {"section": {"method": None, "curves": [], "peaks": []}, "plot": None}
    if mask.sum() < 20:
        return empty
    v = cell.voltage_v[mask]
    dq = cycles["dq_discharge"][mask]
    index = cell.cycle_index[mask]
    rows = np.unique(index)  # cycles with a discharge, in order
    row_of = np.searchsorted(rows, index)
    first = np.flatnonzero(np.r_[True, row_of[1:] != row_of[:-1]])
    done = np.cumsum(dq)
    q = done - np.repeat((done - dq)[first], np.diff(np.r_[first, dq.size])) - 0.5 * dq
    span = float(v.max() - v.min()) + 1.0
    v_mono = np.minimum.accumulate(v - span * row_of) + span * row_of
    v_lo, v_hi = np.percentile(v_mono, [0.5, 99.5])
    steps = np.abs(np.diff(v_mono))[row_of[1:] == row_of[:-1]]
    typical = float(np.median(steps[steps > 0])) if (steps > 0).any() else cfg.ic_bin_v
    width = max(cfg.ic_bin_v, typical, (v_hi - v_lo) / 600.0)
    n_bins = max(10, math.ceil((v_hi - v_lo) / width))
    edges = v_lo + width * np.arange(n_bins + 1)
    low = np.minimum.reduceat(v_mono, first)[:, None]
    high = np.maximum.reduceat(v_mono, first)[:, None]
    offsets = span * np.arange(rows.size)[:, None]
    at_edges = np.interp(
        (offsets - np.clip(edges[None, :], low, high)).ravel(), span * row_of - v_mono, q
    ).reshape(rows.size, n_bins + 1)
    dqdv = _smooth(np.diff(at_edges, axis=1) / -width, max(1.0, cfg.ic_smooth_v / width))
    centres = 0.5 * (edges[1:] + edges[:-1])
    numbers = cell.cycle_number[rows]
    reference = dqdv[: min(3, rows.size)].mean(axis=0)
    found = _peaks(reference, min_prominence=0.1 * float(reference.max()), distance=3)[:3]
    half = max(2, round(cfg.peak_window_v / width))
    peaks = []
    tracks = []
    for start_bin in sorted(found):
        position, height = _track(dqdv, start_bin, half)
        voltage = centres[0] + width * position
        trend = _trend(numbers, voltage)
        h_trend = _trend(numbers, height)
        shift_mv = 1000.0 * (trend[1] - trend[0])
        significant = abs(trend[1] - trend[0]) > 3.0 * trend[2]
        thin = _thin(rows.size, 200)
        peaks.append(
            {
                "reference_voltage_V": _num(centres[start_bin], 4),
                "reference_height_Ah_per_V": _num(h_trend[0]),
                "cycle_numbers": numbers[thin].tolist(),
                "voltage_V": _list(voltage[thin], 4),
                "height_Ah_per_V": _list(height[thin]),
                "shift_mV": _num(shift_mv, 2),
                "shift_significant": bool(significant),
                "height_change_percentage": (
                    _num(100.0 * (h_trend[1] - h_trend[0]) / h_trend[0]) if h_trend[0] > 0 else None
                ),
            }
        )
        tracks.append((numbers, voltage, height))
    picks = np.searchsorted(rows, _selected(cycles))
    picks = picks[(picks < rows.size)]
    thin_v = _thin(n_bins, 150)
    section = {
        "method": f"discharged charge between the edges of {width * 1000:.1f} mV voltage "
        f"bins (Q(V) interpolated), Gaussian smoothing sigma {cfg.ic_smooth_v * 1000:g} mV; "
        f"peaks followed cycle to cycle within {cfg.peak_window_v * 1000:.0f} mV",
        "voltage_grid_V": _list(centres[thin_v], 4),
        "curves": [
            {"cycle_number": int(numbers[r]), "dq_dv_Ah_per_V": _list(dqdv[r, thin_v])}
            for r in picks
        ],
        "peaks": peaks,
    }
    plot = {
        "voltage": centres,
        "curves": [(int(numbers[r]), dqdv[r]) for r in picks],
        "tracks": tracks,
    }
    return {"section": section, "plot": plot, "peaks": peaks}


# --- limits, temperature, statistics, health, metadata -------------------------------


def _voltage_limits(cell: CellRecord, cfg: AnalysisConfig) -> dict[str, Any]:
    out: dict[str, dict[str, Any]] = {}
    for name, key, sign in (
        ("over_voltage", "max_voltage_limit_in_V", 1.0),
        ("under_voltage", "min_voltage_limit_in_V", -1.0),
    ):
        limit = cell.metadata.get(key)
        if not isinstance(limit, int | float) or not math.isfinite(limit):
            out[name] = {"limit_in_V": None, "note": f"no {key} in the metadata"}
            continue
        excess = sign * (cell.voltage_v - float(limit))
        beyond = np.nan_to_num(excess, nan=-np.inf) > cfg.voltage_tolerance_v
        cycles = np.unique(cell.cycle_index[beyond])
        out[name] = {
            "limit_in_V": float(limit),
            "tolerance_in_V": cfg.voltage_tolerance_v,
            "samples": int(beyond.sum()),
            "cycles": int(cycles.size),
            "cycle_numbers": _head(cell.cycle_number[cycles]),
            "max_excursion_in_V": _num(float(np.nanmax(excess)), 4),
        }
    return out


def _temperature(cell: CellRecord, cycles: dict[str, Any]) -> dict[str, Any]:
    temps = cell.temperature_c[np.isfinite(cell.temperature_c)]
    section: dict[str, Any] = {
        "has_temperature_data": bool(temps.size),
        "average_temperature": None,
        "temperature_range": None,
        "temperature_stats": {},
        "temperature_vs_capacity_plot": None,
    }
    if not temps.size:
        nominal = _temperature_from_id(cell.metadata.get("cell_id"))
        if nominal is not None:
            section["average_temperature"] = nominal
            section["temperature_range"] = {"min": nominal, "max": nominal}
            section["temperature_stats"] = {"source": "test temperature in the cell id"}
            cell.quality.setdefault("notes", []).append(
                f"test temperature {nominal:g} degC taken from the cell id"
            )
        return {"section": section, "plot": None, "nominal": nominal}
    p10, median, p90 = np.percentile(temps, [10, 50, 90])
    valid = cycles["valid"] & np.isfinite(cycles["t_mean"])
    correlation = None
    if valid.sum() > 2 and np.std(cycles["t_mean"][valid]) > 0:
        correlation = float(
            np.corrcoef(cycles["t_mean"][valid], cycles["q_discharge"][valid])[0, 1]
        )
    section.update(
        average_temperature=_num(temps.mean()),
        temperature_range={"min": _num(temps.min()), "max": _num(temps.max())},
        temperature_stats={
            "mean": _num(temps.mean()),
            "median": _num(median),
            "std_dev": _num(temps.std()),
            "p10": _num(p10),
            "p90": _num(p90),
            "max_cycle_mean": _num(np.nanmax(cycles["t_mean"])),
            "capacity_correlation": _num(correlation, 3),
        },
    )
    plot = {
        "t_mean": cycles["t_mean"][valid],
        "q": cycles["q_discharge"][valid],
        "cycles": cycles["number"][valid],
    }
    return {"section": section, "plot": plot, "nominal": float(median)}


def _temperature_from_id(cell_id: Any) -> float | None:
    """CALB_35_B249 -> 35 (the seed's fallback for files without temperatures)."""
    if not isinstance(cell_id, str):
        return None
    match = re.match(r"^CALB_(-?\d+)_", cell_id)
    return float(match.group(1)) if match else None


def _stats(values: FloatArray) -> dict[str, float | None]:
    values = values[np.isfinite(values)]
    if not values.size:
        return {"mean": None, "median": None, "min": None, "max": None, "std_dev": None}
    return {
        "mean": _num(values.mean()),
        "median": _num(np.median(values)),
        "min": _num(values.min()),
        "max": _num(values.max()),
        "std_dev": _num(values.std()),
    }


def _statistics(
    cell: CellRecord,
    cycles: dict[str, Any],
    limits: dict[str, Any],
    projection: dict[str, Any],
) -> dict[str, Any]:
    valid = cycles["valid"]
    current = cell.current_a
    charging, discharging = cycles["charging"], cycles["discharging"]
    life = {k: v for k, v in projection.items() if k not in ("curve", "eol_capacity")}
    return {
        "charge_discharge_stats": {
            "charge_capacity": _stats(cycles["q_charge"][valid]),
            "discharge_capacity": _stats(cycles["q_discharge"][valid]),
            "coulombic_efficiency": _stats(cycles["ce"][valid]),
        },
        "current_stats": {
            **_stats(current),
            "max_charge_current_in_A": _num(current[charging].max()) if charging.any() else None,
            "max_discharge_current_in_A": (
                _num(-current[discharging].min()) if discharging.any() else None
            ),
            "rest_threshold_in_A": _num(cell.current_threshold_a),
        },
        "voltage_stats": {**_stats(cell.voltage_v), **limits},
        "cycle_life_projection": life,
    }


def _health(
    cell: CellRecord,
    cycles: dict[str, Any],
    fade: dict[str, Any],
    projection: dict[str, Any],
    ic: dict[str, Any],
    limits: dict[str, Any],
    temperature: dict[str, Any],
) -> dict[str, Any]:
    retention = float(fade["retention"])
    score = max(0.0, min(100.0, retention))
    status = next(s for bound, s in _STATUS if score >= bound)
    details: list[dict[str, Any]] = []

    def flag(name: str, detail: str, value: float | None) -> None:
        details.append({"indicator": name, "detail": detail, "value": _num(value, 4)})

    if retention < 95:
        flag("Capacity Fade", f"{100 - retention:.1f} % of the initial capacity lost", retention)
    ce = cycles["ce"][cycles["valid"]]
    if np.isfinite(ce).any() and float(np.nanmean(ce)) < 98:
        mean_ce = float(np.nanmean(ce))
        flag("Low Coulombic Efficiency", f"mean {mean_ce:.2f} % (below 98 %)", mean_ce)
    for name, label in (("over_voltage", "Overvoltage"), ("under_voltage", "Undervoltage")):
        entry = limits[name]
        if entry.get("samples"):
            flag(
                f"{label} Detected",
                f"{entry['samples']} samples in {entry['cycles']} cycles beyond "
                f"{entry['limit_in_V']} V by more than {entry['tolerance_in_V']} V",
                entry["max_excursion_in_V"],
            )
    params = projection.get("parameters") or {}
    if (params.get("b") or 0) >= 1.5 and retention < 98:
        flag("Accelerating Fade", f"fitted fade exponent b = {params['b']} (> 1.5)", params["b"])
    resistance = cell.internal_resistance_ohm[np.isfinite(cell.internal_resistance_ohm)]
    if resistance.size >= 6:
        k = min(5, resistance.size // 2)
        r0, r1 = float(np.median(resistance[:k])), float(np.median(resistance[-k:]))
        if r0 > 0 and r1 > 1.2 * r0:
            growth = 100.0 * (r1 / r0 - 1.0)
            flag("Resistance Growth", f"internal resistance up {growth:.0f} %", growth)
    for peak in ic.get("peaks", [])[:3]:
        change = peak["height_change_percentage"]
        if change is not None and change < -10:
            flag(
                "Loss of Active Material",
                f"dQ/dV peak at {peak['reference_voltage_V']} V lost {-change:.0f} % height",
                change,
            )
        shift = peak["shift_mV"]
        if shift is not None and abs(shift) > 20 and peak["shift_significant"]:
            flag(
                "dQ/dV Peak Shift",
                f"peak at {peak['reference_voltage_V']} V moved {peak['shift_mV']:.0f} mV "
                "(lithium inventory loss or polarisation)",
                peak["shift_mV"],
            )
    hottest = temperature["section"]["temperature_range"]
    if temperature["section"]["has_temperature_data"] and hottest["max"] > 45:
        flag("High Temperature", f"up to {hottest['max']:.1f} degC (above 45)", hottest["max"])
    return {
        "health_score": _num(score, 2),
        "health_status": status,
        "capacity_retention": _num(retention, 2),
        "degradation_indicators": list(dict.fromkeys(d["indicator"] for d in details)),
        "indicator_details": details,
        "scale": "health_score = capacity retention in %; Excellent >= 95, Good >= 90, "
        "Fair >= 80, Poor >= 70, else Critical",
    }


_STATUS = ((95.0, "Excellent"), (90.0, "Good"), (80.0, "Fair"), (70.0, "Poor"), (-1.0, "Critical"))


def _metadata(cell: CellRecord, temperature: dict[str, Any]) -> dict[str, Any]:
    nominal = temperature.get("nominal")
    test_temperature = round(nominal * 2) / 2 if nominal is not None else None
    return {
        **cell.metadata,
        "cell_id": cell.metadata.get("cell_id"),
        "form_factor": cell.metadata.get("form_factor"),
        "nominal_capacity_in_Ah": cell.metadata.get("nominal_capacity_in_Ah"),
        "total_cycles": cell.n_cycles,
        "first_cycle_number": int(cell.cycle_number[0]),
        "last_cycle_number": int(cell.cycle_number[-1]),
        "test_temperature_C": test_temperature,
    }


# --- JSON helpers --------------------------------------------------------------------


def _num(value: Any, digits: int = 5) -> float | None:
    """A finite float rounded to ``digits`` significant digits, else None."""
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        return None
    if value == 0.0:
        return 0.0
    return float(round(value, digits - 1 - math.floor(math.log10(abs(value)))))


def _list(values: FloatArray, digits: int = 5) -> list[float | None]:
    """Rounded to ``digits`` significant digits of the largest value; NaN to None."""
    arr = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return [None] * arr.size
    top = float(np.abs(arr[finite]).max())
    decimals = digits - 1 - math.floor(math.log10(top)) if top > 0 else digits
    rounded = np.round(arr, max(0, decimals)).tolist()
    if finite.all():
        return rounded  # type: ignore[no-any-return]
    return [r if ok else None for r, ok in zip(rounded, finite.tolist(), strict=True)]


def _int(value: float | None) -> int | None:
    return round(float(value)) if value is not None and math.isfinite(value) else None


def _head(values: IntArray, count: int = 20) -> list[int]:
    return [int(v) for v in values[:count]]
