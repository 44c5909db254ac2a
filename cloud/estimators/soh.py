"""Cell SoH in the cloud (D1.2 3.3.0.5): Coulomb counting over segments, then dQ/dV analysis.

Input is what the edge BMS reports per cell: time, current (positive = discharge, as
everywhere in batterytwin), voltage, the edge's SoC estimate and optionally temperature.
Every function here is pure (arrays in, frozen results out); the scheduler reads the
stored time series and stores the result.

**Segments.** A sample counts as rest when ``|I| <= rest_c_rate * C_nom``; a run of rest
samples lasting at least ``min_rest_s`` is a *long rest*. Segment boundaries are the last
sample of each long rest (*relaxed*) and the last sample before each current reversal;
shorter rests inside a segment do not split it. Each segment between two boundaries is a
charge or a discharge. A segment is *settled* if its loaded part lasted at least
``settle_s`` at a mean rate of at most ``settle_c_rate``.

**Anchors.** Capacity is charge over SoC change, so it is only as good as the edge's SoC
at both ends. The SoC is trusted at *anchors*: the end of a long rest (the voltage is
the OCV there, ``sigma_SoC = soc_sigma_relaxed``) and the end of a settled segment (the
SoC filter has had time to correct itself on the voltage, ``soc_sigma_settled``). At
the end of a short, fast segment (a 1C session of Pillar 1) the edge's SoC has moved by
charge over the capacity *it* believes in, so a capacity computed from there would
return that belief; such points are not anchors.

**Coulomb counting.** With ``q(t)`` the discharged charge (sample ``k``'s current held
over ``(t[k-1], t[k]]``, the virtual BMS's own convention, or trapezoidal), each span
between two consecutive anchors ``a < b`` gives::

    C_span = -(q[b] - q[a]) / (SoC[b] - SoC[a])                          [Ah]
    sigma_span = C_span * sqrt(sigma_SoC,a^2 + sigma_SoC,b^2) / |SoC[b] - SoC[a]|

Where every segment ends at an anchor (Pillar 2: rests at both ends of the SoC window)
the spans are the segments; where not, a span covers several segments. A span is
trusted if ``|dSoC| >= min_soc_swing``, ``C_span / C_nom`` lies in ``soh_bounds`` and its
mean temperature in ``temperature_window_c``. Per cell, trusted spans further than
``outlier_sigmas`` robust deviations (``1.4826 MAD``, at least 1 % of the median) from
the median are dropped; the rest are combined::

    C = sum(w_i C_i) / sum(w_i),   w_i = d_i / sigma_i^2,   d_i = 0.5^(age_i / half_life)
    sigma_stat = sqrt(sum(w_i^2 sigma_i^2)) / sum(w_i) * max(1, sqrt(chi2 / (n - 1)))
    sigma_C = sqrt(sigma_stat^2 + (current_gain_sigma * C)^2)
    SoH = C / C_nom,  sigma_SoH = sigma_C / C_nom

(``chi2 = sum((C_i - C)^2 / sigma_i^2)``: the Birge ratio widens the band when spans
scatter more than their own uncertainty says; the gain term is the current sensor's
calibration error, which no averaging removes. ``d_i = 1`` without a half-life: the
estimate is then the window's mean and lags the end of the window by about half the
fade within it.)

**Incremental capacity (dQ/dV).** Segments that move at least ``ica_min_swing`` of the
nominal capacity at a near-constant current (coefficient of variation of ``|I|`` over
their loaded steps ``<= ica_max_current_cv``) are analysed. Each step's charge is spread
uniformly over the voltage interval it swept (``V + I R`` if a resistance is given, i.e.
IR-compensated) and summed into bins of ``ica_voltage_step_v``; ``dQ/dV = binned charge
/ bin width`` [Ah/V], smoothed with a Savitzky-Golay filter (``ica_smooth_bins``, order
2). Peaks are local maxima with a prominence of at least ``ica_peak_prominence`` of the
curve's maximum.
:func:`track_peaks` follows one peak per cell through successive curves and fits its
drift per day. A peak that loses height at an unchanged position is evidence of loss of
active material (LAM; for a peak at the end of the window also of lithium inventory,
LLI); one that moves (to lower voltage on discharge, higher on charge) of growing
resistance or of LLI shifting the electrodes against each other. The twin's ECM has no
electrodes: its fade scales the whole curve, so its peaks lose height in proportion to
capacity and move only with resistance.

**Power limits.** :func:`power_limits` keeps the rated C-rates: the current limits scale
with the updated capacity, taken ``margin_sigmas`` standard deviations below the
estimate, and the power limits are those currents at the nominal voltage.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.signal import find_peaks, savgol_filter

__all__ = [
    "CapacityEstimates",
    "IcaCurve",
    "PeakTrack",
    "PowerLimits",
    "RatedLimits",
    "Segment",
    "SohConfig",
    "SohResult",
    "coulomb_capacities",
    "detect_segments",
    "estimate_soh",
    "incremental_capacity",
    "power_limits",
    "track_peaks",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
SegmentKind = Literal["charge", "discharge"]

_SECONDS_PER_DAY = 86_400.0
_MAX_ICA_BINS = 4000


@dataclass(frozen=True)
class SohConfig:
    """What counts as rest, which spans to trust and how to analyse dQ/dV.

    Attributes:
        rest_c_rate: ``|I|`` at or below this C-rate (of the nominal capacity) is rest.
        min_rest_s: Rest that relaxes a cell (its end is a relaxed segment boundary).
        min_soc_swing: Least ``|dSoC|`` of a span used for capacity.
        soh_bounds: Span capacities outside these SoH bounds are implausible.
        temperature_window_c: Spans whose mean temperature lies outside are not used
            (capacity depends on temperature); ignored without temperatures.
        soc_sigma_relaxed: 1-sigma error of the edge SoC after a long rest.
        soc_sigma_settled: 1-sigma error of the edge SoC at the end of a settled
            segment (under load, but after the filter had time to converge).
        settle_s: Least duration of a settled segment.
        settle_c_rate: Largest mean C-rate of a settled segment.
        current_gain_sigma: Relative calibration error of the current sensor (1 sigma).
        outlier_sigmas: Robust deviations from the median beyond which a span is
            dropped.
        half_life_s: Age at which a span's weight halves (``None``: equal weights);
            makes the estimate follow fade within a long window.
        current_hold: ``"backward"``: a sample's current is the mean over the interval
            ending at it (the virtual BMS and the twin); ``"trapezoid"``: instantaneous.
        ica_voltage_step_v: Bin width of the dQ/dV curves.
        ica_smooth_bins: Savitzky-Golay window in bins (odd, >= 5).
        ica_max_current_cv: Largest coefficient of variation of ``|I|`` in a segment
            analysed by dQ/dV (near constant current).
        ica_min_swing: Least charge moved in a segment analysed by dQ/dV, as a fraction
            of the nominal capacity.
        ica_min_steps: Least number of loaded steps of a segment analysed by dQ/dV.
        ica_peak_prominence: Least peak prominence, as a fraction of the curve's maximum.
        track_window_v: A tracked peak may move at most this far between two curves.

    Raises:
        ValueError: If a value is out of range (the message names the field).
    """

    rest_c_rate: float = 0.01
    min_rest_s: float = 600.0
    min_soc_swing: float = 0.3
    soh_bounds: tuple[float, float] = (0.3, 1.2)
    temperature_window_c: tuple[float, float] = (5.0, 45.0)
    soc_sigma_relaxed: float = 0.01
    soc_sigma_settled: float = 0.02
    settle_s: float = 1800.0
    settle_c_rate: float = 0.5
    current_gain_sigma: float = 0.005
    outlier_sigmas: float = 4.0
    half_life_s: float | None = None
    current_hold: Literal["backward", "trapezoid"] = "backward"
    ica_voltage_step_v: float = 0.005
    ica_smooth_bins: int = 9
    ica_max_current_cv: float = 0.2
    ica_min_swing: float = 0.2
    ica_min_steps: int = 10
    ica_peak_prominence: float = 0.1
    track_window_v: float = 0.05

    def __post_init__(self) -> None:
        positive = (
            "min_rest_s",
            "soc_sigma_relaxed",
            "soc_sigma_settled",
            "settle_s",
            "settle_c_rate",
            "outlier_sigmas",
            "ica_voltage_step_v",
            "track_window_v",
        )
        for name in positive:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"SohConfig.{name} must be finite and > 0, got {value!r}")
        for name in ("rest_c_rate", "current_gain_sigma", "ica_max_current_cv"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"SohConfig.{name} must be finite and >= 0, got {value!r}")
        for name in ("min_soc_swing", "ica_min_swing", "ica_peak_prominence"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"SohConfig.{name} must be in (0, 1], got {value!r}")
        lo, hi = self.soh_bounds
        if not 0 <= lo < hi:
            raise ValueError(f"SohConfig.soh_bounds must satisfy 0 <= lo < hi, got {lo}, {hi}")
        t_lo, t_hi = self.temperature_window_c
        if not t_lo < t_hi:
            raise ValueError(
                f"SohConfig.temperature_window_c must be (lo, hi) with lo < hi, got {t_lo}, {t_hi}"
            )
        if self.half_life_s is not None and not self.half_life_s > 0:
            raise ValueError(f"SohConfig.half_life_s must be > 0 or None, got {self.half_life_s}")
        if self.current_hold not in ("backward", "trapezoid"):
            raise ValueError(
                f"SohConfig.current_hold must be 'backward' or 'trapezoid', "
                f"got {self.current_hold!r}"
            )
        if self.ica_smooth_bins < 5 or self.ica_smooth_bins % 2 == 0:
            raise ValueError(
                f"SohConfig.ica_smooth_bins must be odd and >= 5, got {self.ica_smooth_bins}"
            )
        if self.ica_min_steps < 3:
            raise ValueError(f"SohConfig.ica_min_steps must be >= 3, got {self.ica_min_steps}")


@dataclass(frozen=True, slots=True)
class Segment:
    """One charge or discharge between two boundaries (sample indices, inclusive ends).

    Attributes:
        start: Index of the boundary sample the segment starts from.
        end: Index of its last sample.
        kind: ``"charge"`` or ``"discharge"``.
        start_relaxed: The start is the end of a long rest.
        end_relaxed: The end is the end of a long rest.
        settled: Its loaded part lasted at least ``settle_s`` at a mean rate of at most
            ``settle_c_rate``, so the edge's SoC filter has had time to converge by its end.
    """

    start: int
    end: int
    kind: SegmentKind
    start_relaxed: bool
    end_relaxed: bool
    settled: bool


@dataclass(frozen=True, eq=False)
class CapacityEstimates:
    """Coulomb counting per span between anchors (rows) and cell (columns).

    Attributes:
        start: Sample index of each span's first anchor, ``(n_span,)``.
        end: Sample index of its second anchor.
        time_s: End time of each span.
        charge_ah: Discharged charge over the span (negative for a net charge).
        soc_swing: ``SoC[end] - SoC[start]``.
        capacity_ah: ``-charge / swing`` (NaN where the swing is zero or unknown).
        sigma_ah: 1-sigma of ``capacity_ah`` from the SoC errors at both anchors.
        trusted: Passed the swing, plausibility and temperature rules.
        used: Trusted and not rejected as an outlier (what the combined estimate uses).
    """

    start: NDArray[np.intp]
    end: NDArray[np.intp]
    time_s: FloatArray
    charge_ah: FloatArray
    soc_swing: FloatArray
    capacity_ah: FloatArray
    sigma_ah: FloatArray
    trusted: BoolArray
    used: BoolArray


@dataclass(frozen=True, eq=False)
class IcaCurve:
    """dQ/dV of one segment for every cell.

    Attributes:
        segment: The segment analysed.
        time_s: Its end time.
        voltage_v: Bin centres (IR-compensated if a resistance was given), ``(m,)``.
        dqdv_ah_per_v: Smoothed dQ/dV, ``(m, n_cells)``; NaN outside a cell's range.
        peak_voltage_v: Peak positions per cell (highest first).
        peak_height_ah_per_v: Peak heights per cell, in the same order.
    """

    segment: Segment
    time_s: float
    voltage_v: FloatArray
    dqdv_ah_per_v: FloatArray
    peak_voltage_v: tuple[FloatArray, ...]
    peak_height_ah_per_v: tuple[FloatArray, ...]

    @property
    def kind(self) -> SegmentKind:
        return self.segment.kind


@dataclass(frozen=True, eq=False)
class PeakTrack:
    """One dQ/dV peak per cell followed through successive curves of one kind.

    Attributes:
        kind: ``"charge"`` or ``"discharge"`` curves.
        time_s: Curve times, ``(k,)``.
        voltage_v: Peak position, ``(k, n_cells)`` (NaN where the peak was lost).
        height_ah_per_v: Peak height, ``(k, n_cells)``.
        voltage_shift_v_per_day: Least-squares drift of the position per cell.
        height_change_per_day: Least-squares drift of the height per cell, relative to
            its first height (``-0.001`` = loses 0.1 % of its height a day).
    """

    kind: SegmentKind
    time_s: FloatArray
    voltage_v: FloatArray
    height_ah_per_v: FloatArray
    voltage_shift_v_per_day: FloatArray
    height_change_per_day: FloatArray


@dataclass(frozen=True, eq=False)
class SohResult:
    """The combined estimate per cell with everything it came from.

    Attributes:
        time_s: Time of the last sample (what the estimate refers to).
        soh: ``capacity_ah / nominal_capacity_ah`` (NaN: no usable span).
        soh_sigma: Its 1-sigma uncertainty.
        capacity_ah: Combined capacity.
        capacity_sigma_ah: Its 1-sigma uncertainty.
        n_spans: Spans used per cell.
        capacities: Per-span Coulomb counting.
        ica: dQ/dV curves of the qualifying segments.
        peaks: One :class:`PeakTrack` per kind that has curves.
    """

    time_s: float
    soh: FloatArray
    soh_sigma: FloatArray
    capacity_ah: FloatArray
    capacity_sigma_ah: FloatArray
    n_spans: NDArray[np.int64]
    capacities: CapacityEstimates
    ica: tuple[IcaCurve, ...]
    peaks: dict[str, PeakTrack]


@dataclass(frozen=True)
class RatedLimits:
    """A cell's rated limits at its nominal capacity.

    Attributes:
        nominal_capacity_ah: Capacity the ratings refer to.
        max_charge_current_a: Largest charge current (a magnitude).
        max_discharge_current_a: Largest discharge current.
        nominal_voltage_v: Voltage that turns currents into powers.
    """

    nominal_capacity_ah: float
    max_charge_current_a: float
    max_discharge_current_a: float
    nominal_voltage_v: float

    def __post_init__(self) -> None:
        for name in (
            "nominal_capacity_ah",
            "max_charge_current_a",
            "max_discharge_current_a",
            "nominal_voltage_v",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"RatedLimits.{name} must be finite and > 0, got {value!r}")


@dataclass(frozen=True, eq=False)
class PowerLimits:
    """Operating limits per cell after a SoH update (magnitudes, >= 0).

    Attributes:
        capacity_ah: Capacity the limits were scaled to (estimate minus the margin).
        charge_current_a: Largest charge current.
        discharge_current_a: Largest discharge current.
        charge_power_w: Largest charge power.
        discharge_power_w: Largest discharge power.
    """

    capacity_ah: FloatArray
    charge_current_a: FloatArray
    discharge_current_a: FloatArray
    charge_power_w: FloatArray
    discharge_power_w: FloatArray


# ---------------------------------------------------------------------- inputs
def _series(time_s: ArrayLike) -> FloatArray:
    t = np.asarray(time_s, dtype=np.float64)
    if t.ndim != 1 or t.size < 2:
        raise ValueError(f"time_s must be 1-D with at least 2 samples, got shape {t.shape}")
    if not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
        raise ValueError("time_s must be finite and strictly increasing; sort the samples")
    return t


def _per_cell(value: ArrayLike, n: int, name: str) -> FloatArray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ValueError(
            f"{name} must have shape (n_samples,) or (n_samples, n_cells) with n_samples = "
            f"{n}, got {np.shape(value)}"
        )
    return arr


def _check_capacity(nominal_capacity_ah: float) -> None:
    if not (math.isfinite(nominal_capacity_ah) and nominal_capacity_ah > 0):
        raise ValueError(f"nominal_capacity_ah must be finite and > 0, got {nominal_capacity_ah}")


def _string_current(current_a: ArrayLike, n: int) -> FloatArray:
    i = np.asarray(current_a, dtype=np.float64)
    if i.ndim == 2 and i.shape[0] == n:
        return np.asarray(np.mean(i, axis=1), dtype=np.float64)
    if i.shape != (n,):
        raise ValueError(f"current_a must have {n} samples, got shape {i.shape}")
    return i


def _discharged_ah(time_s: FloatArray, current_a: FloatArray, hold: str) -> FloatArray:
    """Cumulative discharged charge per sample and cell, 0 at the first sample."""
    dt_h = np.diff(time_s)[:, None] / 3600.0
    i = np.nan_to_num(current_a)
    step = i[1:] * dt_h if hold == "backward" else 0.5 * (i[1:] + i[:-1]) * dt_h
    return np.vstack([np.zeros((1, i.shape[1])), np.cumsum(step, axis=0)])


# ---------------------------------------------------------------------- segments
def _runs(mask: BoolArray) -> list[tuple[int, int]]:
    """``(first, last)`` index of every run of True."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def detect_segments(
    time_s: ArrayLike,
    current_a: ArrayLike,
    *,
    nominal_capacity_ah: float,
    config: SohConfig | None = None,
) -> tuple[Segment, ...]:
    """Split a series into charge and discharge segments between rests and reversals.

    Args:
        time_s: Sample times, strictly increasing, ``(n,)``.
        current_a: String current (positive = discharge), ``(n,)``; per-cell currents
            ``(n, n_cells)`` are averaged over cells.
        nominal_capacity_ah: Defines the C-rate thresholds.
        config: Estimator settings.

    Returns:
        The segments in time order (possibly none).

    Raises:
        ValueError: If the times are not increasing or the shapes do not match.
    """
    cfg = config or SohConfig()
    t = _series(time_s)
    _check_capacity(nominal_capacity_ah)
    i = _string_current(current_a, t.size)
    threshold = cfg.rest_c_rate * nominal_capacity_ah
    direction = np.where(i > threshold, 1, np.where(i < -threshold, -1, 0))
    boundaries: dict[int, bool] = {0: False, t.size - 1: False}
    for first, last in _runs(direction == 0):
        if t[last] - t[max(first - 1, 0)] >= cfg.min_rest_s:
            boundaries[last] = True
    relaxed = sorted(b for b, is_relaxed in boundaries.items() if is_relaxed)
    loaded = np.flatnonzero(direction != 0)
    if loaded.size > 1:
        flips = np.flatnonzero(direction[loaded[1:]] != direction[loaded[:-1]])
        for k in flips:
            before, after = int(loaded[k]), int(loaded[k + 1])
            # a long rest in between is already a (relaxed) boundary
            j = int(np.searchsorted(relaxed, before))
            if j == len(relaxed) or relaxed[j] >= after:
                boundaries.setdefault(after - 1, False)
    ordered = sorted(boundaries)
    abs_i = np.abs(np.nan_to_num(i))
    segments: list[Segment] = []
    for a, b in itertools.pairwise(ordered):
        moving = direction[a + 1 : b + 1]
        moving = moving[moving != 0]
        if moving.size == 0:
            continue
        kind: SegmentKind = "discharge" if np.sum(moving) > 0 else "charge"
        # duration and mean rate of the loaded part (a rest at the end does not count)
        last = a + 1 + int(np.flatnonzero(direction[a + 1 : b + 1] != 0)[-1])
        duration = t[last] - t[a]
        rate = float(np.sum(abs_i[a + 1 : last + 1] * np.diff(t[a : last + 1]))) / duration
        settled = bool(duration >= cfg.settle_s and rate <= cfg.settle_c_rate * nominal_capacity_ah)
        segments.append(Segment(a, b, kind, boundaries[a], boundaries[b], settled))
    return tuple(segments)


def _anchors(segments: tuple[Segment, ...], config: SohConfig) -> dict[int, float]:
    """Samples whose SoC estimate is trusted, with its 1-sigma error."""
    anchors: dict[int, float] = {}
    for seg in segments:
        if seg.start_relaxed:
            anchors[seg.start] = config.soc_sigma_relaxed
        if seg.end_relaxed:
            anchors[seg.end] = config.soc_sigma_relaxed
        elif seg.settled:
            anchors.setdefault(seg.end, config.soc_sigma_settled)
    return dict(sorted(anchors.items()))


# ---------------------------------------------------------------------- Coulomb counting
def coulomb_capacities(
    *,
    time_s: ArrayLike,
    current_a: ArrayLike,
    soc: ArrayLike,
    segments: tuple[Segment, ...],
    nominal_capacity_ah: float,
    config: SohConfig | None = None,
    temperature_c: ArrayLike | None = None,
) -> CapacityEstimates:
    """Capacity of every cell from every span between consecutive anchors.

    Args:
        time_s: Sample times, ``(n,)``.
        current_a: Current (positive = discharge), ``(n,)`` for a series string or
            ``(n, n_cells)`` per cell.
        soc: The edge's SoC estimate (0..1), ``(n, n_cells)``.
        segments: From :func:`detect_segments` (they define the anchors).
        nominal_capacity_ah: Capacity of a new cell (SoH = capacity / this).
        config: Estimator settings.
        temperature_c: Cell temperatures, ``(n,)`` or ``(n, n_cells)``.

    Returns:
        Per-span, per-cell estimates with their trust and outlier flags.
    """
    cfg = config or SohConfig()
    t = _series(time_s)
    _check_capacity(nominal_capacity_ah)
    s = _per_cell(soc, t.size, "soc")
    n_cells = s.shape[1]
    i = np.broadcast_to(_per_cell(current_a, t.size, "current_a"), s.shape)
    anchors = _anchors(segments, cfg)
    index = np.array(list(anchors), dtype=np.intp)
    sig = np.array(list(anchors.values()))
    if index.size < 2:
        no_int = np.zeros(0, dtype=np.intp)
        empty = np.zeros((0, n_cells))
        no = np.zeros((0, n_cells), dtype=bool)
        return CapacityEstimates(no_int, no_int, np.zeros(0), empty, empty, empty, empty, no, no)
    start, end = index[:-1], index[1:]
    q = _discharged_ah(t, i, cfg.current_hold)
    charge = q[end] - q[start]
    swing = s[end] - s[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        capacity = np.where(swing != 0, -charge / swing, np.nan)
        sigma = np.abs(capacity) * np.hypot(sig[:-1], sig[1:])[:, None] / np.abs(swing)
        soh = capacity / nominal_capacity_ah
    lo, hi = cfg.soh_bounds
    with np.errstate(invalid="ignore"):
        trusted = (
            np.isfinite(capacity) & (np.abs(swing) >= cfg.min_soc_swing) & (soh >= lo) & (soh <= hi)
        )
    if temperature_c is not None:
        temp = np.broadcast_to(_per_cell(temperature_c, t.size, "temperature_c"), s.shape)
        t_lo, t_hi = cfg.temperature_window_c
        with np.errstate(invalid="ignore"):
            mean_t = np.array(
                [np.mean(temp[a : b + 1], axis=0) for a, b in zip(start, end, strict=True)]
            )
            trusted &= (mean_t >= t_lo) & (mean_t <= t_hi)
    used = trusted & ~_outliers(capacity, trusted, cfg.outlier_sigmas)
    return CapacityEstimates(
        start=start,
        end=end,
        time_s=t[end],
        charge_ah=charge,
        soc_swing=swing,
        capacity_ah=capacity,
        sigma_ah=sigma,
        trusted=trusted,
        used=used,
    )


def _outliers(capacity: FloatArray, trusted: BoolArray, n_sigmas: float) -> BoolArray:
    """Trusted estimates further than ``n_sigmas`` robust deviations from the median."""
    out = np.zeros_like(trusted)
    cols = trusted.any(axis=0)
    if not cols.any():
        return out
    c = np.where(trusted[:, cols], capacity[:, cols], np.nan)
    med = np.nanmedian(c, axis=0)
    mad = np.nanmedian(np.abs(c - med), axis=0)
    scale = np.maximum(1.4826 * mad, 0.01 * np.abs(med))
    with np.errstate(invalid="ignore"):
        out[:, cols] = trusted[:, cols] & (np.abs(c - med) > n_sigmas * scale)
    return out


def _combine(
    est: CapacityEstimates, *, time_s: float, config: SohConfig
) -> tuple[FloatArray, FloatArray, NDArray[np.int64]]:
    """Weighted mean of the used spans per cell, its 1-sigma and the count."""
    used = est.used
    n = used.sum(axis=0).astype(np.int64)
    if est.capacity_ah.shape[0] == 0:
        nan = np.full(used.shape[1], np.nan)
        return nan, nan.copy(), n
    decay = (
        np.ones_like(est.time_s)
        if config.half_life_s is None
        else 0.5 ** ((time_s - est.time_s) / config.half_life_s)
    )
    c = np.where(used, est.capacity_ah, 0.0)
    sig = np.where(used, est.sigma_ah, 1.0)
    w = np.where(used, decay[:, None] / sig**2, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        wsum = w.sum(axis=0)
        mean = (w * c).sum(axis=0) / wsum
        stat = np.sqrt((w**2 * sig**2).sum(axis=0)) / wsum
        chi2 = np.where(used, (c - mean) ** 2 / sig**2, 0.0).sum(axis=0)
        birge = np.sqrt(np.where(n > 1, chi2 / np.maximum(n - 1, 1), 1.0))
        sigma = np.hypot(stat * np.maximum(birge, 1.0), config.current_gain_sigma * mean)
    mean = np.where(n > 0, mean, np.nan)
    sigma = np.where(n > 0, sigma, np.nan)
    return mean, sigma, n


# ---------------------------------------------------------------------- dQ/dV
def _binned_dqdv(
    dq: FloatArray, v_from: FloatArray, v_to: FloatArray, edges: FloatArray
) -> FloatArray:
    """Spread each step's charge uniformly over the voltage interval it swept; per bin."""
    lo = np.minimum(v_from, v_to)[:, None]
    hi = np.maximum(v_from, v_to)[:, None]
    width = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(width > 0, (edges[None, :] - lo) / width, (edges[None, :] >= lo) * 1.0)
    below = np.clip(frac, 0.0, 1.0)
    cumulative = dq @ below  # charge swept below each edge
    return np.asarray(np.diff(cumulative) / np.diff(edges), dtype=np.float64)


def _smooth(y: FloatArray, window: int) -> FloatArray:
    out = np.full_like(y, np.nan)
    valid = np.flatnonzero(np.isfinite(y))
    if valid.size == 0:
        return out
    a, b = int(valid[0]), int(valid[-1]) + 1
    block = np.nan_to_num(y[a:b])
    w = min(window, block.size if block.size % 2 else block.size - 1)
    out[a:b] = savgol_filter(block, w, 2, mode="interp") if w >= 5 else block
    return out


def _peaks(v: FloatArray, y: FloatArray, prominence: float) -> tuple[FloatArray, FloatArray]:
    finite = np.isfinite(y)
    if not finite.any() or np.nanmax(y) <= 0:
        return np.zeros(0), np.zeros(0)
    filled = np.where(finite, y, 0.0)
    idx, _ = find_peaks(filled, prominence=prominence * float(np.nanmax(y)))
    order = np.argsort(filled[idx])[::-1]
    idx = idx[order]
    return v[idx].astype(np.float64), filled[idx].astype(np.float64)


def incremental_capacity(
    *,
    time_s: ArrayLike,
    current_a: ArrayLike,
    voltage_v: ArrayLike,
    segments: tuple[Segment, ...],
    nominal_capacity_ah: float,
    config: SohConfig | None = None,
    resistance_ohm: ArrayLike | None = None,
) -> tuple[IcaCurve, ...]:
    """dQ/dV curves and their peaks for the near-constant-current segments.

    Args:
        time_s: Sample times, ``(n,)``.
        current_a: Current (positive = discharge), ``(n,)`` or ``(n, n_cells)``.
        voltage_v: Cell voltages, ``(n, n_cells)``.
        segments: From :func:`detect_segments`.
        nominal_capacity_ah: Defines the rest threshold and the swing of a segment.
        config: Estimator settings.
        resistance_ohm: Per-cell resistance for IR compensation (``V + I R``);
            ``None`` analyses the terminal voltage.

    Returns:
        One curve per qualifying segment, in time order.
    """
    cfg = config or SohConfig()
    t = _series(time_s)
    _check_capacity(nominal_capacity_ah)
    v = _per_cell(voltage_v, t.size, "voltage_v")
    i = np.broadcast_to(_per_cell(current_a, t.size, "current_a"), v.shape)
    if resistance_ohm is not None:
        r = np.broadcast_to(np.asarray(resistance_ohm, dtype=np.float64), (v.shape[1],))
        v = v + i * r[None, :]
    q = _discharged_ah(t, i, cfg.current_hold)
    string = _string_current(i, t.size)
    threshold = cfg.rest_c_rate * nominal_capacity_ah
    curves: list[IcaCurve] = []
    for seg in segments:
        k = np.arange(seg.start + 1, seg.end + 1)
        steps = k[(np.abs(string[k]) > threshold) & (np.abs(string[k - 1]) > threshold)]
        swing = float(np.median(np.abs(q[seg.end] - q[seg.start]))) / nominal_capacity_ah
        if steps.size < cfg.ica_min_steps or not swing >= cfg.ica_min_swing:
            continue
        magnitude = np.abs(string[steps])
        if np.std(magnitude) > cfg.ica_max_current_cv * np.mean(magnitude):
            continue
        dq = np.abs(q[steps] - q[steps - 1])
        v_from, v_to = v[steps - 1], v[steps]
        if not (np.all(np.isfinite(v_from)) and np.all(np.isfinite(v_to))):
            continue
        step_v = cfg.ica_voltage_step_v
        lo = math.floor(float(min(v_from.min(), v_to.min())) / step_v) * step_v
        hi = math.ceil(float(max(v_from.max(), v_to.max())) / step_v) * step_v
        n_bins = round((hi - lo) / step_v)
        if n_bins < 2 or n_bins > _MAX_ICA_BINS:
            continue
        edges: FloatArray = lo + step_v * np.arange(n_bins + 1, dtype=np.float64)
        centres = 0.5 * (edges[1:] + edges[:-1])
        dqdv = np.full((n_bins, v.shape[1]), np.nan)
        peak_v: list[FloatArray] = []
        peak_h: list[FloatArray] = []
        for cell in range(v.shape[1]):
            raw = _binned_dqdv(dq[:, cell], v_from[:, cell], v_to[:, cell], edges)
            c_lo = min(v_from[:, cell].min(), v_to[:, cell].min())
            c_hi = max(v_from[:, cell].max(), v_to[:, cell].max())
            inside = (edges[1:] > c_lo) & (edges[:-1] < c_hi)
            raw[~inside] = np.nan
            dqdv[:, cell] = _smooth(raw, cfg.ica_smooth_bins)
            pv, ph = _peaks(centres, dqdv[:, cell], cfg.ica_peak_prominence)
            peak_v.append(pv)
            peak_h.append(ph)
        curves.append(
            IcaCurve(
                segment=seg,
                time_s=float(t[seg.end]),
                voltage_v=centres,
                dqdv_ah_per_v=dqdv,
                peak_voltage_v=tuple(peak_v),
                peak_height_ah_per_v=tuple(peak_h),
            )
        )
    return tuple(curves)


def _slope_per_day(time_s: FloatArray, y: FloatArray) -> float:
    ok = np.isfinite(y)
    if ok.sum() < 2 or np.ptp(time_s[ok]) <= 0:
        return math.nan
    days = (time_s[ok] - time_s[ok][0]) / _SECONDS_PER_DAY
    return float(np.polyfit(days, y[ok], 1)[0])


def track_peaks(
    curves: tuple[IcaCurve, ...], *, kind: SegmentKind, window_v: float = 0.05
) -> PeakTrack | None:
    """Follow each cell's highest peak of the first curve of ``kind`` through the rest.

    In each later curve the tracked peak is the one nearest to its last position, if
    within ``window_v``; otherwise it is lost for that curve (NaN).

    Args:
        curves: From :func:`incremental_capacity`.
        kind: Which curves to follow (charge and discharge peaks sit at different
            voltages).
        window_v: Largest move between two curves.

    Returns:
        The track, or ``None`` if there is no curve of that kind.
    """
    chosen = [c for c in curves if c.kind == kind]
    if not chosen:
        return None
    n_cells = chosen[0].dqdv_ah_per_v.shape[1]
    times = np.array([c.time_s for c in chosen])
    pos = np.full((len(chosen), n_cells), np.nan)
    height = np.full_like(pos, np.nan)
    for cell in range(n_cells):
        last = math.nan
        for row, curve in enumerate(chosen):
            pv, ph = curve.peak_voltage_v[cell], curve.peak_height_ah_per_v[cell]
            if pv.size == 0:
                continue
            if math.isnan(last):
                j = 0  # highest peak
            else:
                j = int(np.argmin(np.abs(pv - last)))
                if abs(pv[j] - last) > window_v:
                    continue
            pos[row, cell], height[row, cell] = pv[j], ph[j]
            last = float(pv[j])
    shift = np.array([_slope_per_day(times, pos[:, c]) for c in range(n_cells)])
    first = np.array(
        [
            height[np.flatnonzero(np.isfinite(height[:, c]))[0], c]
            if np.isfinite(height[:, c]).any()
            else np.nan
            for c in range(n_cells)
        ]
    )
    change = np.array([_slope_per_day(times, height[:, c]) for c in range(n_cells)]) / first
    return PeakTrack(kind, times, pos, height, shift, change)


# ---------------------------------------------------------------------- facade
def estimate_soh(
    *,
    time_s: ArrayLike,
    current_a: ArrayLike,
    voltage_v: ArrayLike,
    soc: ArrayLike,
    nominal_capacity_ah: float,
    config: SohConfig | None = None,
    temperature_c: ArrayLike | None = None,
    resistance_ohm: ArrayLike | None = None,
) -> SohResult:
    """SoH per cell from a window of edge data (a week or a month, D1.2).

    Args:
        time_s: Sample times, strictly increasing, ``(n,)``.
        current_a: Current (positive = discharge), ``(n,)`` for a series string or
            ``(n, n_cells)``.
        voltage_v: Cell voltages, ``(n, n_cells)``.
        soc: The edge's SoC estimate (0..1), ``(n, n_cells)``.
        nominal_capacity_ah: Capacity of a new cell.
        config: Estimator settings.
        temperature_c: Cell temperatures, ``(n,)`` or ``(n, n_cells)``.
        resistance_ohm: Per-cell resistance for IR-compensated dQ/dV.

    Returns:
        The combined SoH with its uncertainty, the span estimates, the dQ/dV curves
        and the tracked peaks.

    Raises:
        ValueError: If the times are not increasing or the shapes do not match.
    """
    cfg = config or SohConfig()
    t = _series(time_s)
    segments = detect_segments(t, current_a, nominal_capacity_ah=nominal_capacity_ah, config=cfg)
    caps = coulomb_capacities(
        time_s=t,
        current_a=current_a,
        soc=soc,
        segments=segments,
        nominal_capacity_ah=nominal_capacity_ah,
        config=cfg,
        temperature_c=temperature_c,
    )
    capacity, sigma, n = _combine(caps, time_s=float(t[-1]), config=cfg)
    curves = incremental_capacity(
        time_s=t,
        current_a=current_a,
        voltage_v=voltage_v,
        segments=segments,
        nominal_capacity_ah=nominal_capacity_ah,
        config=cfg,
        resistance_ohm=resistance_ohm,
    )
    peaks: dict[str, PeakTrack] = {}
    kinds: tuple[SegmentKind, ...] = ("discharge", "charge")
    for kind in kinds:
        track = track_peaks(curves, kind=kind, window_v=cfg.track_window_v)
        if track is not None:
            peaks[kind] = track
    return SohResult(
        time_s=float(t[-1]),
        soh=capacity / nominal_capacity_ah,
        soh_sigma=sigma / nominal_capacity_ah,
        capacity_ah=capacity,
        capacity_sigma_ah=sigma,
        n_spans=n,
        capacities=caps,
        ica=curves,
        peaks=peaks,
    )


def power_limits(
    capacity_ah: ArrayLike,
    *,
    rated: RatedLimits,
    capacity_sigma_ah: ArrayLike = 0.0,
    margin_sigmas: float = 1.0,
) -> PowerLimits:
    """New operating limits per cell from its updated capacity, at the rated C-rates.

    ``C_eff = clip(C - margin_sigmas * sigma_C, 0, C_nom)``; every current limit is its
    rated value times ``C_eff / C_nom`` (the rated C-rate kept), every power limit that
    current at the nominal voltage. A cell without an estimate (NaN) gets NaN limits:
    the caller keeps the limits it has.

    Args:
        capacity_ah: Estimated capacity per cell.
        rated: The ratings at the nominal capacity.
        capacity_sigma_ah: 1-sigma of each estimate.
        margin_sigmas: How many standard deviations to take off (1: about 84 % sure the
            true capacity is at least ``C_eff``).

    Returns:
        Limits per cell.
    """
    if not (math.isfinite(margin_sigmas) and margin_sigmas >= 0):
        raise ValueError(f"margin_sigmas must be finite and >= 0, got {margin_sigmas}")
    c = np.atleast_1d(np.asarray(capacity_ah, dtype=np.float64))
    sig = np.broadcast_to(np.nan_to_num(np.asarray(capacity_sigma_ah, dtype=np.float64)), c.shape)
    effective = np.clip(c - margin_sigmas * sig, 0.0, rated.nominal_capacity_ah)
    scale = effective / rated.nominal_capacity_ah
    charge = rated.max_charge_current_a * scale
    discharge = rated.max_discharge_current_a * scale
    return PowerLimits(
        capacity_ah=effective,
        charge_current_a=charge,
        discharge_current_a=discharge,
        charge_power_w=charge * rated.nominal_voltage_v,
        discharge_power_w=discharge * rated.nominal_voltage_v,
    )
