"""The demo's summary: KPIs, estimator accuracy, the closed loop, alarms and messages.

Built from what the twins and BMSs logged and what the cloud stored; a plain JSON-able
dict (``summary.json``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from demo.config import DemoConfig, SiteConfig
from demo.records import CloudRecords
from demo.scoring import ecm_parameter_error, message_tally, soc_rmse_pct, soh_error, soh_trend
from demo.sites import DemoBms, SiteAccount

__all__ = ["SiteRun", "build_summary"]


@dataclass
class SiteRun:
    """One site after the run: its config, BMS (with twin and logs) and cloud rows."""

    site: SiteConfig
    bms: DemoBms
    account: SiteAccount
    records: CloudRecords
    sent: int
    """Sequenced messages (telemetry, EIS) the BMS put in its outbox."""
    online: dict[str, Any]
    """``run_online``'s summary."""


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def _truth_soh(run: SiteRun) -> tuple[np.ndarray, np.ndarray]:
    log = run.bms.log
    return np.asarray(log.truth_time_s), np.asarray(log.truth_capacity_ah) / run.site.capacity_ah


def _kpis(run: SiteRun, *, duration_s: float) -> dict[str, Any]:
    bms, log = run.bms, run.bms.log
    _, truth = _truth_soh(run)
    ageing = bms.twin.pack.cells.ageing_state
    sow = run.records.sow
    soh = soh_trend(run.records.soh)
    return {
        "energy_discharged_kwh": _r(log.energy_discharged_wh / 1000.0),
        "energy_charged_kwh": _r(log.energy_charged_wh / 1000.0),
        "equivalent_full_cycles": _r(float(np.mean(bms.equivalent_cycles)), 2),
        "soh_true_start": _r(float(np.mean(truth[0]))) if truth.size else None,
        "soh_true_end": _r(float(np.mean(truth[-1]))) if truth.size else None,
        "capacity_fade_pts": _r(float(np.mean(truth[0] - truth[-1])) * 100.0, 2)
        if truth.size
        else None,
        "resistance_growth_pct": _r(float(np.mean(ageing.resistance_factor) - 1.0) * 100.0, 2),
        "max_temperature_c": _r(log.max_temperature_c, 1),
        "faults": bms.counters.faults,
        "availability_pct": _r(100.0 * (1.0 - log.fault_s / duration_s), 2),
        "cloud_soh_first": _r(soh[0][1]) if soh else None,
        "cloud_soh_latest": _r(soh[-1][1]) if soh else None,
        "cloud_soh_runs": len(soh),
        "sow_first": _sow_view(sow[0]) if sow else None,
        "sow_latest": _sow_view(sow[-1]) if sow else None,
    }


def _sow_view(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "at_h": _r(row["time_s"] / 3600.0, 2),
        "state": row["state"],
        "rw": _r(row["rw"], 4),
        "rh": _r(row["rh"], 4),
        "ruw": _r(row["ruw"], 4),
    }


def _loop(run: SiteRun) -> dict[str, Any]:
    """Pillar 1's EIS -> DRT -> ECM -> edge loop, and whether it closed."""
    bms, records = run.bms, run.records
    commands = [c for c in records.commands if c["kind"] == "ecm_update"]
    status = {c["id"]: c["status"] for c in commands}
    applied = [u for u in bms.log.ecm_updates if u.status == "ok"]
    closed = bool(
        applied and bms.cloud_model and any(status.get(u.command_id) == "acked" for u in applied)
    )
    out: dict[str, Any] = {
        "closed": closed,
        "eis_sweeps": bms.counters.eis_sweeps,
        "ecm_update_commands": len(commands),
        "acked": sum(1 for c in commands if c["status"] == "acked"),
        "applied_by_edge": len(applied),
        "edge_model_from_cloud": bms.cloud_model,
        "command_ids": [c["id"] for c in commands],
        "first_update": None,
        "last_update": None,
        "soc_rmse_before_pct": None,
        "soc_rmse_after_pct": None,
    }

    def view(u: Any) -> dict[str, Any]:
        return {
            "command_id": u.command_id,
            "cloud_status": status.get(u.command_id),
            "edge_ack": u.status,
            "at_h": _r(u.time_s / 3600.0, 2),
            "n_rc_before": u.n_rc_before,
            "n_rc_after": u.n_rc_after,
            "r0_before_mohm": _r(u.r0_before_ohm * 1000.0, 4),
            "r0_after_mohm": _r(u.r0_after_ohm * 1000.0, 4),
            "r_dc_before_mohm": _r(u.r_dc_before_ohm * 1000.0, 4),
            "r_dc_after_mohm": _r(u.r_dc_after_ohm * 1000.0, 4),
        }

    if applied:
        out["first_update"] = view(applied[0])
        out["last_update"] = view(applied[-1])
        trace = bms.trace
        assert trace is not None
        at = applied[0].time_s
        out["soc_rmse_before_pct"] = _r(
            soc_rmse_pct(trace.time_s, trace.soc, trace.soc_true, end_s=at)
        )
        out["soc_rmse_after_pct"] = _r(
            soc_rmse_pct(trace.time_s, trace.soc, trace.soc_true, start_s=at)
        )
    return out


def _balancing(run: SiteRun) -> dict[str, Any]:
    trace, log = run.bms.trace, run.bms.log
    assert trace is not None
    kinds = Counter(e.kind for e in run.records.events)
    return {
        "events": kinds.get("balancing", 0),
        "energy_wh": _r(log.balancing_wh, 2),
        "active_h": _r(log.balancing_s / 3600.0, 2),
        "soc_spread_start_pct": _r(float(np.ptp(trace.soc_true[0])) * 100.0, 2),
        "soc_spread_end_pct": _r(float(np.ptp(trace.soc_true[-1])) * 100.0, 2),
    }


def _site(run: SiteRun, *, duration_s: float) -> dict[str, Any]:
    bms, records = run.bms, run.records
    trace = bms.trace
    assert trace is not None
    truth_t, truth_soh = _truth_soh(run)
    alarms = [e for e in records.events if e.severity == "alarm"]
    events_sent = bms.counters.events
    out: dict[str, Any] = {
        "device": run.site.name,
        "pillar": run.site.pillar,
        "cells": run.site.cells,
        "kpis": _kpis(run, duration_s=duration_s),
        "accuracy": {
            "soc_rmse_pct": _r(soc_rmse_pct(trace.time_s, trace.soc, trace.soc_true)),
            "soh": {
                k: (_r(v) if isinstance(v, float) else v)
                for k, v in soh_error(
                    records.soh, truth_time_s=truth_t, truth_soh=truth_soh
                ).items()
            },
        },
        "messages": message_tally(sent=run.sent, stored=records.stored_messages)
        | {
            "events_sent": events_sent,
            "events_stored": len(records.events),
            "left_in_outbox": run.online.get("left_in_outbox"),
            "dropped": run.online.get("dropped"),
            "measurement_rows": records.measurement_rows,
            "eis_rows": records.eis_rows,
        },
        "alarms": {
            "stored": len(alarms),
            "kinds": dict(Counter(e.kind for e in alarms)),
            "first": {
                "at_h": _r(alarms[0].time_s / 3600.0, 2),
                "kind": alarms[0].kind,
                "detail": alarms[0].detail,
            }
            if alarms
            else None,
        },
        "estimator_runs": records.runs,
    }
    if run.site.pillar == 1:
        ecm = ecm_parameter_error(records.fits, bms.twin.sweep_truth)
        if ecm["last"] is not None:
            ecm["last"] = {
                k: (_r(v, 4) if isinstance(v, float) else v) for k, v in ecm["last"].items()
            }
        out["accuracy"]["ecm"] = {
            k: (_r(v, 2) if isinstance(v, float) else v) for k, v in ecm.items()
        }
        out["loop"] = _loop(run)
    else:
        out["balancing"] = _balancing(run)
    return out


def build_summary(
    *, config: DemoConfig, runs: Mapping[str, SiteRun], wall_time_s: float, cloud_url: str
) -> dict[str, Any]:
    """The summary of a finished run (``runs`` by role: ``hub``, ``home``)."""
    sites = {role: _site(run, duration_s=config.duration_s) for role, run in runs.items()}
    messages = {
        key: sum(int(s["messages"][key]) for s in sites.values())
        for key in ("sent", "stored", "lost")
    }
    hub = sites.get("hub", {})
    return {
        "demo": {
            "days": config.days,
            "seed": config.seed,
            "sample_period_s": config.sample_period_s,
            "reporting_interval_s": config.reporting_interval_s,
            "eis_interval_h": config.eis_interval_s / 3600.0,
            "ageing_rate_factor": config.ageing_rate_factor,
            "wall_time_s": round(wall_time_s, 1),
            "cloud": cloud_url,
        },
        "loop_closed": bool(hub.get("loop", {}).get("closed", False)),
        "alarms_stored": sum(int(s["alarms"]["stored"]) for s in sites.values()),
        "messages": messages,
        "sites": sites,
    }
