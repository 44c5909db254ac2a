"""Calibrate the fast ECM against a PyBaMM model: OCV, HPPC fit, held-out validation.

The reference is PyBaMM's SPMe (by default) built from a bundled parameter set, run
**isothermal** at each test temperature: the ECM tables are functions of temperature,
so each temperature is identified without self-heating blurring it, and the held-out
validation compares like with like (``EcmTwin`` with ``thermal=False`` at the same
ambient). The thermal block of the fitted set is taken from PyBaMM's own lumped
thermal parameters instead.

Steps (see :func:`calibrate_from_pybamm`):

a. **OCV** -- the equilibrium the model relaxes to, ``U_p(y) - U_n(x)``, evaluated from
   the set's OCP functions along the electrode-SOH stoichiometry window (what a GITT
   converges to, without the ``I R`` and diffusion bias that a C/20 average keeps) at
   every test temperature; ``dOCV/dT`` is the least-squares slope over temperature.
b. **HPPC** -- at each SoC point, starting from equilibrium: a short pulse pair (1C 30 s,
   120 s rest, both directions) for R0 and the fast RC pair, then a long pulse pair
   (C/2 300 s, 30 min rest) for the slow, diffusion-like RC pair. Below 50 % SoC the
   charge pulse comes first, so no pulse leaves the usable window. R0 and R1..Rn per
   SoC point and direction are fitted by non-negative least squares on the pulse *and*
   relaxation response, with the same exact exponential RC update as ``EcmTwin``; the
   time constants are shared by all SoC points and both directions at one temperature
   (so a rest relaxes with the same time constants whichever direction came before)
   and the tables are smoothed by a curvature penalty across SoC.
c. **Validation** -- a seeded, several-hour PV/load pattern with pulses of different
   amplitude (never used for fitting), run through PyBaMM and ``EcmTwin`` (one cell,
   no ageing, thermal off, same initial SoC and temperature) -> RMS in mV.

SoC of the fitted set: 1 at the upper cut-off voltage at equilibrium, one unit of SoC is
the set's *nominal* capacity (``EcmTwin`` counts charge against it), so the grid runs
from ``1 - Q_usable / Q_nominal`` (slightly below 0 when the model holds more than its
nominal capacity) to 1. PyBaMM's SoC follows as
``soc_pybamm = 1 - (1 - soc) * Q_nominal / Q_usable``.

Command line::

    batterytwin twin calibrate --from pybamm:OKane2022 --out twin/params/data/nmc_okane2022.json

PyBaMM is imported inside the functions that need it, never at module level.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from scipy.optimize import minimize, nnls

from twin.errors import ParameterSetError, TwinInputError
from twin.models.base import FloatArray
from twin.models.ecm_params import (
    CHARGE,
    DISCHARGE,
    MAX_RC_PAIRS,
    EcmParameters,
    Limits,
    ThermalParameters,
)

__all__ = [
    "PYBAMM_SETS",
    "CalibrationConfig",
    "CalibrationResult",
    "ProgressCallback",
    "PulseFit",
    "PulseRecord",
    "ValidationResult",
    "calibrate_from_pybamm",
    "fit_pulses",
    "parse_source",
    "rc_response",
    "validate_against_pybamm",
    "validation_profile",
]

PYBAMM_SETS: dict[str, str] = {"Chen2020": "nmc", "OKane2022": "nmc", "Prada2013": "lfp"}
"""PyBaMM parameter sets this calibration supports, with their chemistry."""

ProgressCallback = Callable[[int, int, str], None]
"""Called as ``progress(done, total, message)``."""

_KELVIN = 273.15
_REFERENCE_C = 25.0
_SAMPLES_PER_SEGMENT = 40
# Voltage cut-offs of the reference simulations: wide, so a pulse near the end of the
# window is simulated (and fitted) instead of stopping the run at the set's cut-off.
_SIM_CUTOFFS_V = (0.5, 6.0)
# Thermal estimate for sets without PyBaMM thermal parameters (Prada2013: A123 26650
# LFP): about 76 g x 1100 J/(kg K) typical cell specific heat; 10 W/(m2 K), the
# coefficient of the bundled NMC sets, over the can's 0.0064 m2 (pi 26 mm x 65 mm plus
# both ends).
_FALLBACK_HEAT_CAPACITY_J_PER_K = 84.0
_FALLBACK_HEAT_TRANSFER_W_PER_K = 10.0 * 0.0064


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class CalibrationConfig:
    """Protocol and fitting options (everything but the set, ``n_rc`` and temperatures).

    Attributes:
        model: PyBaMM model of the reference (``"SPMe"``; ``"SPM"``, ``"DFN"`` also work).
        hppc_soc: SoC points of the HPPC test (fitted-set SoC, see the module docstring).
        pulse_c_rate: Short pulse amplitude, in C (nominal capacity per hour).
        pulse_s: Short pulse length.
        pulse_rest_s: Rest after each short pulse.
        long_pulse_c_rate: Long pulse amplitude, in C.
        long_pulse_s: Long pulse length.
        long_rest_s: Rest after each long pulse.
        ocv_soc_step: Spacing of the fitted set's SoC grid (OCV and tables).
        smoothing: Weight of the curvature penalty on the R tables across SoC
            (0 = independent fits per SoC point).
        validation_temperature_c: Temperature of the held-out validation.
        validation_hours: Length of the held-out profile.
        validation_seed: Seed of the held-out profile.
        validation_initial_soc: SoC at the start of the held-out profile.
        validate_all_temperatures: Also validate at every calibration temperature.
        name: Name of the fitted set; default ``"<chemistry>_<set lower-case>"``.
    """

    model: Literal["SPM", "SPMe", "DFN"] = "SPMe"
    hppc_soc: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))
    pulse_c_rate: float = 1.0
    pulse_s: float = 30.0
    pulse_rest_s: float = 120.0
    long_pulse_c_rate: float = 0.5
    long_pulse_s: float = 300.0
    long_rest_s: float = 1800.0
    ocv_soc_step: float = 0.01
    smoothing: float = 0.02
    validation_temperature_c: float = 25.0
    validation_hours: float = 4.0
    validation_seed: int = 2024
    validation_initial_soc: float = 0.8
    validate_all_temperatures: bool = True
    name: str | None = None

    def __post_init__(self) -> None:
        soc = np.asarray(self.hppc_soc, dtype=np.float64)
        if soc.size < 2 or np.any(np.diff(soc) <= 0) or soc[0] <= 0 or soc[-1] >= 1:
            raise TwinInputError(
                f"CalibrationConfig.hppc_soc must be >= 2 strictly increasing points inside "
                f"(0, 1), got {self.hppc_soc}"
            )
        for attr in (
            "pulse_c_rate",
            "pulse_s",
            "pulse_rest_s",
            "long_pulse_c_rate",
            "long_pulse_s",
            "long_rest_s",
            "ocv_soc_step",
            "validation_hours",
        ):
            value = getattr(self, attr)
            if not (math.isfinite(value) and value > 0):
                raise TwinInputError(f"CalibrationConfig.{attr} must be > 0, got {value!r}")
        if not self.smoothing >= 0:
            raise TwinInputError(f"CalibrationConfig.smoothing must be >= 0, got {self.smoothing}")
        if not 0.1 <= self.validation_initial_soc <= 0.95:
            raise TwinInputError(
                "CalibrationConfig.validation_initial_soc must be within 0.1..0.95, got "
                f"{self.validation_initial_soc}"
            )
        if self.model not in ("SPM", "SPMe", "DFN"):
            raise TwinInputError(
                f"CalibrationConfig.model must be 'SPM', 'SPMe' or 'DFN', got {self.model!r}"
            )

    def describe(self) -> str:
        """The test protocol in one line (goes into the fitted set's ``source``)."""
        socs = self.hppc_soc
        return (
            f"HPPC at SoC {socs[0]:g}..{socs[-1]:g} ({len(socs)} points), each from "
            f"equilibrium: {self.pulse_c_rate:g}C {self.pulse_s:g} s pulse pair with "
            f"{self.pulse_rest_s:g} s rests, then {self.long_pulse_c_rate:g}C "
            f"{self.long_pulse_s:g} s pulse pair with {self.long_rest_s:g} s rests "
            "(charge first below 50 % SoC)"
        )


@dataclass(frozen=True)
class ValidationResult:
    """ECM against PyBaMM on the held-out profile at one temperature."""

    temperature_c: float
    rms_mv: float
    max_abs_mv: float
    duration_s: float


@dataclass(frozen=True)
class CalibrationResult:
    """What :func:`calibrate_from_pybamm` produces.

    Attributes:
        parameters: The fitted set, ready for ``EcmTwin`` or ``to_json``.
        validation_rms_mv: Held-out RMS at ``config.validation_temperature_c``.
        validation_max_mv: Largest absolute error on that run.
        fit_rms_mv: RMS residual of the HPPC fit over all temperatures and SoC points.
        fit_rms_mv_by_temperature: The same per calibration temperature.
        validations: Every validation run (the main one first).
        parameter_set: The PyBaMM set calibrated against.
        config: The options used.
        elapsed_s: Wall time of the calibration.
    """

    parameters: EcmParameters
    validation_rms_mv: float
    validation_max_mv: float
    fit_rms_mv: float
    fit_rms_mv_by_temperature: dict[float, float]
    validations: tuple[ValidationResult, ...]
    parameter_set: str
    config: CalibrationConfig
    elapsed_s: float = 0.0
    skipped: tuple[str, ...] = field(default=())
    """HPPC points that PyBaMM could not simulate (left out of the fit)."""


def parse_source(spec: str) -> str:
    """Turn ``"pybamm:OKane2022"`` (or a bare ``"OKane2022"``) into the set's name.

    Matching is case-insensitive.

    Raises:
        ParameterSetError: Malformed spec or unsupported set, naming the allowed ones.
    """
    allowed = ", ".join(f"pybamm:{name}" for name in PYBAMM_SETS)
    text = spec.strip()
    if ":" in text:
        prefix, _, name = text.partition(":")
        if prefix.strip().lower() != "pybamm" or not name.strip():
            raise ParameterSetError(
                f"cannot calibrate from {spec!r}: expected 'pybamm:<set>', one of {allowed}"
            )
        text = name.strip()
    for known in PYBAMM_SETS:
        if known.lower() == text.lower():
            return known
    raise ParameterSetError(
        f"unknown PyBaMM parameter set {text!r} (from {spec!r}); supported: {allowed}"
    )


# ------------------------------------------------------------------ pulse fitting
def _segment_of(edges_s: FloatArray, time_s: FloatArray) -> np.ndarray:
    """Segment index of each sample; a sample at a boundary belongs to the segment
    that ends there (``EcmTwin`` reports the state at the end of a step)."""
    idx = np.searchsorted(edges_s, time_s, side="left") - 1
    return np.clip(idx, 0, edges_s.size - 2)


def rc_response(
    *, edges_s: FloatArray, current_a: FloatArray, time_s: FloatArray, tau_s: float
) -> FloatArray:
    """Voltage of an RC pair with R = 1 ohm, at rest at ``edges_s[0]``, under a
    piecewise-constant current (``current_a[j]`` held from ``edges_s[j]`` to
    ``edges_s[j + 1]``), sampled at ``time_s``. Exact, as ``EcmTwin``'s update."""
    edges = np.asarray(edges_s, dtype=np.float64)
    cur = np.asarray(current_a, dtype=np.float64)
    t = np.asarray(time_s, dtype=np.float64)
    start = np.empty(cur.size)
    v = 0.0
    for j in range(cur.size):
        start[j] = v
        v = cur[j] + (v - cur[j]) * math.exp(-(edges[j + 1] - edges[j]) / tau_s)
    seg = _segment_of(edges, t)
    out: FloatArray = cur[seg] + (start[seg] - cur[seg]) * np.exp(-(t - edges[seg]) / tau_s)
    return out


@dataclass(frozen=True)
class PulseRecord:
    """One pulse test at one state: a piecewise-constant current and the voltage response.

    Attributes:
        edges_s: Segment boundaries, ``n + 1`` increasing times (the cell is at rest
            and relaxed at ``edges_s[0]``).
        current_a: Current of each segment (positive = discharge), ``n`` values.
        time_s: Sample times within ``(edges_s[0], edges_s[-1]]``.
        voltage_v: Terminal voltage at ``time_s``.
        ocv_v: Open-circuit voltage at ``time_s`` (at the coulomb-counted SoC).
    """

    edges_s: FloatArray
    current_a: FloatArray
    time_s: FloatArray
    voltage_v: FloatArray
    ocv_v: FloatArray

    def __post_init__(self) -> None:
        for attr in ("edges_s", "current_a", "time_s", "voltage_v", "ocv_v"):
            object.__setattr__(self, attr, np.asarray(getattr(self, attr), dtype=np.float64))
        if self.edges_s.size != self.current_a.size + 1 or np.any(np.diff(self.edges_s) <= 0):
            raise TwinInputError(
                "PulseRecord.edges_s must be increasing with one more entry than current_a"
            )
        n = self.time_s.size
        if self.voltage_v.shape != (n,) or self.ocv_v.shape != (n,):
            raise TwinInputError("PulseRecord.voltage_v and ocv_v need one value per time_s")
        if n == 0 or self.time_s.min() <= self.edges_s[0] or self.time_s.max() > self.edges_s[-1]:
            raise TwinInputError("PulseRecord.time_s must lie within (edges_s[0], edges_s[-1]]")

    def _design(self, tau_s: Sequence[float] | FloatArray) -> FloatArray:
        """Columns: R0 dis, R0 chg, then R_k dis, R_k chg for each tau (times the
        response to the discharge or the charge part of the current)."""
        seg = _segment_of(self.edges_s, self.time_s)
        cur = self.current_a
        dis = np.where(cur > 0, cur, 0.0)
        chg = np.where(cur < 0, cur, 0.0)
        cols = [dis[seg], chg[seg]]
        for tau in tau_s:
            for part in (dis, chg):
                cols.append(
                    rc_response(edges_s=self.edges_s, current_a=part, time_s=self.time_s, tau_s=tau)
                )
        return np.column_stack(cols)

    @property
    def _target(self) -> FloatArray:
        out: FloatArray = self.ocv_v - self.voltage_v
        return out


@dataclass(frozen=True)
class PulseFit:
    """Fitted R0, R1..Rn and time constants for a sequence of pulse records.

    Attributes:
        r0_ohm: Shape ``(n_records, 2)``: per record, discharge and charge.
        rc_resistance_ohm: Shape ``(n_rc, n_records, 2)``.
        tau_s: Shape ``(n_rc,)``, increasing, shared by all records and directions.
        rms_mv: RMS residual per record.
    """

    r0_ohm: FloatArray
    rc_resistance_ohm: FloatArray
    tau_s: FloatArray
    rms_mv: FloatArray

    @property
    def rc_capacitance_f(self) -> FloatArray:
        """``tau / R`` with the shape of ``rc_resistance_ohm`` (inf where R is 0)."""
        with np.errstate(divide="ignore"):
            out: FloatArray = self.tau_s[:, None, None] / self.rc_resistance_ohm
        return out


def _starting_taus(n_rc: int, lo: float, hi: float) -> list[FloatArray]:
    """A few spreads of ``n_rc`` log-spaced time constants between ``lo`` and ``hi``."""
    starts = []
    for shrink in (0.0, 0.25, 0.5):
        a = math.log(lo) + shrink * (math.log(hi) - math.log(lo)) / 2
        b = math.log(hi) - shrink * (math.log(hi) - math.log(lo)) / 2
        starts.append(np.exp(np.linspace(a, b, n_rc + 2)[1:-1]))
    return starts


def fit_pulses(records: Sequence[PulseRecord], *, n_rc: int, smoothing: float = 0.0) -> PulseFit:
    """Fit R0, R1..Rn per record and direction, with time constants shared by all.

    The model is ``EcmTwin``'s: ``ocv - v = R0 I + sum_k v_k`` with the exact RC update
    for piecewise-constant current, R's taken from the table of the current's
    direction. For given taus the response is linear in the R's, so they are found
    by non-negative least squares and only the ``n_rc`` time constants are searched
    (Nelder-Mead in log tau, a few starts).

    Args:
        records: Pulse tests, ordered by SoC if ``smoothing`` is used.
        n_rc: Number of RC pairs, 1..4.
        smoothing: Weight of a second-difference penalty on each R across consecutive
            records (dimensionless: curvature in volts at the records' largest current,
            weighed like the residual of one record's samples). 0 fits independently.

    Returns:
        The fit. A direction that no record excites gets NaN resistances.

    Raises:
        TwinInputError: No records or ``n_rc`` out of range.
    """
    if not records:
        raise TwinInputError("fit_pulses needs at least one PulseRecord")
    if not 1 <= n_rc <= MAX_RC_PAIRS:
        raise TwinInputError(f"n_rc must be within 1..{MAX_RC_PAIRS}, got {n_rc}")
    if smoothing < 0:
        raise TwinInputError(f"smoothing must be >= 0, got {smoothing}")
    excited = np.array(
        [
            any(bool(np.any(r.current_a > 0)) for r in records),
            any(bool(np.any(r.current_a < 0)) for r in records),
        ]
    )
    keep = np.concatenate([excited] * (1 + n_rc))
    targets = [r._target for r in records]

    def cost(log_tau: FloatArray) -> float:
        taus = np.exp(log_tau)
        return float(
            sum(
                nnls(r._design(taus)[:, keep], y)[1] ** 2
                for r, y in zip(records, targets, strict=True)
            )
        )

    spacing = min(
        float(np.diff(np.unique(np.concatenate([[r.edges_s[0]], r.time_s]))).min()) for r in records
    )
    longest = max(float(r.edges_s[-1] - r.edges_s[0]) for r in records)
    lo, hi = max(spacing, 1e-3), max(longest, 10 * spacing)
    best: Any = None
    for start in _starting_taus(n_rc, lo, hi):
        res = minimize(
            cost,
            np.log(start),
            method="Nelder-Mead",
            bounds=[(math.log(lo / 10), math.log(hi * 10))] * n_rc,
            options={"xatol": 1e-4, "fatol": 1e-16, "maxfev": 400 * n_rc},
        )
        if best is None or res.fun < best.fun:
            best = res
    taus = np.sort(np.exp(best.x))

    n_rec, n_col = len(records), int(keep.sum())
    blocks = [r._design(taus)[:, keep] for r in records]
    if smoothing > 0 and n_rec >= 3:
        # One joint problem: block-diagonal data rows plus curvature rows per column.
        rows = sum(b.shape[0] for b in blocks)
        i_ref = max(float(np.abs(r.current_a).max()) for r in records)
        weight = math.sqrt(smoothing * rows / n_rec) * i_ref
        n_pen = (n_rec - 2) * n_col
        a = np.zeros((rows + n_pen, n_rec * n_col))
        y = np.zeros(rows + n_pen)
        row = 0
        for i, (b, t) in enumerate(zip(blocks, targets, strict=True)):
            a[row : row + b.shape[0], i * n_col : (i + 1) * n_col] = b
            y[row : row + b.shape[0]] = t
            row += b.shape[0]
        for i in range(n_rec - 2):
            for c in range(n_col):
                a[row, i * n_col + c] = weight
                a[row, (i + 1) * n_col + c] = -2 * weight
                a[row, (i + 2) * n_col + c] = weight
                row += 1
        solution = nnls(a, y, maxiter=50 * a.shape[1])[0].reshape(n_rec, n_col)
    else:
        solution = np.array([nnls(b, t)[0] for b, t in zip(blocks, targets, strict=True)])
    full = np.full((n_rec, 2 * (1 + n_rc)), np.nan)
    full[:, keep] = solution
    rms = np.array(
        [
            1e3 * math.sqrt(float(np.mean((b @ s - t) ** 2)))
            for b, s, t in zip(blocks, solution, targets, strict=True)
        ]
    )
    return PulseFit(
        r0_ohm=full[:, :2],
        rc_resistance_ohm=np.stack([full[:, 2 + 2 * k : 4 + 2 * k] for k in range(n_rc)]),
        tau_s=taus,
        rms_mv=rms,
    )


# ------------------------------------------------------------ held-out profile
def validation_profile(
    *, capacity_ah: float, hours: float, seed: int, initial_soc: float
) -> tuple[FloatArray, FloatArray]:
    """A domestic PV/load pattern with appliance spikes, as piecewise-constant current.

    Segments of 30-600 s: PV charging (0.1-0.8C), household load (0.05-1C), short
    spikes (1-2C, 5-60 s) and rests (1-15 min), drawn from ``seed``. The SoC is kept
    within 0.1..0.95 by flipping or dropping segments that would leave it.

    Returns:
        ``(edges_s, current_a)`` with whole-second boundaries; positive = discharge.
    """
    rng = np.random.default_rng(seed)
    edges = [0.0]
    currents: list[float] = []
    soc, t = initial_soc, 0.0
    kinds = ("pv", "load", "spike", "rest")
    while t < hours * 3600.0:
        kind = kinds[int(rng.choice(4, p=[0.3, 0.35, 0.15, 0.2]))]
        if kind == "pv":
            c_rate, duration = -rng.uniform(0.1, 0.8), rng.uniform(30, 600)
        elif kind == "load":
            c_rate, duration = rng.uniform(0.05, 1.0), rng.uniform(30, 600)
        elif kind == "spike":
            c_rate, duration = rng.uniform(1.0, 2.0), rng.uniform(5, 60)
        else:
            c_rate, duration = 0.0, rng.uniform(60, 900)
        duration = float(max(1.0, round(duration)))
        d_soc = -c_rate * duration / 3600.0
        if not 0.1 <= soc + d_soc <= 0.95:
            c_rate, d_soc = -c_rate, -d_soc
        if not 0.1 <= soc + d_soc <= 0.95:
            c_rate, d_soc = 0.0, 0.0
        soc += d_soc
        t += duration
        edges.append(t)
        currents.append(float(c_rate * capacity_ah))
    return np.array(edges), np.array(currents)


# ------------------------------------------------------------------ PyBaMM side
class _PybammCell:
    """A PyBaMM parameter set seen through the fitted set's SoC (see module docstring)."""

    def __init__(self, parameter_set: str, model: str) -> None:
        import pybamm

        self.pybamm = pybamm
        self.name = parameter_set
        self.model_name = model
        self.values = pybamm.ParameterValues(parameter_set)
        self.param = pybamm.LithiumIonParameters()
        x0, x100, y100, y0 = pybamm.lithium_ion.get_min_max_stoichiometries(self.values)
        self.x0, self.x100, self.y100, self.y0 = (float(v) for v in (x0, x100, y100, y0))
        self.c_n_max = float(self.values["Maximum concentration in negative electrode [mol.m-3]"])
        self.c_p_max = float(self.values["Maximum concentration in positive electrode [mol.m-3]"])
        q_negative = float(self.values.evaluate(self.param.n.Q_init))
        self.usable_ah = q_negative * (self.x100 - self.x0)
        self.nominal_ah = float(self.values["Nominal cell capacity [A.h]"])
        self.min_voltage_v = float(self.values["Lower voltage cut-off [V]"])
        self.max_voltage_v = float(self.values["Upper voltage cut-off [V]"])

    @property
    def soc_min(self) -> float:
        """Fitted-set SoC at the lower cut-off."""
        return 1.0 - self.usable_ah / self.nominal_ah

    def stoichiometries(self, soc: FloatArray) -> tuple[FloatArray, FloatArray]:
        s = 1.0 - (1.0 - np.asarray(soc, dtype=np.float64)) * self.nominal_ah / self.usable_ah
        return self.x0 + s * (self.x100 - self.x0), self.y0 - s * (self.y0 - self.y100)

    def inputs(self, soc: float, temperature_c: float) -> dict[str, float]:
        x, y = self.stoichiometries(np.array([soc]))
        return {
            "Initial negative concentration": float(x[0]) * self.c_n_max,
            "Initial positive concentration": float(y[0]) * self.c_p_max,
            "Test temperature": temperature_c + _KELVIN,
        }

    def ocv(self, soc: FloatArray, temperature_c: float) -> FloatArray:
        """Equilibrium OCV ``U_p(y) - U_n(x)`` at the model's stoichiometries."""
        pybamm = self.pybamm
        x, y = self.stoichiometries(np.atleast_1d(soc))
        temp = pybamm.Scalar(temperature_c + _KELVIN)
        u_n = self.values.process_symbol(self.param.n.prim.U(pybamm.Vector(x), temp)).evaluate()
        u_p = self.values.process_symbol(self.param.p.prim.U(pybamm.Vector(y), temp)).evaluate()
        out: FloatArray = np.asarray(u_p - u_n, dtype=np.float64).ravel()
        return out

    def thermal(self) -> tuple[ThermalParameters, str]:
        """Heat capacity ``rho c_p (layer average) x cell volume`` and ``h x A``."""
        pybamm, values = self.pybamm, self.values
        try:
            rho_cp = float(
                values.evaluate(self.param.therm.rho_c_p_eff(pybamm.Scalar(_REFERENCE_C + _KELVIN)))
            )
            capacity = rho_cp * float(values["Cell volume [m3]"])
            transfer = float(values["Total heat transfer coefficient [W.m-2.K-1]"]) * float(
                values["Cell cooling surface area [m2]"]
            )
            note = "thermal from PyBaMM rho*c_p*volume and h*A"
        except (KeyError, TypeError):
            capacity, transfer = _FALLBACK_HEAT_CAPACITY_J_PER_K, _FALLBACK_HEAT_TRANSFER_W_PER_K
            note = (
                "thermal estimated (set has no thermal parameters): 76 g x 1100 J/(kg K), "
                "10 W/(m2 K) x 0.0064 m2"
            )
        return ThermalParameters(capacity, transfer), note

    def simulation(self, edges_s: FloatArray, current_a: FloatArray, *, scaled: bool) -> Any:
        """An isothermal simulation driven by a piecewise-constant current.

        Initial concentrations and temperature are inputs, so one built model serves
        every SoC point and temperature. With ``scaled``, the currents are multiplied by
        the input ``"Current scale"`` (sign and amplitude of an HPPC point).
        """
        pybamm = self.pybamm
        values = self.values.copy()

        def current(t: Any) -> Any:
            amp = pybamm.InputParameter("Current scale") if scaled else 1.0
            expr = pybamm.Scalar(0.0)
            for a, b, i in zip(edges_s[:-1], edges_s[1:], current_a, strict=True):
                if i != 0.0:
                    # Heavisides in t: the IDAKLU solver steps exactly onto each edge.
                    expr = expr + (amp * float(i)) * (pybamm.t >= float(a)) * (pybamm.t < float(b))
            return expr

        values.update(
            {
                "Current function [A]": current,
                "Initial concentration in negative electrode [mol.m-3]": pybamm.InputParameter(
                    "Initial negative concentration"
                ),
                "Initial concentration in positive electrode [mol.m-3]": pybamm.InputParameter(
                    "Initial positive concentration"
                ),
                "Ambient temperature [K]": pybamm.InputParameter("Test temperature"),
                "Initial temperature [K]": pybamm.InputParameter("Test temperature"),
                "Lower voltage cut-off [V]": _SIM_CUTOFFS_V[0],
                "Upper voltage cut-off [V]": _SIM_CUTOFFS_V[1],
            },
            check_already_exists=False,
        )
        model = getattr(pybamm.lithium_ion, self.model_name)()  # isothermal by default
        solver = pybamm.IDAKLUSolver(rtol=1e-6, atol=1e-8)
        return pybamm.Simulation(model, parameter_values=values, solver=solver)

    def solve_voltage(
        self, sim: Any, *, end_s: float, time_s: FloatArray, inputs: dict[str, float]
    ) -> FloatArray | None:
        """Terminal voltage at ``time_s``; ``None`` if the solver stopped early."""
        pybamm = self.pybamm
        try:
            sol = sim.solve([0.0, end_s], inputs=inputs, t_interp=time_s)
        except pybamm.SolverError:
            return None
        if sol.t[-1] < end_s - 1e-6:
            return None
        out: FloatArray = np.asarray(sol["Voltage [V]"](t=time_s), dtype=np.float64)
        return out if np.all(np.isfinite(out)) else None


def _sample_times(edges_s: FloatArray) -> FloatArray:
    """Log-spaced samples inside each segment: dense after each switch, so fast and slow
    dynamics weigh alike; every segment gets the same number of samples."""
    parts = [
        a + np.geomspace(1e-2, (b - a) - 1e-3, _SAMPLES_PER_SEGMENT)
        for a, b in itertools.pairwise(edges_s)
    ]
    return np.concatenate(parts)


def _hppc_protocol(config: CalibrationConfig, capacity_ah: float) -> tuple[FloatArray, FloatArray]:
    """Edges and currents of one HPPC point, discharge first (negated below 50 % SoC)."""
    short, long_ = config.pulse_c_rate * capacity_ah, config.long_pulse_c_rate * capacity_ah
    segments = [
        (short, config.pulse_s),
        (0.0, config.pulse_rest_s),
        (-short, config.pulse_s),
        (0.0, config.pulse_rest_s),
        (long_, config.long_pulse_s),
        (0.0, config.long_rest_s),
        (-long_, config.long_pulse_s),
        (0.0, config.long_rest_s),
    ]
    edges = np.concatenate([[0.0], np.cumsum([d for _, d in segments])])
    return edges, np.array([i for i, _ in segments])


def _ecm_voltage(
    params: EcmParameters,
    *,
    edges_s: FloatArray,
    current_a: FloatArray,
    initial_soc: float,
    temperature_c: float,
) -> tuple[FloatArray, FloatArray]:
    """EcmTwin (one cell, no ageing, thermal off) in 1 s steps: times and voltages."""
    from twin.models.ecm import CellInit, EcmOptions, EcmTwin

    twin = EcmTwin(
        params,
        n_cells=1,
        init=CellInit(soc=initial_soc, temperature_c=temperature_c),
        options=EcmOptions(ageing="none", thermal=False),
    )
    times: list[float] = []
    volts: list[float] = []
    t = float(edges_s[0])
    for j, current in enumerate(current_a):
        end = float(edges_s[j + 1])
        while t < end - 1e-9:
            dt = min(1.0, end - t)
            out = twin.step(current_a=float(current), dt_s=dt, ambient_c=temperature_c)
            t += dt
            times.append(t)
            volts.append(float(out.voltage_v[0]))
    return np.array(times), np.array(volts)


def _validate(
    cell: _PybammCell,
    params: EcmParameters,
    *,
    config: CalibrationConfig,
    temperature_c: float,
    sim: Any | None = None,
) -> ValidationResult:
    edges, current = validation_profile(
        capacity_ah=params.nominal_capacity_ah,
        hours=config.validation_hours,
        seed=config.validation_seed,
        initial_soc=config.validation_initial_soc,
    )
    if sim is None:
        sim = cell.simulation(edges, current, scaled=False)
    times, v_ecm = _ecm_voltage(
        params,
        edges_s=edges,
        current_a=current,
        initial_soc=config.validation_initial_soc,
        temperature_c=temperature_c,
    )
    # 1 ms before each ECM sample: inside the same constant-current segment.
    v_ref = cell.solve_voltage(
        sim,
        end_s=float(edges[-1]),
        time_s=times - 1e-3,
        inputs=cell.inputs(config.validation_initial_soc, temperature_c),
    )
    if v_ref is None:
        raise ParameterSetError(
            f"PyBaMM {cell.name} could not run the validation profile at {temperature_c} degC"
        )
    err_mv = 1e3 * (v_ecm - v_ref)
    return ValidationResult(
        temperature_c=temperature_c,
        rms_mv=float(np.sqrt(np.mean(err_mv**2))),
        max_abs_mv=float(np.abs(err_mv).max()),
        duration_s=float(edges[-1]),
    )


def validate_against_pybamm(
    params: EcmParameters,
    parameter_set: str,
    *,
    config: CalibrationConfig | None = None,
    temperatures_c: Sequence[float] | None = None,
) -> tuple[ValidationResult, ...]:
    """Run the held-out profile through PyBaMM and ``EcmTwin`` with ``params``.

    Args:
        params: An ECM set calibrated against ``parameter_set`` (same SoC convention).
        parameter_set: PyBaMM set name or ``"pybamm:<set>"``.
        config: Profile options (``validation_*`` fields and ``model``).
        temperatures_c: Temperatures to validate at; default
            ``config.validation_temperature_c``.

    Raises:
        ParameterSetError: Unknown set, or PyBaMM could not run the profile.
    """
    config = config or CalibrationConfig()
    cell = _PybammCell(parse_source(parameter_set), config.model)
    temps = [config.validation_temperature_c] if temperatures_c is None else list(temperatures_c)
    return _held_out(cell, params, config=config, temperatures_c=temps)


def _held_out(
    cell: _PybammCell,
    params: EcmParameters,
    *,
    config: CalibrationConfig,
    temperatures_c: Sequence[float],
    report: Callable[[str], None] | None = None,
) -> tuple[ValidationResult, ...]:
    """The held-out profile, simulated once, compared at each temperature."""
    edges, current = validation_profile(
        capacity_ah=params.nominal_capacity_ah,
        hours=config.validation_hours,
        seed=config.validation_seed,
        initial_soc=config.validation_initial_soc,
    )
    sim = cell.simulation(edges, current, scaled=False)
    results = []
    for t in temperatures_c:
        results.append(_validate(cell, params, config=config, temperature_c=float(t), sim=sim))
        if report:
            report(f"validated at {t:g} degC: {results[-1].rms_mv:.1f} mV RMS")
    return tuple(results)


# -------------------------------------------------------------------- calibrate
def _significant(values: FloatArray, digits: int = 6) -> FloatArray:
    """Round to significant digits (keeps the JSON short; signs and order are kept)."""
    arr = np.asarray(values, dtype=np.float64)
    scale = np.where(
        arr == 0, 1.0, 10.0 ** (digits - 1 - np.floor(np.log10(np.abs(arr) + (arr == 0))))
    )
    out: FloatArray = np.round(arr * scale) / scale
    return out


def _on_grid(table: FloatArray, soc_points: FloatArray, grid: FloatArray) -> FloatArray:
    """Linear interpolation along the last axis, flat beyond the HPPC points."""
    out = np.empty((*table.shape[:-1], grid.size))
    for idx in np.ndindex(*table.shape[:-1]):
        out[idx] = np.interp(grid, soc_points, table[idx])
    return out


def _ocv_tables(
    cell: _PybammCell, temps: FloatArray, soc_step: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """SoC grid, OCV at the reference temperature (made non-decreasing against round-off)
    and dOCV/dT, the least-squares slope over the test temperatures (+-5 K around a
    single one)."""
    n_grid = max(2, math.ceil((1.0 - cell.soc_min) / soc_step) + 1)
    grid = np.linspace(cell.soc_min, 1.0, n_grid)
    ocv_temps = temps if temps.size >= 2 else np.array([temps[0] - 5.0, temps[0] + 5.0])
    ocv_by_t = np.array([cell.ocv(grid, float(t)) for t in ocv_temps])
    centred = ocv_temps - ocv_temps.mean()
    entropic: FloatArray = centred @ (ocv_by_t - ocv_by_t.mean(axis=0)) / float(centred @ centred)
    ocv: FloatArray = np.maximum.accumulate(cell.ocv(grid, _REFERENCE_C))
    return grid, ocv, entropic


@dataclass
class _HppcTables:
    """Fitted values at the HPPC SoC points, before they go onto the SoC grid."""

    r0: FloatArray  # (2, n_t, n_points)
    r_rc: FloatArray  # (n_rc, 2, n_t, n_points)
    tau: FloatArray  # (n_rc, n_t)
    rms_mv: FloatArray  # (n_t, n_points), NaN where skipped
    skipped: list[str]


def _hppc_fit(
    cell: _PybammCell,
    *,
    temps: FloatArray,
    n_rc: int,
    config: CalibrationConfig,
    ocv_of: Callable[[FloatArray, float], FloatArray],
    report: Callable[[str], None],
) -> _HppcTables:
    """Simulate the HPPC points at every temperature and fit each temperature."""
    soc_points = np.asarray(config.hppc_soc, dtype=np.float64)
    edges, unit_current = _hppc_protocol(config, cell.nominal_ah)
    sample_t = _sample_times(edges)
    sim = cell.simulation(edges, unit_current, scaled=True)
    shape = (temps.size, soc_points.size)
    out = _HppcTables(
        r0=np.empty((2, *shape)),
        r_rc=np.empty((n_rc, 2, *shape)),
        tau=np.empty((n_rc, temps.size)),
        rms_mv=np.full(shape, np.nan),
        skipped=[],
    )
    for j, temp in enumerate(temps):
        records: list[PulseRecord] = []
        kept: list[int] = []
        for i, soc in enumerate(soc_points):
            sign = -1.0 if soc < 0.5 else 1.0  # charge first in the lower half
            voltage = cell.solve_voltage(
                sim,
                end_s=float(edges[-1]),
                time_s=sample_t,
                inputs={**cell.inputs(float(soc), float(temp)), "Current scale": sign},
            )
            report(f"HPPC {temp:g} degC SoC {soc:.2f}")
            if voltage is None:
                out.skipped.append(f"{temp:g} degC SoC {soc:.2f}")
                continue
            current = sign * unit_current
            charge_ah = np.concatenate([[0.0], np.cumsum(current * np.diff(edges))]) / 3600.0
            soc_t = soc - np.interp(sample_t, edges, charge_ah) / cell.nominal_ah
            records.append(
                PulseRecord(
                    edges_s=edges,
                    current_a=current,
                    time_s=sample_t,
                    voltage_v=voltage,
                    ocv_v=ocv_of(soc_t, float(temp)),
                )
            )
            kept.append(i)
        if len(records) < 2:
            raise ParameterSetError(
                f"PyBaMM {cell.name} could not simulate enough HPPC points at {temp:g} degC "
                f"(skipped: {', '.join(out.skipped)})"
            )
        fit = fit_pulses(records, n_rc=n_rc, smoothing=config.smoothing)
        # Points PyBaMM could not simulate take their neighbours' values.
        pts = soc_points[kept]
        for d in (DISCHARGE, CHARGE):
            out.r0[d, j] = np.interp(soc_points, pts, fit.r0_ohm[:, d])
            for k in range(n_rc):
                out.r_rc[k, d, j] = np.interp(soc_points, pts, fit.rc_resistance_ohm[k, :, d])
        out.tau[:, j] = fit.tau_s
        out.rms_mv[j, kept] = fit.rms_mv
        report(f"fitted {temp:g} degC: tau {', '.join(f'{t:.3g}' for t in fit.tau_s)} s")
    return out


def _floored(table: FloatArray) -> FloatArray:
    """Strictly positive: floor at 2 % of the table's median (NNLS may return 0)."""
    out: FloatArray = np.maximum(table, max(0.02 * float(np.median(table)), 1e-6))
    return out


def calibrate_from_pybamm(
    parameter_set: str,
    *,
    n_rc: int = 2,
    temperatures_c: Sequence[float] = (10.0, 25.0, 40.0),
    config: CalibrationConfig | None = None,
    progress: ProgressCallback | None = None,
) -> CalibrationResult:
    """Fit an :class:`EcmParameters` set to a PyBaMM model and validate it.

    Args:
        parameter_set: ``"OKane2022"``, ``"Chen2020"``, ``"Prada2013"`` or
            ``"pybamm:<set>"`` (see :data:`PYBAMM_SETS`).
        n_rc: RC pairs, 1..4.
        temperatures_c: Test temperatures (the table's temperature grid), increasing.
        config: Protocol and fitting options.
        progress: Called with ``(done, total, message)`` as the work advances.

    Returns:
        The fitted set with its held-out validation RMS and HPPC fit residual.

    Raises:
        ParameterSetError: Unknown or malformed set name.
        TwinInputError: ``n_rc`` or temperatures out of range.
    """
    started = time.perf_counter()
    name = parse_source(parameter_set)
    config = config or CalibrationConfig()
    if not 1 <= n_rc <= MAX_RC_PAIRS:
        raise TwinInputError(f"n_rc must be within 1..{MAX_RC_PAIRS}, got {n_rc}")
    temps = np.asarray(temperatures_c, dtype=np.float64)
    if temps.ndim != 1 or temps.size == 0 or np.any(np.diff(temps) <= 0):
        raise TwinInputError(f"temperatures_c must be increasing, got {tuple(temperatures_c)}")
    if np.any(temps < -30) or np.any(temps > 70):
        raise TwinInputError(f"temperatures_c must be within -30..70 degC, got {tuple(temps)}")
    val_temps = [config.validation_temperature_c]
    if config.validate_all_temperatures:
        val_temps += [float(t) for t in temps if float(t) != config.validation_temperature_c]
    total = 1 + temps.size * len(config.hppc_soc) + temps.size + len(val_temps)
    done = 0

    def report(message: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, message)

    if progress is not None:
        progress(0, total, f"building PyBaMM {config.model} for {name}")
    cell = _PybammCell(name, config.model)
    chemistry = PYBAMM_SETS[name]

    # (a) OCV and entropic coefficient.
    grid, ocv, entropic = _ocv_tables(cell, temps, config.ocv_soc_step)
    report("OCV from the model's equilibrium")

    # (b) HPPC, with the OCV exactly as EcmTwin will interpolate it.
    def ocv_of(soc: FloatArray, temperature_c: float) -> FloatArray:
        shift = np.interp(soc, grid, entropic) * (temperature_c - _REFERENCE_C)
        out: FloatArray = np.interp(soc, grid, ocv) + shift
        return out

    hppc = _hppc_fit(cell, temps=temps, n_rc=n_rc, config=config, ocv_of=ocv_of, report=report)
    soc_points = np.asarray(config.hppc_soc, dtype=np.float64)
    r_grid = np.stack([_on_grid(_floored(hppc.r_rc[k]), soc_points, grid) for k in range(n_rc)])
    heat = cell.thermal()
    set_name = config.name or f"{chemistry}_{name.lower()}"
    source = (
        f"Calibrated with twin.calibrate against PyBaMM {cell.pybamm.__version__} "
        f"'{name}' {config.model} (isothermal at {', '.join(f'{t:g}' for t in temps)} degC). "
        f"OCV: equilibrium U_p - U_n over the electrode-SOH window, dOCV/dT as the slope "
        f"over temperature. {config.describe()}; NNLS fit of R0, {n_rc} RC pair(s) with "
        f"time constants shared per temperature, curvature penalty {config.smoothing:g}. "
        f"SoC 1 at {cell.max_voltage_v:g} V, unit = nominal {cell.nominal_ah:g} Ah "
        f"(usable {cell.usable_ah:.4g} Ah). {heat[1]}."
    )
    params = EcmParameters(
        name=set_name,
        source=source,
        chemistry=chemistry,
        nominal_capacity_ah=cell.nominal_ah,
        soc_grid=np.round(grid, 6),
        ocv_v=np.round(ocv, 6),
        entropic_v_per_k=_significant(entropic),
        temperature_grid_c=temps,
        r0_ohm=_significant(_on_grid(_floored(hppc.r0), soc_points, grid)),
        rc_resistance_ohm=_significant(r_grid),
        rc_capacitance_f=_significant(hppc.tau[:, None, :, None] / r_grid),
        limits=Limits(min_voltage_v=cell.min_voltage_v, max_voltage_v=cell.max_voltage_v),
        thermal=ThermalParameters(
            heat_capacity_j_per_k=float(_significant(np.array(heat[0].heat_capacity_j_per_k))),
            heat_transfer_w_per_k=float(_significant(np.array(heat[0].heat_transfer_w_per_k))),
        ),
        reference_temperature_c=_REFERENCE_C,
    )

    # (c) Held-out validation.
    validations = _held_out(cell, params, config=config, temperatures_c=val_temps, report=report)
    headline = validations[0]
    params = replace(
        params,
        source=(
            f"{source} Held-out {config.validation_hours:g} h PV/load profile "
            f"(seed {config.validation_seed}) at {headline.temperature_c:g} degC: "
            f"{headline.rms_mv:.1f} mV RMS."
        ),
    )
    rms = hppc.rms_mv
    return CalibrationResult(
        parameters=params,
        validation_rms_mv=headline.rms_mv,
        validation_max_mv=headline.max_abs_mv,
        fit_rms_mv=float(np.sqrt(np.nanmean(rms**2))),
        fit_rms_mv_by_temperature={
            float(t): float(np.sqrt(np.nanmean(rms[j] ** 2))) for j, t in enumerate(temps)
        },
        validations=validations,
        parameter_set=name,
        config=config,
        elapsed_s=time.perf_counter() - started,
        skipped=tuple(hppc.skipped),
    )


# -------------------------------------------------------------------------- CLI
