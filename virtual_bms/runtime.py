"""A virtual edge BMS: reads a sensor source, estimates, protects, balances, reports.

:class:`VirtualBms` is the BMS of D1.2 for either pillar on top of any
:class:`~virtual_bms.sources.SensorSource`. Each cycle (:meth:`VirtualBms.step`) it

1. estimates SoC per series group (Pillar 1: EKF on the parameter set's tables as the
   cloud's last ECM corrects them; Pillar 2: the three-step ECM + EKF + combination),
2. moves the mode state machine and its protection (a fault opens the contactor and
   raises an alarm event),
3. runs what is due: SoH after a completed charge, SoF charge-current limit, balancing,
   the plating check after a rest (Pillar 2); EIS sweeps with SoT and SoS (Pillar 1),
4. returns the :class:`~virtual_bms.sources.Actuation` for the source, and
5. queues telemetry, EIS records and events in its :class:`~virtual_bms.outbox.Outbox`
   for the uplink.

Commands from the cloud (:meth:`VirtualBms.handle_command`) take effect in the next
cycle: an ECM update corrects the tables the EKF's model is read from (or, if its number of
RC pairs differs from the parameter set's, replaces the model), an EIS request runs a
sweep, a reporting-interval change retimes telemetry.

Example::

    bms = VirtualBms(BmsConfig(device="bms-7", pillar=2), source=source,
                     parameters=load_parameter_set("nmc_okane2022"), outbox=outbox)
    for _ in range(3600):
        source.advance(1.0)
        source.apply(bms.step(source.read()))
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from cloud.mqtt.contract import (
    AckMessage,
    Channel,
    CommandMessage,
    EcmUpdateCommand,
    EisRequestCommand,
    ReportingIntervalCommand,
)
from twin.eis import EisConfig
from twin.models.base import FloatArray
from twin.models.ecm_params import EcmParameters
from virtual_bms.config import BmsConfig
from virtual_bms.estimators.balancing import BalancingConfig, BalancingState, balancing_step
from virtual_bms.estimators.ecm_model import (
    EcmCorrection,
    EcmModel,
    EcmModelError,
    EcmUpdate,
    apply_ecm_correction,
    apply_ecm_update,
    ecm_correction,
    ecm_model_from_parameters,
    ecm_update_soc,
)
from virtual_bms.estimators.plating import PlatingConfig
from virtual_bms.estimators.soc import (
    EkfNoise,
    EkfState,
    ThreeStepSocState,
    ekf_step,
    initial_ekf_state,
    three_step_soc,
)
from virtual_bms.estimators.sof import SofTable, allowed_charge_current, default_sof_table
from virtual_bms.estimators.soh import SohConfig, SohState, soh_accumulate, soh_after_charge
from virtual_bms.estimators.sos import SafetyLimits
from virtual_bms.messages import eis_message, event_message, telemetry_message, timestamp
from virtual_bms.modes import Mode, ModeState, ProtectionLimits, next_mode
from virtual_bms.outbox import Outbox
from virtual_bms.safety import SafetyMonitor, sot_calibration_for
from virtual_bms.sources import (
    Actuation,
    EisCapable,
    SensorFrame,
    SensorSource,
    SimulatedSource,
)

__all__ = ["BmsCounters", "BmsTrace", "VirtualBms"]

_log = logging.getLogger(__name__)
_BALANCING_STOP_V = 0.028
_VOLTAGE_MARGIN_V = 0.01  # the current limits aim this far inside the operating window


@dataclass
class BmsCounters:
    cycles: int = 0
    telemetry: int = 0
    eis_sweeps: int = 0
    events: int = 0
    faults: int = 0
    soh_estimates: int = 0
    ecm_updates: int = 0


@dataclass
class BmsTrace:
    """Estimates next to the source's truth, one row per cycle (for scoring)."""

    time_s: list[float] = field(default_factory=list)
    soc: list[FloatArray] = field(default_factory=list)
    soc_true: list[FloatArray] = field(default_factory=list)
    voltage_v: list[FloatArray] = field(default_factory=list)
    mode: list[str] = field(default_factory=list)

    def soc_rmse_pct(self, *, after_s: float = 0.0) -> float:
        """RMS SoC error over every group and cycle from ``after_s`` on, in points."""
        keep = [k for k, t in enumerate(self.time_s) if t >= after_s]
        if not keep:
            return float("nan")
        err = np.array([self.soc[k] - self.soc_true[k] for k in keep])
        return float(np.sqrt(np.mean(err**2)) * 100.0)


class VirtualBms:
    """One BMS on one source; see the module docstring.

    Args:
        config: Identity, rates and windows.
        source: The pack (a twin or a CAN gateway).
        parameters: The cell parameter set the BMS believes in (its datasheet model);
            groups of ``cells_per_group`` parallel cells are treated as one big cell.
        outbox: Where uplink messages go; ``None`` for an offline BMS.
        cells_per_group: Cells in parallel per series group.
        sof: Pillar 2's charge-current table.
        balancing: Pillar 2's balancing thresholds.
        soh: SoH estimator settings (its interval from ``config.soh_interval_s``).
        noise: The EKF's noise model.
        trace: Record estimates against the source's truth (simulated sources).
    """

    def __init__(
        self,
        config: BmsConfig,
        *,
        source: SensorSource,
        parameters: EcmParameters,
        outbox: Outbox | None = None,
        cells_per_group: int = 1,
        sof: SofTable | None = None,
        balancing: BalancingConfig | None = None,
        soh: SohConfig | None = None,
        noise: EkfNoise | None = None,
        trace: bool = False,
    ) -> None:
        self.config = config
        self.source = source
        self.outbox = outbox
        k = cells_per_group
        self.parameters = (
            parameters.scaled_to(parameters.nominal_capacity_ah * k) if k > 1 else parameters
        )
        self.n = source.n_groups
        self.limits = ProtectionLimits.for_cells(
            self.parameters.limits, max_current_a=config.max_current_a
        )
        self.sof = sof or default_sof_table()
        # D1.2's 30 mV is the spread to end with; the BMS's view of the spread (voltages
        # under its own current, model errors) ends about 1-2 mV optimistic after the cells
        # relax (benches.bms), so it stops a little earlier by default.
        self.balancing_config = balancing or BalancingConfig(stop_spread_v=_BALANCING_STOP_V)
        self.soh_config = soh or SohConfig(interval_s=config.soh_interval_s)
        self.noise = noise or EkfNoise()
        self.counters = BmsCounters()
        self.trace = BmsTrace() if trace else None
        self.reporting_interval_s = config.reporting_interval_s

        self.safety = SafetyMonitor(
            self.n,
            limits=SafetyLimits.from_parameters(self.parameters),
            calibration=sot_calibration_for(self.parameters) if config.pillar == 1 else None,
            plating=PlatingConfig(min_rest_s=config.plating_rest_s) if config.pillar == 2 else None,
        )
        self.mode = ModeState()
        self.soh_state = SohState.initial(
            nominal_capacity_ah=self.parameters.nominal_capacity_ah,
            soh=config.assumed_soh,
            n_cells=self.n,
        )
        self.balancing = BalancingState()
        self.model: EcmModel | None = None
        self.cloud_model = False  # True once the cloud has sent an ECM (Pillar 1 keeps it)
        # the cloud's ECM as factors on the tables; None with a replaced (fixed) model
        self.cloud_correction: EcmCorrection | None = None
        self.soc: FloatArray = np.full(self.n, np.nan)
        self.equivalent_cycles: FloatArray = np.zeros(self.n)
        self.sos: FloatArray = np.ones(self.n)
        self.sot_c: FloatArray | None = None
        self.phase_deg: FloatArray | None = None
        self.charge_limit_a: float | None = None
        self._ekf: EkfState | None = None
        self._three_step: ThreeStepSocState | None = None
        self._balancing_a: FloatArray = np.zeros(self.n)
        self._charge_as: FloatArray = np.zeros(self.n)  # current integral since the report
        self._charge_s = 0.0
        self._balancing_requested = False
        self._eis_request: EisConfig | None = None
        self._eis_groups: list[int] | None = None
        self._last_time_s: float | None = None
        self._next_report_s = -np.inf
        self._next_eis_s = config.eis.interval_s or np.inf
        self._next_balancing_s = config.balancing_interval_s or np.inf
        self._frame: SensorFrame | None = None

    # ------------------------------------------------------------------ estimation
    def _build_model(
        self, frame: SensorFrame, soc: FloatArray | float, *, corrected: bool = True
    ) -> EcmModel:
        """The tables at ``frame``'s temperatures and ``soc``, with the cloud's correction."""
        model = ecm_model_from_parameters(
            self.parameters,
            n_cells=self.n,
            temperature_c=frame.temperature_c,
            soc=soc,
            soh=self.soh_state.soh,
            resistance_factor=self.config.assumed_resistance_factor,
        )
        if corrected and self.cloud_correction is not None:
            model = apply_ecm_correction(model, self.cloud_correction)
        return model

    def _estimate_soc(self, frame: SensorFrame, current_a: FloatArray, dt_s: float) -> None:
        if self.model is None:  # first frame: start from the OCV of what is measured
            self.model = self._build_model(frame, 0.5)
            soc0 = self.model.soc_from_ocv(frame.voltage_v)
            self.model = self._build_model(frame, soc0)
            n_rc = self.model.n_rc
            self._ekf = initial_ekf_state(soc0, n_rc=n_rc)
            self._three_step = ThreeStepSocState.initial(soc0, n_rc=n_rc)
            self.soc = np.asarray(soc0, dtype=float)
            return
        if not self.cloud_model or self.cloud_correction is not None:
            self.model = self._build_model(frame, self.soc)
        if self.config.pillar == 1:
            assert self._ekf is not None
            self._ekf = ekf_step(
                self._ekf,
                self.model,
                current_a=current_a,
                voltage_v=frame.voltage_v,
                dt_s=dt_s,
                noise=self.noise,
            )
            self.soc = np.clip(self._ekf.soc, 0.0, 1.0)
        else:
            assert self._three_step is not None
            self._three_step, estimate = three_step_soc(
                self._three_step,
                self.model,
                current_a=current_a,
                voltage_v=frame.voltage_v,
                dt_s=dt_s,
                noise=self.noise,
            )
            self.soc = estimate.soc

    # ------------------------------------------------------------------ the cycle
    def step(self, frame: SensorFrame) -> Actuation:
        """One BMS cycle on ``frame``; returns what the source should do next."""
        cfg = self.config
        self._frame = frame
        dt_s = (
            cfg.sample_period_s if self._last_time_s is None else frame.time_s - self._last_time_s
        )
        self._last_time_s = frame.time_s
        current = frame.group_current_a + self._balancing_a  # the cells' own current
        if dt_s > 0:  # the frame's current was held over the step that ended now
            self._charge_as = self._charge_as + frame.group_current_a * dt_s
            self._charge_s += dt_s
        first = self.model is None
        self._estimate_soc(frame, current, max(dt_s, 1e-6))
        before = self.mode
        self.mode, _ = next_mode(before, frame, self.limits)
        self._report_mode_change(before, frame)
        charge_ended = self._charge_ended(before)
        if not first and dt_s > 0:
            self._accumulate(frame, current, dt_s, charging_ended=charge_ended)
        self.safety.observe(frame.time_s, frame.temperature_c)
        if cfg.pillar == 2:
            self._watch_rest(frame, charge_ended=charge_ended)
        charge_limit, discharge_limit = self._current_limits(frame)
        balancing = self._balance(frame, dt_s) if cfg.pillar == 2 else None
        if cfg.pillar == 1:
            self._maybe_eis(frame)
        self._maybe_report(frame)
        self.counters.cycles += 1
        if self.trace is not None and isinstance(self.source, SimulatedSource):
            self.trace.time_s.append(frame.time_s)
            self.trace.soc.append(self.soc.copy())
            self.trace.soc_true.append(self.source.truth().soc)
            self.trace.voltage_v.append(frame.voltage_v.copy())
            self.trace.mode.append(self.mode.mode.value)
        return Actuation(
            contactor_closed=self.mode.mode is not Mode.fault,
            balancing_current_a=balancing,
            charge_limit_a=charge_limit,
            discharge_limit_a=discharge_limit,
        )

    def _charge_ended(self, before: ModeState) -> bool:
        return before.mode is Mode.charging and self.mode.mode is not Mode.charging

    def _accumulate(
        self, frame: SensorFrame, current: FloatArray, dt_s: float, *, charging_ended: bool
    ) -> None:
        capacity = self.soh_state.capacity_ah
        self.equivalent_cycles = self.equivalent_cycles + np.abs(current) * dt_s / 3600.0 / (
            2.0 * capacity
        )
        self.soh_state = soh_accumulate(
            self.soh_state,
            current_a=current,
            soc=self.soc,
            dt_s=dt_s,
            config=self.soh_config,
            resting=np.full(self.n, self.mode.mode is Mode.resting),
        )
        if charging_ended:
            self.soh_state, estimate = soh_after_charge(
                self.soh_state, soc=self.soc, time_s=frame.time_s, config=self.soh_config
            )
            if estimate is not None and np.any(estimate.trusted):
                self.counters.soh_estimates += 1
                self._event(
                    frame,
                    "soh_estimated",
                    "info",
                    f"SoH {float(np.mean(estimate.soh)):.3f} (mean over "
                    f"{int(np.sum(estimate.trusted))} trusted groups)",
                )

    def _current_limits(self, frame: SensorFrame) -> tuple[float | None, float | None]:
        low, high = self.config.soc_window
        charge: float | None = None
        discharge: float | None = None
        if self.config.pillar == 2:
            limit = allowed_charge_current(
                self.sof,
                temperature_c=frame.temperature_c,
                soc=self.soc,
                capacity_ah=self.soh_state.capacity_ah,
                parallel_cells=self.source.n_strings,
            )
            charge = limit.pack_a
        if np.nanmax(self.soc) >= high:
            charge = 0.0
        if np.nanmin(self.soc) <= low:
            discharge = 0.0
        by_voltage = self._voltage_limits(frame)
        charge = by_voltage[0] if charge is None else min(charge, by_voltage[0])
        discharge = by_voltage[1] if discharge is None else min(discharge, by_voltage[1])
        self.charge_limit_a = charge
        return charge, discharge

    def _voltage_limits(self, frame: SensorFrame) -> tuple[float, float]:
        """Most pack current that keeps every group off its voltage limits (the CV phase).

        From the BMS's model: a group at ``v`` carrying ``i`` (positive = discharge) reaches
        ``v_max`` at a charge current ``(v_max - v) / R - i``, with ``R`` the resistance a
        current step shows within one cycle; re-evaluated every cycle, this tapers the
        current as the slower RC voltages build up, as a constant-voltage phase does.
        """
        model = self.model
        assert model is not None
        margin_v = _VOLTAGE_MARGIN_V
        # R0 plus the RC pairs that settle within a cycle: what a current step shows at once
        fast = model.tau_s < self.config.sample_period_s
        r = np.maximum(model.r0_ohm + np.sum(model.rc_resistance_ohm * fast, axis=0), 1e-6)
        i = frame.group_current_a  # signed: the drop of the present current comes off first
        v = frame.voltage_v
        window = self.parameters.limits  # the operating window, inside the protection trips
        charge = (window.max_voltage_v - margin_v - v) / r - i
        discharge = (v - window.min_voltage_v - margin_v) / r + i
        strings = self.source.n_strings
        return (
            max(float(np.min(charge)), 0.0) * strings,
            max(float(np.min(discharge)), 0.0) * strings,
        )

    def _balance(self, frame: SensorFrame, dt_s: float) -> FloatArray:
        due = frame.time_s >= self._next_balancing_s
        request = self._balancing_requested or due
        if due and self.config.balancing_interval_s:
            self._next_balancing_s = frame.time_s + self.config.balancing_interval_s
        was_active = self.balancing.active
        # Judge the spread on voltages without the balancing current's own drop (R0 and
        # the settled RC pairs, as balancing runs for hours) and on the OCV of the SoC
        # estimate: measured under its own current, balancing would stop at 30 mV and the
        # cells would relax apart again.
        model = self.model
        assert model is not None
        r_settled = model.r0_ohm + np.sum(model.rc_resistance_ohm, axis=0)
        compensated = frame.voltage_v + self._balancing_a * r_settled
        from_soc = model.ocv_v(self.soc)  # the OCV the SoC estimate implies
        # the more pessimistic of the two views decides when the spread is small enough
        judged = compensated if np.ptp(compensated) >= np.ptp(from_soc) else from_soc
        self.balancing, currents = balancing_step(
            self.balancing,
            voltage_v=judged,
            request=request and self.mode.mode is not Mode.fault,
            dt_s=max(dt_s, 0.0),
            config=self.balancing_config,
            abort=self.mode.mode is Mode.fault,
        )
        self._balancing_requested = False
        if was_active != self.balancing.active:
            what = "started" if self.balancing.active else f"stopped ({self.balancing.stop_reason})"
            self._event(
                frame,
                "balancing",
                "info",
                f"balancing {what} at {self.balancing.spread_v * 1000:.0f} mV spread",
            )
        self._balancing_a = np.asarray(currents, dtype=float)
        return self._balancing_a

    # ------------------------------------------------------------------ EIS (Pillar 1)
    def _maybe_eis(self, frame: SensorFrame) -> None:
        due = frame.time_s >= self._next_eis_s
        if not due and self._eis_request is None:
            return
        if due and self.config.eis.interval_s:
            self._next_eis_s = frame.time_s + self.config.eis.interval_s
        eis = self.config.eis
        config = self._eis_request or EisConfig(
            f_min_hz=eis.f_min_hz, f_max_hz=eis.f_max_hz, n_points=eis.points
        )
        groups, self._eis_request, self._eis_groups = self._eis_groups, None, None
        self.measure_eis(frame, config=config, groups=groups)

    def measure_eis(
        self, frame: SensorFrame, *, config: EisConfig, groups: list[int] | None = None
    ) -> int:
        """Run a sweep on the source and queue its records; returns how many."""
        if not isinstance(self.source, EisCapable):
            raise RuntimeError("this sensor source cannot measure impedance")
        event_id = f"{self.config.device}-{self.counters.eis_sweeps}"
        records = self.source.measure_eis(event_id=event_id, groups=groups, config=config)
        self.counters.eis_sweeps += 1
        view = self.safety.take_sweep(
            records, params=self.parameters, soc=self.soc, temperature_c=frame.temperature_c
        )
        if view is not None:
            self.sot_c, self.phase_deg = view.sot_c, view.phase_deg
            self._update_sos(frame)
        if self.outbox is not None and records:
            ts = timestamp(frame.time_s)
            self.outbox.put_sequenced(
                Channel.eis.value,
                lambda seq: eis_message(seq=seq, ts=ts, records=records).model_dump_json().encode(),
            )
        return len(records)

    # ------------------------------------------------------------------ uplink
    def _watch_rest(self, frame: SensorFrame, *, charge_ended: bool) -> None:
        """Pillar 2's plating check: the rest after a charge, once it is long enough."""
        if charge_ended:
            self.safety.charge_ended(frame.time_s)
        if self.mode.mode is not Mode.resting:
            self.safety.rest_interrupted()
            return
        result = self.safety.rest_sample(frame.time_s, frame.voltage_v)
        if result is not None and result.evaluated and bool(np.any(result.detected)):
            cells = [int(i) for i in np.flatnonzero(result.detected)]
            self._event(
                frame,
                "lithium_plating",
                "alarm",
                f"dV/dt relaxation signature after the charge (score up to "
                f"{float(np.max(result.score)):.3f}); SoS capped",
                cells,
            )

    def _update_sos(self, frame: SensorFrame) -> None:
        result, new_runaway = self.safety.evaluate(
            voltage_v=frame.voltage_v,
            current_a=frame.group_current_a,
            temperature_c=frame.temperature_c,
        )
        self.sos = result.sos
        if np.any(new_runaway):
            self._event(
                frame,
                "thermal_runaway_warning",
                "alarm",
                "heating, internal temperature and impedance point to thermal runaway",
                [int(i) for i in np.flatnonzero(new_runaway)],
            )

    def _maybe_report(self, frame: SensorFrame) -> None:
        if frame.time_s < self._next_report_s:
            return
        self._next_report_s = frame.time_s + self.reporting_interval_s
        self._update_sos(frame)
        if self.outbox is None:
            return
        # the mean current since the last report, so that the cloud's Coulomb counting
        # integrates the same charge whatever the reporting interval (a snapshot every few
        # minutes of a household's spiky load is biased)
        group_current = (
            self._charge_as / self._charge_s if self._charge_s > 0 else frame.group_current_a
        )
        self._charge_as = np.zeros(self.n)
        self._charge_s = 0.0
        if self.config.pillar == 1:
            quantities = {
                "voltage": frame.voltage_v,
                "temperature": frame.temperature_c,
                "current": group_current,
                "sot": self.sot_c,
                "phase": self.phase_deg,
                "soc": self.soc,
                "sos": self.sos,
            }
        else:
            quantities = {
                "voltage": frame.voltage_v,
                "temperature": frame.temperature_c,
                "current": group_current,
                "soc": self.soc,
                "soh": self.soh_state.soh,
                "sos": self.sos,
                "equivalent_cycles": self.equivalent_cycles,
            }
        ts = timestamp(frame.time_s)
        pillar = self.config.pillar
        self.outbox.put_sequenced(
            Channel.telemetry.value,
            lambda seq: (
                telemetry_message(seq=seq, ts=ts, pillar=pillar, quantities=quantities)
                .model_dump_json()
                .encode()
            ),
        )
        self.counters.telemetry += 1

    def _event(
        self,
        frame: SensorFrame,
        kind: str,
        severity: str,
        detail: str,
        cells: list[int] | None = None,
    ) -> None:
        self.counters.events += 1
        log = _log.warning if severity == "alarm" else _log.info
        log("%s: %s %s", self.config.device, kind, detail)
        if self.outbox is None:
            return
        message = event_message(
            ts=timestamp(frame.time_s), kind=kind, severity=severity, detail=detail, cell_ids=cells
        )
        self.outbox.put(Channel.events.value, message.model_dump_json().encode())

    def _report_mode_change(self, before: ModeState, frame: SensorFrame) -> None:
        after = self.mode
        if after.mode is Mode.fault and before.mode is not Mode.fault:
            self.counters.faults += 1
            for violation in after.faults:
                self._event(
                    frame,
                    violation.kind,
                    "alarm",
                    f"contactor opened: {violation.describe()}",
                    list(violation.channels),
                )
        elif before.mode is Mode.fault and after.mode is not Mode.fault:
            self._event(frame, "fault_cleared", "info", "readings back within limits")

    # ------------------------------------------------------------------ commands
    async def handle_command(self, command: CommandMessage) -> AckMessage:
        """Carry out a cloud command; the answer is the acknowledgement to send."""
        try:
            detail = self._apply_command(command)
        except (EcmModelError, RuntimeError, ValueError) as error:
            return AckMessage(command_id=command.command_id, status="rejected", detail=str(error))
        return AckMessage(command_id=command.command_id, status="ok", detail=detail)

    def _apply_command(self, command: CommandMessage) -> str:
        if isinstance(command, EcmUpdateCommand):
            return self._take_ecm_update(command.params)
        if isinstance(command, EisRequestCommand):
            if not isinstance(self.source, EisCapable):
                raise RuntimeError("this sensor source cannot measure impedance")
            p = command.params
            self._eis_request = EisConfig(
                f_min_hz=p.f_min_hz, f_max_hz=p.f_max_hz, n_points=p.points
            )
            self._eis_groups = list(p.cells) if p.cells is not None else None
            if self.config.pillar == 2 and self._frame is not None:
                self._maybe_eis(self._frame)  # Pillar 2 has no scheduled sweeps to ride on
            return "sweep scheduled for the next cycle"
        if isinstance(command, ReportingIntervalCommand):
            self.reporting_interval_s = command.params.interval_s
            self._next_report_s = min(
                self._next_report_s, (self._last_time_s or 0.0) + command.params.interval_s
            )
            return f"telemetry every {command.params.interval_s:g} s"
        raise ValueError(f"unknown command kind {command.kind!r}")  # pragma: no cover

    def _take_ecm_update(self, update: EcmUpdate) -> str:
        """The cloud's ECM as a correction of the tables; a replacement if it cannot be.

        The factors compare the fit with the tables at the fit's SoC (its ``voltage`` through
        the OCV) and at the cell temperatures of the latest frame: the update names neither
        its sweep nor the temperature then, so the present temperature stands in for it (a
        pack that warmed or cooled since the sweep gets factors off by the tables'
        temperature sensitivity until the next update).
        """
        frame = self._frame
        if self.model is None or frame is None:
            raise RuntimeError("no estimate yet: the BMS has not read the pack")
        table_now = self._build_model(frame, self.soc, corrected=False)
        fitted_at_soc = ecm_update_soc(table_now, update)
        correction = ecm_correction(
            self._build_model(frame, fitted_at_soc, corrected=False), update
        )
        if correction is None:
            self.model = apply_ecm_update(self.model, update)
            self.cloud_correction = None
            detail = (
                f"the cloud fitted {self.model.n_rc} RC pairs where parameter set "
                f"{self.parameters.name!r} has {table_now.n_rc}: the cloud's ECM replaces the "
                "tables from the next cycle, fixed at its operating point (no SoC or "
                "temperature dependence)"
            )
            _log.warning("%s: ECM update taken as a replacement: %s", self.config.device, detail)
        else:
            self.cloud_correction = correction
            self.model = apply_ecm_correction(table_now, correction)
            detail = (
                f"ECM correction from the cloud in use from the next cycle: {correction.describe()}"
            )
            _log.info("%s: %s", self.config.device, detail)
        self.cloud_model = True
        self.counters.ecm_updates += 1
        return detail

    def request_balancing(self) -> None:
        """Ask for balancing at the next cycle (on demand, D1.2)."""
        self._balancing_requested = True

    # ------------------------------------------------------------------ running
    async def run(
        self,
        *,
        duration_s: float,
        speed: float | None = None,
    ) -> None:
        """Cycle for ``duration_s`` of source time.

        A simulated source is advanced by ``sample_period_s`` each cycle; ``speed``
        paces that to the wall clock (1 = real time, 60 = a minute per second; ``None`` =
        as fast as possible, yielding to the event loop every cycle so the uplink runs).
        """
        period = self.config.sample_period_s
        simulated = isinstance(self.source, SimulatedSource)
        start_wall = time.monotonic()
        elapsed = 0.0
        while elapsed < duration_s:
            if simulated:
                assert isinstance(self.source, SimulatedSource)
                self.source.advance(period)
            actuation = self.step(self.source.read())
            self.source.apply(actuation)
            elapsed += period
            if speed is not None:
                delay = start_wall + elapsed / speed - time.monotonic()
                await asyncio.sleep(max(0.0, delay))
            else:
                await asyncio.sleep(0)
