"""The BMS's safety bookkeeping between cycles: what SoT, SoS and the plating check need
from the past (EIS references, temperature history, the rest after a charge).

The estimators themselves are pure (:mod:`virtual_bms.estimators.sot`, ``sos``,
``plating``); this module keeps their inputs over time, one object per BMS.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from twin.eis import EisRecord
from twin.models.base import FloatArray
from twin.models.ecm import CellInit, EcmTwin
from twin.models.ecm_params import EcmParameters
from virtual_bms.estimators.plating import PlatingConfig, PlatingResult, detect_plating
from virtual_bms.estimators.sos import (
    RunawayRule,
    SafetyInputs,
    SafetyLimits,
    SosResult,
    heating_rate_c_per_min,
    state_of_safety,
    thermal_runaway_warning,
)
from virtual_bms.estimators.sot import (
    SotCalibration,
    SotError,
    fit_sot_calibration,
    phase_at_frequency,
    phase_table_from_parameters,
    sot_from_eis,
)

__all__ = ["EisView", "RestWatch", "SafetyMonitor", "sot_calibration_for"]

_log = logging.getLogger(__name__)
BoolArray = NDArray[np.bool_]
_SWEEP_HZ = np.geomspace(0.1, 1000.0, 41)


def sot_calibration_for(params: EcmParameters) -> SotCalibration | None:
    """SoT calibration of a parameter set, or None when its phase is no thermometer
    (pulse-fitted sets; see ``twin.params.eis_arc``)."""
    table = phase_table_from_parameters(
        params,
        frequency_hz=_SWEEP_HZ,
        temperature_c=np.arange(-5.0, 56.0, 5.0),
        soc=np.linspace(0.1, 0.95, 12),
    )
    try:
        return fit_sot_calibration(table)
    except SotError as error:
        _log.info("SoT disabled for %s: %s", params.name, error)
        return None


@dataclass
class EisView:
    """Per group, what the last sweep said at the SoT frequency, against the first sweep."""

    sot_c: FloatArray
    phase_deg: FloatArray
    impedance_ratio: FloatArray
    phase_shift_deg: FloatArray


@dataclass
class RestWatch:
    """Voltages of the rest after a charge, until the plating check has run once."""

    started_s: float
    time_s: list[float] = field(default_factory=list)
    voltage_v: list[FloatArray] = field(default_factory=list)
    done: bool = False

    def add(self, time_s: float, voltage_v: FloatArray) -> None:
        self.time_s.append(time_s - self.started_s)
        self.voltage_v.append(voltage_v.copy())


class SafetyMonitor:
    """SoS per group every time it is asked, from readings, EIS and the plating check.

    Args:
        n_groups: Series groups.
        limits: SoS limits and bands.
        calibration: SoT calibration (Pillar 1), or None.
        plating: Plating-check settings (Pillar 2), or None.
        runaway: Thermal-runaway rule; by default 5 degC/min heating counts as a vote
            (large cells under 1C heat at up to ~2 degC/min in normal service, and with only
            the heating indicator available one vote warns).
        history_s: Temperature history kept for the heating rate.
    """

    def __init__(
        self,
        n_groups: int,
        *,
        limits: SafetyLimits,
        calibration: SotCalibration | None = None,
        plating: PlatingConfig | None = None,
        runaway: RunawayRule | None = None,
        history_s: float = 300.0,
    ) -> None:
        self.n = n_groups
        self.limits = limits
        self.calibration = calibration
        self.plating_config = plating
        self.runaway_rule = runaway or RunawayRule(heating_rate_c_per_min=5.0)
        self.eis: EisView | None = None
        self.plating_detected = np.zeros(n_groups, dtype=bool)
        self.last_plating: PlatingResult | None = None
        self.runaway = np.zeros(n_groups, dtype=bool)
        self._history_s = history_s
        self._temperatures: deque[tuple[float, FloatArray]] = deque()
        self._reference: tuple[FloatArray, FloatArray] | None = None  # |Z|, phase per group
        self._rest: RestWatch | None = None

    # -------------------------------------------------------------- each cycle
    def observe(self, time_s: float, temperature_c: FloatArray) -> None:
        self._temperatures.append((time_s, temperature_c.copy()))
        while self._temperatures and self._temperatures[0][0] < time_s - self._history_s:
            self._temperatures.popleft()

    def evaluate(
        self, *, voltage_v: FloatArray, current_a: FloatArray, temperature_c: FloatArray
    ) -> tuple[SosResult, BoolArray]:
        """SoS now, and which groups newly warn of thermal runaway."""
        eis = self.eis
        span_s = self._temperatures[-1][0] - self._temperatures[0][0] if self._temperatures else 0.0
        if len(self._temperatures) >= 3 and span_s >= 0.5 * self._history_s:
            # a slope over seconds of noisy thermistor samples would read as heating
            times = np.array([t for t, _ in self._temperatures])
            temps = np.array([v for _, v in self._temperatures])
            rate = heating_rate_c_per_min(times, temps)
        else:
            rate = np.zeros(self.n)
        runaway = thermal_runaway_warning(
            rate_c_per_min=rate,
            surface_temperature_c=temperature_c,
            sot_c=eis.sot_c if eis else None,
            impedance_ratio=eis.impedance_ratio if eis else None,
            phase_shift_deg=eis.phase_shift_deg if eis else None,
            rule=self.runaway_rule,
        )
        result = state_of_safety(
            SafetyInputs(
                voltage_v=voltage_v,
                current_a=current_a,
                temperature_c=temperature_c,
                sot_c=eis.sot_c if eis else None,
                impedance_ratio=eis.impedance_ratio if eis else None,
                phase_shift_deg=eis.phase_shift_deg if eis else None,
                plating_detected=self.plating_detected,
            ),
            limits=self.limits,
            runaway=runaway,
        )
        new = np.asarray(runaway.warning & ~self.runaway)
        self.runaway = np.asarray(runaway.warning)
        return result, new

    # -------------------------------------------------------------- EIS (Pillar 1)
    def take_sweep(
        self,
        records: Sequence[EisRecord],
        *,
        params: EcmParameters,
        soc: FloatArray,
        temperature_c: FloatArray,
    ) -> EisView | None:
        """SoT and the impedance change per group from one sweep (cell_id = group).

        The change is against the first sweep, each compensated by what the parameter
        set expects at that sweep's temperature and SoC: |Z| and phase move a lot with
        temperature alone, which is not a safety signal.
        """
        if self.calibration is None or not records:
            return None
        f = self.calibration.frequency_hz
        sot = sot_from_eis(self.calibration, records)
        temperature = np.full(self.n, np.nan)
        phase = np.full(self.n, np.nan)
        temperature[sot.cell_id] = sot.temperature_c
        phase[sot.cell_id] = sot.phase_deg
        modulus = np.full(self.n, np.nan)
        for group in {r.cell_id for r in records}:
            points = sorted(
                (r for r in records if r.cell_id == group and r.status == "success"),
                key=lambda r: r.frequency_hz,
            )
            if len(points) >= 2:
                freqs = np.array([r.frequency_hz for r in points])
                mods = np.array([r.z_mod_ohm for r in points])
                modulus[group] = float(phase_at_frequency(freqs, mods, target_hz=f))
        model = EcmTwin(
            params, n_cells=self.n, init=CellInit(soc=soc, temperature_c=temperature_c)
        ).impedance(np.array([f]))[:, 0]
        modulus = modulus / np.abs(model)
        phase_rel = phase - np.degrees(np.angle(model))
        if self._reference is None:
            self._reference = (modulus.copy(), phase_rel.copy())
        ref_mod, ref_phase = self._reference
        self.eis = EisView(
            sot_c=temperature,
            phase_deg=phase,
            impedance_ratio=modulus / ref_mod,
            phase_shift_deg=phase_rel - ref_phase,
        )
        return self.eis

    # -------------------------------------------------------------- plating (Pillar 2)
    def charge_ended(self, time_s: float) -> None:
        if self.plating_config is not None:
            self._rest = RestWatch(started_s=time_s)

    def rest_interrupted(self) -> None:
        self._rest = None

    def rest_sample(self, time_s: float, voltage_v: FloatArray) -> PlatingResult | None:
        """Add a rest sample; the check's result once the rest is long enough (once)."""
        rest, config = self._rest, self.plating_config
        if rest is None or rest.done or config is None:
            return None
        rest.add(time_s, voltage_v)
        if rest.time_s[-1] < config.min_rest_s or len(rest.time_s) < 20:
            return None
        rest.done = True
        result = detect_plating(np.array(rest.time_s), np.array(rest.voltage_v), config=config)
        self.last_plating = result
        if result.evaluated:
            self.plating_detected = np.asarray(result.detected, dtype=bool) | self.plating_detected
        return result
