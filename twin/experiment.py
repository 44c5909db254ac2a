"""PyBaMM-style experiment strings, parsed and run on any single-cell twin or pack.

Understood steps (case-insensitive; rates in C, A or W, durations in s/min/h)::

    Discharge at 1C for 1 hour
    Charge at 0.5 C until 4.2 V
    Discharge at 20 A for 10 minutes or until 3.0 V
    Discharge at 5 W for 30 min
    Hold at 4.2 V until C/50           (also "until 50 mA", "for 30 minutes")
    Rest for 2 hours

The parser needs no PyBaMM, so ECM runs stay light.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from numpy.typing import ArrayLike

from twin.errors import TwinInputError
from twin.models.base import CellStep, check_dt
from twin.pack import Pack, PackStep

__all__ = ["ExperimentStep", "ExperimentTrace", "parse_experiment", "run_experiment"]

Mode = Literal["current", "power", "voltage", "rest"]

_UNIT_S = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
}  # fmt: skip
_NUM = r"(\d+(?:\.\d+)?(?:e-?\d+)?)"
_DURATION = rf"{_NUM}\s*([a-z]+)"
_RATE = rf"(?:{_NUM}\s*(c|a|ma|w|kw)|c/{_NUM})"
_RE_RATE = re.compile(
    rf"^(discharge|charge) at {_RATE}(?: for {_DURATION})?(?:(?: or)? until {_NUM}\s*v)?$"
)
_RE_HOLD = re.compile(
    rf"^hold at {_NUM}\s*v(?: for {_DURATION})?(?:(?: or)? until (?:{_NUM}\s*(ma|a)|c/{_NUM}))?$"
)
_RE_REST = re.compile(rf"^rest for {_DURATION}$")


@dataclass(frozen=True)
class ExperimentStep:
    """One parsed step. ``value`` is A (current), W (power) or V (voltage); positive
    current/power discharges. ``c_rate`` is kept when the step was given in C."""

    text: str
    mode: Mode
    value: float = 0.0
    c_rate: float | None = None
    duration_s: float | None = None
    until_voltage_v: float | None = None
    until_current_a: float | None = None
    until_c_rate: float | None = None


def _duration(number: str | None, unit: str | None, text: str) -> float | None:
    if number is None:
        return None
    assert unit is not None
    if unit not in _UNIT_S:
        raise TwinInputError(
            f"unknown time unit {unit!r} in experiment step {text!r}; use s, min or h"
        )
    seconds = float(number) * _UNIT_S[unit]
    if seconds <= 0:
        raise TwinInputError(f"duration must be > 0 in experiment step {text!r}")
    return seconds


def _parse_one(text: str) -> ExperimentStep:
    s = " ".join(text.strip().lower().split())
    if m := _RE_REST.match(s):
        return ExperimentStep(text, "rest", duration_s=_duration(m[1], m[2], text))
    if m := _RE_RATE.match(s):
        sign = 1.0 if m[1] == "discharge" else -1.0
        number, unit, c_over, dur_n, dur_u, until_v = m[2], m[3], m[4], m[5], m[6], m[7]
        duration = _duration(dur_n, dur_u, text)
        if duration is None and until_v is None:
            raise TwinInputError(f"experiment step {text!r} needs 'for <time>' or 'until <V>'")
        until = float(until_v) if until_v else None
        if c_over is not None:
            return ExperimentStep(
                text,
                "current",
                c_rate=sign / float(c_over),
                duration_s=duration,
                until_voltage_v=until,
            )
        value = float(number)
        if unit == "c":
            return ExperimentStep(
                text, "current", c_rate=sign * value, duration_s=duration, until_voltage_v=until
            )
        if unit in ("a", "ma"):
            amps = value / 1000.0 if unit == "ma" else value
            return ExperimentStep(
                text, "current", value=sign * amps, duration_s=duration, until_voltage_v=until
            )
        watts = value * 1000.0 if unit == "kw" else value
        return ExperimentStep(
            text, "power", value=sign * watts, duration_s=duration, until_voltage_v=until
        )
    if m := _RE_HOLD.match(s):
        volts, dur_n, dur_u, cur_n, cur_u, c_over = m[1], m[2], m[3], m[4], m[5], m[6]
        duration = _duration(dur_n, dur_u, text)
        until_a = None
        if cur_n is not None:
            until_a = float(cur_n) / (1000.0 if cur_u == "ma" else 1.0)
        until_c = 1.0 / float(c_over) if c_over else None
        if duration is None and until_a is None and until_c is None:
            raise TwinInputError(
                f"experiment step {text!r} needs 'for <time>' or 'until <current>'"
            )
        return ExperimentStep(
            text,
            "voltage",
            value=float(volts),
            duration_s=duration,
            until_current_a=until_a,
            until_c_rate=until_c,
        )
    raise TwinInputError(
        f"cannot parse experiment step {text!r}; expected e.g. 'Discharge at 1C for 1 hour', "
        "'Charge at 0.5C until 4.2 V', 'Hold at 4.2 V until C/50', 'Rest for 10 minutes'"
    )


def parse_experiment(steps: str | Sequence[str]) -> list[ExperimentStep]:
    """Parse steps given as a list or as one string separated by ``;`` or newlines.

    Raises:
        TwinInputError: Naming the step that could not be parsed.
    """
    items = re.split(r"[;\n]", steps) if isinstance(steps, str) else list(steps)
    parsed = [_parse_one(s) for s in items if s.strip()]
    if not parsed:
        raise TwinInputError("the experiment has no steps")
    return parsed


class _Steppable(Protocol):
    def step(self, *, current_a: ArrayLike, dt_s: float, ambient_c: ArrayLike) -> CellStep: ...
    def step_power(self, *, power_w: ArrayLike, dt_s: float, ambient_c: ArrayLike) -> CellStep: ...


@dataclass
class ExperimentTrace:
    """Time series recorded by :func:`run_experiment` (one row per twin step)."""

    time_s: list[float] = field(default_factory=list)
    step_index: list[int] = field(default_factory=list)
    current_a: list[float] = field(default_factory=list)
    voltage_v: list[float] = field(default_factory=list)
    temperature_c: list[float] = field(default_factory=list)
    soc: list[float] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def record(self, out: CellStep | PackStep, step_index: int) -> tuple[float, float]:
        """Append one twin step; return its (current, voltage) for termination checks."""
        current, voltage, temp, soc = _observe(out)
        self.time_s.append(out.time_s)
        self.step_index.append(step_index)
        self.current_a.append(current)
        self.voltage_v.append(voltage)
        self.temperature_c.append(temp)
        self.soc.append(soc)
        self.events.extend(str(e) for e in out.events)
        return current, voltage

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {
            "time_s": np.asarray(self.time_s),
            "step": np.asarray(self.step_index),
            "current_a": np.asarray(self.current_a),
            "voltage_v": np.asarray(self.voltage_v),
            "temperature_c": np.asarray(self.temperature_c),
            "soc": np.asarray(self.soc),
        }


def _observe(out: CellStep | PackStep) -> tuple[float, float, float, float]:
    if isinstance(out, PackStep):
        return (
            out.current_a,
            out.voltage_v,
            float(out.cells.surface_temperature_c.max()),
            float(out.cells.truth.soc.mean()),
        )
    return (
        float(out.current_a[0]),
        float(out.voltage_v[0]),
        float(out.surface_temperature_c[0]),
        float(out.truth.soc[0]),
    )


def run_experiment(
    twin: _Steppable | Pack,
    steps: str | Sequence[str],
    *,
    capacity_ah: float,
    dt_s: float = 10.0,
    ambient_c: float = 25.0,
    max_step_duration_s: float = 48 * 3600.0,
    progress: Callable[[int, int, str], None] | None = None,
) -> ExperimentTrace:
    """Drive a single-cell twin (``n_cells == 1``) or a :class:`Pack` through an experiment.

    Args:
        twin: The twin to drive.
        steps: Experiment steps (see module docstring).
        capacity_ah: Capacity that defines 1C (a pack's C includes its parallel cells).
        dt_s: Step length; termination conditions are checked after each step.
        ambient_c: Ambient temperature.
        max_step_duration_s: Safety stop for an ``until`` that is never reached.
        progress: Called with ``(done_step, n_steps, step_text)``.
    """
    dt = check_dt(dt_s, source="run_experiment")
    parsed = parse_experiment(steps)
    if capacity_ah <= 0:
        raise TwinInputError(f"capacity_ah must be > 0, got {capacity_ah}")
    is_pack = isinstance(twin, Pack)
    if not is_pack and getattr(twin, "n_cells", 1) != 1:
        raise TwinInputError(
            "run_experiment drives one cell or one Pack; got a twin of several cells"
        )
    trace = ExperimentTrace()
    for index, st in enumerate(parsed):
        if progress:
            progress(index, len(parsed), st.text)
        limit = st.duration_s if st.duration_s is not None else max_step_duration_s
        elapsed = 0.0
        while elapsed < limit - 1e-9:
            h = min(dt, limit - elapsed)
            if st.mode == "rest":
                out = twin.step(current_a=0.0, dt_s=h, ambient_c=ambient_c)
            elif st.mode == "current":
                amps = st.value if st.c_rate is None else st.c_rate * capacity_ah
                out = twin.step(current_a=amps, dt_s=h, ambient_c=ambient_c)
            elif st.mode == "power":
                out = twin.step_power(power_w=st.value, dt_s=h, ambient_c=ambient_c)
            else:
                hold = getattr(twin, "step_voltage", None)
                if hold is None:
                    raise TwinInputError(
                        f"{type(twin).__name__} cannot hold a voltage (step {st.text!r})"
                    )
                out = hold(voltage_v=st.value, dt_s=h, ambient_c=ambient_c)
            elapsed += h
            current, voltage = trace.record(out, index)
            if _terminated(st, current=current, voltage=voltage, capacity_ah=capacity_ah):
                break
        else:
            if st.duration_s is None:
                raise TwinInputError(
                    f"step {st.text!r} did not reach its end condition within "
                    f"{max_step_duration_s / 3600:.0f} h"
                )
    if progress:
        progress(len(parsed), len(parsed), "done")
    return trace


def _terminated(st: ExperimentStep, *, current: float, voltage: float, capacity_ah: float) -> bool:
    if st.until_voltage_v is not None:
        rate = st.c_rate if st.mode == "current" and st.c_rate is not None else st.value
        discharging = rate > 0
        if (discharging and voltage <= st.until_voltage_v) or (
            not discharging and voltage >= st.until_voltage_v
        ):
            return True
    if st.mode == "voltage":
        cutoff = st.until_current_a
        if st.until_c_rate is not None:
            cutoff = st.until_c_rate * capacity_ah
        if cutoff is not None and abs(current) <= cutoff:
            return True
    return False
