"""The virtual bench without I/O: request formats, default procedures, the runner's safety
stop, chunks and KPIs, on the ECM (and one short PyBaMM run)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest

from cloud.testbench.messages import (
    DataMessage,
    EcmModelSpec,
    RequestError,
    StatusMessage,
    TestRequest,
    parse_request,
    parse_result,
)
from cloud.testbench.models_source import ModelError, build_twin, built
from cloud.testbench.procedures import ABUSE_TESTS, UnitRatings, default_procedure, plan_test
from cloud.testbench.runner import Chunk, Finished, Progress, run_test
from twin.models.base import CellStep

CELL = "Cell-01"


def _request(**fields: Any) -> TestRequest:
    return TestRequest.model_validate({"unit_under_test": CELL, **fields}).completed()


def _run(request: TestRequest, **options: Any) -> tuple[list[Progress], list[Chunk], Finished]:
    ageing = request.test_type not in ABUSE_TESTS
    with built(request.model, ambient_c=request.ambient_c, ageing=ageing) as twin:
        items = list(run_test(twin.twin, plan_test(request, twin.ratings), **options))
    *body, end = items
    assert isinstance(end, Finished)
    progress = [i for i in body if isinstance(i, Progress)]
    chunks = [i for i in body if isinstance(i, Chunk)]
    assert len(progress) + len(chunks) == len(body)
    return progress, chunks, end


def _column(chunks: Iterable[Chunk], name: str) -> np.ndarray:
    return np.concatenate([np.asarray(c.columns[name], dtype=float) for c in chunks])


def test_capacity_test_measures_the_twins_capacity_within_2_percent() -> None:
    request = _request(test_type="capacity", model={"kind": "ecm", "soh": 0.9})
    twin = build_twin(request.model, ambient_c=25.0)
    capacity = twin.ratings.capacity_ah
    assert capacity == pytest.approx(4.5)  # 0.9 x the set's 5 Ah
    progress, chunks, end = _run(request, chunk_samples=100)
    assert end.status == "completed" and end.outcome["end"] == "completed"
    measured = end.outcome["kpis"]["measured_capacity_ah"]
    assert measured == pytest.approx(capacity, rel=0.02)
    assert "measured capacity" in end.outcome["summary"]
    # chunks: seq 0, 1, ... of at most 100 samples, time increasing, every variable present
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert all(len(c.columns["time_s"]) <= 100 for c in chunks)
    time_s = _column(chunks, "time_s")
    assert np.all(np.diff(time_s) > 0) and time_s[-1] == pytest.approx(end.outcome["duration_s"])
    assert [p.step_index for p in progress] == list(range(len(progress)))
    assert progress[0].step.startswith("Charge at 0.5C until 4.2 V")


def test_overcharge_stops_at_the_safety_limit_and_reports_it() -> None:
    _, chunks, end = _run(_request(test_type="overcharge"))
    assert end.status == "completed"  # the expected end of an abuse test
    stop = end.outcome["safety_stop"]
    assert stop["limit"] in ("max_voltage_v", "max_soc", "max_temperature_c")
    assert stop["value"] >= stop["threshold"]
    assert stop["step"] == "Charge at 1C for 1 hour"
    assert end.outcome["summary"].startswith(f"safety limit reached at {stop['time_s']:.0f} s")
    # the bench stopped at the limit: the last sample is the first one past it
    soc, voltage = _column(chunks, "soc"), _column(chunks, "voltage_v")
    assert soc.max() > 1.0 and (soc[-1] >= 1.3 or voltage[-1] >= 4.5)
    assert (soc[:-1] < 1.3).all() and (voltage[:-1] < 4.5).all()
    assert end.outcome["kpis"]["abuse_charge_ah"] > 0


def test_a_normal_test_crossing_a_bench_limit_is_stopped_by_safety() -> None:
    request = _request(test_type="custom", procedure=["Charge at 1C for 2 hours"])
    _, chunks, end = _run(request)
    assert end.status == "stopped_by_safety"
    assert end.outcome["safety_stop"]["limit"] == "max_voltage_v"
    assert end.outcome["safety_stop"]["threshold"] == pytest.approx(4.3)  # 4.2 V + 0.1 V
    assert end.outcome["summary"].startswith("stopped by the bench: safety limit reached")
    assert _column(chunks, "voltage_v")[-1] >= 4.3


def test_safety_overrides_and_timeout() -> None:
    request = _request(
        test_type="custom", procedure=["Rest for 2 hours"], safety={"timeout_s": 600.0}
    )
    _, chunks, end = _run(request)
    assert end.status == "stopped_by_safety"
    assert end.outcome["safety_stop"]["limit"] == "timeout_s"
    assert _column(chunks, "time_s")[-1] == pytest.approx(600.0)


def test_hppc_reports_pulse_resistances() -> None:
    request = _request(test_type="hppc", model={"kind": "ecm", "ageing": False}, dt_s=2.0)
    twin = build_twin(request.model, ambient_c=25.0)
    r0 = float(twin.twin.reset().truth.r0_ohm[0])
    _, _, end = _run(request, chunk_samples=2000)
    assert end.status == "completed", end.outcome
    pulses = end.outcome["kpis"]["pulses"]
    assert len(pulses) == 18  # 9 SoC levels x (discharge, charge)
    assert [p["direction"] for p in pulses[:2]] == ["discharge", "charge"]
    socs = [p["soc"] for p in pulses[::2]]
    assert socs == sorted(socs, reverse=True) and socs[0] == pytest.approx(0.9, abs=0.02)
    for pulse in pulses:  # a 10 s resistance: R0 plus some of the RC pairs
        assert r0 < pulse["resistance_ohm"] < 5 * r0


def test_cycle_ageing_reports_capacity_per_cycle() -> None:
    model = {"kind": "ecm", "ageing_rate_factor": 10.0}
    _, _, end = _run(_request(test_type="cycle_ageing", n_cycles=3, model=model))
    assert end.status == "completed"
    kpis = end.outcome["kpis"]
    cycles = kpis["cycles"]
    assert [c["cycle"] for c in cycles] == [1, 2, 3] and kpis["cycles_done"] == 3
    capacities = [c["discharge_capacity_ah"] for c in cycles]
    assert capacities[0] > capacities[1] > capacities[2]  # fade, compressed tenfold
    throughput = [c["throughput_ah"] for c in cycles]
    assert throughput == sorted(throughput) and throughput[0] > 2 * capacities[0]
    assert kpis["capacity_retention"] == pytest.approx(capacities[2] / capacities[0])


def test_default_procedures_use_the_units_limits_and_capacity() -> None:
    lfp = UnitRatings(capacity_ah=2.3, min_voltage_v=2.0, max_voltage_v=3.6)
    prelude, cycle = default_procedure("capacity", lfp)
    assert prelude == ["Charge at 0.5C until 3.6 V", "Hold at 3.6 V until C/20"]
    assert "Discharge at C/3 until 2 V" in cycle
    no_cv = UnitRatings(capacity_ah=2.3, min_voltage_v=2.0, max_voltage_v=3.6, can_hold_voltage=0)
    assert default_procedure("capacity", no_cv)[0][1] == "Charge at C/20 until 3.6 V"
    plan = plan_test(_request(test_type="cycle_ageing", n_cycles=4), lfp)
    assert len(plan.steps) == plan.prelude_length + 4 * plan.cycle_length
    assert plan.cycle_of(0) is None and plan.cycle_of(len(plan.steps) - 1) == 3
    assert plan.limits.max_voltage_v == pytest.approx(3.7)
    over = plan_test(_request(test_type="overcharge"), lfp)
    assert over.expects_safety_stop and over.limits.max_voltage_v == pytest.approx(3.9)
    assert over.limits.max_soc == 1.3
    with pytest.raises(ValueError, match="no usable capacity_ah"):
        plan_test(_request(test_type="capacity"), UnitRatings(float("nan"), 2.0, 3.6))


def test_a_custom_procedure_parse_error_names_the_step() -> None:
    payload = {
        "uuid": "0b7e5c6e-9a51-4b9e-8d36-2f1f0c1d2e3f",
        "unit_under_test": CELL,
        "test_type": "custom",
        "procedure": ["Rest for 1 minute", "Discharge at 1C for 3 fortnights"],
    }
    with pytest.raises(RequestError) as caught:
        parse_request(json.dumps(payload))
    assert caught.value.uuid == payload["uuid"]
    [error] = caught.value.errors
    assert error["loc"] == "procedure"
    assert "step 1" in error["msg"] and "fortnights" in error["msg"]


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"test_type": "teardown"}, "test_type"),
        ({"test_type": "custom"}, ""),  # a custom test needs a procedure
        ({"n_cycles": 3}, ""),  # only for cycle_ageing
        ({"model": {"kind": "ecm", "parameter_set": "/etc/passwd"}}, "model.ecm.parameter_set"),
        ({"model": {"kind": "fmu"}}, "model.fmu.model_id"),
        ({"uuid": "not-a-uuid"}, "uuid"),
        ({"dt_s": -1}, "dt_s"),
        ({"colour": "red"}, "colour"),
        ({"ambient_c": 1e400}, "ambient_c"),  # json.dumps writes Infinity: not JSON
    ],
)
def test_malformed_requests_name_the_field(change: dict[str, Any], loc: str) -> None:
    payload = {"unit_under_test": CELL, "test_type": "capacity", **change}
    with pytest.raises(RequestError) as caught:
        parse_request(json.dumps(payload))
    first = caught.value.errors[0]
    if "Infinity" in json.dumps(payload):
        assert first["loc"] == "" and "Infinity" in first["msg"]
    else:
        assert first["loc"] == loc, caught.value.errors


def test_requests_get_their_defaults_and_results_parse_back() -> None:
    request = parse_request(json.dumps({"unit_under_test": CELL, "test_type": "hppc"}))
    assert request.uuid and request.name == "Hppc" and request.scheduled_at is not None
    assert request.model.kind == "ecm" and request.bench == "virtual"
    naive = parse_request(
        json.dumps(
            {"unit_under_test": CELL, "test_type": "capacity", "scheduled_at": "2025-01-02T03:04"}
        )
    )
    assert naive.scheduled_at is not None and naive.scheduled_at.utcoffset() is not None
    status = parse_result(
        json.dumps({"kind": "status", "uuid": request.uuid, "status": "started", "ts": 1700000000})
    )
    assert isinstance(status, StatusMessage)
    chunk = {
        "kind": "data",
        "uuid": request.uuid,
        "seq": 0,
        "time_s": [1.0, 2.0],
        "step": [0, 0],
        "current_a": [1.0, 1.0],
        "voltage_v": [3.7, 3.69],
        "temperature_c": [25.0, 25.0],
        "soc": [None, None],
    }
    assert isinstance(parse_result(json.dumps(chunk)), DataMessage)
    with pytest.raises(RequestError, match="voltage_v has 1 values for 2 time_s"):
        parse_result(json.dumps({**chunk, "voltage_v": [3.7]}))


class _Broken:
    """A twin that fails after a few steps (as a PyBaMM solver or an FMU can)."""

    n_cells = 1

    def __init__(self) -> None:
        self._inner = build_twin(EcmModelSpec(kind="ecm"), ambient_c=25.0)
        self._steps = 0

    def reset(self) -> CellStep:
        return self._inner.twin.reset()

    def step(self, *, current_a: Any, dt_s: float, ambient_c: Any) -> CellStep:
        self._steps += 1
        if self._steps > 5:
            raise ValueError("solver diverged")
        return self._inner.twin.step(current_a=current_a, dt_s=dt_s, ambient_c=ambient_c)

    def step_power(self, *, power_w: Any, dt_s: float, ambient_c: Any) -> CellStep:
        raise NotImplementedError


def test_a_failing_twin_or_a_stop_ends_the_test_as_failed() -> None:
    request = _request(test_type="custom", procedure=["Discharge at 1C for 10 minutes"])
    twin = build_twin(request.model, ambient_c=25.0)
    plan = plan_test(request, twin.ratings)
    *_, end = run_test(_Broken(), plan)
    assert isinstance(end, Finished) and end.status == "failed"
    assert end.outcome["error"] == "step 0 (Discharge at 1C for 10 minutes): solver diverged"
    calls = iter(range(100))
    *_, stopped = run_test(twin.twin, plan, cancelled=lambda: next(calls) >= 3)
    assert isinstance(stopped, Finished) and stopped.status == "failed"
    assert stopped.outcome["end"] == "aborted"


def test_an_unknown_fmu_is_a_model_error() -> None:
    def missing(model_id: int) -> bytes:
        raise ModelError(f"no FMU with model_id {model_id} in the models exchange")

    spec = _request(test_type="capacity", model={"kind": "fmu", "model_id": 99}).model
    with pytest.raises(ModelError, match="model_id 99"):
        build_twin(spec, ambient_c=25.0, fmu_loader=missing)
    with pytest.raises(ModelError, match="need the models exchange"):
        build_twin(spec, ambient_c=25.0)


@pytest.mark.pybamm
def test_a_custom_procedure_on_pybamm() -> None:
    request = _request(
        test_type="custom",
        procedure=["Discharge at 1C for 5 minutes", "Rest for 2 minutes"],
        model={"kind": "pybamm", "parameter_set": "Chen2020", "initial_soc": 0.8},
    )
    with built(request.model, ambient_c=25.0) as twin:  # one PyBaMM build (about 1 s)
        capacity = twin.ratings.capacity_ah
        *body, end = run_test(twin.twin, plan_test(request, twin.ratings))
    assert capacity == pytest.approx(5.0, rel=0.05)  # 1C: the cell's present capacity
    chunks = [c for c in body if isinstance(c, Chunk)]
    assert isinstance(end, Finished) and end.status == "completed", end
    assert end.outcome["kpis"]["discharged_ah"] == pytest.approx(capacity / 12, rel=1e-6)
    time_s, soc = _column(chunks, "time_s"), _column(chunks, "soc")
    assert time_s[-1] == pytest.approx(420.0) and soc[-1] < 0.8
