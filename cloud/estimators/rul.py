"""Remaining useful life from a SoH trajectory: a fade model, extrapolated, with a band.

The axis ``x`` is whatever the caller measures age in (days, years or full equivalent
cycles); the RUL comes back in the same unit. With ``u = (x - x[0]) / span`` (the
history rescaled to 0..1, which keeps the fit well conditioned) one of two models is
fitted by least squares:

* ``"power"`` (default): ``SoH = s0 - a u^b`` with ``a >= 0`` and ``0.1 <= b <= 3``, the
  form of the twin's semi-empirical laws (``t^0.5``, ``t^0.75``, ``Q^0.5``) seen from the
  start of the history. For a fixed ``b`` it is linear in ``s0`` and ``a``, so ``b`` is
  found on a grid (step 0.01, refined by a parabola) by variable projection: no start
  values to guess, no iteration that can fail, and all bootstrap resamples in one
  array operation;
* ``"linear_sqrt"``: ``SoH = s0 - a sqrt(u) - c u`` (linear least squares), a
  square-root calendar term plus a linear cycle term.

The end of life is where the fitted curve reaches ``soh_eol``, in closed form::

    power:        u_EoL = ((s0 - SoH_EoL) / a)^(1 / b)
    linear_sqrt:  u_EoL = v^2,  v = smallest root >= 0 of  c v^2 + a v - (s0 - SoH_EoL)

and ``RUL = x_EoL - x_now`` (``x_now`` = the last point, ``RUL >= 0``). A crossing beyond
``horizon`` spans past the last point counts as never (``inf``).

**Band**: residual bootstrap. The centred residuals, inflated by ``sqrt(n / (n - p))``,
are resampled onto the fitted curve ``n_bootstrap`` times, each resample is refitted
and its RUL computed; the band is the ``(1 - confidence) / 2`` and ``(1 + confidence) /
2`` quantiles (taken on the sample, so an infinite upper end stays infinite). The band
covers the noise of the history and the parameter uncertainty it causes, not a change
of the degradation mechanism (a knee) ahead.

Histories with fewer than ``min_points`` points (or no spread in ``x``) give
``insufficient_data`` rather than a fit: a three-parameter curve through two points
extrapolates nothing.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "RulConfig",
    "RulResult",
    "RulStatus",
    "degradation_model",
    "remaining_useful_life",
]

FloatArray = NDArray[np.float64]
Model = Literal["power", "linear_sqrt"]

_B_GRID = np.linspace(0.1, 3.0, 291)  # exponents of the power law tried (step 0.01)


class RulStatus(enum.StrEnum):
    ok = "ok"
    insufficient_data = "insufficient_data"
    at_end_of_life = "at_end_of_life"
    not_degrading = "not_degrading"


@dataclass(frozen=True)
class RulConfig:
    """Model and band settings.

    Attributes:
        model: ``"power"`` or ``"linear_sqrt"``.
        confidence: Coverage of the band (0.9: the 5 % and 95 % quantiles).
        n_bootstrap: Bootstrap resamples.
        min_points: Fewest history points to fit (at least the model's 3 parameters + 1).
        horizon: A crossing further than this many history spans past the last point
            counts as never.
        seed: Seed of the bootstrap.

    Raises:
        ValueError: If a value is out of range.
    """

    model: Model = "power"
    confidence: float = 0.9
    n_bootstrap: int = 300
    min_points: int = 5
    horizon: float = 50.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in ("power", "linear_sqrt"):
            raise ValueError(
                f"RulConfig.model must be 'power' or 'linear_sqrt', got {self.model!r}"
            )
        if not 0 < self.confidence < 1:
            raise ValueError(f"RulConfig.confidence must be in (0, 1), got {self.confidence}")
        if self.n_bootstrap < 20:
            raise ValueError(f"RulConfig.n_bootstrap must be >= 20, got {self.n_bootstrap}")
        if self.min_points < 4:
            raise ValueError(f"RulConfig.min_points must be >= 4, got {self.min_points}")
        if not (math.isfinite(self.horizon) and self.horizon > 0):
            raise ValueError(f"RulConfig.horizon must be finite and > 0, got {self.horizon}")


@dataclass(frozen=True, slots=True)
class RulResult:
    """Projected end of life in the unit of ``x``.

    Attributes:
        status: ``ok``, ``insufficient_data``, ``at_end_of_life`` or ``not_degrading``.
        message: What the status means for this history.
        x_now: The last point's ``x``.
        rul: Remaining useful life (``inf``: never on this trend; NaN: no fit).
        rul_low: Lower end of the band.
        rul_high: Upper end of the band (may be ``inf``).
        x_eol: ``x`` at the projected end of life.
        params: Fitted parameters (``s0, a, b`` or ``s0, a, c``; ``u`` scaled to 0..1).
        span: ``x[-1] - x[0]``, the scale of ``u``.
        residual_sigma: RMS residual of the fit (SoH).
        model: The model used.
    """

    status: RulStatus
    message: str
    x_now: float
    rul: float
    rul_low: float
    rul_high: float
    x_eol: float
    params: tuple[float, ...]
    span: float
    residual_sigma: float
    model: str


def degradation_model(model: Model, u: ArrayLike, params: ArrayLike) -> FloatArray:
    """SoH of the model at scaled age ``u = (x - x[0]) / span`` (>= 0)."""
    v = np.maximum(np.asarray(u, dtype=np.float64), 0.0)
    p = np.asarray(params, dtype=np.float64)
    if model == "power":
        return np.asarray(p[0] - p[1] * v ** p[2], dtype=np.float64)
    return np.asarray(p[0] - p[1] * np.sqrt(v) - p[2] * v, dtype=np.float64)


def _fit(model: Model, u: FloatArray, y: FloatArray) -> FloatArray:
    """Least-squares parameters for each row of ``y`` (``(k, n)`` -> ``(k, 3)``).

    ``power`` by variable projection: for each exponent on a grid the model is linear in
    ``s0`` and ``a``; the best grid exponent is refined by a parabola through it and its
    neighbours.
    """
    if model == "linear_sqrt":
        design = np.column_stack([np.ones_like(u), -np.sqrt(u), -u])
        coef, *_ = np.linalg.lstsq(design, y.T, rcond=None)
        return np.asarray(coef.T, dtype=np.float64)
    grid = _B_GRID
    basis = u[None, :] ** grid[:, None]  # (g, n)
    dx = basis - basis.mean(axis=1, keepdims=True)
    sxx = np.einsum("gn,gn->g", dx, dx)
    dy = y - y.mean(axis=1, keepdims=True)  # (k, n)
    syy = np.einsum("kn,kn->k", dy, dy)
    sxy = dy @ dx.T  # (k, g)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(sxx > 0, sxy / sxx, 0.0)  # = -a
        # a >= 0: a rising fit is replaced by a flat one
        sse = np.where(slope < 0, syy[:, None] - sxy * slope, syy[:, None])
    j = np.clip(np.argmin(sse, axis=1), 1, grid.size - 2)
    rows = np.arange(y.shape[0])
    f0, f1, f2 = sse[rows, j - 1], sse[rows, j], sse[rows, j + 1]
    curvature = f0 - 2 * f1 + f2
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = np.where(curvature > 0, 0.5 * (f0 - f2) / curvature, 0.0)
    b = grid[j] + np.clip(shift, -1.0, 1.0) * (grid[1] - grid[0])
    basis_b = u[None, :] ** b[:, None]  # (k, n)
    mean_x = basis_b.mean(axis=1)
    dxb = basis_b - mean_x[:, None]
    var = np.einsum("kn,kn->k", dxb, dxb)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(var > 0, -np.einsum("kn,kn->k", dxb, dy) / var, 0.0)
    a = np.maximum(a, 0.0)
    s0 = y.mean(axis=1) + a * mean_x
    return np.column_stack([s0, a, b])


def _u_eol(model: Model, params: FloatArray, soh_eol: float) -> float:
    """Scaled age at which the model reaches ``soh_eol`` (inf: never)."""
    s0, a, third = (float(v) for v in params)
    drop = s0 - soh_eol
    if drop <= 0:
        return 0.0
    if model == "power":
        return (drop / a) ** (1.0 / third) if a > 0 else math.inf
    c = third
    if abs(c) < 1e-12:
        return (drop / a) ** 2 if a > 0 else math.inf
    disc = a * a + 4.0 * c * drop
    if disc < 0:
        return math.inf
    roots = [(-a + math.sqrt(disc)) / (2 * c), (-a - math.sqrt(disc)) / (2 * c)]
    positive = [r for r in roots if r >= 0]
    return min(positive) ** 2 if positive else math.inf


def _insufficient(message: str, x_now: float, model: str) -> RulResult:
    nan = math.nan
    return RulResult(
        RulStatus.insufficient_data, message, x_now, nan, nan, nan, nan, (), nan, nan, model
    )


def remaining_useful_life(
    x: ArrayLike,
    soh: ArrayLike,
    *,
    soh_eol: float,
    config: RulConfig | None = None,
) -> RulResult:
    """Fit the SoH trajectory and project when it reaches ``soh_eol``.

    Args:
        x: Age of each SoH point (time or FEC; any unit, the RUL comes back in it).
        soh: SoH at each point, in the unit of ``soh_eol`` (fraction or percent).
        soh_eol: End-of-life SoH.
        config: Model and band settings.

    Returns:
        The RUL with its band, or a result whose status says why there is none.

    Raises:
        ValueError: If ``x`` and ``soh`` differ in length.
    """
    cfg = config or RulConfig()
    xs = np.asarray(x, dtype=np.float64).ravel()
    ys = np.asarray(soh, dtype=np.float64).ravel()
    if xs.shape != ys.shape:
        raise ValueError(f"x and soh must have the same length, got {xs.size} and {ys.size}")
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    x_now = float(xs[-1]) if xs.size else math.nan
    if xs.size < cfg.min_points or not np.ptp(xs) > 0:
        return _insufficient(
            f"insufficient data: a {cfg.model} fit needs at least {cfg.min_points} SoH points "
            f"at different ages, got {xs.size}",
            x_now,
            cfg.model,
        )
    if not math.isfinite(soh_eol):
        raise ValueError(f"soh_eol must be finite, got {soh_eol}")
    span = float(xs[-1] - xs[0])
    u = (xs - xs[0]) / span
    params = _fit(cfg.model, u, ys[None, :])[0]
    fitted = degradation_model(cfg.model, u, params)
    resid = ys - fitted
    sigma = float(np.sqrt(np.mean(resid**2)))

    def rul_of(p: FloatArray) -> float:
        x_eol = float(xs[0]) + span * _u_eol(cfg.model, p, soh_eol)
        if x_eol - x_now > cfg.horizon * span:
            return math.inf
        return max(x_eol - x_now, 0.0)

    rul = rul_of(params)
    rng = np.random.default_rng(cfg.seed)
    n_par = params.size
    centred = (resid - resid.mean()) * math.sqrt(xs.size / max(xs.size - n_par, 1))
    y_star = fitted + rng.choice(centred, size=(cfg.n_bootstrap, xs.size), replace=True)
    samples = np.array([rul_of(p) for p in _fit(cfg.model, u, y_star)])
    alpha = 1.0 - cfg.confidence
    low = float(np.quantile(samples, alpha / 2, method="lower"))
    high = float(np.quantile(samples, 1 - alpha / 2, method="higher"))
    x_eol = x_now + rul
    if ys[-1] <= soh_eol:
        status, message = RulStatus.at_end_of_life, "the latest SoH is at or below SoH_EoL"
        rul, low, high, x_eol = 0.0, 0.0, 0.0, x_now
    elif math.isinf(rul):
        status = RulStatus.not_degrading
        message = f"the fitted trend does not reach SoH_EoL within {cfg.horizon:g} history spans"
    else:
        status, message = RulStatus.ok, "ok"
    return RulResult(
        status=status,
        message=message,
        x_now=x_now,
        rul=rul,
        rul_low=low,
        rul_high=high,
        x_eol=x_eol,
        params=tuple(float(v) for v in params),
        span=span,
        residual_sigma=sigma,
        model=cfg.model,
    )
