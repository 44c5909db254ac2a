"""State of Warranty (D1.2 3.3.0.6): remaining warranty, health and useful warranty.

The inputs are the latest diagnostic-sizing record (D2.3 Table 1, stored as
:class:`cloud.models.DiagnosticParameters`) and the cell's SoH history. D1.2 names the
three maintenance factors but D1.3's formulas are not available to us, so they are
defined here (and in ``docs/cloud_estimators.md``); every one is clipped to 0..1.

Axes: ``time`` in years since the warranty started, ``fec`` in full equivalent cycles.
The FEC count comes from the history when it carries one, otherwise it is assumed at the
sizing tool's rate, ``FEC = years * days_per_year * fecs_per_day``.

**Expected SoH curve** ``E(x)`` per axis, from the sizing tool: ``soh_evolution`` over
``time_evolution`` (years) or ``fecs_evolution``, interpolated linearly and extended
past its last point with its last slope; without tables, the ``xh0`` model
(:func:`xh0_soh`)::

    E(x) = xh0[0] - xh0[1] * x**xh0[2] - xh0[3] * x**xh0[4]

(a calendar-like and a cycle-like power-law term; our reading of D1.2's "parameter for
the mathematical representation of the SoH evolution", five values per axis).
``SoH_0 = E_time(0)`` (else ``E_fec(0)``, else the first SoH of the history).

**Remaining warranty** (reactive maintenance): the warranty left on the axis that runs
out first::

    RW = min_a (1 - x_a / L_a)          L_time = lifespan_years, L_fec = lifespan_fecs

**Remaining health** (preventive): the share of the usable SoH range left::

    RH = (SoH_now - SoH_EoL) / (SoH_0 - SoH_EoL)

**Remaining useful warranty** (predictive): the projected remaining useful life as a
fraction of the warranted lifespan, on the axis that runs out first. The cell's SoH is
projected along the expected curve, scaled by how fast it has actually faded::

    k = sum(d_i e_i) / sum(e_i^2),   d_i = SoH_0 - SoH_i,   e_i = SoH_0 - E(x_i)
    SoH_proj(x) = SoH_0 - k * (SoH_0 - E(x))
    x_EoL: first x with SoH_proj(x) <= SoH_EoL       (never if k <= 0)
    RUW = min_a (x_EoL,a - x_now,a) / L_a

(``k = 1`` while the expected fade at the history's points stays below one SoH point:
too early to tell the cell from the plan). A cell on plan has ``RUW = RW`` (if the plan
reaches ``SoH_EoL`` at the end of the lifespan); one fading twice as fast as planned has
a much lower RUW than RW.

**Qualitative state**: :func:`classify_sow`, D1.2 Figure 9 verbatim. The table's bands
are open at the threshold on the better side: a value *at* 0.05, 0.75, 0.5 or 0.4
belongs to the worse band, so each factor's bands partition 0..1 (RW: ``> 0.05`` |
``<= 0.05``; RH: ``> 0.75`` | ``(0.5, 0.75]`` | ``(0, 0.5]`` | ``0``; RUW: ``> 0.5`` |
``(0.4, 0.5]`` | ``(0, 0.4]`` | ``0``). ``RH = 0`` (death) is checked before ``RUW = 0``.
A ``-`` in the table means any value, unknown included. Every other combination, and any
NaN or negative factor a row needs, is D1.2's undefined scenario.

SoH values above 1.5 (the diagnostics' ``soh_at_eol`` and ``soh_evolution``, a history,
``xh0[0]``) are taken to be percent, as the database stores either.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "MESSAGES",
    "Severity",
    "SizingParameters",
    "SohHistory",
    "SowClass",
    "SowResult",
    "SowState",
    "classify_sow",
    "sow",
    "xh0_soh",
]

FloatArray = NDArray[np.float64]
Axis = Literal["time", "fec"]
Curve = Callable[[FloatArray], FloatArray]
_AXES: tuple[Axis, ...] = ("time", "fec")

_DAYS_PER_YEAR = 365.25
_MIN_EXPECTED_FADE = 0.01  # SoH (fraction) the plan must have faded before k is fitted
_GRID_POINTS = 20_001
_HORIZON = 100.0  # lifespans searched for the projected end of life


class Severity(enum.StrEnum):
    """The colour indicator of D1.2's table (its colours did not survive in our copy)."""

    ok = "ok"
    notice = "notice"
    attention = "attention"
    danger = "danger"
    death = "death"
    undefined = "undefined"

    @property
    def colour(self) -> str:
        return _COLOURS[self]


_COLOURS = {
    Severity.ok: "green",
    Severity.notice: "yellow",
    Severity.attention: "orange",
    Severity.danger: "red",
    Severity.death: "black",
    Severity.undefined: "grey",
}


class SowState(enum.StrEnum):
    """One row of D1.2 Figure 9 (stored in ``SoxEstimate.sow``)."""

    correct = "correct"
    warranty_end_close = "warranty_end_close"
    early_advice = "early_advice"
    middle_advice = "middle_advice"
    late_advice = "late_advice"
    irreversible = "irreversible"
    two_replacements = "two_replacements"
    end_of_life = "end_of_life"
    undefined = "undefined"


MESSAGES: dict[SowState, str] = {
    SowState.correct: "The warranty fulfilment level is correct.",
    SowState.warranty_end_close: (
        "The warranty fulfilment level is correct, but the end of warranty is close."
    ),
    SowState.early_advice: "ATTENTION! Predicted 1 additional replacement. Early advice.",
    SowState.middle_advice: "ATTENTION! Predicted 1 additional replacement. Middle advice.",
    SowState.late_advice: "ATTENTION! Predicted 1 additional replacement. Late advice.",
    SowState.irreversible: ("DANGER! Predicted 1 additional replacement. Irreversible damages."),
    # D1.2 writes "replacement" here too.
    SowState.two_replacements: "DANGER! Predicted 2 additional replacement.",
    SowState.end_of_life: "DEATH! The battery has reached the EOL.",
    SowState.undefined: "Undefined scenario. Something unexpected is happening.",
}
"""D1.2 Figure 9's descriptions, verbatim."""

_SEVERITY = {
    SowState.correct: Severity.ok,
    SowState.warranty_end_close: Severity.notice,
    SowState.early_advice: Severity.attention,
    SowState.middle_advice: Severity.attention,
    SowState.late_advice: Severity.attention,
    SowState.irreversible: Severity.danger,
    SowState.two_replacements: Severity.danger,
    SowState.end_of_life: Severity.death,
    SowState.undefined: Severity.undefined,
}


@dataclass(frozen=True, slots=True)
class SowClass:
    """A qualitative state with its message and severity."""

    state: SowState
    message: str
    severity: Severity


def _band(value: float, thresholds: tuple[float, ...]) -> int:
    """Index of the band: 0 above the first threshold, ..., ``len`` at exactly 0.

    ``thresholds`` falls to 0; a value at a threshold is in the band below it. NaN and
    negative values give -1.
    """
    if math.isnan(value) or value < 0:
        return -1
    if value == 0:
        return len(thresholds)
    for k, t in enumerate(thresholds):
        if value > t:
            return k
    return len(thresholds) - 1


def classify_sow(rw: float, rh: float, ruw: float) -> SowClass:
    """D1.2 Figure 9: the qualitative SoW from the three maintenance factors.

    ======  ==========  ==============  ===============================================
    RW      RH          RUW             state
    ======  ==========  ==============  ===============================================
    >0.05   >0.75       >0.5            correct
    <=0.05  >0.75       >0.5            correct, but the end of warranty is close
    \\-      >0.75       (0.4, 0.5]      ATTENTION, early advice
    \\-      (0.5,0.75]  (0.4, 0.5]      ATTENTION, middle advice
    \\-      (0.5,0.75]  (0, 0.4]        ATTENTION, late advice
    \\-      (0, 0.5]    (0, 0.4]        DANGER, irreversible damages
    \\-      \\-          0               DANGER, 2 additional replacements
    \\-      0           \\-              DEATH, end of life (checked first)
    other                               undefined scenario
    ======  ==========  ==============  ===============================================

    Args:
        rw: Remaining warranty, 0..1.
        rh: Remaining health, 0..1.
        ruw: Remaining useful warranty, 0..1.

    Returns:
        The state, D1.2's message for it and its severity.
    """
    rh_band = _band(rh, (0.75, 0.5, 0.0))  # 0: >0.75, 1: (0.5,0.75], 2: (0,0.5], 3: =0
    ruw_band = _band(ruw, (0.5, 0.4, 0.0))  # 0: >0.5, 1: (0.4,0.5], 2: (0,0.4], 3: =0
    rw_band = _band(rw, (0.05, 0.0))  # 0: >0.05, 1: (0,0.05], 2: =0
    state = SowState.undefined
    if rh_band == 3:
        state = SowState.end_of_life
    elif ruw_band == 3:
        state = SowState.two_replacements
    else:
        table = {
            (0, 1): SowState.early_advice,
            (1, 1): SowState.middle_advice,
            (1, 2): SowState.late_advice,
            (2, 2): SowState.irreversible,
        }
        if (rh_band, ruw_band) == (0, 0):
            if rw_band == 0:
                state = SowState.correct
            elif rw_band in (1, 2):
                state = SowState.warranty_end_close
        else:
            state = table.get((rh_band, ruw_band), SowState.undefined)
    return SowClass(state, MESSAGES[state], _SEVERITY[state])


class SizingParameters(Protocol):
    """What the SoW reads of a diagnostic-sizing record (``DiagnosticParameters``)."""

    @property
    def soh_at_eol(self) -> float | None: ...

    @property
    def lifespan_years(self) -> float | None: ...

    @property
    def lifespan_fecs(self) -> float | None: ...

    @property
    def fecs_per_day(self) -> float | None: ...

    @property
    def days_per_year(self) -> float | None: ...

    @property
    def xh0_time(self) -> list[float] | None: ...

    @property
    def xh0_fec(self) -> list[float] | None: ...

    @property
    def soh_evolution(self) -> list[float] | None: ...

    @property
    def fecs_evolution(self) -> list[float] | None: ...

    @property
    def time_evolution(self) -> list[float] | None: ...


@dataclass(frozen=True, eq=False)
class SohHistory:
    """A cell's SoH estimates over time (sorted by time on construction).

    Attributes:
        time: When each estimate was made (all aware or all naive, like ``now``).
        soh: The estimates, as fractions or percent (any sequence; stored as an array).
        fec: Full equivalent cycles since the warranty started at each estimate
            (from the discharged Ah the cloud stores); ``None``: assumed at the sizing
            tool's rate.

    Raises:
        ValueError: If the lengths differ.
    """

    time: tuple[dt.datetime, ...]
    soh: FloatArray
    fec: FloatArray | None = None

    def __post_init__(self) -> None:
        times = tuple(self.time)
        s = np.asarray(self.soh, dtype=np.float64).ravel()
        f = None if self.fec is None else np.asarray(self.fec, dtype=np.float64).ravel()
        if len(times) != s.size or (f is not None and f.size != s.size):
            raise ValueError(
                f"SohHistory needs one soh (and fec) per time: got {len(times)} times, "
                f"{s.size} soh values" + ("" if f is None else f", {f.size} fec values")
            )
        order = sorted(range(len(times)), key=lambda k: times[k])
        object.__setattr__(self, "time", tuple(times[k] for k in order))
        object.__setattr__(self, "soh", s[order])
        object.__setattr__(self, "fec", None if f is None else f[order])


@dataclass(frozen=True, slots=True)
class SowResult:
    """The SoW of one cell and the numbers behind it.

    Attributes:
        rw: Remaining warranty, 0..1 (NaN: no lifespan known).
        rh: Remaining health, 0..1 (NaN: no SoH, or no SoH at EoL).
        ruw: Remaining useful warranty, 0..1 (NaN: no expected curve or lifespan).
        state: D1.2's qualitative state.
        message: D1.2's description of it.
        severity: Its colour indicator.
        soh_now: Latest SoH at or before ``now`` (fraction).
        soh_start: ``SoH_0`` (fraction).
        soh_eol: ``SoH_EoL`` (fraction).
        elapsed_years: Time since the warranty started.
        fec: Full equivalent cycles since the warranty started.
        fade_ratio: ``k`` per axis (observed over expected fade).
        projected_eol: Projected end of life per axis (years or FEC since the start;
            inf: never on the present trend).
    """

    rw: float
    rh: float
    ruw: float
    state: SowState
    message: str
    severity: Severity
    soh_now: float
    soh_start: float
    soh_eol: float
    elapsed_years: float
    fec: float
    fade_ratio: dict[str, float]
    projected_eol: dict[str, float]


def _fraction(values: FloatArray) -> FloatArray:
    finite = values[np.isfinite(values)]
    if finite.size and float(np.max(finite)) > 1.5:
        return values / 100.0
    return values


def _scalar_fraction(value: float | None) -> float:
    if value is None or not math.isfinite(value):
        return math.nan
    return value / 100.0 if value > 1.5 else float(value)


def xh0_soh(x: ArrayLike, xh0: Sequence[float]) -> FloatArray:
    """The sizing tool's SoH model as read here: ``x0 - x1 x^x2 - x3 x^x4``.

    Args:
        x: Years or FEC since the warranty started (>= 0).
        xh0: The five parameters (``xh0_time`` or ``xh0_fec``).

    Returns:
        SoH in the unit of ``xh0[0]`` (fraction or percent).

    Raises:
        ValueError: If ``xh0`` does not have five finite values.
    """
    p = np.asarray(xh0, dtype=np.float64)
    if p.shape != (5,) or not np.all(np.isfinite(p)):
        raise ValueError(f"xh0 must be five finite numbers, got {list(xh0)!r}")
    u = np.maximum(np.asarray(x, dtype=np.float64), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = p[0] - p[1] * u ** p[2] - p[3] * u ** p[4]
    return np.asarray(out, dtype=np.float64)


def _table_curve(x_table: FloatArray, soh_table: FloatArray) -> Curve:
    order = np.argsort(x_table)
    xs, ys = x_table[order], soh_table[order]
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) if xs[-1] > xs[-2] else 0.0

    def curve(x: FloatArray) -> FloatArray:
        inside = np.interp(x, xs, ys)
        beyond = ys[-1] + slope * (x - xs[-1])
        return np.asarray(np.where(x > xs[-1], beyond, inside), dtype=np.float64)

    return curve


def _expected_curve(
    sizing: SizingParameters, axis: Axis
) -> Callable[[FloatArray], FloatArray] | None:
    """``E(x)`` as a SoH fraction on ``axis``, or ``None`` if the record has neither."""
    table_x = sizing.time_evolution if axis == "time" else sizing.fecs_evolution
    xh0 = sizing.xh0_time if axis == "time" else sizing.xh0_fec
    if sizing.soh_evolution and table_x and len(sizing.soh_evolution) == len(table_x) >= 2:
        xs = np.asarray(table_x, dtype=np.float64)
        ys = _fraction(np.asarray(sizing.soh_evolution, dtype=np.float64))
        if np.all(np.isfinite(xs)) and np.all(np.isfinite(ys)) and np.ptp(xs) > 0:
            return _table_curve(xs, ys)
    if xh0 is not None and len(xh0) == 5 and all(math.isfinite(v) for v in xh0):
        scale = 0.01 if xh0[0] > 1.5 else 1.0
        params = list(xh0)
        return lambda x: xh0_soh(x, params) * scale
    return None


def _positive(value: float | None) -> float:
    return float(value) if value is not None and math.isfinite(value) and value > 0 else math.nan


def _projected_eol(
    curve: Curve,
    *,
    x_hist: FloatArray,
    soh_hist: FloatArray,
    soh_start: float,
    soh_eol: float,
    lifespan: float,
) -> tuple[float, float]:
    """Fade ratio ``k`` and the projected end of life on one axis."""
    expected = soh_start - curve(x_hist)
    observed = soh_start - soh_hist
    if expected.size == 0 or float(np.max(expected)) < _MIN_EXPECTED_FADE:
        k = 1.0
    else:
        k = float(np.sum(observed * expected) / np.sum(expected**2))
    if k <= 0:
        return k, math.inf
    target = (soh_start - soh_eol) / k  # expected fade at which the projection hits EoL
    x_max = _HORIZON * lifespan
    grid = np.linspace(0.0, x_max, _GRID_POINTS)
    fade = np.maximum.accumulate(soh_start - curve(grid))
    hit = np.flatnonzero(fade >= target)
    if hit.size == 0:
        return k, math.inf
    j = int(hit[0])
    if j == 0:
        return k, 0.0
    f0, f1 = fade[j - 1], fade[j]
    x = grid[j - 1] + (grid[j] - grid[j - 1]) * (target - f0) / (f1 - f0)
    return k, float(x)


def sow(
    diagnostics: SizingParameters,
    soh_history: SohHistory,
    *,
    now: dt.datetime,
    warranty_start: dt.datetime | None = None,
) -> SowResult:
    """The State of Warranty of one cell (see the module docstring for the formulas).

    Args:
        diagnostics: The latest diagnostic-sizing record.
        soh_history: The cell's SoH estimates (records after ``now`` are ignored).
        now: When the SoW is evaluated.
        warranty_start: Start of the second-life warranty; default: the first record.

    Returns:
        RW, RH, RUW, the qualitative state and the numbers behind them. Whatever cannot
        be computed is NaN, which the table turns into the undefined scenario.
    """
    keep = [k for k, t in enumerate(soh_history.time) if t <= now]
    times = [soh_history.time[k] for k in keep]
    soh_hist = _fraction(soh_history.soh)[keep]
    start = warranty_start or (times[0] if times else now)
    years_hist = np.array([(t - start).total_seconds() for t in times]) / 86_400.0
    years_hist = years_hist / _DAYS_PER_YEAR
    years_now = (now - start).total_seconds() / 86_400.0 / _DAYS_PER_YEAR
    fec_rate = _positive(diagnostics.days_per_year) * _positive(diagnostics.fecs_per_day)
    if soh_history.fec is not None:
        fec_hist = soh_history.fec[keep]
        fec_now = float(fec_hist[-1]) if fec_hist.size else 0.0
    else:
        fec_hist = years_hist * fec_rate
        fec_now = years_now * fec_rate

    curves = {axis: _expected_curve(diagnostics, axis) for axis in _AXES}
    soh_eol = _scalar_fraction(diagnostics.soh_at_eol)
    soh_now = float(soh_hist[-1]) if soh_hist.size else math.nan
    soh_start = math.nan
    for axis in _AXES:
        curve = curves[axis]
        if curve is not None and math.isnan(soh_start):
            soh_start = float(curve(np.zeros(1))[0])
    if math.isnan(soh_start) and soh_hist.size:
        soh_start = float(soh_hist[0])

    lifespans = {
        "time": _positive(diagnostics.lifespan_years),
        "fec": _positive(diagnostics.lifespan_fecs),
    }
    position = {"time": years_now, "fec": fec_now}
    history_x = {"time": years_hist, "fec": fec_hist}

    rw_axes = [1.0 - position[a] / lifespans[a] for a in lifespans if math.isfinite(lifespans[a])]
    rw_axes = [v for v in rw_axes if math.isfinite(v)]
    rw = float(np.clip(min(rw_axes), 0.0, 1.0)) if rw_axes else math.nan

    usable = soh_start - soh_eol
    rh = float(np.clip((soh_now - soh_eol) / usable, 0.0, 1.0)) if usable > 0 else math.nan

    fade_ratio: dict[str, float] = {}
    projected: dict[str, float] = {}
    ruw_axes: list[float] = []
    for axis in _AXES:
        curve, life = curves[axis], lifespans[axis]
        x_hist = history_x[axis]
        if curve is None or not math.isfinite(life) or not usable > 0 or soh_hist.size == 0:
            continue
        if not np.all(np.isfinite(x_hist)) or not math.isfinite(position[axis]):
            continue
        k, x_eol = _projected_eol(
            curve,
            x_hist=x_hist,
            soh_hist=soh_hist,
            soh_start=soh_start,
            soh_eol=soh_eol,
            lifespan=life,
        )
        fade_ratio[axis], projected[axis] = k, x_eol
        ruw_axes.append(max(x_eol - position[axis], 0.0) / life)
    ruw = float(np.clip(min(ruw_axes), 0.0, 1.0)) if ruw_axes else math.nan

    cls = classify_sow(rw, rh, ruw)
    return SowResult(
        rw=rw,
        rh=rh,
        ruw=ruw,
        state=cls.state,
        message=cls.message,
        severity=cls.severity,
        soh_now=soh_now,
        soh_start=soh_start,
        soh_eol=soh_eol,
        elapsed_years=years_now,
        fec=fec_now,
        fade_ratio=fade_ratio,
        projected_eol=projected,
    )
