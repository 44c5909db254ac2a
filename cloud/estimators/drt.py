"""Distribution of relaxation times (DRT) of an impedance spectrum by Tikhonov regularisation.

Model (``Z_im < 0`` where capacitive, as in :mod:`twin.eis`)::

    Z(w) = R_inf + j w L + integral gamma(ln tau) / (1 + j w tau) d ln tau

discretised on a log-spaced ``tau`` grid as ``Z(w_i) = R_inf + j w_i L + sum_k x_k /
(1 + j w_i tau_k)`` with ``x_k = gamma_k * d ln tau`` (the resistance in cell ``k``), so
a peak's area is a resistance. The unknowns ``(R_inf, L, x) >= 0`` minimise::

    || W (A u - Z) ||^2 + lambda || D x ||^2

with ``W = 1 / |Z_i|`` (relative weighting, as the noise of impedance analysers and of
:func:`twin.eis.measure_eis` is relative), real and imaginary parts stacked, and ``D``
the ``order``-th difference with zeros beyond the grid (so ``gamma`` goes to zero at the
ends of a grid that reaches a decade past the data).

Why NNLS on the augmented system ``[W A; sqrt(lambda) D] u = [W Z; 0]``
(:func:`scipy.optimize.nnls`): it gives the non-negative regularised solution exactly,
in milliseconds for the ~100 unknowns a spectrum supports, with no solver dependency
(``cvxpy``, ``quadprog``) and no clipping step that would bias peak areas as a
closed-form ridge solution followed by ``max(x, 0)`` does.

``lambda`` is chosen on a log grid by generalised cross-validation of the Tikhonov
solution without the sign constraint (closed form, as in DRTtools, Saccoccio et al.,
Electrochim. Acta 147 (2014) 470)::

    u_lambda = (A_w^T A_w + lambda D^T D)^-1 A_w^T Z_w,   A_w = W A,  Z_w = W Z
    H_lambda = A_w (A_w^T A_w + lambda D^T D)^-1 A_w^T
    GCV(lambda) = n || A_w u_lambda - Z_w ||^2 / (n - tr H_lambda)^2

(``n`` = twice the number of frequencies), or by the corner of the L-curve (largest
curvature of ``(log ||A_w u - Z_w||, log ||D u||)`` over the same solutions). Both are
computed and reported; :class:`DrtConfig` ``criterion`` says which is used, and the
DRT is then the non-negative solution at that ``lambda``. Why GCV of the unconstrained
solution: the NNLS solutions are sparse at small ``lambda``, so the GCV of their
effective influence matrix (free unknowns only) is flat and jagged there and, on
twin spectra with 1 % noise, picked under-regularised DRTs with spurious peaks; the
unconstrained GCV is smooth in ``lambda`` and has a clear minimum.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import nnls
from scipy.signal import find_peaks

from cloud.estimators.eis_files import SpectrumError

__all__ = [
    "DrtConfig",
    "DrtPeak",
    "DrtResult",
    "RegularisationChoice",
    "compute_drt",
    "find_drt_peaks",
]

FloatArray = NDArray[np.float64]
ComplexArray = NDArray[np.complex128]


@dataclass(frozen=True, slots=True)
class DrtConfig:
    """How the DRT is computed.

    Attributes:
        points_per_decade: Density of the ``tau`` grid.
        tau_margin_decades: How far the grid reaches beyond ``1 / (2 pi f)`` of the
            highest and lowest frequency, on each side.
        penalty_order: Order of the differences penalised (0: size of ``gamma``,
            1: slope, 2: curvature; 2 gives smooth, well separated peaks).
        lambda_min: Smallest regularisation tried.
        lambda_max: Largest regularisation tried.
        n_lambdas: Number of log-spaced values tried.
        criterion: ``"gcv"`` or ``"l_curve"``: which choice of ``lambda`` is used.
        fit_inductance: Fit a series inductance (cables, cell tabs) besides ``R_inf``.
        peak_prominence_rel: Peaks lower than this share of the highest ``gamma`` (in
            prominence) are not reported.
    """

    points_per_decade: int = 10
    tau_margin_decades: float = 1.0
    penalty_order: int = 2
    lambda_min: float = 1e-6
    lambda_max: float = 100.0
    n_lambdas: int = 33
    criterion: Literal["gcv", "l_curve"] = "gcv"
    fit_inductance: bool = True
    peak_prominence_rel: float = 0.02

    def __post_init__(self) -> None:
        def fail(name: str, rule: str) -> None:
            raise SpectrumError(f"DrtConfig.{name} must be {rule}, got {getattr(self, name)!r}")

        if self.points_per_decade < 2:
            fail("points_per_decade", ">= 2")
        if not (math.isfinite(self.tau_margin_decades) and self.tau_margin_decades >= 0):
            fail("tau_margin_decades", "finite and >= 0")
        if self.penalty_order not in (0, 1, 2, 3):
            fail("penalty_order", "0, 1, 2 or 3")
        if not (0 < self.lambda_min <= self.lambda_max < math.inf):
            fail("lambda_max", f"finite and >= lambda_min ({self.lambda_min!r}) > 0")
        if self.n_lambdas < 1:
            fail("n_lambdas", ">= 1")
        if self.criterion not in ("gcv", "l_curve"):
            fail("criterion", "'gcv' or 'l_curve'")
        if not 0 <= self.peak_prominence_rel < 1:
            fail("peak_prominence_rel", "in [0, 1)")


@dataclass(frozen=True, slots=True)
class DrtPeak:
    """One peak of ``gamma``.

    Attributes:
        tau_s: Time constant at the apex (parabolic interpolation in ``ln tau``).
        frequency_hz: ``1 / (2 pi tau_s)``: where the arc has its apex.
        r_ohm: Area under the peak: the sum of ``x_k`` from the valley before it to the
            valley after it (grid ends at the outside).
        gamma_ohm: Height of ``gamma`` at the apex (ohm per unit of ``ln tau``).
        tau_lo_s: Lower end of the peak's region.
        tau_hi_s: Upper end of the peak's region.
    """

    tau_s: float
    frequency_hz: float
    r_ohm: float
    gamma_ohm: float
    tau_lo_s: float
    tau_hi_s: float

    def to_dict(self) -> dict[str, float]:
        """Plain floats under the attribute names."""
        return {
            "tau_s": self.tau_s,
            "frequency_hz": self.frequency_hz,
            "r_ohm": self.r_ohm,
            "gamma_ohm": self.gamma_ohm,
            "tau_lo_s": self.tau_lo_s,
            "tau_hi_s": self.tau_hi_s,
        }


@dataclass(frozen=True, eq=False)
class RegularisationChoice:
    """How ``lambda`` was chosen, with the criteria over the grid tried.

    Attributes:
        criterion: ``"gcv"`` or ``"l_curve"``: the one that chose :attr:`lambda_used`.
        lambda_used: The regularisation of the reported DRT.
        lambda_gcv: Minimum of the GCV function over the grid.
        lambda_l_curve: Corner (largest curvature) of the L-curve over the grid.
        at_grid_edge: The chosen value is the first or last of the grid (widen
            ``DrtConfig.lambda_min``/``lambda_max``; noise-free data drive GCV to the
            smallest ``lambda``, which is then right).
        lambdas: The grid.
        gcv: GCV value per ``lambda``.
        residual_norm: ``|| W (A u - Z) ||`` per ``lambda`` (dimensionless) of the
            unconstrained solution the criteria are computed on.
        penalty_norm: ``|| D x || / s`` per ``lambda`` (``s`` = largest ``|Z|``), same.
    """

    criterion: str
    lambda_used: float
    lambda_gcv: float
    lambda_l_curve: float
    at_grid_edge: bool
    lambdas: FloatArray
    gcv: FloatArray
    residual_norm: FloatArray
    penalty_norm: FloatArray

    def to_dict(self, *, curves: bool = False) -> dict[str, Any]:
        """The choice as plain values; ``curves`` adds the criteria over the grid."""
        out: dict[str, Any] = {
            "criterion": self.criterion,
            "lambda": self.lambda_used,
            "lambda_gcv": self.lambda_gcv,
            "lambda_l_curve": self.lambda_l_curve,
            "at_grid_edge": self.at_grid_edge,
        }
        if curves:
            out["lambdas"] = self.lambdas.tolist()
            out["gcv"] = self.gcv.tolist()
            out["residual_norm"] = self.residual_norm.tolist()
            out["penalty_norm"] = self.penalty_norm.tolist()
        return out


@dataclass(frozen=True, eq=False)
class DrtResult:
    """A DRT and what it implies.

    Attributes:
        tau_s: The ``tau`` grid.
        gamma_ohm: ``gamma(ln tau)`` on the grid (ohm per unit of ``ln tau``), >= 0.
        r_inf_ohm: Series resistance (the high-frequency intercept).
        inductance_h: Series inductance (0 when not fitted).
        peaks: Peaks of ``gamma``, in increasing ``tau``.
        regularisation: How ``lambda`` was chosen.
        z_fit_ohm: The DRT model's impedance at the spectrum's frequencies.
        relative_rms_residual: ``rms |Z_fit - Z| / mean |Z|`` of the DRT model.
    """

    tau_s: FloatArray
    gamma_ohm: FloatArray
    r_inf_ohm: float
    inductance_h: float
    peaks: tuple[DrtPeak, ...]
    regularisation: RegularisationChoice
    z_fit_ohm: ComplexArray
    relative_rms_residual: float

    @property
    def polarisation_ohm(self) -> float:
        """Total area under ``gamma``: the DC resistance minus ``R_inf``."""
        return float(self.gamma_ohm.sum() * _d_ln_tau(self.tau_s))

    def to_dict(self, *, curves: bool = False) -> dict[str, Any]:
        """Plain values; ``curves`` adds ``tau_s``/``gamma_ohm`` and the criteria curves."""
        out: dict[str, Any] = {
            "r_inf_ohm": self.r_inf_ohm,
            "inductance_h": self.inductance_h,
            "polarisation_ohm": self.polarisation_ohm,
            "relative_rms_residual": self.relative_rms_residual,
            "regularisation": self.regularisation.to_dict(curves=curves),
            "peaks": [p.to_dict() for p in self.peaks],
        }
        if curves:
            out["tau_s"] = self.tau_s.tolist()
            out["gamma_ohm"] = self.gamma_ohm.tolist()
        return out


def _d_ln_tau(tau_s: FloatArray) -> float:
    return float(np.log(tau_s[1] / tau_s[0])) if tau_s.size > 1 else 1.0


def _tau_grid(frequency_hz: FloatArray, config: DrtConfig) -> FloatArray:
    lo = math.log10(1.0 / (2 * math.pi * float(frequency_hz.max()))) - config.tau_margin_decades
    hi = math.log10(1.0 / (2 * math.pi * float(frequency_hz.min()))) + config.tau_margin_decades
    n = math.ceil((hi - lo) * config.points_per_decade - 1e-9) + 1
    return np.logspace(lo, hi, max(n, 2))


def _difference_matrix(n: int, order: int) -> FloatArray:
    """``order``-th differences of ``x`` padded with zeros on both sides."""
    if order == 0:
        return np.eye(n)
    padded = np.zeros((n + 2 * order, n))
    padded[order : order + n] = np.eye(n)
    return np.diff(padded, n=order, axis=0)


def _l_curve_corner(residual_norm: FloatArray, penalty_norm: FloatArray) -> int:
    """Index of the largest curvature of the L-curve (log-log), ends excluded."""
    n = residual_norm.size
    if n < 5:
        return int(np.argmin(residual_norm * penalty_norm))
    tiny = np.finfo(np.float64).tiny
    rho = np.log(np.maximum(residual_norm, tiny))
    eta = np.log(np.maximum(penalty_norm, tiny))
    d_rho, d_eta = np.gradient(rho), np.gradient(eta)
    dd_rho, dd_eta = np.gradient(d_rho), np.gradient(d_eta)
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = (d_rho * dd_eta - dd_rho * d_eta) / (d_rho**2 + d_eta**2) ** 1.5
    kappa = np.where(np.isfinite(kappa), kappa, -np.inf)
    kappa[[0, -1]] = -np.inf
    return int(np.argmax(kappa))


def compute_drt(
    frequency_hz: ArrayLike, z_ohm: ArrayLike, *, config: DrtConfig | None = None
) -> DrtResult:
    """The DRT of one spectrum, with ``lambda`` chosen automatically (module docstring).

    Args:
        frequency_hz: Frequencies, > 0, any order.
        z_ohm: Complex impedance at those frequencies (``Z_im < 0`` capacitive).
        config: Grid, penalty and criterion; defaults to :class:`DrtConfig` ``()``.

    Returns:
        The DRT, its peaks and the regularisation choice.

    Raises:
        SpectrumError: If the arrays differ in length, have fewer than 3 points or a
            non-finite value, or ``|Z|`` is zero somewhere.
    """
    cfg = config or DrtConfig()
    f = np.asarray(frequency_hz, dtype=np.float64).reshape(-1)
    z = np.asarray(z_ohm, dtype=np.complex128).reshape(-1)
    if f.size != z.size or f.size < 3:
        raise SpectrumError(
            f"compute_drt: need >= 3 frequencies and as many impedances, got {f.size} and {z.size}"
        )
    mod = np.abs(z)
    if not (np.all(np.isfinite(f) & (f > 0)) and np.all(np.isfinite(z)) and np.all(mod > 0)):
        raise SpectrumError("compute_drt: frequencies must be > 0 and Z finite and non-zero")

    w = 2 * np.pi * f
    tau = _tau_grid(f, cfg)
    kernel = 1.0 / (1.0 + 1j * w[:, None] * tau[None, :])
    scale_ohm = float(mod.max())
    w_max = float(w.max())
    # Columns: R_inf, L (scaled by w_max so every column is O(1)), then x_k; all in units
    # of scale_ohm, rows divided by |Z| (relative weighting).
    n_series = 2 if cfg.fit_inductance else 1
    cols = np.empty((f.size, n_series + tau.size), dtype=np.complex128)
    cols[:, 0] = 1.0
    if cfg.fit_inductance:
        cols[:, 1] = 1j * w / w_max
    cols[:, n_series:] = kernel
    cols *= scale_ohm / mod[:, None]
    a = np.vstack([cols.real, cols.imag])
    b = np.concatenate([z.real / mod, z.imag / mod])
    penalty = np.zeros((tau.size + cfg.penalty_order, n_series + tau.size))
    penalty[:, n_series:] = _difference_matrix(tau.size, cfg.penalty_order)
    n_rows = b.size

    lambdas = np.geomspace(cfg.lambda_min, cfg.lambda_max, cfg.n_lambdas)
    gcv = np.empty(lambdas.size)
    res_norm = np.empty(lambdas.size)
    pen_norm = np.empty(lambdas.size)
    ata = a.T @ a
    ptp = penalty.T @ penalty
    atb = a.T @ b
    for i, lam in enumerate(lambdas):
        gram = ata + lam * ptp
        u_ridge = np.linalg.solve(gram, atb)
        trace = float(np.trace(np.linalg.solve(gram, ata)))
        res_norm[i] = float(np.linalg.norm(a @ u_ridge - b))
        pen_norm[i] = float(np.linalg.norm(penalty @ u_ridge))
        gcv[i] = n_rows * res_norm[i] ** 2 / max(n_rows - trace, 1e-12) ** 2

    i_gcv = int(np.argmin(gcv))
    i_lc = _l_curve_corner(res_norm, pen_norm)
    i_used = i_gcv if cfg.criterion == "gcv" else i_lc
    choice = RegularisationChoice(
        criterion=cfg.criterion,
        lambda_used=float(lambdas[i_used]),
        lambda_gcv=float(lambdas[i_gcv]),
        lambda_l_curve=float(lambdas[i_lc]),
        at_grid_edge=i_used in (0, lambdas.size - 1) and lambdas.size > 1,
        lambdas=lambdas,
        gcv=gcv,
        residual_norm=res_norm,
        penalty_norm=pen_norm,
    )
    u, _ = nnls(
        np.vstack([a, math.sqrt(choice.lambda_used) * penalty]),
        np.concatenate([b, np.zeros(penalty.shape[0])]),
    )
    r_inf = float(u[0] * scale_ohm)
    inductance = float(u[1] * scale_ohm / w_max) if cfg.fit_inductance else 0.0
    x = u[n_series:] * scale_ohm
    gamma = x / _d_ln_tau(tau)
    z_fit = r_inf + 1j * w * inductance + kernel @ x
    return DrtResult(
        tau_s=tau,
        gamma_ohm=gamma,
        r_inf_ohm=r_inf,
        inductance_h=inductance,
        peaks=find_drt_peaks(tau, gamma, prominence_rel=cfg.peak_prominence_rel),
        regularisation=choice,
        z_fit_ohm=z_fit,
        relative_rms_residual=float(np.sqrt(np.mean(np.abs(z_fit - z) ** 2)) / mod.mean()),
    )


def find_drt_peaks(
    tau_s: ArrayLike, gamma_ohm: ArrayLike, *, prominence_rel: float = 0.02
) -> tuple[DrtPeak, ...]:
    """Peaks of ``gamma`` on a log-spaced grid and the resistance under each.

    A maximum at either end of the grid counts (the grid is padded with zeros), so an
    arc whose apex lies beyond the measured band still shows. Each peak owns the grid
    cells from the lowest point between it and the previous peak to the lowest point
    between it and the next one; its resistance is the sum of ``gamma * d ln tau``
    over them, so the peaks' resistances add up to the whole polarisation.

    Args:
        tau_s: Log-spaced time constants, increasing.
        gamma_ohm: ``gamma`` on that grid (ohm per unit of ``ln tau``).
        prominence_rel: Minimum prominence as a share of ``max(gamma)``.

    Returns:
        Peaks in increasing ``tau``; empty if ``gamma`` is zero everywhere.
    """
    tau = np.asarray(tau_s, dtype=np.float64).reshape(-1)
    gamma = np.asarray(gamma_ohm, dtype=np.float64).reshape(-1)
    top = float(gamma.max()) if gamma.size else 0.0
    if top <= 0:
        return ()
    padded = np.concatenate([[0.0], gamma, [0.0]])
    idx, _ = find_peaks(padded, prominence=prominence_rel * top)
    idx = idx - 1
    if idx.size == 0:
        return ()
    d = _d_ln_tau(tau)
    ln_tau = np.log(tau)
    bounds = [0]
    for left, right in itertools.pairwise(idx):
        bounds.append(int(left + np.argmin(gamma[left : right + 1])))
    bounds.append(gamma.size)
    peaks = []
    for k, i in enumerate(idx):
        lo, hi = bounds[k], bounds[k + 1]
        apex = float(ln_tau[i])
        if 0 < i < gamma.size - 1:
            g0, g1, g2 = gamma[i - 1], gamma[i], gamma[i + 1]
            curvature = g0 - 2 * g1 + g2
            if curvature < 0:
                apex += 0.5 * d * float((g0 - g2) / curvature)
        tau_apex = math.exp(apex)
        peaks.append(
            DrtPeak(
                tau_s=tau_apex,
                frequency_hz=1.0 / (2 * math.pi * tau_apex),
                r_ohm=float(gamma[lo:hi].sum() * d),
                gamma_ohm=float(gamma[i]),
                tau_lo_s=float(tau[lo]),
                tau_hi_s=float(tau[hi - 1]),
            )
        )
    return tuple(peaks)
