"""EIS -> DRT -> ECM: validate a spectrum, find its relaxation peaks, fit R0 + up to 4 RC pairs.

Pillar 1's cloud estimator. For one cell's spectrum :func:`fit_ecm`

1. checks it with the lin-KK test (``impedance.validation.linKK``): a Kramers-Kronig
   compliant series of RC elements is fitted; RMS relative residuals above
   :attr:`EcmFitConfig.lin_kk_threshold` mean the cell was not linear, causal and
   stationary during the sweep (drift, a changing state, a bad contact);
2. computes the DRT (:mod:`cloud.estimators.drt`) with the regularisation chosen by GCV;
3. starts a circuit fit from the DRT: ``R0`` from ``R_inf`` (the high-frequency
   intercept), one RC pair per peak (the largest peaks, at most 4, with ``R_k`` = the
   peak's area and ``C_k = tau_k / R_k``), a series inductance ``L0`` when the DRT finds
   one that matters at the highest frequency;
4. fits ``[L0-]R0-p(R1,C1)-...-p(Rn,Cn)`` with ``impedance``'s ``CustomCircuit``
   weighted by ``|Z|`` and reports one-sigma uncertainties from the fit covariance
   (``curve_fit``'s, scaled by the residual variance) and the residual of every point.

The parameters come out under the names of the edge's ``ecm_update`` command (``r0``,
``r1``/``c1`` ... ``r4``/``c4`` in ohm and F, pairs in increasing time constant); the
command's ``voltage`` cannot come from a spectrum and is the caller's to add. Sign
convention: ``Z_im < 0`` where capacitive, as in :mod:`twin.eis`.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cloud.estimators.drt import DrtConfig, DrtResult, compute_drt
from cloud.estimators.eis_files import Spectrum, SpectrumError

__all__ = [
    "EcmFit",
    "EcmFitConfig",
    "EisPoint",
    "LinKKResult",
    "RcPair",
    "ecm_impedance",
    "fit_ecm",
    "fit_records",
    "lin_kk",
]

FloatArray = NDArray[np.float64]
ComplexArray = NDArray[np.complex128]

MAX_RC = 4
"""RC pairs the edge's ECM (and the ``ecm_update`` command) can carry."""


@dataclass(frozen=True, slots=True)
class EcmFitConfig:
    """Options of :func:`fit_ecm`.

    Attributes:
        max_rc: Most RC pairs to fit (1..4).
        min_peak_share: DRT peaks holding less than this share of the total peak
            resistance get no RC pair (noise makes small spurious peaks).
        inductance: ``"auto"`` fits a series ``L0`` when the DRT's inductance reaches
            1 % of ``|Z|`` at the highest frequency; ``"always"`` / ``"never"``.
        lin_kk_threshold: RMS of the lin-KK relative residuals (``|Z - Z_KK| / |Z|``)
            above which the spectrum fails. Set it a little above the instrument's
            relative noise: 0.02 suits the 1 % of an on-board impedance chip (the twin's
            default), 0.005 a lab potentiostat.
        lin_kk_cutoff: lin-KK's ``c``: RC elements are added until the share of negative
            resistance passes ``1 - c``. 0.5 rather than the library's 0.85: at 0.85 the
            test stops at so few elements that noise-free battery spectra leave 0.4-1 %
            residuals, as large as the drifts it should catch.
        lin_kk_max_m: Most RC elements of the lin-KK model.
        drt: How the DRT is computed.
    """

    max_rc: int = MAX_RC
    min_peak_share: float = 0.02
    inductance: Literal["auto", "always", "never"] = "auto"
    lin_kk_threshold: float = 0.02
    lin_kk_cutoff: float = 0.5
    lin_kk_max_m: int = 60
    drt: DrtConfig = field(default_factory=DrtConfig)

    def __post_init__(self) -> None:
        def fail(name: str, rule: str) -> None:
            raise SpectrumError(f"EcmFitConfig.{name} must be {rule}, got {getattr(self, name)!r}")

        if not 1 <= self.max_rc <= MAX_RC:
            fail("max_rc", f"1..{MAX_RC}")
        if not 0 <= self.min_peak_share < 1:
            fail("min_peak_share", "in [0, 1)")
        if self.inductance not in ("auto", "always", "never"):
            fail("inductance", "'auto', 'always' or 'never'")
        if not (math.isfinite(self.lin_kk_threshold) and self.lin_kk_threshold > 0):
            fail("lin_kk_threshold", "finite and > 0")
        if not 0 < self.lin_kk_cutoff < 1:
            fail("lin_kk_cutoff", "in (0, 1)")
        if self.lin_kk_max_m < 2:
            fail("lin_kk_max_m", ">= 2")


@dataclass(frozen=True, eq=False)
class LinKKResult:
    """The lin-KK test of a spectrum (Schönleber et al. 2014, via ``impedance``).

    Attributes:
        passed: ``rms_residual <= threshold``.
        threshold: The limit applied.
        rms_residual: RMS over the points of ``|Z - Z_KK| / |Z|``.
        max_residual: Largest ``|Z - Z_KK| / |Z|``.
        n_rc: RC elements of the KK model.
        mu: Under/over-fitting measure at ``n_rc``.
        residual_re: ``Re(Z - Z_KK) / |Z|`` per point.
        residual_im: ``Im(Z - Z_KK) / |Z|`` per point.
    """

    passed: bool
    threshold: float
    rms_residual: float
    max_residual: float
    n_rc: int
    mu: float
    residual_re: FloatArray
    residual_im: FloatArray

    def to_dict(self) -> dict[str, Any]:
        """Summary as plain values (the per-point residuals are in the fit's points)."""
        return {
            "passed": self.passed,
            "threshold": self.threshold,
            "rms_residual": self.rms_residual,
            "max_residual": self.max_residual,
            "n_rc": self.n_rc,
            "mu": _json_float(self.mu),
        }


@dataclass(frozen=True, slots=True)
class RcPair:
    """One fitted RC pair with one-sigma uncertainties (``nan`` if unknown)."""

    r_ohm: float
    c_f: float
    r_std_ohm: float
    c_std_f: float

    @property
    def tau_s(self) -> float:
        """Time constant ``R C``."""
        return self.r_ohm * self.c_f


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True, eq=False)
class EcmFit:
    """The fitted ECM of one spectrum and how it was reached.

    Attributes:
        source: The spectrum's source (file or sweep).
        frequency_hz: Frequencies used, ascending.
        z_ohm: Measured impedance at those frequencies.
        z_fit_ohm: The fitted circuit's impedance there.
        circuit: The ``impedance`` circuit string fitted.
        r0_ohm: Series resistance.
        r0_std_ohm: Its one-sigma uncertainty.
        pairs: RC pairs in increasing time constant.
        inductance_h: Series inductance, ``None`` if not fitted.
        inductance_std_h: Its uncertainty (``nan`` if not fitted).
        relative_rms_residual: ``rms |Z_fit - Z| / mean |Z|``.
        lin_kk: The validation of the spectrum.
        drt: The DRT that initialised the fit.
        initial_guess: The fit's starting values, in circuit order.
        warnings: What the fit warned about (poorly determined parameters...).
        notes: What the reader or :func:`fit_records` decided on the way.
    """

    source: str
    frequency_hz: FloatArray
    z_ohm: ComplexArray
    z_fit_ohm: ComplexArray
    circuit: str
    r0_ohm: float
    r0_std_ohm: float
    pairs: tuple[RcPair, ...]
    inductance_h: float | None
    inductance_std_h: float
    relative_rms_residual: float
    lin_kk: LinKKResult
    drt: DrtResult
    initial_guess: tuple[float, ...]
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def residual_rel(self) -> ComplexArray:
        """``(Z_fit - Z) / |Z|`` per point."""
        return (self.z_fit_ohm - self.z_ohm) / np.abs(self.z_ohm)

    @property
    def total_resistance_ohm(self) -> float:
        """``R0 + sum R_k``: the fitted DC resistance."""
        return self.r0_ohm + sum(p.r_ohm for p in self.pairs)

    def model_impedance(self, frequency_hz: ArrayLike) -> ComplexArray:
        """The fitted circuit's impedance at any frequencies."""
        return ecm_impedance(
            frequency_hz,
            r0_ohm=self.r0_ohm,
            pairs=[(p.r_ohm, p.c_f) for p in self.pairs],
            inductance_h=self.inductance_h or 0.0,
        )

    def ecm_update_params(self) -> dict[str, float]:
        """``r0``, ``r1``, ``c1``, ... as the ``ecm_update`` command takes them (no voltage)."""
        out = {"r0": self.r0_ohm}
        for k, p in enumerate(self.pairs, start=1):
            out[f"r{k}"] = p.r_ohm
            out[f"c{k}"] = p.c_f
        return out

    def parameters(self) -> dict[str, float | None]:
        """Wire names with ``*_std`` uncertainties and ``tau{k}_s`` (``None`` = unknown)."""
        out: dict[str, float | None] = {
            "r0": self.r0_ohm,
            "r0_std": _json_float(self.r0_std_ohm),
        }
        for k, p in enumerate(self.pairs, start=1):
            out[f"r{k}"] = p.r_ohm
            out[f"r{k}_std"] = _json_float(p.r_std_ohm)
            out[f"c{k}"] = p.c_f
            out[f"c{k}_std"] = _json_float(p.c_std_f)
            out[f"tau{k}_s"] = p.tau_s
        return out

    def to_dict(self, *, points: bool = True, curves: bool = False) -> dict[str, Any]:
        """Everything as plain JSON values.

        Args:
            points: Include the per-point data, fit and residuals.
            curves: Include the DRT ``gamma(tau)`` and the regularisation curves.
        """
        res = self.residual_rel
        out: dict[str, Any] = {
            "source": self.source,
            "n_points": int(self.frequency_hz.size),
            "frequency_min_hz": float(self.frequency_hz.min()),
            "frequency_max_hz": float(self.frequency_hz.max()),
            "circuit": self.circuit,
            "parameters": self.parameters(),
            "inductance_h": self.inductance_h,
            "inductance_std_h": (
                None if self.inductance_h is None else _json_float(self.inductance_std_h)
            ),
            "total_resistance_ohm": self.total_resistance_ohm,
            "relative_rms_residual": self.relative_rms_residual,
            "max_relative_residual": float(np.abs(res).max()),
            "lin_kk": self.lin_kk.to_dict(),
            "drt": self.drt.to_dict(curves=curves),
            "initial_guess": list(self.initial_guess),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }
        if points:
            out["points"] = [
                {
                    "frequency_hz": float(f),
                    "z_re_ohm": float(z.real),
                    "z_im_ohm": float(z.imag),
                    "z_fit_re_ohm": float(zf.real),
                    "z_fit_im_ohm": float(zf.imag),
                    "residual_re": float(r.real),
                    "residual_im": float(r.imag),
                    "lin_kk_residual_re": float(kr),
                    "lin_kk_residual_im": float(ki),
                }
                for f, z, zf, r, kr, ki in zip(
                    self.frequency_hz,
                    self.z_ohm,
                    self.z_fit_ohm,
                    res,
                    self.lin_kk.residual_re,
                    self.lin_kk.residual_im,
                    strict=True,
                )
            ]
        return out


class EisPoint(Protocol):
    """One EIS point as :class:`twin.eis.EisRecord` has it (structural, so the cloud need
    not import the twin package)."""

    @property
    def frequency_hz(self) -> float: ...
    @property
    def z_re_ohm(self) -> float: ...
    @property
    def z_im_ohm(self) -> float: ...
    @property
    def status(self) -> str: ...
    @property
    def event_id(self) -> str: ...
    @property
    def cell_id(self) -> int: ...


def ecm_impedance(
    frequency_hz: ArrayLike,
    *,
    r0_ohm: float,
    pairs: Sequence[tuple[float, float]],
    inductance_h: float = 0.0,
) -> ComplexArray:
    """``Z(f) = R0 + j w L + sum R_k / (1 + j w R_k C_k)`` for ``pairs`` of ``(R_k, C_k)``."""
    w = 2 * np.pi * np.asarray(frequency_hz, dtype=np.float64)
    z = np.full(w.shape, r0_ohm, dtype=np.complex128) + 1j * w * inductance_h
    for r, c in pairs:
        z += r / (1.0 + 1j * w * r * c)
    return z


def lin_kk(
    frequency_hz: ArrayLike, z_ohm: ArrayLike, *, config: EcmFitConfig | None = None
) -> LinKKResult:
    """The lin-KK test of a spectrum with ``impedance.validation.linKK``.

    Complex fit with a series capacitance (battery spectra often end in a capacitive
    diffusion tail that never closes); pass/fail by :attr:`EcmFitConfig.lin_kk_threshold`.
    """
    from impedance.validation import linKK

    cfg = config or EcmFitConfig()
    f = np.asarray(frequency_hz, dtype=np.float64)
    z = np.asarray(z_ohm, dtype=np.complex128)
    # linKK prints progress to stdout every 10 elements (it would corrupt --json output),
    # and impedance 1.7.1 builds a Python expression from the elements' reprs, which
    # NumPy 2 writes as "np.float64(...)" (ECSHackWeek/impedance.py#296): legacy reprs
    # for the call, scoped by the context manager.
    with contextlib.redirect_stdout(io.StringIO()), np.printoptions(legacy="1.25"):
        m, mu, _, res_re, res_im = linKK(
            f,
            z,
            c=cfg.lin_kk_cutoff,
            max_M=cfg.lin_kk_max_m,
            fit_type="complex",
            add_cap=True,
        )
    res_re = np.asarray(res_re, dtype=np.float64)
    res_im = np.asarray(res_im, dtype=np.float64)
    mag = np.hypot(res_re, res_im)
    rms = float(np.sqrt(np.mean(mag**2)))
    return LinKKResult(
        passed=rms <= cfg.lin_kk_threshold,
        threshold=cfg.lin_kk_threshold,
        rms_residual=rms,
        max_residual=float(mag.max()),
        n_rc=int(m),
        mu=float(mu),
        residual_re=res_re,
        residual_im=res_im,
    )


def _initial_guess(
    f: FloatArray, z: ComplexArray, drt: DrtResult, cfg: EcmFitConfig
) -> tuple[float, list[tuple[float, float]], float | None, list[str]]:
    """``R0``, ``(R_k, tau_k)`` per pair and ``L0`` (``None``: no inductor) from the DRT."""
    notes: list[str] = []
    tau_fastest = 1.0 / (2 * math.pi * float(f.max()))
    total = sum(p.r_ohm for p in drt.peaks)
    r0 = drt.r_inf_ohm
    in_band = []
    for p in drt.peaks:
        if p.tau_s < tau_fastest:
            r0 += p.r_ohm  # beyond the band: indistinguishable from the series resistance
            notes.append(f"DRT peak at tau {p.tau_s:.3g} s is faster than the band: in R0")
        else:
            in_band.append(p)
    by_size = sorted(in_band, key=lambda p: p.r_ohm, reverse=True)
    chosen = [
        p for p in by_size[: cfg.max_rc] if total <= 0 or p.r_ohm >= cfg.min_peak_share * total
    ]
    for p in by_size:
        if p not in chosen and p.r_ohm < cfg.min_peak_share * total:
            notes.append(
                f"DRT peak at tau {p.tau_s:.3g} s holds {p.r_ohm / total:.1%} of the "
                f"polarisation (< min_peak_share {cfg.min_peak_share:g}): no RC pair of its own"
            )
    if len(in_band) > cfg.max_rc:
        notes.append(
            f"DRT has {len(in_band)} peaks in the band; the {cfg.max_rc} largest get RC pairs"
        )
    # Each peak without a pair adds its resistance to the nearest chosen one (in ln tau),
    # whose time constant moves to the resistance-weighted mean: the start keeps the
    # whole polarisation and sits between merged arcs.
    groups: dict[int, list[tuple[float, float]]] = {
        i: [(p.r_ohm, math.log(p.tau_s))] for i, p in enumerate(chosen)
    }
    for p in in_band:
        if p in chosen or not chosen:
            continue
        i = min(range(len(chosen)), key=lambda k: abs(math.log(chosen[k].tau_s / p.tau_s)))
        groups[i].append((p.r_ohm, math.log(p.tau_s)))
    pairs = sorted(
        (
            (sum(r for r, _ in g), math.exp(sum(r * t for r, t in g) / sum(r for r, _ in g)))
            for g in groups.values()
        ),
        key=lambda rt: rt[1],
    )
    floor = 1e-3 * float(np.abs(z).min())
    if not pairs:
        # No peak: one arc from the data (its width and the frequency of its apex).
        r = max(float(z.real.max()) - max(r0, float(z.real.min())), floor)
        pairs = [(r, 1.0 / (2 * math.pi * float(f[np.argmin(z.imag)])))]
        notes.append("DRT shows no peak: one RC pair started from the data")
    if r0 <= floor:
        r0 = max(float(z.real.min()), floor)
    w_max = 2 * math.pi * float(f.max())
    z_hf = float(np.abs(z[np.argmax(f)]))
    if cfg.inductance == "never":
        inductance = None
    elif cfg.inductance == "always" or w_max * drt.inductance_h > 0.01 * z_hf:
        inductance = max(drt.inductance_h, 1e-3 * z_hf / w_max)
    else:
        inductance = None
    return r0, [(max(r, floor), tau) for r, tau in pairs], inductance, notes


def fit_ecm(spectrum: Spectrum, *, config: EcmFitConfig | None = None) -> EcmFit:
    """Validate, DRT and fit ``R0`` + up to 4 RC pairs to one spectrum (module docstring).

    Args:
        spectrum: The measured spectrum (any frequency order).
        config: Options; defaults to :class:`EcmFitConfig` ``()``.

    Returns:
        The fit, its uncertainties and residuals, the lin-KK result and the DRT.

    Raises:
        SpectrumError: If the spectrum has too few points for the circuit, or the fit
            fails.
    """
    from impedance.models.circuits import CustomCircuit

    cfg = config or EcmFitConfig()
    order = np.argsort(spectrum.frequency_hz)
    f = spectrum.frequency_hz[order]
    z = spectrum.z_ohm[order]
    if np.unique(f).size != f.size:
        raise SpectrumError(f"{spectrum.source}: a frequency appears twice; average repeats")
    if np.any(np.abs(z) == 0):
        raise SpectrumError(f"{spectrum.source}: |Z| is zero at some frequency")
    # Warnings (an ill-conditioned covariance, a numerical edge in lin-KK) belong to
    # this spectrum: they are returned with the fit rather than raised or logged.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kk = lin_kk(f, z, config=cfg)
        drt = compute_drt(f, z, config=cfg.drt)
        r0, pairs, inductance, notes = _initial_guess(f, z, drt, cfg)
        elements = ["R0"] + [f"p(R{k},C{k})" for k in range(1, len(pairs) + 1)]
        guess = [r0] + [v for r, tau in pairs for v in (r, tau / r)]
        if inductance is not None:
            elements.insert(0, "L0")
            guess.insert(0, inductance)
        if 2 * f.size <= len(guess):
            raise SpectrumError(
                f"{spectrum.source}: {f.size} points cannot fit {len(guess)} parameters "
                f"({'-'.join(elements)}); measure more frequencies"
            )
        circuit = CustomCircuit("-".join(elements), initial_guess=guess)
        try:
            # x_scale="jac": the parameters span 1e-8 H to 1e4 F; least_squares needs
            # them scaled to take sensible steps.
            circuit.fit(f, z, weight_by_modulus=True, x_scale="jac")
        except (RuntimeError, ValueError, np.linalg.LinAlgError) as exc:
            raise SpectrumError(
                f"{spectrum.source}: the circuit fit of {circuit.circuit} failed: {exc}"
            ) from None
    values = np.asarray(circuit.parameters_, dtype=np.float64)
    conf = getattr(circuit, "conf_", None)
    stds = np.asarray(conf, dtype=np.float64) if conf is not None else np.full(values.size, np.nan)
    stds = np.where(np.isfinite(stds), stds, np.nan)
    offset = 1 if inductance is not None else 0
    l_h = float(values[0]) if inductance is not None else None
    l_std = float(stds[0]) if inductance is not None else math.nan
    fitted = [
        RcPair(
            r_ohm=float(values[offset + 1 + 2 * k]),
            c_f=float(values[offset + 2 + 2 * k]),
            r_std_ohm=float(stds[offset + 1 + 2 * k]),
            c_std_f=float(stds[offset + 2 + 2 * k]),
        )
        for k in range(len(pairs))
    ]
    fitted.sort(key=lambda p: p.tau_s)
    r0_fit = float(values[offset])
    z_fit = ecm_impedance(
        f,
        r0_ohm=r0_fit,
        pairs=[(p.r_ohm, p.c_f) for p in fitted],
        inductance_h=l_h or 0.0,
    )
    fit_warnings = tuple(dict.fromkeys(str(w.message) for w in caught))
    return EcmFit(
        source=spectrum.source,
        frequency_hz=f,
        z_ohm=z,
        z_fit_ohm=z_fit,
        circuit=circuit.circuit,
        r0_ohm=r0_fit,
        r0_std_ohm=float(stds[offset]),
        pairs=tuple(fitted),
        inductance_h=l_h,
        inductance_std_h=l_std,
        relative_rms_residual=float(np.sqrt(np.mean(np.abs(z_fit - z) ** 2)) / np.abs(z).mean()),
        lin_kk=kk,
        drt=drt,
        initial_guess=tuple(float(g) for g in guess),
        warnings=fit_warnings,
        notes=spectrum.notes + tuple(notes),
    )


def fit_records(records: Sequence[EisPoint], *, config: EcmFitConfig | None = None) -> EcmFit:
    """Fit one cell's sweep as uploaded (e.g. :func:`twin.eis.measure_eis` records).

    Points with status ``"fail"`` are skipped (``"noisy"`` ones are kept: their noise is
    what the weighting and the uncertainties are for).

    Raises:
        SpectrumError: If the records mix cells or sweeps, or too few points remain.
    """
    if not records:
        raise SpectrumError("fit_records: no records")
    sweeps = sorted({(str(r.event_id), int(r.cell_id)) for r in records})
    if len(sweeps) > 1:
        shown = ", ".join(f"event {e} cell {c}" for e, c in sweeps[:4])
        raise SpectrumError(
            f"fit_records: records of {len(sweeps)} sweeps ({shown}); pass one cell's sweep"
        )
    event_id, cell_id = sweeps[0]
    source = f"EIS event {event_id} cell {cell_id}"
    kept = [r for r in records if r.status != "fail"]
    skipped = len(records) - len(kept)
    if len(kept) < 3:
        raise SpectrumError(
            f"{source}: {len(kept)} usable points ({skipped} with status 'fail'); need >= 3"
        )
    spectrum = Spectrum(
        np.array([r.frequency_hz for r in kept]),
        np.array([r.z_re_ohm for r in kept]),
        np.array([r.z_im_ohm for r in kept]),
        source=source,
        notes=(f"{skipped} points with status 'fail' skipped",) if skipped else (),
    )
    return fit_ecm(spectrum, config=config)
