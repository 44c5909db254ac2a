"""The cloud estimators as scheduler jobs: where their data comes from, where results go.

* ``drt_ecm`` (on new EIS sweeps): each cell's sweep is fitted (lin-KK, DRT, R0 + up to 4
  RC pairs; :mod:`cloud.estimators.ecm_fit`), stored as an ``ecm_parameters`` row whose
  ``source`` names the sweep, and the battery's device gets an ``ecm_update`` command with
  the cells' mean parameters at the sweep's mean voltage (the command carries no cell
  ids). Commands are stored ``pending``; ``cloud.estimators.service.publish_pending``
  sends them.
* ``soh`` (weekly): SoH per cell from the last 30 days of telemetry (Coulomb counting
  between trusted SoC anchors, dQ/dV; :mod:`cloud.estimators.soh`), stored as
  ``sox_estimates`` rows per cell.
* ``sow`` (after each SoH): RW, RH, RUW and D1.2's qualitative state from the latest
  diagnostic-sizing parameters and the SoH history (:mod:`cloud.estimators.sow`), stored
  as a battery-level ``sox_estimates`` row; the RUL (years, with its band) goes into the
  run's outcome.

The estimators themselves are pure; these jobs are their only I/O.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import and_, exists, func, literal, or_, select
from sqlalchemy.orm import Session

from cloud.estimators.scheduler import JobResult
from cloud.models import (
    Cell,
    Command,
    Device,
    DiagnosticParameters,
    EcmParameterSet,
    EisRecord,
    EstimatorRun,
    Measurement,
    SoxEstimate,
)
from cloud.models import Module as BatteryModule

__all__ = ["DRT_SOURCE_PREFIX", "DrtEcmJob", "SohJob", "SowJob", "default_jobs"]

DRT_SOURCE_PREFIX = "eis-drt:"
"""``ecm_parameters.source`` of a fitted sweep: this prefix and the sweep's event id."""


@dataclass(frozen=True, slots=True)
class _Point:
    """An ``eis`` row as the fit wants it (the ``EisPoint`` protocol)."""

    frequency_hz: float
    z_re_ohm: float
    z_im_ohm: float
    status: str
    event_id: str
    cell_id: int


def _unfitted() -> Any:
    """EIS rows whose (cell, sweep) has no fitted parameter set yet."""
    fitted = exists().where(
        and_(
            EcmParameterSet.cell_id == EisRecord.cell_id,
            EcmParameterSet.source == literal(DRT_SOURCE_PREFIX) + EisRecord.event_id,
        )
    )
    return ~fitted


class DrtEcmJob:
    """EIS -> DRT -> ECM per cell, on new sweeps; an ECM update to the edge."""

    name = "drt_ecm"
    version = "1.0"
    interval_s: float | None = None
    after: str | None = None

    def targets(self, session: Session, now: dt.datetime) -> Sequence[int]:
        """Batteries with sweeps that arrived since the job last ran for them.

        A sweep that could not be fitted is not tried again on schedule (its run logged
        why); asking for the job on demand tries every unfitted sweep again.
        """
        last_run = (
            select(func.max(EstimatorRun.started_at))
            .where(
                EstimatorRun.job == self.name,
                EstimatorRun.battery_id == BatteryModule.battery_id,
            )
            .correlate(BatteryModule)
            .scalar_subquery()
        )
        rows = session.scalars(
            select(BatteryModule.battery_id)
            .distinct()
            .join(Cell, Cell.module_id == BatteryModule.id)
            .join(EisRecord, EisRecord.cell_id == Cell.id)
            .where(
                _unfitted(),
                BatteryModule.battery_id.is_not(None),
                or_(last_run.is_(None), EisRecord.added_at > last_run),
            )
        )
        return [int(b) for b in rows if b is not None]

    def run(self, session: Session, battery_id: int, now: dt.datetime) -> JobResult:
        from cloud.estimators.ecm_fit import fit_records
        from cloud.estimators.eis_files import SpectrumError

        rows = session.execute(
            select(EisRecord)
            .join(Cell, Cell.id == EisRecord.cell_id)
            .join(BatteryModule, BatteryModule.id == Cell.module_id)
            .where(BatteryModule.battery_id == battery_id, _unfitted())
            .order_by(EisRecord.cell_id, EisRecord.event_id, EisRecord.frequency)
        ).scalars()
        sweeps: dict[tuple[int, str], list[EisRecord]] = {}
        for row in rows:
            sweeps.setdefault((row.cell_id, row.event_id), []).append(row)
        if not sweeps:
            return JobResult(skipped="no new EIS sweeps")
        fits: list[dict[str, Any]] = []
        params: list[dict[str, float]] = []
        voltages: list[float] = []
        failed: dict[str, str] = {}
        for (cell_id, event_id), records in sweeps.items():
            points = [
                _Point(
                    frequency_hz=r.frequency,
                    z_re_ohm=r.z_re if r.z_re is not None else float("nan"),
                    z_im_ohm=r.z_im if r.z_im is not None else float("nan"),
                    status=r.status,
                    event_id=r.event_id,
                    cell_id=r.cell_id,
                )
                for r in records
            ]
            try:
                fit = fit_records(points)
            except (SpectrumError, ValueError) as error:
                failed[f"{event_id}/{cell_id}"] = str(error)
                continue
            update = fit.ecm_update_params()
            volts = [r.voltage for r in records if r.voltage is not None]
            voltage = float(np.mean(volts)) if volts else None
            session.add(
                EcmParameterSet(
                    battery_id=battery_id,
                    cell_id=cell_id,
                    voltage=voltage,
                    created_at=now,
                    source=DRT_SOURCE_PREFIX + event_id,
                    **update,
                )
            )
            params.append(update)
            if voltage is not None:
                voltages.append(voltage)
            fits.append(
                {
                    "cell_id": cell_id,
                    "event_id": event_id,
                    "n_rc": len(fit.pairs),
                    "relative_rms_residual": fit.relative_rms_residual,
                    "lin_kk_pass": fit.lin_kk.passed,
                    **update,
                }
            )
        command_id = self._command(session, battery_id, params, voltages, now)
        return JobResult(
            inputs={"sweeps": len(sweeps), "points": sum(len(r) for r in sweeps.values())},
            outcome={"fits": fits, "failed": failed, "command_id": command_id},
            skipped=None if fits else "no sweep could be fitted",
        )

    @staticmethod
    def _command(
        session: Session,
        battery_id: int,
        params: list[dict[str, float]],
        voltages: list[float],
        now: dt.datetime,
    ) -> int | None:
        device = session.scalar(select(Device).where(Device.battery_id == battery_id))
        if device is None or not params:
            return None
        n_rc = min(sum(1 for k in p if k.startswith("c")) for p in params)
        payload: dict[str, float] = {
            "voltage": float(np.mean(voltages)) if voltages else 0.0,
            "r0": float(np.mean([p["r0"] for p in params])),
        }
        for k in range(1, n_rc + 1):
            payload[f"r{k}"] = float(np.mean([p[f"r{k}"] for p in params]))
            payload[f"c{k}"] = float(np.mean([p[f"c{k}"] for p in params]))
        command = Command(device_id=device.id, kind="ecm_update", payload=payload, created_at=now)
        session.add(command)
        session.flush()
        return int(command.id)


def _cell_series(
    session: Session, battery_id: int, since: dt.datetime
) -> tuple[list[int], list[dt.datetime], dict[str, np.ndarray]] | None:
    """The battery's measurements since ``since`` as (time, cell) arrays; only samples
    that every cell reported (one telemetry message each)."""
    cells = list(
        session.scalars(
            select(Cell.id)
            .join(BatteryModule, Cell.module_id == BatteryModule.id)
            .where(BatteryModule.battery_id == battery_id)
            .order_by(Cell.position, Cell.id)
        )
    )
    if not cells:
        return None
    rows = session.execute(
        select(
            Measurement.measured_at,
            Measurement.cell_id,
            Measurement.current,
            Measurement.voltage,
            Measurement.soc,
            Measurement.temperature,
        )
        .where(Measurement.cell_id.in_(cells), Measurement.measured_at >= since)
        .order_by(Measurement.measured_at)
    ).all()
    column = {cell: k for k, cell in enumerate(cells)}
    samples: dict[dt.datetime, np.ndarray] = {}
    for at, cell, current, voltage, soc, temperature in rows:
        values = samples.setdefault(at, np.full((4, len(cells)), np.nan))
        values[:, column[cell]] = (
            np.nan if current is None else current,
            np.nan if voltage is None else voltage,
            np.nan if soc is None else soc,
            np.nan if temperature is None else temperature,
        )
    times = [t for t, v in samples.items() if np.all(np.isfinite(v[:3]))]
    if len(times) < 3:
        return None
    stacked = np.stack([samples[t] for t in times])  # (n, 4, cells)
    return (
        cells,
        times,
        {
            "current_a": stacked[:, 0, :],
            "voltage_v": stacked[:, 1, :],
            "soc": stacked[:, 2, :],
            "temperature_c": stacked[:, 3, :],
        },
    )


class SohJob:
    """SoH per cell from the last weeks of telemetry (Coulomb counting + dQ/dV), weekly."""

    name = "soh"
    version = "1.0"
    interval_s: float | None = 7 * 86_400.0
    after: str | None = None
    window_s = 30 * 86_400.0

    def targets(self, session: Session, now: dt.datetime) -> Sequence[int]:
        since = now - dt.timedelta(seconds=self.window_s)
        rows = session.scalars(
            select(BatteryModule.battery_id)
            .distinct()
            .join(Cell, Cell.module_id == BatteryModule.id)
            .join(Measurement, Measurement.cell_id == Cell.id)
            .where(Measurement.measured_at >= since, BatteryModule.battery_id.is_not(None))
        )
        return [int(b) for b in rows if b is not None]

    def run(self, session: Session, battery_id: int, now: dt.datetime) -> JobResult:
        from cloud.estimators.soh import estimate_soh

        series = _cell_series(session, battery_id, now - dt.timedelta(seconds=self.window_s))
        if series is None:
            return JobResult(skipped="fewer than 3 complete telemetry samples in the window")
        cells, times, data = series
        nominal = session.scalar(select(func.max(Cell.nominal_capacity)).where(Cell.id.in_(cells)))
        if not nominal:
            return JobResult(skipped="the cells have no nominal_capacity (Ah) in the passport")
        t0 = times[0]
        time_s = np.array([(t - t0).total_seconds() for t in times])
        temperature = data["temperature_c"]
        result = estimate_soh(
            time_s=time_s,
            current_a=data["current_a"],
            voltage_v=data["voltage_v"],
            soc=data["soc"],
            nominal_capacity_ah=float(nominal),
            temperature_c=temperature if np.all(np.isfinite(temperature)) else None,
        )
        soh = np.atleast_1d(result.soh)
        stored = 0
        for k, cell_id in enumerate(cells):
            if np.isfinite(soh[k]):
                session.add(
                    SoxEstimate(
                        battery_id=battery_id,
                        cell_id=cell_id,
                        estimated_at=now,
                        soh=float(soh[k]),
                        algorithm="cloud-soh (coulomb counting + dQ/dV)",
                        algorithm_version=self.version,
                    )
                )
                stored += 1
        inputs = {"samples": len(times), "cells": len(cells), "from": times[0], "to": times[-1]}
        outcome: dict[str, Any] = {
            "soh": soh,
            "soh_sigma": np.atleast_1d(result.soh_sigma),
            "n_spans": np.atleast_1d(result.n_spans),
            "stored": stored,
        }
        limits = self._power_limits(session, battery_id, cells, float(nominal), result)
        if limits is not None:
            outcome["power_limits"] = limits
        return JobResult(
            inputs=inputs,
            outcome=outcome,
            skipped=None if stored else "no charge/discharge span long enough for Coulomb counting",
        )

    @staticmethod
    def _power_limits(
        session: Session, battery_id: int, cells: list[int], nominal_ah: float, result: Any
    ) -> dict[str, Any] | None:
        """New operating limits per cell from the updated capacity (D1.2), when the
        diagnostic-sizing record gives the rated currents (I_ch_max, I_dch_max)."""
        from cloud.estimators.soh import RatedLimits, power_limits

        diagnostics = session.scalars(
            select(DiagnosticParameters)
            .where(DiagnosticParameters.battery_id == battery_id)
            .order_by(DiagnosticParameters.recorded_at.desc())
            .limit(1)
        ).first()
        if diagnostics is None or not diagnostics.icha_max or not diagnostics.idch_max:
            return None
        voltage = session.scalar(select(func.avg(Cell.nominal_voltage)).where(Cell.id.in_(cells)))
        capacity = np.atleast_1d(result.capacity_ah)
        if not np.all(np.isfinite(capacity)):
            return None
        limits = power_limits(
            capacity,
            rated=RatedLimits(
                nominal_capacity_ah=nominal_ah,
                max_charge_current_a=float(diagnostics.icha_max),
                max_discharge_current_a=float(diagnostics.idch_max),
                nominal_voltage_v=float(voltage) if voltage else 3.6,
            ),
            capacity_sigma_ah=np.atleast_1d(result.capacity_sigma_ah),
        )
        return {
            "charge_current_a": limits.charge_current_a,
            "discharge_current_a": limits.discharge_current_a,
            "charge_power_w": limits.charge_power_w,
            "discharge_power_w": limits.discharge_power_w,
        }


class SowJob:
    """SoW (RW, RH, RUW, D1.2's qualitative state) and RUL per battery, after each SoH."""

    name = "sow"
    version = "1.0"
    interval_s: float | None = None
    after: str | None = "soh"

    def targets(self, session: Session, now: dt.datetime) -> Sequence[int]:
        rows = session.scalars(select(DiagnosticParameters.battery_id).distinct())
        return [int(b) for b in rows]

    def run(self, session: Session, battery_id: int, now: dt.datetime) -> JobResult:
        from cloud.estimators.rul import remaining_useful_life
        from cloud.estimators.sow import SohHistory, sow

        diagnostics = session.scalars(
            select(DiagnosticParameters)
            .where(DiagnosticParameters.battery_id == battery_id)
            .order_by(DiagnosticParameters.recorded_at.desc())
            .limit(1)
        ).first()
        if diagnostics is None:
            return JobResult(skipped="no diagnostic-sizing parameters for this battery")
        history = session.execute(
            select(SoxEstimate.estimated_at, func.avg(SoxEstimate.soh))
            .where(
                SoxEstimate.battery_id == battery_id,
                SoxEstimate.soh.is_not(None),
                SoxEstimate.cell_id.is_not(None),
            )
            .group_by(SoxEstimate.estimated_at)
            .order_by(SoxEstimate.estimated_at)
        ).all()
        if not history:
            return JobResult(skipped="no SoH estimates yet")
        times = tuple(_aware(t) for t, _ in history)
        soh = np.array([float(v) for _, v in history])
        result = sow(diagnostics, SohHistory(time=times, soh=soh), now=now)
        years = np.array([(t - times[0]).total_seconds() for t in times]) / (365.25 * 86_400.0)
        soh_eol = diagnostics.soh_at_eol
        rul = remaining_useful_life(years, soh, soh_eol=soh_eol) if soh_eol is not None else None
        session.add(
            SoxEstimate(
                battery_id=battery_id,
                estimated_at=now,
                sow=str(result.state)[:100],
                rw=_finite(result.rw),
                rh=_finite(result.rh),
                ruw=_finite(result.ruw),
                algorithm="cloud-sow (D1.2 table)",
                algorithm_version=self.version,
            )
        )
        outcome: dict[str, Any] = {
            "state": str(result.state),
            "message": result.message,
            "rw": result.rw,
            "rh": result.rh,
            "ruw": result.ruw,
        }
        if rul is not None:
            outcome["rul_years"] = {
                "status": str(rul.status),
                "rul": rul.rul,
                "low": rul.rul_low,
                "high": rul.rul_high,
            }
        return JobResult(
            inputs={"soh_estimates": len(history), "diagnostics_at": diagnostics.recorded_at},
            outcome=outcome,
        )


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def default_jobs() -> list[Any]:
    """The estimators the service schedules."""
    return [DrtEcmJob(), SohJob(), SowJob()]
