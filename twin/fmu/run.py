"""Run any FMU (not only batteries) from a CSV of inputs to a CSV of outputs.

CSV format, both ways: a header row, then one row per time point. The first column is
``time`` (s); the others are FMU variables by name (inputs on the way in, outputs on the
way out). Inputs are held between rows (FMPy's input handling; a row repeated at the same
time makes a step change).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twin.errors import FmuError
from twin.fmu import fmpy_adapter
from twin.fmu.describe import FmuDescription, describe_fmu

__all__ = ["FmuRunResult", "read_input_csv", "run_fmu", "write_output_csv"]


@dataclass(frozen=True)
class FmuRunResult:
    """Outputs over time: ``time_s`` and one array per output variable."""

    time_s: np.ndarray
    outputs: dict[str, np.ndarray]


def read_input_csv(path: Path, description: FmuDescription) -> np.ndarray:
    """A structured array for FMPy's ``input=``: ``time`` then the FMU's input variables.

    Raises:
        FmuError: No ``time`` first column, a column that is not an input of the FMU, a
            non-numeric cell (named by row and column), or time going backwards.
    """
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise FmuError(f"{path}: empty input CSV; the first row must be a header: time,<inputs>")
    header = [h.strip() for h in rows[0]]
    if not header or header[0] != "time":
        raise FmuError(f"{path}: the first column must be 'time', got {header[:1]}")
    inputs = {v.name for v in description.inputs}
    unknown = [h for h in header[1:] if h not in inputs]
    if unknown:
        raise FmuError(
            f"{path}: column(s) {', '.join(unknown)} are not inputs of {description.model_name}; "
            f"its inputs are {', '.join(sorted(inputs)) or '(none)'}"
        )
    data = np.empty(len(rows) - 1, dtype=[(h, np.float64) for h in header])
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise FmuError(f"{path}: row {r} has {len(row)} values, the header {len(header)}")
        for c, (name, cell) in enumerate(zip(header, row, strict=True)):
            try:
                data[name][r - 2] = float(cell)
            except ValueError:
                raise FmuError(
                    f"{path}: row {r}, column {c + 1} ({name}): {cell!r} is not a number"
                ) from None
    if data.size and np.any(np.diff(data["time"]) < 0):
        raise FmuError(f"{path}: time must not decrease")
    return data


def run_fmu(
    path: Path,
    *,
    stop_time_s: float | None = None,
    step_s: float | None = None,
    input_csv: Path | None = None,
    start_values: Mapping[str, float] | None = None,
    outputs: list[str] | None = None,
) -> FmuRunResult:
    """Simulate an FMU with FMPy (co-simulation if offered, else model exchange + CVode).

    Args:
        path: The FMU.
        stop_time_s: End time; default the FMU's default experiment, else the input's end,
            else 1 s.
        step_s: Communication step; default the FMU's, else 1/500 of the run.
        input_csv: Inputs over time (see module docstring).
        start_values: Parameter/start values by name.
        outputs: Variables to record; default all outputs.

    Raises:
        FmuError: Bad input, no binary for this platform, or a failing simulation.
    """
    desc = describe_fmu(path)
    if not desc.runs_here():
        raise FmuError(
            f"{path}: no binary for this platform "
            f"({fmpy_adapter.platform_tuple(desc.fmi_version)}); it has "
            f"{', '.join(desc.platforms) or 'none'}"
        )
    signal = read_input_csv(input_csv, desc) if input_csv is not None else None
    for name in start_values or {}:
        desc.variable(name)
    names = outputs or [v.name for v in desc.outputs]
    for name in names:
        desc.variable(name)
    if not names:
        raise FmuError(f"{path}: the FMU has no outputs; name variables to record with outputs=")
    stop = stop_time_s
    if stop is None:
        stop = desc.default_experiment.get("stop_time_s")
    if stop is None and signal is not None and signal.size:
        stop = float(signal["time"][-1])
    stop = 1.0 if stop is None else float(stop)
    if not stop > 0:
        raise FmuError(f"stop time must be > 0 s, got {stop}")
    step = step_s if step_s is not None else desc.default_experiment.get("step_size_s")
    if step is not None and not step > 0:
        raise FmuError(f"step must be > 0 s, got {step}")
    kwargs: dict[str, Any] = {
        "stop_time": stop,
        "start_values": dict(start_values or {}),
        "output": names,
        "fmi_type": "CoSimulation" if desc.co_simulation else "ModelExchange",
    }
    if step is not None:
        kwargs["step_size"] = step
        kwargs["output_interval"] = step
    if signal is not None:
        kwargs["input"] = signal
    result = fmpy_adapter.simulate(path, **kwargs)
    return FmuRunResult(
        time_s=np.asarray(result["time"], dtype=np.float64),
        outputs={name: np.asarray(result[name], dtype=np.float64) for name in names},
    )


def write_output_csv(result: FmuRunResult, path: Path) -> None:
    """``time`` then the outputs by variable name, full precision."""
    names = list(result.outputs)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["time", *names])
        cols = [result.time_s, *(result.outputs[n] for n in names)]
        for row in zip(*cols, strict=True):
            writer.writerow([repr(float(x)) for x in row])
