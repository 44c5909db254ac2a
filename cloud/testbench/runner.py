"""The virtual bench: drive a one-cell twin through a plan, with the bench's safety stop.

:func:`run_test` is pure (no I/O): it steps the twin and yields what a bench reports, in
order: :class:`Progress` when a step begins, :class:`Chunk` every ``chunk_samples``
samples (or ``chunk_interval_s`` of wall time), and one :class:`Finished` with the
status and the outcome (how the run ended and the test type's KPIs). After every sample
it checks the bench's limits; a crossing ends the test as a real bench would, with
status ``stopped_by_safety``, or ``completed`` for a test that expects it (overcharge,
over-discharge). Errors of the twin end the test with status ``failed``.

Example::

    for item in run_test(twin, plan_test(request, ratings)):
        ...  # Progress, Chunk, ..., Finished
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from numpy.typing import ArrayLike

from cloud.testbench.messages import DATA_VARIABLES, finite_or_none
from cloud.testbench.procedures import BenchLimits, Plan
from twin.experiment import ExperimentStep
from twin.models.base import CellStep

__all__ = ["Chunk", "Finished", "Progress", "SteppableTwin", "run_test"]

MAX_STEP_S = 48 * 3600.0  # an 'until' that is never reached fails the test after this
PULSE_MAX_S = 30.0  # a current step this short after a rest is an HPPC pulse


class SteppableTwin(Protocol):
    """What the bench needs of a twin (``twin.models.base.CellTwin``, one cell)."""

    @property
    def n_cells(self) -> int: ...

    def reset(self) -> CellStep: ...

    def step(self, *, current_a: ArrayLike, dt_s: float, ambient_c: ArrayLike) -> CellStep: ...

    def step_power(self, *, power_w: ArrayLike, dt_s: float, ambient_c: ArrayLike) -> CellStep: ...


@dataclass(frozen=True)
class Progress:
    """A procedure step begins."""

    step_index: int
    n_steps: int
    step: str
    cycle: int | None
    time_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "step_index": self.step_index,
            "n_steps": self.n_steps,
            "step": self.step,
            "cycle": self.cycle,
            "time_s": self.time_s,
        }


@dataclass(frozen=True)
class Chunk:
    """Samples ``seq`` (0, 1, ...): one list per variable of ``DATA_VARIABLES``."""

    seq: int
    columns: dict[str, list[Any]]


@dataclass(frozen=True)
class Finished:
    """The end of the run: ``completed``, ``failed`` or ``stopped_by_safety``."""

    status: str
    outcome: dict[str, Any]


@dataclass
class _Sample:
    time_s: float
    current_a: float
    voltage_v: float
    temperature_c: float
    soc: float
    capacity_ah: float


@dataclass
class _StepStats:
    """What one step did (the KPIs are computed from these)."""

    index: int
    step: ExperimentStep
    before: _Sample
    last: _Sample | None = None
    elapsed_s: float = 0.0
    discharge_ah: float = 0.0
    charge_ah: float = 0.0
    discharge_wh: float = 0.0


@dataclass
class _Buffer:
    chunk_samples: int
    chunk_interval_s: float
    clock: Callable[[], float]
    seq: int = 0
    columns: dict[str, list[Any]] = field(default_factory=dict)
    opened_at: float = 0.0

    def __post_init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.columns = {name: [] for name in DATA_VARIABLES}
        self.opened_at = self.clock()

    def add(self, sample: _Sample, step_index: int) -> Chunk | None:
        c = self.columns
        c["time_s"].append(sample.time_s)
        c["step"].append(step_index)
        c["current_a"].append(finite_or_none(sample.current_a))
        c["voltage_v"].append(finite_or_none(sample.voltage_v))
        c["temperature_c"].append(finite_or_none(sample.temperature_c))
        c["soc"].append(finite_or_none(sample.soc))
        full = len(c["time_s"]) >= self.chunk_samples
        if full or self.clock() - self.opened_at >= self.chunk_interval_s:
            return self.flush()
        return None

    def flush(self) -> Chunk | None:
        if not self.columns["time_s"]:
            return None
        chunk = Chunk(seq=self.seq, columns=self.columns)
        self.seq += 1
        self._clear()
        return chunk


def _observe(out: CellStep, t0: float) -> _Sample:
    return _Sample(
        time_s=out.time_s - t0,
        current_a=float(out.current_a[0]),
        voltage_v=float(out.voltage_v[0]),
        temperature_c=float(out.surface_temperature_c[0]),
        soc=float(out.truth.soc[0]),
        capacity_ah=float(out.truth.capacity_ah[0]),
    )


def _apply(
    twin: SteppableTwin, st: ExperimentStep, *, dt_s: float, ambient_c: float, capacity_ah: float
) -> CellStep:
    if st.mode == "rest":
        return twin.step(current_a=0.0, dt_s=dt_s, ambient_c=ambient_c)
    if st.mode == "current":
        amps = st.value if st.c_rate is None else st.c_rate * capacity_ah
        return twin.step(current_a=amps, dt_s=dt_s, ambient_c=ambient_c)
    if st.mode == "power":
        return twin.step_power(power_w=st.value, dt_s=dt_s, ambient_c=ambient_c)
    hold = getattr(twin, "step_voltage", None)
    if hold is None:
        raise ValueError(f"{type(twin).__name__} cannot hold a voltage (step {st.text!r})")
    out: CellStep = hold(voltage_v=st.value, dt_s=dt_s, ambient_c=ambient_c)
    return out


def _terminated(st: ExperimentStep, sample: _Sample, capacity_ah: float) -> bool:
    if st.until_voltage_v is not None:
        rate = st.c_rate if st.mode == "current" and st.c_rate is not None else st.value
        if (rate > 0 and sample.voltage_v <= st.until_voltage_v) or (
            rate <= 0 and sample.voltage_v >= st.until_voltage_v
        ):
            return True
    if st.mode == "voltage":
        cutoff = st.until_current_a
        if st.until_c_rate is not None:
            cutoff = st.until_c_rate * capacity_ah
        if cutoff is not None and abs(sample.current_a) <= cutoff:
            return True
    return False


def _breach(limits: BenchLimits, s: _Sample) -> tuple[str, float, float] | None:
    """The first bench limit ``s`` crosses: ``(limit name, value, threshold)``."""
    checks: tuple[tuple[str, float, float | None, bool], ...] = (
        ("max_voltage_v", s.voltage_v, limits.max_voltage_v, True),
        ("min_voltage_v", s.voltage_v, limits.min_voltage_v, False),
        ("max_temperature_c", s.temperature_c, limits.max_temperature_c, True),
        ("max_soc", s.soc, limits.max_soc, True),
        ("min_soc", s.soc, limits.min_soc, False),
        ("timeout_s", s.time_s, limits.timeout_s, True),
    )
    for name, value, threshold, above in checks:
        if threshold is None or not math.isfinite(value):
            continue
        if (above and value >= threshold) or (not above and value <= threshold):
            return name, value, threshold
    return None


def run_test(
    twin: SteppableTwin,
    plan: Plan,
    *,
    cancelled: Callable[[], bool] | None = None,
    chunk_samples: int = 250,
    chunk_interval_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Progress | Chunk | Finished]:
    """Run ``plan`` on ``twin`` (one cell), yielding progress, data chunks and the end.

    Args:
        twin: A fresh one-cell twin; it is reset first.
        plan: From :func:`cloud.testbench.procedures.plan_test`.
        cancelled: Polled after every sample; True ends the test as ``failed`` (aborted).
        chunk_samples: Samples per data chunk.
        chunk_interval_s: A chunk also closes after this much wall time.
        clock: Wall clock for ``chunk_interval_s``.
    """
    if twin.n_cells != 1:
        raise ValueError(f"the bench tests one unit; got a twin of {twin.n_cells} cells")
    first = twin.reset()
    t0 = first.time_s
    previous = _observe(first, t0)
    buffer = _Buffer(chunk_samples, chunk_interval_s, clock)
    stats: list[_StepStats] = []
    capacity = plan.ratings.capacity_ah
    n_steps = len(plan.steps)

    def finish(status: str, end: str, **extra: Any) -> Iterator[Chunk | Finished]:
        last = buffer.flush()
        if last is not None:
            yield last
        yield Finished(status, _outcome(plan, stats, end=end, **extra))

    for index, st in enumerate(plan.steps):
        yield Progress(index, n_steps, st.text, plan.cycle_of(index), previous.time_s)
        record = _StepStats(index=index, step=st, before=previous)
        stats.append(record)
        limit = st.duration_s if st.duration_s is not None else MAX_STEP_S
        while record.elapsed_s < limit - 1e-9:
            h = min(plan.dt_s, limit - record.elapsed_s)
            try:
                out = _apply(twin, st, dt_s=h, ambient_c=plan.ambient_c, capacity_ah=capacity)
            except Exception as error:  # a real bench reports any fault and stops
                yield from finish("failed", "error", error=f"step {index} ({st.text}): {error}")
                return
            sample = _observe(out, t0)
            _account(record, sample, h)
            previous = sample
            chunk = buffer.add(sample, index)
            if chunk is not None:
                yield chunk
            breach = _breach(plan.limits, sample)
            if breach is not None:
                limit_name, value, threshold = breach
                stop = {
                    "limit": limit_name,
                    "value": value,
                    "threshold": threshold,
                    "time_s": sample.time_s,
                    "step_index": index,
                    "step": st.text,
                }
                status = "completed" if plan.expects_safety_stop else "stopped_by_safety"
                yield from finish(status, "safety_stop", safety_stop=stop)
                return
            if cancelled is not None and cancelled():
                yield from finish("failed", "aborted", error="aborted: the bench was stopped")
                return
            if _terminated(st, sample, capacity):
                break
        else:
            if st.duration_s is None:
                late = f"step {index} ({st.text}) did not reach its end within {limit / 3600:g} h"
                yield from finish("failed", "error", error=late)
                return
    yield from finish("completed", "completed")


def _account(record: _StepStats, s: _Sample, h: float) -> None:
    record.elapsed_s += h
    record.last = s
    if not math.isfinite(s.current_a):
        return
    ah = s.current_a * h / 3600.0
    if ah > 0:
        record.discharge_ah += ah
        if math.isfinite(s.voltage_v):
            record.discharge_wh += ah * s.voltage_v
    else:
        record.charge_ah -= ah


def _is_discharge(st: ExperimentStep) -> bool:
    rate = st.c_rate if st.c_rate is not None else st.value
    return st.mode in ("current", "power") and rate > 0


def _nan_to_none(value: float) -> float | None:
    return finite_or_none(value)


def _outcome(
    plan: Plan,
    stats: list[_StepStats],
    *,
    end: str,
    safety_stop: dict[str, Any] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    samples = [s.last for s in stats if s.last is not None]
    duration = samples[-1].time_s if samples else 0.0
    kpis: dict[str, Any] = {
        "discharged_ah": sum(s.discharge_ah for s in stats),
        "charged_ah": sum(s.charge_ah for s in stats),
    }
    kpis |= _KPIS[plan.test_type](plan, stats)
    summary = _summary(plan, kpis, end=end, safety_stop=safety_stop, error=error)
    return {
        "end": end,
        "summary": summary,
        "duration_s": duration,
        "steps_done": len(stats),
        "n_steps": len(plan.steps),
        "safety_stop": safety_stop,
        "error": error,
        "limits": plan.limits.as_dict(),
        "model_capacity_ah": plan.ratings.capacity_ah,
        "kpis": kpis,
    }


def _capacity_kpis(plan: Plan, stats: list[_StepStats]) -> dict[str, Any]:
    tested = [s for s in stats[plan.prelude_length :] if _is_discharge(s.step)]
    if not tested:
        return {"measured_capacity_ah": None}
    best = max(tested, key=lambda s: s.discharge_ah)
    return {
        "measured_capacity_ah": best.discharge_ah,
        "discharge_energy_wh": best.discharge_wh,
        "capacity_ratio": best.discharge_ah / plan.ratings.capacity_ah,
    }


def _hppc_kpis(plan: Plan, stats: list[_StepStats]) -> dict[str, Any]:
    pulses = []
    for prev, s in itertools.pairwise(stats):
        st = s.step
        short = st.duration_s is not None and st.duration_s <= PULSE_MAX_S
        if not (st.mode == "current" and short and prev.step.mode == "rest"):
            continue
        if s.last is None or s.elapsed_s < (st.duration_s or 0.0) - 1e-9:
            continue  # a pulse cut short measures nothing
        current = s.last.current_a
        if current == 0 or not math.isfinite(current):
            continue
        pulses.append(
            {
                "step_index": s.index,
                "soc": _nan_to_none(s.before.soc),
                "direction": "discharge" if current > 0 else "charge",
                "current_a": current,
                "duration_s": st.duration_s,
                "resistance_ohm": _nan_to_none(
                    abs(s.last.voltage_v - s.before.voltage_v) / abs(current)
                ),
            }
        )
    return {"pulses": pulses}


def _cycle_kpis(plan: Plan, stats: list[_StepStats]) -> dict[str, Any]:
    cycles: list[dict[str, Any]] = []
    throughput = sum(s.discharge_ah + s.charge_ah for s in stats[: plan.prelude_length])
    for c in range(plan.n_cycles):
        first = plan.prelude_length + c * plan.cycle_length
        mine = stats[first : first + plan.cycle_length]
        if not mine:
            break
        throughput += sum(s.discharge_ah + s.charge_ah for s in mine)
        discharges = [s.discharge_ah for s in mine if _is_discharge(s.step)]
        last = mine[-1].last or mine[-1].before
        cycles.append(
            {
                "cycle": c + 1,
                "discharge_capacity_ah": max(discharges) if discharges else None,
                "throughput_ah": throughput,
                "model_capacity_ah": _nan_to_none(last.capacity_ah),
                "complete": len(mine) == plan.cycle_length,
            }
        )
    done = [c["discharge_capacity_ah"] for c in cycles if c["complete"]]
    done = [v for v in done if v]
    return {
        "cycles": cycles,
        "cycles_done": sum(1 for c in cycles if c["complete"]),
        "capacity_retention": done[-1] / done[0] if len(done) >= 2 else None,
    }


def _abuse_kpis(plan: Plan, stats: list[_StepStats]) -> dict[str, Any]:
    samples = [s.last for s in stats if s.last is not None]
    abuse = [s for s in stats[plan.prelude_length :] if s.last is not None]

    def extreme(values: list[float], pick: Callable[[list[float]], float]) -> float | None:
        finite = [v for v in values if math.isfinite(v)]
        return pick(finite) if finite else None

    return {
        "max_voltage_v": extreme([s.voltage_v for s in samples], max),
        "min_voltage_v": extreme([s.voltage_v for s in samples], min),
        "max_temperature_c": extreme([s.temperature_c for s in samples], max),
        "abuse_charge_ah": sum(s.charge_ah for s in abuse),
        "abuse_discharge_ah": sum(s.discharge_ah for s in abuse),
    }


def _no_kpis(plan: Plan, stats: list[_StepStats]) -> dict[str, Any]:
    return {}


_KPIS: dict[str, Callable[[Plan, list[_StepStats]], dict[str, Any]]] = {
    "capacity": _capacity_kpis,
    "hppc": _hppc_kpis,
    "cycle_ageing": _cycle_kpis,
    "overcharge": _abuse_kpis,
    "overdischarge": _abuse_kpis,
    "custom": _no_kpis,
}


def _summary(
    plan: Plan,
    kpis: dict[str, Any],
    *,
    end: str,
    safety_stop: dict[str, Any] | None,
    error: str | None,
) -> str:
    if end in ("error", "aborted"):
        return error or end
    if safety_stop is not None:
        s = safety_stop
        relation = "above" if s["limit"].startswith("max") or s["limit"] == "timeout_s" else "below"
        text = (
            f"safety limit reached at {s['time_s']:.0f} s: {s['limit']} "
            f"{s['value']:.4g} {relation} {s['threshold']:.4g} (step {s['step_index']}: "
            f"{s['step']})"
        )
        return text if plan.expects_safety_stop else f"stopped by the bench: {text}"
    if plan.test_type == "capacity" and kpis.get("measured_capacity_ah") is not None:
        return (
            f"measured capacity {kpis['measured_capacity_ah']:.4g} Ah "
            f"({kpis['capacity_ratio']:.3f} of the model's {plan.ratings.capacity_ah:.4g} Ah)"
        )
    if plan.test_type == "hppc":
        return f"{len(kpis['pulses'])} pulses measured"
    if plan.test_type == "cycle_ageing":
        retention = kpis["capacity_retention"]
        tail = f", capacity retention {retention:.4f}" if retention is not None else ""
        return f"{kpis['cycles_done']} cycles{tail}"
    if plan.expects_safety_stop:
        return "no safety limit reached: the procedure ended first"
    return "completed"
