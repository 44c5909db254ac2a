"""The virtual BMS scored against the twin's truth.

* ``soc_rmse_pct``: Pillar 2, a 16-cell second-life home pack (100 Ah cells, SoH 0.7-0.9,
  resistance x1.3 +- 0.1) through a simulated day of household load and PV, with the
  twin's realistic sensors (1 mV voltage noise and quantisation, current offset and gain
  errors); RMS over every cell and 5 s cycle of estimated minus true SoC. The BMS starts
  from the OCV of its first reading and believes the pack's average SoH and resistance.
  ``soc_rmse_pillar1_pct``: the same for a Pillar 1 hub pack (EV sessions at 1C).
* ``soc_rmse_after_ecm_update_pct``: Pillar 1 on a pack whose resistance the BMS
  underestimates by 2x; half-way through the day the cloud sends an ECM update, and the
  RMS over the second half is compared with the same run without the update
  (``soc_rmse_without_ecm_update_pct``). The update carries the twin's own small-signal
  parameters averaged over the cells, standing in for the cloud's EIS-DRT fit (issue 6).
* ``balancing_final_spread_mv``: a 16-cell pack at 20 % SoC with a 4-point SoC spread
  (>100 mV), at rest; balancing is requested and runs until it stops; the true cell OCV
  spread after a 1 h rest is reported (and the measured spread when it stopped).
* ``plating_detected`` / ``plating_false_alarm``: the BMS (Pillar 2, its dV/dt check after
  a charge) on a PyBaMM cell (OKane2022, DFN, reversible lithium plating): a cold fast
  charge (0 degC, CC 1.5C to 4.2 V, CV to C/10) then a 2 h rest, and a benign one (25 degC,
  C/3), read through the twin's sensors.

Run: ``python -m benches.bms --json`` (about 2 minutes; the PyBaMM cases need the pybamm
extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloud.mqtt.contract import EcmUpdateCommand, EcmUpdateParams
from twin.models.base import CellStep
from twin.pack import Pack, PackTopology, SecondLifeSpread
from twin.params import load_parameter_set
from twin.sensors import Sensors, SensorSpec
from virtual_bms.assembly import twin_bms
from virtual_bms.config import BmsConfig
from virtual_bms.runtime import VirtualBms
from virtual_bms.sources import Actuation, SensorFrame, SourceTruth, TwinSource

DAY_S = 86_400.0
STEP_S = 5.0


def _drive(bms: VirtualBms, seconds: float, *, step_s: float = STEP_S) -> None:
    source = bms.source
    assert isinstance(source, TwinSource)
    for _ in range(int(seconds / step_s)):
        source.advance(step_s)
        source.apply(bms.step(source.read()))


def soc_day(pillar: int) -> float:
    bms = twin_bms(
        device=f"bench-p{pillar}",
        pillar=1 if pillar == 1 else 2,
        cells=16,
        parameters="nmc_eis_arc" if pillar == 1 else "nmc_okane2022",
        seed=11,
        trace=True,
        sample_period_s=STEP_S,
    )
    _drive(bms, DAY_S)
    assert bms.trace is not None
    return bms.trace.soc_rmse_pct()


def ecm_update(*, with_update: bool) -> float:
    """Second-half SoC RMSE of a Pillar 1 BMS that underestimates resistance 2x."""
    bms = twin_bms(
        device="bench-ecm",
        pillar=1,
        cells=16,
        parameters="nmc_eis_arc",
        seed=5,
        trace=True,
        sample_period_s=STEP_S,
        assumed_resistance_factor=0.65,
    )
    _drive(bms, DAY_S / 2)
    if with_update:
        source = bms.source
        assert isinstance(source, TwinSource)
        now = source.pack.cells.ecm_parameters_now()
        n_rc = sum(1 for key in now if key.startswith("c"))
        params: dict[str, float] = {
            "voltage": float(np.mean(source.read().voltage_v)),
            "r0": float(np.mean(now["r0_ohm"])),
        }
        for k in range(1, n_rc + 1):
            params[f"r{k}"] = float(np.mean(now[f"r{k}_ohm"]))
            params[f"c{k}"] = float(np.mean(now[f"c{k}_f"]))
        command = EcmUpdateCommand(
            command_id=1, kind="ecm_update", params=EcmUpdateParams(**params)
        )
        ack = asyncio.run(bms.handle_command(command))
        if ack.status != "ok":
            raise RuntimeError(f"the BMS refused the ECM update: {ack.detail}")
    _drive(bms, DAY_S / 2)
    assert bms.trace is not None
    return bms.trace.soc_rmse_pct(after_s=DAY_S / 2 + 600.0)


def balancing() -> dict[str, Any]:
    params = load_parameter_set("nmc_okane2022").scaled_to(100.0)
    pack = Pack(
        params,
        topology=PackTopology(groups_per_module=16),
        spread=SecondLifeSpread(soc_std=0.03),  # a few SoC points apart: > 100 mV at 20 %
        soc=0.2,
        seed=2,
    )
    source = TwinSource(pack, load=lambda t: 0.0, seed=2)
    bms = VirtualBms(
        BmsConfig(device="bench-bal", pillar=2, sample_period_s=STEP_S, balancing_interval_s=None),
        source=source,
        parameters=params,
    )
    start_spread = float(np.ptp(source.read().voltage_v)) * 1000.0
    bms.request_balancing()
    elapsed = 0.0
    while elapsed < 6 * 3600.0:
        source.advance(STEP_S)
        source.apply(bms.step(source.read()))
        elapsed += STEP_S
        if elapsed > 60.0 and not bms.balancing.active:
            break
    stopped_spread = bms.balancing.spread_v * 1000.0
    _drive(bms, 3600.0)  # rest: voltages settle to OCV
    ocv = params.ocv_at(pack.cells.soc, pack.cells.temperature_c)
    return {
        "balancing_initial_spread_mv": start_spread,
        "balancing_stopped_at_spread_mv": stopped_spread,
        "balancing_stop_reason": str(bms.balancing.stop_reason),
        "balancing_hours": elapsed / 3600.0,
        "balancing_final_spread_mv": float(np.ptp(ocv)) * 1000.0,
    }


@dataclass
class ProtocolSource:
    """One PyBaMM cell through CC-CV-rest, read by the BMS through the twin's sensors."""

    twin: Any
    c_rate: float
    ambient_c: float
    capacity_ah: float = 5.0
    upper_v: float = 4.2
    phase: str = "cc"
    last: CellStep | None = None
    sensors: Sensors = field(
        default_factory=lambda: Sensors(SensorSpec(), n_voltage=1, n_temperature=1, seed=3)
    )

    n_groups: int = 1
    n_strings: int = 1

    def apply(self, actuation: Actuation) -> None:
        pass  # the protocol is fixed; the BMS only watches

    def advance(self, dt_s: float) -> None:
        ambient = self.ambient_c
        if self.phase == "cc":
            self.last = self.twin.step(
                current_a=-self.c_rate * self.capacity_ah, dt_s=dt_s, ambient_c=ambient
            )
            if self.last.voltage_v[0] >= self.upper_v:
                self.phase = "cv"
        elif self.phase == "cv":
            self.last = self.twin.step_voltage(voltage_v=self.upper_v, dt_s=dt_s, ambient_c=ambient)
            if -self.last.current_a[0] < 0.1 * self.capacity_ah:
                self.phase = "rest"
        else:
            self.last = self.twin.step(current_a=0.0, dt_s=dt_s, ambient_c=ambient)

    def read(self) -> SensorFrame:
        assert self.last is not None
        r = self.sensors.read(
            time_s=self.last.time_s,
            voltage_v=self.last.voltage_v,
            current_a=float(self.last.current_a[0]),
            temperature_c=self.last.surface_temperature_c,
        )
        return SensorFrame(r.time_s, r.voltage_v, r.current_a, r.temperature_c)

    def truth(self) -> SourceTruth:
        assert self.last is not None
        t = self.last.truth
        return SourceTruth(t.soc, t.capacity_ah, self.last.surface_temperature_c, t.r0_ohm)


def plating(*, c_rate: float, ambient_c: float) -> dict[str, Any]:
    os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")
    from twin.models.pybamm_twin import PybammTwin, PybammTwinConfig

    twin = PybammTwin(
        PybammTwinConfig(
            parameter_set="OKane2022",
            model="DFN",
            thermal="isothermal",
            lithium_plating="reversible",
            initial_soc=0.0,
            initial_temperature_c=ambient_c,
            ambient_temperature_c=ambient_c,
            parameter_overrides={"Lithium plating transfer coefficient": 0.5},
        )
    )
    source = ProtocolSource(twin, c_rate=c_rate, ambient_c=ambient_c)
    bms = VirtualBms(
        BmsConfig(device="bench-plating", pillar=2, sample_period_s=1.0, plating_rest_s=3600.0),
        source=source,
        parameters=load_parameter_set("nmc_okane2022").scaled_to(5.0),
        soh=None,
    )
    charge_dt = 10.0 if c_rate > 1 else 30.0
    while source.phase != "rest":
        source.advance(charge_dt)
        bms.step(source.read())
    rest_start = source.last.time_s if source.last is not None else 0.0
    while source.last is not None and source.last.time_s - rest_start < 7200.0:
        source.advance(1.0)
        bms.step(source.read())
    result = bms.safety.last_plating
    stripped = float(
        twin.step(current_a=0.0, dt_s=1.0, ambient_c=ambient_c).truth.plated_lithium_ah[0]
    )
    return {
        "detected": bool(result is not None and result.evaluated and result.detected[0]),
        "score": float(result.score[0]) if result is not None and result.evaluated else None,
        "plated_lithium_left_ah": stripped,
        "events": bms.counters.events,
    }


def run_benchmark(*, include_pybamm: bool = True) -> dict[str, Any]:
    started = time.perf_counter()
    out: dict[str, Any] = {"benchmark": "bms"}
    out["soc_rmse_pct"] = soc_day(2)
    out["soc_rmse_pillar1_pct"] = soc_day(1)
    out["soc_rmse_without_ecm_update_pct"] = ecm_update(with_update=False)
    out["soc_rmse_after_ecm_update_pct"] = ecm_update(with_update=True)
    out["ecm_update_source"] = "twin small-signal parameters, cell mean (cloud DRT fit: issue 6)"
    out |= balancing()
    if include_pybamm:
        cold = plating(c_rate=1.5, ambient_c=0.0)
        warm = plating(c_rate=1.0 / 3.0, ambient_c=25.0)
        out["plating_detected"] = cold["detected"]
        out["plating_false_alarm"] = warm["detected"]
        out["plating_score_cold"] = cold["score"]
        out["plating_score_benign"] = warm["score"]
    out["seconds"] = time.perf_counter() - started
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Virtual BMS estimators against twin truth.")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-pybamm", action="store_true", help="skip the plating cases")
    args = parser.parse_args()
    result = run_benchmark(include_pybamm=not args.no_pybamm)
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
