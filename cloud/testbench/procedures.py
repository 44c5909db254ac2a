"""Test types: their default procedures and safety limits, built from the unit's ratings.

Every default procedure starts from a known state (a full CC-CV charge, or a full
discharge for over-discharge) so that it does not depend on the model's initial SoC.
Voltages and C-rates come from the unit under test (:class:`UnitRatings`): its voltage
window, and its capacity, which defines 1C.

========================  ===============================================================
type                      procedure after the full charge
========================  ===============================================================
``capacity``              rest 30 min, discharge at C/3 to the lower limit, rest 30 min
``hppc``                  at 90 % ... 10 % SoC: 10 s 1C discharge pulse, 40 s rest,
                          10 s 0.75C charge pulse, 40 s rest; 10 % at 1C and 30 min rest
                          between levels
``cycle_ageing``          per cycle: 1C discharge to the lower limit, 10 min rest, 1C
                          charge to the upper limit, CV until C/20, 10 min rest
``overcharge``            charge at 1C for 1 h: the bench's safety limits end it
``overdischarge``         discharge at 1C for 1 h (after a full discharge): limits end it
``custom``                the request's procedure as given
========================  ===============================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cloud.testbench.messages import SafetyOverrides, TestRequest, TestType
from twin.experiment import ExperimentStep, parse_experiment

__all__ = [
    "ABUSE_TESTS",
    "SAFETY_MARGIN_V",
    "BenchLimits",
    "Plan",
    "UnitRatings",
    "bench_limits",
    "default_procedure",
    "plan_test",
]

SAFETY_MARGIN_V = 0.1  # the bench's voltage window: the unit's window widened by this
OVERCHARGE_MARGIN_V = 0.3  # an overcharge test stops this far above the upper limit
OVERCHARGE_MAX_SOC = 1.3
OVERDISCHARGE_MARGIN_V = 0.5
OVERDISCHARGE_MIN_SOC = -0.3
DEFAULT_CYCLES = 10
HPPC_LEVELS = 9  # 90 % ... 10 % SoC
ABUSE_TESTS: frozenset[str] = frozenset({"overcharge", "overdischarge"})
"""Tests whose normal end is a safety stop; they run without ageing (outside its laws)."""


@dataclass(frozen=True)
class UnitRatings:
    """What the bench knows of the unit under test (from its model).

    Attributes:
        capacity_ah: What 1C means.
        min_voltage_v: Lower voltage limit (end of discharge).
        max_voltage_v: Upper voltage limit (end of charge).
        max_temperature_c: Highest allowed cell temperature.
        can_hold_voltage: Whether the model can hold a constant voltage (CV phase);
            without it a CV phase becomes a C/20 top-up charge.
    """

    capacity_ah: float
    min_voltage_v: float
    max_voltage_v: float
    max_temperature_c: float = 60.0
    can_hold_voltage: bool = True


@dataclass(frozen=True)
class BenchLimits:
    """Where the bench stops a test, whatever its procedure says (None: not checked)."""

    max_voltage_v: float | None
    min_voltage_v: float | None
    max_temperature_c: float | None
    max_soc: float | None = None
    min_soc: float | None = None
    timeout_s: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {
            "max_voltage_v": self.max_voltage_v,
            "min_voltage_v": self.min_voltage_v,
            "max_temperature_c": self.max_temperature_c,
            "max_soc": self.max_soc,
            "min_soc": self.min_soc,
            "timeout_s": self.timeout_s,
        }


@dataclass(frozen=True)
class Plan:
    """A test ready to run: parsed steps (cycles unrolled), limits and settings.

    Attributes:
        test_type: Selects the KPIs of the outcome.
        steps: Every step in order: ``prelude_length`` steps that prepare the unit, then
            ``n_cycles`` repetitions of ``cycle_length`` steps (once, if not cycling).
        prelude_length: Steps before the first cycle.
        cycle_length: Steps per cycle.
        n_cycles: Cycles.
        limits: The bench's safety limits.
        expects_safety_stop: A safety stop is this test's normal end (abuse tests).
        ratings: The unit's ratings (capacity defines 1C).
        dt_s: Simulation step.
        ambient_c: Ambient temperature.
    """

    test_type: TestType
    steps: tuple[ExperimentStep, ...]
    prelude_length: int
    cycle_length: int
    n_cycles: int
    limits: BenchLimits
    expects_safety_stop: bool
    ratings: UnitRatings
    dt_s: float
    ambient_c: float

    def cycle_of(self, step_index: int) -> int | None:
        """The cycle (0, 1, ...) of a step; None for the prelude."""
        if step_index < self.prelude_length:
            return None
        return (step_index - self.prelude_length) // self.cycle_length


def _v(value: float) -> str:
    return f"{value:.4g}"


def _full_charge(r: UnitRatings) -> list[str]:
    top = _v(r.max_voltage_v)
    cv = f"Hold at {top} V until C/20" if r.can_hold_voltage else f"Charge at C/20 until {top} V"
    return [f"Charge at 0.5C until {top} V", cv]


def _hppc_level(r: UnitRatings) -> list[str]:
    return [
        f"Discharge at 1C for 6 minutes or until {_v(r.min_voltage_v)} V",
        "Rest for 30 minutes",
        "Discharge at 1C for 10 seconds",
        "Rest for 40 seconds",
        "Charge at 0.75C for 10 seconds",
        "Rest for 40 seconds",
    ]


def default_procedure(test_type: TestType, ratings: UnitRatings) -> tuple[list[str], list[str]]:
    """The default steps of ``test_type``: ``(prelude, cycle)`` (a custom test has none).

    ``cycle_ageing`` repeats ``cycle``; other types run it once after ``prelude``.
    """
    r = ratings
    low, high = _v(r.min_voltage_v), _v(r.max_voltage_v)
    full = _full_charge(r)
    if test_type == "capacity":
        return full, [
            "Rest for 30 minutes",
            f"Discharge at C/3 until {low} V",
            "Rest for 30 minutes",
        ]
    if test_type == "hppc":
        return [*full, "Rest for 30 minutes"], _hppc_level(r) * HPPC_LEVELS
    if test_type == "cycle_ageing":
        return full, [
            f"Discharge at 1C until {low} V",
            "Rest for 10 minutes",
            f"Charge at 1C until {high} V",
            full[1],
            "Rest for 10 minutes",
        ]
    if test_type == "overcharge":
        return [*full, "Rest for 10 minutes"], ["Charge at 1C for 1 hour"]
    if test_type == "overdischarge":
        return [f"Discharge at C/3 until {low} V", "Rest for 10 minutes"], [
            "Discharge at 1C for 1 hour"
        ]
    raise ValueError(f"a {test_type} test has no default procedure: give its steps")


def bench_limits(
    test_type: TestType, ratings: UnitRatings, overrides: SafetyOverrides
) -> BenchLimits:
    """The bench's safety limits for ``test_type``, then the request's overrides.

    Normal tests stop at the unit's voltage window widened by :data:`SAFETY_MARGIN_V`
    and at its temperature limit. An overcharge test may go up to 0.3 V above the
    window and to SoC 1.3; an over-discharge test 0.5 V below it and to SoC -0.3.
    """
    r = ratings
    limits = BenchLimits(
        max_voltage_v=r.max_voltage_v + SAFETY_MARGIN_V,
        min_voltage_v=max(r.min_voltage_v - SAFETY_MARGIN_V, 0.0),
        max_temperature_c=r.max_temperature_c,
    )
    if test_type == "overcharge":
        limits = BenchLimits(
            max_voltage_v=r.max_voltage_v + OVERCHARGE_MARGIN_V,
            min_voltage_v=limits.min_voltage_v,
            max_temperature_c=r.max_temperature_c,
            max_soc=OVERCHARGE_MAX_SOC,
        )
    elif test_type == "overdischarge":
        limits = BenchLimits(
            max_voltage_v=limits.max_voltage_v,
            min_voltage_v=max(r.min_voltage_v - OVERDISCHARGE_MARGIN_V, 0.0),
            max_temperature_c=r.max_temperature_c,
            min_soc=OVERDISCHARGE_MIN_SOC,
        )
    given = overrides.model_dump(exclude_none=True)
    return BenchLimits(**{**limits.as_dict(), **given})


def plan_test(request: TestRequest, ratings: UnitRatings) -> Plan:
    """Everything the runner needs for ``request`` on a unit with ``ratings``.

    Raises:
        TwinInputError: If a step cannot be parsed (naming it).
        ValueError: If the ratings cannot define a default procedure.
    """
    for name in ("capacity_ah", "min_voltage_v", "max_voltage_v"):
        value = getattr(ratings, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"the model gives no usable {name} ({value}); an FMU needs it in the "
                "request's model (capacity_ah, min_voltage_v, max_voltage_v)"
            )
    test_type = request.test_type
    if request.procedure is not None:
        prelude: list[str] = []
        cycle = list(request.procedure)
    else:
        prelude, cycle = default_procedure(test_type, ratings)
    n_cycles = (request.n_cycles or DEFAULT_CYCLES) if test_type == "cycle_ageing" else 1
    parsed_prelude = parse_experiment(prelude) if prelude else []
    parsed_cycle = parse_experiment(cycle)
    steps = (*parsed_prelude, *(parsed_cycle * n_cycles))
    default_dt = 1.0 if test_type == "hppc" else 10.0
    return Plan(
        test_type=test_type,
        steps=steps,
        prelude_length=len(parsed_prelude),
        cycle_length=len(parsed_cycle),
        n_cycles=n_cycles,
        limits=bench_limits(test_type, ratings, request.safety),
        expects_safety_stop=test_type in ABUSE_TESTS,
        ratings=ratings,
        dt_s=request.dt_s or default_dt,
        ambient_c=request.ambient_c,
    )
