"""Lithium-plating detection from the voltage relaxation in the rest after a charge (dV/dt).

D1.2 (section 3.3.1.10, Pillar 2): during rest, once the rest exceeds a set interval, the
BMS looks at the dV/dt curve and, if it shows lithium plating, updates the SoS.

**Signature.** Lithium plated on the graphite during a cold or fast charge strips back
(re-intercalates) during the rest that follows. While metallic lithium is present it holds
the negative electrode's potential near 0 V vs Li, so the cell voltage relaxes slowly (a
plateau); when the plated lithium is used up, the potential is released and the voltage
drops faster. In the relaxation rate ``g = -dV/d(ln t)`` (the voltage drop per e-fold of
time, which spreads a relaxation over its time constants) this is a hump at the end of
stripping, and, when strong, a local minimum of ``-dV/dt`` in linear time.

**Rule.** A relaxation without plating is a sum of decays ``a_k exp(-t / tau_k)`` with
``a_k >= 0`` (each RC pair, each diffusion mode relaxes exponentially), so ``g`` is a
non-negative combination of the kernel ``K(u) = exp(u - e^u)``, ``u = ln(t / tau)``:
humps no narrower than one decay's (1.06 decades at half height). Stripping ends
abruptly, which makes a narrower hump that such a combination cannot reproduce. The
detector therefore

1. averages the samples in bins evenly spaced in ``ln t`` (``points_per_decade``), which
   also averages sensor noise and 1 mV quantisation over the many late samples;
2. differentiates with a Savitzky-Golay filter on that grid to get ``g``, and propagates
   the voltage noise (estimated from the data, at least ``min_voltage_noise_v``) to a
   standard deviation ``sigma_g`` per point;
3. fits ``g`` with non-negative kernels (NNLS, weighted by ``1 / sigma_g``, time
   constants from a decade below the first to a decade above the last sample);
4. looks, from ``earliest_feature_s`` on, for the most significant positive residual
   ``z = (g - fit) / sigma_g``.

Plating is **detected** where ``z >= min_significance`` *and* the residual is at least
``min_score`` of the peak of ``g`` (``score``). ``feature_time_s`` is the time of that
residual: about when the plated lithium is used up. The score is a shape measure, not a
quantity of lithium.

**Limits.** The rule suits a rest after a CC-CV charge, which leaves the electrodes close to
equilibrium. After a CC charge that stops far from it, graphite staging plateaus crossed
during the rest form humps too: PyBaMM's SPMe without any plating model, rested after a
0 degC 1C CC charge to 4.2 V, is flagged at about 6 minutes. ``earliest_feature_s`` keeps
the first minutes (ohmic and electrolyte relaxation) out; the end of stripping after a cold
CC-CV charge comes after 15-30 minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import nnls
from scipy.signal import savgol_filter

from twin.models.base import FloatArray

__all__ = [
    "PlatingConfig",
    "PlatingError",
    "PlatingResult",
    "RelaxationSpectrum",
    "detect_plating",
    "relaxation_spectrum",
]

BoolArray = NDArray[np.bool_]

_LN10 = math.log(10.0)
# 1.4826 * MAD is the standard deviation of Gaussian noise; a second difference of white
# noise has variance 6 sigma^2.
_MAD_TO_SIGMA = 1.4826 / math.sqrt(6.0)


class PlatingError(ValueError):
    """Bad input to the plating detector: the message names the value and what to do."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlatingConfig:
    """Settings of the plating detector.

    Attributes:
        min_rest_s: The rest must last this long before the detector runs (D1.2's "defined
            interval"); stripping after a cold charge takes tens of minutes.
        earliest_feature_s: Features earlier than this are not taken for plating (ohmic,
            electrolyte and graphite-staging relaxation are done within minutes).
        points_per_decade: Log-time grid density.
        savgol_window: Savitzky-Golay window on the log-time grid (odd, points).
        savgol_order: Savitzky-Golay polynomial order.
        tau_points_per_decade: Density of the time constants of the non-negative fit.
        min_samples_per_bin: The grid starts at the first sample from which a log-time bin
            holds this many samples (earlier bins are mostly empty and noisy).
        min_voltage_noise_v: Floor of the voltage noise estimate (1 mV quantisation alone
            is 0.29 mV RMS).
        min_significance: Residual / sigma needed to detect.
        min_score: Residual / peak relaxation rate needed to detect.

    Raises:
        PlatingError: On an invalid value.
    """

    min_rest_s: float = 3600.0
    earliest_feature_s: float = 300.0
    points_per_decade: int = 20
    savgol_window: int = 11
    savgol_order: int = 3
    tau_points_per_decade: int = 8
    min_samples_per_bin: float = 3.0
    min_voltage_noise_v: float = 0.3e-3
    min_significance: float = 4.0
    min_score: float = 0.03

    def __post_init__(self) -> None:
        for name in (
            "min_rest_s",
            "earliest_feature_s",
            "min_samples_per_bin",
            "min_voltage_noise_v",
            "min_significance",
            "min_score",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise PlatingError(f"PlatingConfig.{name} must be finite and > 0, got {value!r}")
        if self.savgol_window < 5 or self.savgol_window % 2 == 0:
            raise PlatingError(
                f"PlatingConfig.savgol_window must be odd and >= 5, got {self.savgol_window!r}"
            )
        if not 2 <= self.savgol_order < self.savgol_window:
            raise PlatingError(
                f"PlatingConfig.savgol_order must be in 2..savgol_window-1, got "
                f"{self.savgol_order!r}"
            )
        for name in ("points_per_decade", "tau_points_per_decade"):
            value = getattr(self, name)
            if value < 2:
                raise PlatingError(f"PlatingConfig.{name} must be >= 2, got {value!r}")


@dataclass(frozen=True, eq=False)
class RelaxationSpectrum:
    """The relaxation rate on a log-time grid and its best non-negative explanation.

    Attributes:
        time_s: Grid times (log-spaced), ``(n_grid,)``.
        rate_v: ``-dV/d(ln t)`` per grid point and cell, ``(n_grid, n_cells)``.
        benign_fit_v: Best non-negative sum of exponential decays, same shape.
        sigma_v: Standard deviation of ``rate_v`` from voltage noise, same shape.
        voltage_noise_v: Voltage noise per cell used for ``sigma_v``, ``(n_cells,)``.
        edge_points: Trailing grid points where the smoothing window is truncated.
    """

    time_s: FloatArray
    rate_v: FloatArray
    benign_fit_v: FloatArray
    sigma_v: FloatArray
    voltage_noise_v: FloatArray
    edge_points: int

    @property
    def residual_v(self) -> FloatArray:
        """``rate_v - benign_fit_v``: what no benign relaxation explains."""
        return np.asarray(self.rate_v - self.benign_fit_v)


@dataclass(frozen=True, eq=False)
class PlatingResult:
    """Plating check of one rest, per cell.

    Attributes:
        evaluated: The rest was long enough and sampled densely enough to judge.
        reason: Why not, when ``evaluated`` is False.
        rest_s: Duration of the rest analysed (last sample time).
        detected: Plating signature found, ``(n_cells,)``.
        score: Residual at the feature over the peak relaxation rate (0 = none).
        significance: Residual at the feature over its noise standard deviation.
        feature_time_s: Time of the feature after the end of charge (about when the
            plated lithium is used up).
    """

    evaluated: bool
    reason: str
    rest_s: float
    detected: BoolArray
    score: FloatArray
    significance: FloatArray
    feature_time_s: FloatArray


def _inputs(time_s: ArrayLike, voltage_v: ArrayLike) -> tuple[FloatArray, FloatArray]:
    t = np.asarray(time_s, dtype=np.float64)
    v = np.asarray(voltage_v, dtype=np.float64)
    if t.ndim != 1 or t.size < 3:
        raise PlatingError(f"time_s must be 1-D with at least 3 samples, got shape {t.shape}")
    if not np.isfinite(t).all() or np.any(np.diff(t) <= 0):
        raise PlatingError("time_s must be finite and strictly increasing")
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or v.shape[0] != t.size:
        raise PlatingError(
            f"voltage_v must be (n_samples,) or (n_samples, n_cells) with n_samples={t.size}, "
            f"got {np.shape(voltage_v)}"
        )
    bad = ~np.isfinite(v)
    if bad.any():
        sample, cell = (int(x[0]) for x in np.nonzero(bad))
        raise PlatingError(
            f"voltage_v is not finite at sample {sample} of cell {cell}: drop or fill the gap "
            "before the analysis"
        )
    keep = t > 0
    if keep.sum() < 3:
        raise PlatingError("time_s must hold samples after the end of charge (t > 0)")
    return t[keep], v[keep]


def _kernel(grid: FloatArray, tau_ln: FloatArray) -> FloatArray:
    u = grid[:, None] - tau_ln[None, :]
    return np.asarray(np.exp(u - np.exp(u)))


def relaxation_spectrum(
    time_s: ArrayLike, voltage_v: ArrayLike, *, config: PlatingConfig | None = None
) -> RelaxationSpectrum:
    """``-dV/d(ln t)`` of a rest on a log-time grid, with the best non-negative fit.

    Args:
        time_s: Sample times since the end of charge, strictly increasing, ``(n,)``;
            samples at ``t <= 0`` are ignored.
        voltage_v: Cell voltages, ``(n,)`` or ``(n, n_cells)``.
        config: Detector settings.

    Returns:
        The spectrum, one column per cell.

    Raises:
        PlatingError: On bad input, or a rest too short for the smoothing window.
    """
    cfg = config or PlatingConfig()
    t, v = _inputs(time_s, voltage_v)
    h = _LN10 / cfg.points_per_decade
    # Start where a log-time bin holds enough samples: with uniform sampling the first
    # seconds hold one sample per several bins, whose noise would swamp the derivative.
    per_bin = np.searchsorted(t, t * math.exp(h)) - np.arange(t.size)
    dense = np.flatnonzero(per_bin >= cfg.min_samples_per_bin)
    t_start = float(t[dense[0]]) if dense.size else float(t[-1])
    s_end = math.log(t[-1])
    n_grid = math.floor((s_end - math.log(t_start)) / h + 1e-9) + 1
    if n_grid < cfg.savgol_window + 2:
        raise PlatingError(
            f"the rest from {t_start:.3g} s to {t[-1]:.3g} s spans {n_grid} log-time points; "
            f"at least {cfg.savgol_window + 2} are needed: rest longer or sample faster"
        )
    grid: FloatArray = math.log(t_start) + h * np.arange(n_grid, dtype=np.float64)

    # Bin means in log time; samples are sorted, so every bin is one contiguous run.
    s = np.log(t)
    index = np.floor((s - grid[0]) / h + 0.5).astype(np.intp)
    inside = (index >= 0) & (index < n_grid)
    idx, s_in, v_in = index[inside], s[inside], v[inside]
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    counts = np.diff(np.r_[starts, idx.size]).astype(np.float64)
    centre: FloatArray = np.add.reduceat(s_in, starts) / counts
    means = np.add.reduceat(v_in, starts, axis=0) / counts[:, None]
    # Empty bins (sparse early samples) are filled linearly in ln t.
    weights = _interp_matrix(grid, centre)
    v_grid = weights @ means
    inverse_count = weights @ (1.0 / counts)

    # White-noise estimate per cell from second differences of the raw samples.
    d2 = np.diff(v, 2, axis=0)
    mad = np.median(np.abs(d2 - np.median(d2, axis=0)), axis=0)
    noise = np.maximum(_MAD_TO_SIGMA * mad, cfg.min_voltage_noise_v)

    derivative = savgol_filter(
        np.eye(n_grid), cfg.savgol_window, cfg.savgol_order, deriv=1, delta=h, axis=0
    )
    rate = -(derivative @ v_grid)
    unit_sigma = np.sqrt((derivative**2) @ inverse_count)  # sigma_g for 1 V of noise
    sigma = unit_sigma[:, None] * noise[None, :]

    tau_step = _LN10 / cfg.tau_points_per_decade
    tau_ln: FloatArray = np.arange(grid[0] - _LN10, grid[-1] + _LN10 + 1e-9, tau_step)
    kernel = _kernel(grid, tau_ln)
    # The weights 1/sigma differ between cells only by a constant factor, which does not
    # change an NNLS solution: one weighted matrix serves every cell.
    weighted = kernel / unit_sigma[:, None]
    fit = np.empty_like(rate)
    for cell in range(rate.shape[1]):
        amplitudes, _ = nnls(weighted, rate[:, cell] / unit_sigma, maxiter=50 * tau_ln.size)
        fit[:, cell] = kernel @ amplitudes
    return RelaxationSpectrum(
        time_s=np.exp(grid),
        rate_v=rate,
        benign_fit_v=fit,
        sigma_v=sigma,
        voltage_noise_v=noise,
        edge_points=cfg.savgol_window // 2,
    )


def _interp_matrix(x_new: FloatArray, x_known: FloatArray) -> FloatArray:
    """Matrix ``W`` with ``W @ y_known`` = linear interpolation at ``x_new`` (clamped ends)."""
    n, m = x_new.size, x_known.size
    out = np.zeros((n, m))
    if m == 1:
        out[:, 0] = 1.0
        return out
    hi = np.clip(np.searchsorted(x_known, x_new), 1, m - 1)
    lo = hi - 1
    w = np.clip((x_new - x_known[lo]) / (x_known[hi] - x_known[lo]), 0.0, 1.0)
    rows = np.arange(n)
    out[rows, lo] = 1.0 - w
    out[rows, hi] += w
    return out


def detect_plating(
    time_s: ArrayLike, voltage_v: ArrayLike, *, config: PlatingConfig | None = None
) -> PlatingResult:
    """Look for the lithium-stripping signature in the rest after a charge (rule above).

    Args:
        time_s: Sample times since the end of charge (current cut), strictly increasing,
            ``(n,)``; any sampling (a BMS's 1 s, a simulation's log-spaced steps).
        voltage_v: Cell voltages during the rest, ``(n,)`` or ``(n, n_cells)``, as read
            (noise and quantisation are expected).
        config: Detector settings.

    Returns:
        Per-cell result; ``evaluated`` is False (nothing detected) while the rest is
        shorter than ``config.min_rest_s``.

    Raises:
        PlatingError: On bad input.
    """
    cfg = config or PlatingConfig()
    t, v = _inputs(time_s, voltage_v)
    n_cells = v.shape[1]
    rest_s = float(t[-1])

    def not_evaluated(reason: str) -> PlatingResult:
        nan = np.full(n_cells, np.nan)
        return PlatingResult(
            evaluated=False,
            reason=reason,
            rest_s=rest_s,
            detected=np.zeros(n_cells, dtype=bool),
            score=nan,
            significance=nan.copy(),
            feature_time_s=nan.copy(),
        )

    if rest_s < cfg.min_rest_s:
        return not_evaluated(
            f"rest of {rest_s:.0f} s is shorter than min_rest_s={cfg.min_rest_s:.0f} s"
        )
    try:
        spectrum = relaxation_spectrum(t, v, config=cfg)
    except PlatingError as err:
        return not_evaluated(str(err))
    grid_t = spectrum.time_s
    window = grid_t >= cfg.earliest_feature_s
    window[grid_t.size - spectrum.edge_points :] = False
    if not window.any():
        return not_evaluated(
            f"no log-time point between earliest_feature_s={cfg.earliest_feature_s:g} s and "
            f"the smoothing edge at {grid_t[-spectrum.edge_points - 1]:.0f} s"
        )
    residual = spectrum.residual_v
    z = residual / spectrum.sigma_v
    rows = np.flatnonzero(window)
    best = rows[np.argmax(z[rows], axis=0)]
    cells = np.arange(n_cells)
    peak = spectrum.rate_v.max(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(peak > 0, residual[best, cells] / peak, 0.0)
    score = np.maximum(score, 0.0)
    significance = z[best, cells]
    detected = (significance >= cfg.min_significance) & (score >= cfg.min_score)
    return PlatingResult(
        evaluated=True,
        reason="",
        rest_s=rest_s,
        detected=detected,
        score=score,
        significance=significance,
        feature_time_s=grid_t[best],
    )
