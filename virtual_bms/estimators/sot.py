"""SoT: internal cell temperature from the phase of the impedance at one chosen frequency.

D1.2 (section 3.3.0.4) runs the Pillar 1 SoT on the edge BMS periodically, "by phase-shift
analysis of the EIS measurements". The phase of ``Z`` at a fixed frequency follows the
temperature of the cell's interior, where charge transfer and ionic transport happen,
rather than the surface where a thermistor sits; and it is nearly blind to a uniform growth
of the resistances (a second-life cell whose resistances are all 30 % higher has the same
time constants, hence the same phase). It does depend on SoC, and at most frequencies it
is not even monotone in temperature: an RC arc's phase at a fixed frequency rises, peaks
and falls as the arc slides along the frequency axis with temperature.

Workflow:

1. A :class:`PhaseTable`: phase over frequency x temperature x SoC, from a climate-chamber
   characterisation or, here, from the twin's impedance model
   (:func:`phase_table_from_parameters`).
2. :func:`scan_frequencies` rates every frequency by the temperature error it would give
   (SoC effect plus phase noise over the local slope) and picks the best monotone one.
3. :func:`fit_sot_calibration` fits the SoC-averaged phase-vs-temperature curve at that
   frequency with a monotone (PCHIP) interpolant and refuses a frequency whose curve turns
   or goes flat, naming it.
4. :func:`temperature_from_phase` inverts the curve, vectorised over any array of phases;
   :func:`sot_from_eis` does it from the records of an EIS sweep (``twin.eis``).

Errors: ``|slope|`` in deg/K turns a phase error ``e`` into a temperature error ``e / |slope|``;
an SoC away from the calibration's average shifts the phase by ``phi(T, SoC) - mean_SoC phi``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.interpolate import PchipInterpolator

from twin.eis import STATUS_SUCCESS, EisRecord
from twin.models.base import FloatArray
from twin.models.ecm import CellInit, EcmOptions, EcmTwin
from twin.models.ecm_params import EcmParameters

__all__ = [
    "FrequencyScan",
    "PhaseTable",
    "SotCalibration",
    "SotError",
    "SotEstimate",
    "fit_sot_calibration",
    "phase_at_frequency",
    "phase_table_from_parameters",
    "scan_frequencies",
    "sot_from_eis",
    "temperature_from_phase",
]

BoolArray = NDArray[np.bool_]

_FINE_STEP_K = 0.05  # resolution of the tabulated inverse; far below any useful accuracy


class SotError(ValueError):
    """A phase table, calibration or EIS input the SoT cannot use; the message says why."""


def _strictly_increasing(values: ArrayLike, *, name: str, minimum: int) -> FloatArray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size < minimum:
        raise SotError(f"{name} must be 1-D with at least {minimum} values, got shape {arr.shape}")
    if not np.isfinite(arr).all() or np.any(np.diff(arr) <= 0):
        raise SotError(f"{name} must be finite and strictly increasing, got {arr}")
    return arr


@dataclass(frozen=True, eq=False)
class PhaseTable:
    """Phase of the impedance over frequency, temperature and SoC.

    Attributes:
        frequency_hz: Frequencies, strictly increasing, shape ``(n_f,)``.
        temperature_c: Cell temperatures, strictly increasing, at least 3, ``(n_t,)``.
        soc: States of charge, strictly increasing, ``(n_s,)``.
        phase_deg: ``atan2(Z_im, Z_re)`` in degrees, shape ``(n_f, n_t, n_s)``.

    Raises:
        SotError: On a bad grid, shape or a non-finite phase.
    """

    frequency_hz: FloatArray
    temperature_c: FloatArray
    soc: FloatArray
    phase_deg: FloatArray

    def __post_init__(self) -> None:
        f = _strictly_increasing(self.frequency_hz, name="PhaseTable.frequency_hz", minimum=1)
        if np.any(f <= 0):
            raise SotError(f"PhaseTable.frequency_hz must be > 0, got {f}")
        t = _strictly_increasing(self.temperature_c, name="PhaseTable.temperature_c", minimum=3)
        s = _strictly_increasing(self.soc, name="PhaseTable.soc", minimum=1)
        phase = np.asarray(self.phase_deg, dtype=np.float64)
        if phase.shape != (f.size, t.size, s.size):
            raise SotError(
                f"PhaseTable.phase_deg must have shape (n_f, n_t, n_s) = "
                f"{(f.size, t.size, s.size)}, got {phase.shape}"
            )
        if not np.isfinite(phase).all():
            raise SotError("PhaseTable.phase_deg has non-finite values")
        object.__setattr__(self, "frequency_hz", f)
        object.__setattr__(self, "temperature_c", t)
        object.__setattr__(self, "soc", s)
        object.__setattr__(self, "phase_deg", phase)

    def soc_mask(self, soc_range: tuple[float, float]) -> BoolArray:
        """Which SoC columns lie in ``soc_range`` (inclusive).

        Raises:
            SotError: If the range is inverted or holds no SoC of the table.
        """
        lo, hi = soc_range
        if not lo <= hi:
            raise SotError(f"soc_range must be (low, high) with low <= high, got {soc_range}")
        mask = (self.soc >= lo - 1e-12) & (self.soc <= hi + 1e-12)
        if not mask.any():
            raise SotError(f"soc_range {soc_range} holds none of the table's SoCs {self.soc}")
        return mask


def phase_table_from_parameters(
    params: EcmParameters,
    *,
    frequency_hz: ArrayLike,
    temperature_c: ArrayLike,
    soc: ArrayLike,
) -> PhaseTable:
    """Tabulate the phase of the twin's impedance model, as a climate-chamber sweep would.

    One ECM twin cell per (temperature, SoC) point; ``EcmTwin.impedance`` gives
    ``R0 + j w L + sum_k R_k / (1 + j w R_k C_k)`` at that state (mean of the charge and
    discharge tables, as an EIS excitation is symmetric).

    Args:
        params: ECM parameter set (``twin.params.load_parameter_set`` or a custom one).
        frequency_hz: Frequencies, strictly increasing.
        temperature_c: Temperatures, strictly increasing (at least 3).
        soc: States of charge in 0..1, strictly increasing.

    Returns:
        The table, ``phase_deg`` of shape ``(n_f, n_t, n_s)``.

    Raises:
        SotError: On a bad grid.
    """
    f = _strictly_increasing(frequency_hz, name="frequency_hz", minimum=1)
    t = _strictly_increasing(temperature_c, name="temperature_c", minimum=3)
    s = _strictly_increasing(soc, name="soc", minimum=1)
    if s[0] < 0 or s[-1] > 1:
        raise SotError(f"soc must lie within 0..1, got {s}")
    grid_t, grid_s = np.meshgrid(t, s, indexing="ij")
    twin = EcmTwin(
        params,
        n_cells=grid_t.size,
        init=CellInit(soc=grid_s.ravel(), temperature_c=grid_t.ravel()),
        options=EcmOptions(ageing="none"),
    )
    z = twin.impedance(f)  # (n_t * n_s, n_f)
    phase = np.degrees(np.angle(z)).T.reshape(f.size, t.size, s.size)
    return PhaseTable(frequency_hz=f, temperature_c=t, soc=s, phase_deg=phase)


@dataclass(frozen=True, eq=False)
class FrequencyScan:
    """How well each frequency of a table serves as the SoT frequency.

    All arrays have one entry per table frequency. The curve rated is the phase averaged
    over the SoC range, as a function of temperature.

    Attributes:
        frequency_hz: The table's frequencies.
        monotone: Whether the curve is strictly monotone over the temperature range.
        min_sensitivity_deg_per_k: Smallest ``|d phase / dT|`` over the range.
        soc_error_k: RMS over the table's (temperature, SoC) points of the temperature
            error an unknown SoC causes: ``(phi(T, SoC) - mean phi(T)) / slope(T)``.
        noise_error_k: RMS over temperature of ``phase_noise_deg / |slope(T)|``.
        temperature_error_k: ``sqrt(soc_error_k^2 + noise_error_k^2)``; ``inf`` where the
            curve is not monotone or flatter than the minimum sensitivity.
        best_frequency_hz: Frequency with the smallest finite ``temperature_error_k``.
        phase_noise_deg: The phase noise (1 sigma) assumed.
        soc_range: The SoC range averaged over.
    """

    frequency_hz: FloatArray
    monotone: BoolArray
    min_sensitivity_deg_per_k: FloatArray
    soc_error_k: FloatArray
    noise_error_k: FloatArray
    temperature_error_k: FloatArray
    best_frequency_hz: float
    phase_noise_deg: float
    soc_range: tuple[float, float]

    def describe(self, *, rows: int = 5) -> str:
        """The best ``rows`` frequencies as text, best first (for logs and CLIs)."""
        order = np.argsort(self.temperature_error_k, kind="stable")[:rows]
        lines = [
            f"SoT frequency scan (phase noise {self.phase_noise_deg:g} deg, "
            f"SoC {self.soc_range[0]:g}..{self.soc_range[1]:g}):"
        ]
        for i in order:
            lines.append(
                f"  {self.frequency_hz[i]:10.4g} Hz: error {self.temperature_error_k[i]:.2f} K "
                f"(SoC {self.soc_error_k[i]:.2f} K, noise {self.noise_error_k[i]:.2f} K), "
                f"min slope {self.min_sensitivity_deg_per_k[i]:.3f} deg/K"
            )
        return "\n".join(lines)


def _mean_curves(
    table: PhaseTable, soc_range: tuple[float, float]
) -> tuple[FloatArray, FloatArray]:
    """SoC-mean phase ``(n_f, n_t)`` and its temperature slope ``(n_f, n_t)``."""
    mask = table.soc_mask(soc_range)
    mean = table.phase_deg[:, :, mask].mean(axis=2)
    slope = np.gradient(mean, table.temperature_c, axis=1)
    return mean, slope


def _monotone(curve: FloatArray) -> BoolArray:
    step = np.diff(curve, axis=-1)
    return np.asarray((step > 0).all(axis=-1) | (step < 0).all(axis=-1))


def scan_frequencies(
    table: PhaseTable,
    *,
    soc_range: tuple[float, float] = (0.2, 0.9),
    phase_noise_deg: float = 0.5,
    min_sensitivity_deg_per_k: float = 0.05,
) -> FrequencyScan:
    """Rate every frequency of ``table`` and pick the one with the smallest temperature error.

    The best frequency is where the phase is most temperature-sensitive and least
    SoC-sensitive, weighed by what matters in the end: the temperature error.

    Args:
        table: Phase over frequency, temperature and SoC.
        soc_range: SoCs the calibration averages over (where the SoT will be used).
        phase_noise_deg: Phase noise of one measurement (1 sigma); the twin's default
            ``EisConfig`` has 0.5 deg.
        min_sensitivity_deg_per_k: Curves flatter than this anywhere are unusable.

    Returns:
        The scan; ``best_frequency_hz`` is the choice.

    Raises:
        SotError: If no frequency gives a monotone, sensitive curve.
    """
    if not (math.isfinite(phase_noise_deg) and phase_noise_deg >= 0):
        raise SotError(f"phase_noise_deg must be finite and >= 0, got {phase_noise_deg!r}")
    mask = table.soc_mask(soc_range)
    mean, slope = _mean_curves(table, soc_range)
    monotone = _monotone(mean)
    abs_slope = np.abs(slope)
    min_sens = abs_slope.min(axis=1)
    usable = monotone & (min_sens >= min_sensitivity_deg_per_k)
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = table.phase_deg[:, :, mask] - mean[:, :, None]
        soc_err = np.sqrt(np.mean((offset / slope[:, :, None]) ** 2, axis=(1, 2)))
        noise_err = np.sqrt(np.mean((phase_noise_deg / abs_slope) ** 2, axis=1))
        total = np.hypot(soc_err, noise_err)
    total = np.where(usable, total, np.inf)
    if not np.isfinite(total).any():
        i = int(np.argmax(np.where(monotone, min_sens, -np.inf))) if monotone.any() else -1
        hint = (
            f"; the most sensitive monotone one is {table.frequency_hz[i]:.4g} Hz with "
            f"{min_sens[i]:.3g} deg/K"
            if i >= 0
            else ""
        )
        raise SotError(
            "no frequency of the phase table has a phase that is monotone in temperature over "
            f"{table.temperature_c[0]:g}..{table.temperature_c[-1]:g} degC with at least "
            f"{min_sensitivity_deg_per_k:g} deg/K{hint}: narrow the temperature range or "
            "measure at other frequencies"
        )
    best = int(np.argmin(total))
    return FrequencyScan(
        frequency_hz=table.frequency_hz.copy(),
        monotone=monotone,
        min_sensitivity_deg_per_k=min_sens,
        soc_error_k=soc_err,
        noise_error_k=noise_err,
        temperature_error_k=total,
        best_frequency_hz=float(table.frequency_hz[best]),
        phase_noise_deg=float(phase_noise_deg),
        soc_range=(float(soc_range[0]), float(soc_range[1])),
    )


def phase_at_frequency(
    frequency_hz: ArrayLike, phase_deg: ArrayLike, *, target_hz: float
) -> FloatArray:
    """Phase at ``target_hz``, linear in log frequency between the two bracketing points.

    Args:
        frequency_hz: Frequencies, strictly increasing, ``(n_f,)``.
        phase_deg: Phases with frequency on the last axis, ``(..., n_f)``; NaN entries
            (failed points) are skipped per row.
        target_hz: Frequency wanted.

    Returns:
        Phase at ``target_hz`` per row, shape ``phase_deg.shape[:-1]``; NaN where no
        finite points bracket it.

    Raises:
        SotError: On a bad frequency axis or shape.
    """
    f = _strictly_increasing(frequency_hz, name="frequency_hz", minimum=1)
    phase = np.asarray(phase_deg, dtype=np.float64)
    if phase.shape[-1:] != (f.size,):
        raise SotError(f"phase_deg must end with the frequency axis ({f.size}), got {phase.shape}")
    if not (math.isfinite(target_hz) and target_hz > 0):
        raise SotError(f"target_hz must be finite and > 0, got {target_hz!r}")
    rows = phase.reshape(-1, f.size)
    x = np.log(f)
    x0 = math.log(target_hz)
    out = np.full(rows.shape[0], np.nan)
    finite = np.isfinite(rows)
    # Nearest finite point at or below / at or above the target, per row.
    below = finite & (x <= x0)
    above = finite & (x >= x0)
    has = below.any(axis=1) & above.any(axis=1)
    lo = np.where(below, np.arange(f.size), -1).max(axis=1)
    hi = np.where(above, np.arange(f.size), f.size).min(axis=1)
    r = np.flatnonzero(has)
    lo, hi = lo[r], hi[r]
    same = lo == hi
    span = np.where(same, 1.0, x[hi] - x[lo])
    w = np.where(same, 0.0, (x0 - x[lo]) / span)
    out[r] = rows[r, lo] * (1.0 - w) + rows[r, hi] * w
    return out.reshape(phase.shape[:-1])


@dataclass(frozen=True, eq=False)
class SotCalibration:
    """Phase-vs-temperature curve at one frequency, with its tabulated inverse.

    Attributes:
        frequency_hz: The SoT frequency.
        temperature_c: Fine temperature grid of the inverse, increasing.
        phase_deg: Calibrated phase at ``temperature_c``, strictly monotone.
        soc_range: SoC range the curve averages over.
        soc_error_k: RMS temperature error an unknown SoC within the range causes.
        table_temperature_c: The table temperatures the curve was fitted through.
        table_phase_deg: The SoC-mean phases fitted.

    Raises:
        SotError: If the curve is not strictly monotone.
    """

    frequency_hz: float
    temperature_c: FloatArray
    phase_deg: FloatArray
    soc_range: tuple[float, float]
    soc_error_k: float
    table_temperature_c: FloatArray
    table_phase_deg: FloatArray

    def __post_init__(self) -> None:
        t = np.asarray(self.temperature_c, dtype=np.float64)
        p = np.asarray(self.phase_deg, dtype=np.float64)
        if t.ndim != 1 or p.shape != t.shape or t.size < 2:
            raise SotError("SotCalibration.temperature_c and phase_deg must be 1-D, same length")
        if not bool(_monotone(p)):
            raise SotError(
                f"SotCalibration at {self.frequency_hz:.4g} Hz: phase_deg is not strictly "
                "monotone in temperature"
            )

    @property
    def temperature_range_c(self) -> tuple[float, float]:
        """Temperatures the calibration covers."""
        return float(self.temperature_c[0]), float(self.temperature_c[-1])

    @property
    def sensitivity_deg_per_k(self) -> FloatArray:
        """``d phase / dT`` along the fine grid."""
        return np.asarray(np.gradient(self.phase_deg, self.temperature_c))


def fit_sot_calibration(
    table: PhaseTable,
    *,
    frequency_hz: float | None = None,
    soc_range: tuple[float, float] = (0.2, 0.9),
    min_sensitivity_deg_per_k: float = 0.05,
    phase_noise_deg: float = 0.5,
) -> SotCalibration:
    """Fit the SoC-averaged phase-vs-temperature curve at one frequency.

    The curve through the table's temperatures is a PCHIP interpolant, which stays
    monotone between monotone points (a polynomial may wiggle); the inverse is tabulated
    every 0.05 K.

    Args:
        table: Phase over frequency, temperature and SoC.
        frequency_hz: SoT frequency; ``None`` picks :func:`scan_frequencies`' best. A
            frequency between table frequencies is interpolated in log frequency.
        soc_range: SoCs to average over.
        min_sensitivity_deg_per_k: The curve must be at least this steep everywhere.
        phase_noise_deg: Phase noise (1 sigma) used to pick the frequency when
            ``frequency_hz`` is None, and to state the consequence of a flat curve.

    Returns:
        The calibration.

    Raises:
        SotError: If the phase at the frequency is not monotone in temperature, or too
            flat, over the table's range (the message names the frequency), or the
            frequency is outside the table.
    """
    if frequency_hz is None:
        frequency_hz = scan_frequencies(
            table,
            soc_range=soc_range,
            phase_noise_deg=phase_noise_deg,
            min_sensitivity_deg_per_k=min_sensitivity_deg_per_k,
        ).best_frequency_hz
    f = float(frequency_hz)
    if not table.frequency_hz[0] <= f <= table.frequency_hz[-1]:
        raise SotError(
            f"frequency_hz={f:.4g} Hz is outside the phase table "
            f"({table.frequency_hz[0]:.4g}..{table.frequency_hz[-1]:.4g} Hz)"
        )
    mask = table.soc_mask(soc_range)
    # (n_t, n_s) phase at f, then the SoC mean.
    at_f = phase_at_frequency(table.frequency_hz, np.moveaxis(table.phase_deg, 0, -1), target_hz=f)
    temps = table.temperature_c
    curve = at_f[:, mask].mean(axis=1)
    lo_t, hi_t = temps[0], temps[-1]
    where = f"at {f:.4g} Hz over {lo_t:g}..{hi_t:g} degC"
    slope = np.gradient(curve, temps)
    weakest = int(np.argmin(np.abs(slope)))
    weakest_slope = abs(float(slope[weakest]))
    consequence = (
        f"a {phase_noise_deg:g} deg phase error would be {phase_noise_deg / weakest_slope:.3g} K"
        if weakest_slope > 1e-6
        else "the phase does not tell temperatures apart"
    )
    flat = (
        f"phase {where} changes by only {weakest_slope:.3g} deg/K near {temps[weakest]:g} degC, "
        f"below min_sensitivity_deg_per_k={min_sensitivity_deg_per_k:g}: {consequence}; "
        "choose another frequency"
    )
    if np.abs(slope).max() < min_sensitivity_deg_per_k:
        raise SotError(flat)  # flat throughout: rounding noise would pass for turns
    sign = np.sign(np.diff(curve))
    if not bool(_monotone(curve)):
        first = sign[np.flatnonzero(sign)[0]]
        turn = int(np.flatnonzero(sign != first)[0])
        raise SotError(
            f"phase {where} is not monotone in temperature (it turns near "
            f"{temps[turn]:g} degC), so one phase would map to two temperatures: choose "
            "another frequency (scan_frequencies rates them) or narrow the temperature range"
        )
    if abs(slope[weakest]) < min_sensitivity_deg_per_k:
        raise SotError(flat)
    fine_t = np.linspace(lo_t, hi_t, max(2, math.ceil((hi_t - lo_t) / _FINE_STEP_K) + 1))
    fine_phase = np.asarray(PchipInterpolator(temps, curve)(fine_t), dtype=np.float64)
    slope_grid = np.interp(temps, fine_t, np.gradient(fine_phase, fine_t))
    offset = at_f[:, mask] - curve[:, None]
    soc_error = float(np.sqrt(np.mean((offset / slope_grid[:, None]) ** 2)))
    return SotCalibration(
        frequency_hz=f,
        temperature_c=fine_t,
        phase_deg=fine_phase,
        soc_range=(float(soc_range[0]), float(soc_range[1])),
        soc_error_k=soc_error,
        table_temperature_c=temps.copy(),
        table_phase_deg=curve,
    )


def temperature_from_phase(
    calibration: SotCalibration, phase_deg: ArrayLike, *, extrapolate: bool = False
) -> FloatArray:
    """Cell temperature from the phase at the calibration frequency, element-wise.

    Args:
        calibration: From :func:`fit_sot_calibration`.
        phase_deg: Phases in degrees, any shape; NaN stays NaN.
        extrapolate: Beyond the calibrated phase range, continue the end slopes linearly
            (unvalidated, but it keeps a cell that runs hot visible); ``False`` gives NaN.

    Returns:
        Temperatures in degC, same shape as ``phase_deg``.
    """
    phase = np.asarray(phase_deg, dtype=np.float64)
    p, t = calibration.phase_deg, calibration.temperature_c
    if p[-1] < p[0]:
        p, t = p[::-1], t[::-1]
    out = np.interp(phase, p, t, left=np.nan, right=np.nan)
    if extrapolate:
        low_slope = (t[1] - t[0]) / (p[1] - p[0])
        high_slope = (t[-1] - t[-2]) / (p[-1] - p[-2])
        out = np.where(phase < p[0], t[0] + (phase - p[0]) * low_slope, out)
        out = np.where(phase > p[-1], t[-1] + (phase - p[-1]) * high_slope, out)
    return np.asarray(out, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class SotEstimate:
    """SoT of the cells of one EIS sweep.

    Attributes:
        cell_id: Cell indices, ascending.
        temperature_c: Estimated internal temperature per cell (NaN where the phase at the
            calibration frequency could not be formed or lies outside the calibration).
        phase_deg: The phase used, interpolated to the calibration frequency.
    """

    cell_id: NDArray[np.intp]
    temperature_c: FloatArray
    phase_deg: FloatArray


def sot_from_eis(
    calibration: SotCalibration,
    records: Iterable[EisRecord],
    *,
    statuses: Sequence[str] = (STATUS_SUCCESS,),
    extrapolate: bool = False,
) -> SotEstimate:
    """SoT per cell from the records of one EIS sweep (``twin.eis.measure_eis`` output).

    Points whose status is not in ``statuses`` are dropped; the phase at the calibration
    frequency is interpolated in log frequency between the two nearest remaining points.

    Args:
        calibration: From :func:`fit_sot_calibration`.
        records: EIS points of one sweep, any order, any number of cells.
        statuses: Statuses to use (``"noisy"`` may be added where the response is small).
        extrapolate: See :func:`temperature_from_phase`.

    Returns:
        One temperature per cell that appears in ``records``.

    Raises:
        SotError: If ``records`` is empty or a cell has the same frequency twice (more than
            one sweep).
    """
    by_cell: dict[int, dict[float, float]] = {}
    keep = set(statuses)
    for rec in records:
        points = by_cell.setdefault(rec.cell_id, {})
        if rec.frequency_hz in points:
            raise SotError(
                f"cell {rec.cell_id} has two EIS points at {rec.frequency_hz:.4g} Hz: pass the "
                "records of one sweep"
            )
        points[rec.frequency_hz] = rec.phase_deg if rec.status in keep else math.nan
    if not by_cell:
        raise SotError("sot_from_eis got no EIS records")
    cells = np.array(sorted(by_cell), dtype=np.intp)
    freqs = np.array(sorted({f for pts in by_cell.values() for f in pts}), dtype=np.float64)
    phases = np.full((cells.size, freqs.size), np.nan)
    column = {f: j for j, f in enumerate(freqs)}
    for i, cell in enumerate(cells):
        for f, value in by_cell[int(cell)].items():
            phases[i, column[f]] = value
    phase = phase_at_frequency(freqs, phases, target_hz=calibration.frequency_hz)
    return SotEstimate(
        cell_id=cells,
        temperature_c=temperature_from_phase(calibration, phase, extrapolate=extrapolate),
        phase_deg=phase,
    )
