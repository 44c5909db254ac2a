"""SoS: per-cell state of safety in [0, 1] from limits, EIS, SoT, runaway and plating checks.

D1.2 (section 3.3.0.7, Pillar 1) sets safety limits on voltage, current, temperature and
the EIS magnitude and phase of every cell, adds a periodic thermal-runaway warning based on
EIS with the SoT as reinforcing input, and keeps one SoS indicator per cell. Pillar 2
(section 3.3.1.10) updates the same indicator when the rest after a charge shows lithium
plating (:mod:`virtual_bms.estimators.plating`).

**Indicator.** Each check has a limit and a warning band inside it. Its margin is the
signed distance to the limit in the check's unit (positive inside, negative beyond); its
sub-indicator is ``clip(margin / band, 0, 1)``: 1 while the cell is at least one band
away, falling linearly to 0 at the limit. A cell's SoS is the smallest sub-indicator
(a cell is as safe as its worst quantity), then:

* a missing voltage, current or temperature reading sets it to 0 (a BMS that cannot see a
  cell must treat it as unsafe);
* a thermal-runaway warning sets it to 0;
* detected lithium plating caps it at ``SafetyLimits.plating_sos_cap``.

Temperature checks use the SoT where it is known: the hotter of surface and SoT against
the upper limits, the colder against the lower ones.

**Thermal-runaway warning** (:func:`thermal_runaway_warning`), three indicators per cell:

* heating: surface temperature rising at ``>= heating_rate_c_per_min`` (least-squares slope
  over the last minutes, :func:`heating_rate_c_per_min`);
* core hotter: ``SoT - surface >= core_surface_delta_c``, heat made inside the cell
  (an internal short or exothermic decomposition) rather than taken from outside;
* impedance anomaly: ``| |Z| / |Z_ref| - 1 | >= impedance_change`` or
  ``|phase - phase_ref| >= phase_shift_deg`` (separator melting raises ``|Z|``, an internal
  short or a hot core lowers it).

A warning needs ``votes`` (default 2) of the indicators that are available for the cell
(at most as many as are available, so a cell without EIS warns on heating alone), or one
critical condition on its own: a heating rate ``>= critical_rate_c_per_min`` or a
temperature ``>= critical_temperature_c``. Two-of-three voting keeps a single noisy
channel (a thermistor glitch, one bad EIS point) from raising the alarm, while the
critical thresholds catch a runaway that is already under way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from twin.models.base import FloatArray
from twin.models.ecm_params import EcmParameters

__all__ = [
    "RunawayRule",
    "RunawayWarning",
    "SafetyAlarm",
    "SafetyInputs",
    "SafetyLimits",
    "SosError",
    "SosResult",
    "heating_rate_c_per_min",
    "state_of_safety",
    "thermal_runaway_warning",
]

BoolArray = NDArray[np.bool_]
AlarmLevel = Literal["warning", "alarm"]


class SosError(ValueError):
    """Bad limits or inputs to the SoS: the message names the value and what to do."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SosError(message)


@dataclass(frozen=True, slots=True, kw_only=True)
class SafetyLimits:
    """Limits per cell and the warning bands inside them.

    Attributes:
        min_voltage_v: Lowest safe cell voltage.
        max_voltage_v: Highest safe cell voltage.
        max_discharge_current_a: Largest discharge current (positive current).
        max_charge_current_a: Largest charge current, as a magnitude.
        min_temperature_c: Lowest safe temperature.
        max_temperature_c: Highest safe temperature.
        min_charge_temperature_c: No charging below this (lithium plating).
        charging_threshold_a: A current below ``-charging_threshold_a`` counts as charging.
        max_impedance_growth: Largest ``|Z| / |Z_ref| - 1`` (0.5 = 50 % above reference).
        max_phase_shift_deg: Largest ``|phase - phase_ref|``.
        voltage_band_v: Warning band inside the voltage limits.
        current_band: Warning band inside the current limits, as a fraction of the limit.
        temperature_band_c: Warning band inside the temperature limits.
        impedance_band: Warning band inside ``max_impedance_growth``.
        phase_band_deg: Warning band inside ``max_phase_shift_deg``.
        plating_sos_cap: Highest SoS of a cell with detected lithium plating.

    Raises:
        SosError: On a non-finite value, an inverted range or a non-positive band.
    """

    min_voltage_v: float
    max_voltage_v: float
    max_discharge_current_a: float
    max_charge_current_a: float
    min_temperature_c: float = -20.0
    max_temperature_c: float = 60.0
    min_charge_temperature_c: float = 0.0
    charging_threshold_a: float = 0.05
    max_impedance_growth: float = 0.5
    max_phase_shift_deg: float = 5.0
    voltage_band_v: float = 0.05
    current_band: float = 0.1
    temperature_band_c: float = 5.0
    impedance_band: float = 0.1
    phase_band_deg: float = 1.0
    plating_sos_cap: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            _require(math.isfinite(value), f"SafetyLimits.{f.name} must be finite, got {value!r}")
        _require(
            self.min_voltage_v < self.max_voltage_v,
            f"SafetyLimits.min_voltage_v ({self.min_voltage_v}) must be below max_voltage_v "
            f"({self.max_voltage_v})",
        )
        _require(
            self.min_temperature_c < self.max_temperature_c,
            f"SafetyLimits.min_temperature_c ({self.min_temperature_c}) must be below "
            f"max_temperature_c ({self.max_temperature_c})",
        )
        for name in (
            "max_discharge_current_a",
            "max_charge_current_a",
            "max_impedance_growth",
            "max_phase_shift_deg",
            "voltage_band_v",
            "current_band",
            "temperature_band_c",
            "impedance_band",
            "phase_band_deg",
        ):
            value = getattr(self, name)
            _require(value > 0, f"SafetyLimits.{name} must be > 0, got {value!r}")
        _require(
            self.charging_threshold_a >= 0,
            f"SafetyLimits.charging_threshold_a must be >= 0, got {self.charging_threshold_a!r}",
        )
        _require(
            0 <= self.plating_sos_cap <= 1,
            f"SafetyLimits.plating_sos_cap must be within 0..1, got {self.plating_sos_cap!r}",
        )

    @classmethod
    def from_parameters(
        cls,
        params: EcmParameters,
        *,
        max_charge_c_rate: float = 1.0,
        max_discharge_c_rate: float = 2.0,
    ) -> SafetyLimits:
        """Limits from a parameter set's safe operating area and nominal capacity.

        Args:
            params: The cell's parameter set (voltage and temperature limits).
            max_charge_c_rate: Charge current limit in C.
            max_discharge_c_rate: Discharge current limit in C.
        """
        lim = params.limits
        capacity = params.nominal_capacity_ah
        return cls(
            min_voltage_v=lim.min_voltage_v,
            max_voltage_v=lim.max_voltage_v,
            min_temperature_c=lim.min_temperature_c,
            max_temperature_c=lim.max_temperature_c,
            max_charge_current_a=max_charge_c_rate * capacity,
            max_discharge_current_a=max_discharge_c_rate * capacity,
        )


def _cells(value: ArrayLike | None, *, n: int | None, name: str) -> FloatArray:
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.ndim != 1:
        raise SosError(f"{name} must be a scalar or 1-D per-cell array, got shape {arr.shape}")
    if n is not None and arr.size != n:
        if arr.size != 1:
            raise SosError(f"{name} has {arr.size} values for {n} cells")
        arr = np.full(n, arr[0])
    return arr


@dataclass(frozen=True, eq=False)
class SafetyInputs:
    """What the SoS sees of each cell at one moment; scalars broadcast to all cells.

    Attributes:
        voltage_v: Cell voltage readings (NaN = no reading).
        current_a: Cell current readings, positive = discharge (NaN = no reading).
        temperature_c: Surface temperature readings (NaN = no reading).
        sot_c: Internal temperature from EIS (:mod:`~virtual_bms.estimators.sot`); NaN or
            ``None`` where unknown.
        impedance_ratio: ``|Z| / |Z_ref|`` at the monitored frequency against the cell's
            reference sweep (commissioning, or the same cell at the same temperature and SoC
            earlier); NaN or ``None`` where no EIS.
        phase_shift_deg: ``phase - phase_ref`` at the monitored frequency; NaN or ``None``.
        plating_detected: Lithium plating found in the last rest
            (:func:`~virtual_bms.estimators.plating.detect_plating`); ``None`` = not checked.

    Raises:
        SosError: On inconsistent shapes.
    """

    voltage_v: ArrayLike
    current_a: ArrayLike
    temperature_c: ArrayLike
    sot_c: ArrayLike | None = None
    impedance_ratio: ArrayLike | None = None
    phase_shift_deg: ArrayLike | None = None
    plating_detected: ArrayLike | None = None

    def __post_init__(self) -> None:
        v = _cells(self.voltage_v, n=None, name="voltage_v")
        n = v.size
        object.__setattr__(self, "voltage_v", v)
        for name in ("current_a", "temperature_c"):
            object.__setattr__(self, name, _cells(getattr(self, name), n=n, name=name))
        for name in ("sot_c", "impedance_ratio", "phase_shift_deg"):
            value = getattr(self, name)
            arr = np.full(n, np.nan) if value is None else _cells(value, n=n, name=name)
            object.__setattr__(self, name, arr)
        plating = self.plating_detected
        flags = (
            np.zeros(n, dtype=bool)
            if plating is None
            else _cells(np.asarray(plating, dtype=bool), n=n, name="plating_detected") > 0
        )
        object.__setattr__(self, "plating_detected", flags)

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return int(np.asarray(self.voltage_v).size)


@dataclass(frozen=True, slots=True)
class SafetyAlarm:
    """One cell near or beyond one limit.

    Attributes:
        cell: Cell index.
        check: Which check, e.g. ``"over_voltage"`` or ``"thermal_runaway"``.
        level: ``"warning"`` inside the warning band, ``"alarm"`` beyond the limit (and for
            a runaway warning or a missing reading).
        value: The value checked, in ``unit``.
        limit: The limit, in ``unit``.
        margin: Distance to the limit in ``unit``: positive inside, negative beyond.
        unit: Unit of ``value``, ``limit`` and ``margin``.
    """

    cell: int
    check: str
    level: AlarmLevel
    value: float
    limit: float
    margin: float
    unit: str

    def __str__(self) -> str:
        return (
            f"cell {self.cell} {self.check} {self.level}: {self.value:.4g} {self.unit} vs limit "
            f"{self.limit:.4g} {self.unit} (margin {self.margin:+.3g} {self.unit})"
        )


@dataclass(frozen=True, eq=False)
class SosResult:
    """SoS per cell, with what limits it.

    Attributes:
        sos: State of safety per cell, 0 (unsafe) .. 1 (no limit within its band).
        indicators: Sub-indicator per check and cell (NaN where not applicable).
        margins: Signed distance to the limit per check and cell, in the check's unit.
        alarms: Every check in its warning band or beyond, cell by cell.
        limiting: Per cell, the check that set the SoS (``""`` when the SoS is 1).
    """

    sos: FloatArray
    indicators: Mapping[str, FloatArray]
    margins: Mapping[str, FloatArray]
    alarms: tuple[SafetyAlarm, ...]
    limiting: tuple[str, ...]

    def alarms_for(self, cell: int) -> tuple[SafetyAlarm, ...]:
        """The alarms of one cell."""
        return tuple(a for a in self.alarms if a.cell == cell)


@dataclass(frozen=True, slots=True)
class _Check:
    name: str
    value: FloatArray
    limit: FloatArray
    margin: FloatArray
    band: float
    unit: str


def _nan_max(a: FloatArray, b: FloatArray) -> FloatArray:
    return np.where(np.isnan(b), a, np.where(np.isnan(a), b, np.maximum(a, b)))


def _nan_min(a: FloatArray, b: FloatArray) -> FloatArray:
    return np.where(np.isnan(b), a, np.where(np.isnan(a), b, np.minimum(a, b)))


def _checks(inputs: SafetyInputs, limits: SafetyLimits) -> list[_Check]:
    v = np.asarray(inputs.voltage_v)
    i = np.asarray(inputs.current_a)
    surface = np.asarray(inputs.temperature_c)
    sot = np.asarray(inputs.sot_c)
    hot = _nan_max(surface, sot)
    cold = _nan_min(surface, sot)
    n = v.size

    def full(x: float) -> FloatArray:
        return np.full(n, x)

    charging = i < -limits.charging_threshold_a
    ratio = np.asarray(inputs.impedance_ratio)
    shift = np.abs(np.asarray(inputs.phase_shift_deg))
    return [
        _Check(
            "over_voltage",
            v,
            full(limits.max_voltage_v),
            limits.max_voltage_v - v,
            limits.voltage_band_v,
            "V",
        ),
        _Check(
            "under_voltage",
            v,
            full(limits.min_voltage_v),
            v - limits.min_voltage_v,
            limits.voltage_band_v,
            "V",
        ),
        _Check(
            "over_discharge_current",
            i,
            full(limits.max_discharge_current_a),
            limits.max_discharge_current_a - i,
            limits.current_band * limits.max_discharge_current_a,
            "A",
        ),
        _Check(
            "over_charge_current",
            -i,
            full(limits.max_charge_current_a),
            limits.max_charge_current_a + i,
            limits.current_band * limits.max_charge_current_a,
            "A",
        ),
        _Check(
            "over_temperature",
            hot,
            full(limits.max_temperature_c),
            limits.max_temperature_c - hot,
            limits.temperature_band_c,
            "degC",
        ),
        _Check(
            "under_temperature",
            cold,
            full(limits.min_temperature_c),
            cold - limits.min_temperature_c,
            limits.temperature_band_c,
            "degC",
        ),
        _Check(
            "cold_charging",
            cold,
            full(limits.min_charge_temperature_c),
            np.where(charging, cold - limits.min_charge_temperature_c, np.nan),
            limits.temperature_band_c,
            "degC",
        ),
        _Check(
            "impedance_growth",
            ratio - 1.0,
            full(limits.max_impedance_growth),
            limits.max_impedance_growth - (ratio - 1.0),
            limits.impedance_band,
            "",
        ),
        _Check(
            "phase_shift",
            shift,
            full(limits.max_phase_shift_deg),
            limits.max_phase_shift_deg - shift,
            limits.phase_band_deg,
            "deg",
        ),
    ]


def state_of_safety(
    inputs: SafetyInputs,
    *,
    limits: SafetyLimits,
    runaway: RunawayWarning | None = None,
) -> SosResult:
    """Per-cell SoS and alarms (rules in the module docstring).

    Args:
        inputs: Readings and estimates per cell.
        limits: The limits and warning bands.
        runaway: The latest :func:`thermal_runaway_warning` for the same cells, if any.

    Returns:
        SoS, sub-indicators, margins, alarms and the limiting check per cell.

    Raises:
        SosError: If ``runaway`` covers another number of cells.
    """
    n = inputs.n_cells
    nan = math.nan
    checks = _checks(inputs, limits)
    indicators: dict[str, FloatArray] = {}
    margins: dict[str, FloatArray] = {}
    for check in checks:
        margins[check.name] = check.margin
        indicators[check.name] = np.where(
            np.isnan(check.margin), np.nan, np.clip(check.margin / check.band, 0.0, 1.0)
        )
    stacked = np.vstack([indicators[c.name] for c in checks])
    names = [c.name for c in checks]
    applicable = ~np.isnan(stacked)
    sos = np.where(applicable, stacked, 1.0).min(axis=0)
    worst = np.where(applicable, stacked, np.inf).argmin(axis=0)
    limiting = [names[k] if sos[j] < 1.0 else "" for j, k in enumerate(worst)]

    extra: list[SafetyAlarm] = []
    plating = np.asarray(inputs.plating_detected, dtype=bool)
    capped = plating & (sos > limits.plating_sos_cap)
    sos = np.where(capped, limits.plating_sos_cap, sos)
    for cell in np.flatnonzero(plating):
        extra.append(SafetyAlarm(int(cell), "lithium_plating", "warning", nan, nan, nan, ""))
        if capped[cell]:
            limiting[cell] = "lithium_plating"
    if runaway is not None:
        if runaway.warning.size != n:
            raise SosError(f"runaway warning covers {runaway.warning.size} cells, inputs {n}")
        sos = np.where(runaway.warning, 0.0, sos)
        for cell in np.flatnonzero(runaway.warning):
            votes, needed = float(runaway.votes[cell]), float(runaway.needed[cell])
            extra.append(
                SafetyAlarm(
                    int(cell), "thermal_runaway", "alarm", votes, needed, needed - votes, "votes"
                )
            )
            limiting[cell] = "thermal_runaway"
    for quantity, values in (
        ("voltage", inputs.voltage_v),
        ("current", inputs.current_a),
        ("temperature", inputs.temperature_c),
    ):
        gone = np.isnan(np.asarray(values))
        sos = np.where(gone, 0.0, sos)
        for cell in np.flatnonzero(gone):
            extra.append(SafetyAlarm(int(cell), f"missing_{quantity}", "alarm", nan, nan, nan, ""))
            limiting[cell] = f"missing_{quantity}"

    alarms: list[SafetyAlarm] = []
    for check in checks:
        margin = check.margin
        flagged = np.flatnonzero(~np.isnan(margin) & (margin < check.band))
        for cell in flagged:
            m = float(margin[cell])
            alarms.append(
                SafetyAlarm(
                    cell=int(cell),
                    check=check.name,
                    level="alarm" if m < 0 else "warning",
                    value=float(check.value[cell]),
                    limit=float(check.limit[cell]),
                    margin=m,
                    unit=check.unit,
                )
            )
    alarms.extend(extra)
    alarms.sort(key=lambda a: (a.cell, a.level != "alarm", a.check))
    return SosResult(
        sos=sos,
        indicators=MappingProxyType(indicators),
        margins=MappingProxyType(margins),
        alarms=tuple(alarms),
        limiting=tuple(limiting),
    )


def heating_rate_c_per_min(
    time_s: ArrayLike, temperature_c: ArrayLike, *, window_s: float = 300.0
) -> FloatArray:
    """Temperature slope per cell: least squares over the samples of the last ``window_s``.

    A fit over minutes rather than a difference of two samples, so that thermistor noise
    (0.5 degC, 0.1 degC steps) does not read as heating: with 1 s samples over 300 s the
    slope's noise is about 0.02 degC/min.

    Args:
        time_s: Sample times, strictly increasing, ``(n_samples,)``.
        temperature_c: ``(n_samples,)`` or ``(n_samples, n_cells)``; NaN samples are
            ignored per cell.
        window_s: Fit window ending at the last sample.

    Returns:
        Slope per cell in degC/min (NaN where fewer than 2 samples are in the window).

    Raises:
        SosError: On bad shapes or times.
    """
    t = np.asarray(time_s, dtype=np.float64)
    temp = np.asarray(temperature_c, dtype=np.float64)
    _require(t.ndim == 1 and t.size >= 2, f"time_s must be 1-D with >= 2 samples, got {t.shape}")
    _require(
        bool(np.isfinite(t).all() and np.all(np.diff(t) > 0)),
        "time_s must be finite and strictly increasing",
    )
    _require(math.isfinite(window_s) and window_s > 0, f"window_s must be > 0, got {window_s!r}")
    if temp.ndim == 1:
        temp = temp[:, None]
    _require(
        temp.ndim == 2 and temp.shape[0] == t.size,
        f"temperature_c must be (n_samples,) or (n_samples, n_cells) with n_samples={t.size}, "
        f"got {np.shape(temperature_c)}",
    )
    keep = t >= t[-1] - window_s
    tw, yw = t[keep], temp[keep]
    ok = np.isfinite(yw)
    count = ok.sum(axis=0)
    tt = np.where(ok, tw[:, None], 0.0)
    yy = np.where(ok, yw, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        t_mean = tt.sum(axis=0) / count
        y_mean = yy.sum(axis=0) / count
        dt = np.where(ok, tw[:, None] - t_mean, 0.0)
        slope = (dt * (yy - y_mean)).sum(axis=0) / (dt**2).sum(axis=0)
    return np.asarray(np.where(count >= 2, slope * 60.0, np.nan), dtype=np.float64)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunawayRule:
    """Thresholds of the thermal-runaway warning (rule in the module docstring).

    Attributes:
        heating_rate_c_per_min: Surface heating that counts as one vote. A 21700 cell alone
            in still air (the twin's ``nmc_okane2022`` set, near adiabatic) heats at up to
            1.8 degC/min at 1C with 1.6x resistance; large stationary cells far less.
        critical_rate_c_per_min: Heating that warns on its own: 1 degC/s, the rate at which
            GB 38031 calls a cell in thermal runaway.
        critical_temperature_c: Temperature (surface or SoT) that warns on its own.
        core_surface_delta_c: ``SoT - surface`` that counts as one vote.
        impedance_change: ``| |Z| / |Z_ref| - 1 |`` that counts as an EIS vote.
        phase_shift_deg: ``|phase - phase_ref|`` that counts as an EIS vote.
        votes: Indicators needed (capped at the number available for a cell).

    Raises:
        SosError: On a non-positive threshold or ``votes`` outside 1..3.
    """

    heating_rate_c_per_min: float = 2.0
    critical_rate_c_per_min: float = 60.0
    critical_temperature_c: float = 80.0
    core_surface_delta_c: float = 5.0
    impedance_change: float = 0.2
    phase_shift_deg: float = 3.0
    votes: int = 2

    def __post_init__(self) -> None:
        for name in (
            "heating_rate_c_per_min",
            "critical_rate_c_per_min",
            "core_surface_delta_c",
            "impedance_change",
            "phase_shift_deg",
        ):
            value = getattr(self, name)
            _require(
                math.isfinite(value) and value > 0, f"RunawayRule.{name} must be > 0, got {value!r}"
            )
        _require(
            math.isfinite(self.critical_temperature_c),
            "RunawayRule.critical_temperature_c must be finite, got "
            f"{self.critical_temperature_c!r}",
        )
        _require(1 <= self.votes <= 3, f"RunawayRule.votes must be 1..3, got {self.votes!r}")


@dataclass(frozen=True, eq=False)
class RunawayWarning:
    """Thermal-runaway check per cell.

    Attributes:
        warning: The cell warns (votes reached, or a critical condition).
        critical: Heating or temperature beyond the critical thresholds.
        heating: Heating vote.
        core_hotter: SoT-above-surface vote.
        impedance_anomaly: EIS vote.
        votes: Number of votes per cell.
        needed: Votes needed per cell: ``rule.votes`` capped at ``available`` (at least 1).
        available: Number of indicators with data per cell (0..3).
        rate_c_per_min: The heating rate used.
        core_surface_delta_c: ``SoT - surface`` (NaN without SoT).
        rule: The thresholds applied.
    """

    warning: BoolArray
    critical: BoolArray
    heating: BoolArray
    core_hotter: BoolArray
    impedance_anomaly: BoolArray
    votes: NDArray[np.int_]
    needed: NDArray[np.int_]
    available: NDArray[np.int_]
    rate_c_per_min: FloatArray
    core_surface_delta_c: FloatArray
    rule: RunawayRule


def thermal_runaway_warning(
    *,
    rate_c_per_min: ArrayLike,
    surface_temperature_c: ArrayLike,
    sot_c: ArrayLike | None = None,
    impedance_ratio: ArrayLike | None = None,
    phase_shift_deg: ArrayLike | None = None,
    rule: RunawayRule | None = None,
) -> RunawayWarning:
    """Per-cell thermal-runaway warning from heating, SoT and EIS (rule in the module docstring).

    Args:
        rate_c_per_min: Surface heating rate per cell (:func:`heating_rate_c_per_min`).
        surface_temperature_c: Latest surface temperature per cell.
        sot_c: Internal temperature from EIS per cell; NaN/None where unknown.
        impedance_ratio: ``|Z| / |Z_ref|`` per cell; NaN/None where unknown.
        phase_shift_deg: ``phase - phase_ref`` per cell; NaN/None where unknown.
        rule: Thresholds; defaults to :class:`RunawayRule` ``()``.

    Returns:
        The warning and each indicator per cell.
    """
    r = rule or RunawayRule()
    rate = _cells(rate_c_per_min, n=None, name="rate_c_per_min")
    n = rate.size
    surface = _cells(surface_temperature_c, n=n, name="surface_temperature_c")
    nan = np.full(n, np.nan)
    sot = nan if sot_c is None else _cells(sot_c, n=n, name="sot_c")
    ratio = nan if impedance_ratio is None else _cells(impedance_ratio, n=n, name="impedance_ratio")
    shift = nan if phase_shift_deg is None else _cells(phase_shift_deg, n=n, name="phase_shift_deg")

    delta = sot - surface
    heating = rate >= r.heating_rate_c_per_min
    core = delta >= r.core_surface_delta_c
    eis = (np.abs(ratio - 1.0) >= r.impedance_change) | (np.abs(shift) >= r.phase_shift_deg)
    available = (
        np.isfinite(rate).astype(int)
        + np.isfinite(delta).astype(int)
        + (np.isfinite(ratio) | np.isfinite(shift)).astype(int)
    )
    votes = heating.astype(int) + core.astype(int) + eis.astype(int)
    hottest = _nan_max(surface, sot)
    critical = (rate >= r.critical_rate_c_per_min) | (hottest >= r.critical_temperature_c)
    needed = np.maximum(np.minimum(r.votes, available), 1)
    warning = critical | (votes >= needed)
    return RunawayWarning(
        warning=warning,
        critical=critical,
        heating=heating,
        core_hotter=core,
        impedance_anomaly=eis,
        votes=votes,
        needed=needed,
        available=available,
        rate_c_per_min=rate,
        core_surface_delta_c=delta,
        rule=r,
    )
