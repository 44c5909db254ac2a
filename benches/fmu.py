"""FMU benchmark: export time, stepping cost through ``FmuTwin``, agreement with the twin.

Scenario: the calibrated NMC cell (``nmc_okane2022``, 5 Ah, 2 RC pairs, no ageing) exported
three ways: PythonFMU (FMI 2.0 co-simulation), C source (FMI 2.0 co-simulation and
model exchange, FMI 3.0 co-simulation). Each runs 16 cells through ``FmuTwin`` on a
one-hour profile (1C discharge, rest, C/2 charge, 1.5C/0.6C pulses) at 1 s steps, beside
the native ``EcmTwin`` on the same profile.

Figures per export:
- ``export_s``: building the FMU (PythonFMU packaging, or C generation + compilation).
- ``us_per_cell_step``: wall time of ``FmuTwin.step`` per cell and step.
- ``us_per_cell_power_step``: the same for ``step_power`` (rolled-back trial steps when
  the FMU can save its state, else ``P / V``).
- ``max_abs_dv_mv``: largest voltage difference to the native twin over the hour.

Run: ``python -m benches.fmu --json`` (about 1 minute).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PARAMS = "nmc_okane2022"
N_CELLS = 16
DT_S = 1.0
POWER_STEPS = 300


def _profile(n_steps: int) -> np.ndarray:
    t = np.arange(n_steps)
    quarter = n_steps // 4
    current = np.where(t < quarter, 5.0, 0.0)
    current = np.where((t >= 2 * quarter) & (t < 3 * quarter), -2.5, current)
    return np.where(t >= 3 * quarter, np.where(t % 20 < 10, 7.5, -3.0), current)


def _exports(folder: Path) -> dict[str, tuple[Callable[[], Path], str]]:
    from twin.fmu.export_c import export_c_fmu
    from twin.fmu.export_python import export_python_fmu
    from twin.models.ecm import CellInit, EcmOptions
    from twin.params import load_parameter_set

    params = load_parameter_set(PARAMS)
    init = CellInit(soc=0.6)
    no_ageing = EcmOptions(ageing="none")
    return {
        "python_fmi2_cs": (
            lambda: export_python_fmu(
                folder / "py.fmu", params=PARAMS, init=init, options=no_ageing
            ),
            "CoSimulation",
        ),
        "c_fmi2_cs": (
            lambda: export_c_fmu(params, folder / "c2.fmu", fmi_version=2, init=init),
            "CoSimulation",
        ),
        "c_fmi2_me": (
            lambda: export_c_fmu(params, folder / "c2me.fmu", fmi_version=2, init=init),
            "ModelExchange",
        ),
        "c_fmi3_cs": (
            lambda: export_c_fmu(params, folder / "c3.fmu", fmi_version=3, init=init),
            "CoSimulation",
        ),
    }


def _measure(path: Path, interface: Any, profile: np.ndarray) -> dict[str, float]:
    from twin.fmu.twin import FmuTwin
    from twin.models.ecm import CellInit, EcmOptions, EcmTwin
    from twin.params import load_parameter_set

    native = EcmTwin(
        load_parameter_set(PARAMS),
        n_cells=N_CELLS,
        init=CellInit(soc=0.6),
        options=EcmOptions(ageing="none"),
    )
    worst = 0.0
    with FmuTwin(path, n_cells=N_CELLS, initial_soc=0.6, interface=interface) as fmu:
        elapsed = 0.0
        for current in profile:
            start = time.perf_counter()
            out = fmu.step(current_a=current, dt_s=DT_S, ambient_c=25.0)
            elapsed += time.perf_counter() - start
            ref = native.step(current_a=current, dt_s=DT_S, ambient_c=25.0)
            worst = max(worst, float(np.abs(out.voltage_v - ref.voltage_v).max()))
        start = time.perf_counter()
        for _ in range(POWER_STEPS):
            fmu.step_power(power_w=-8.0, dt_s=DT_S, ambient_c=25.0)
        power_s = time.perf_counter() - start
    cell_steps = profile.size * N_CELLS
    return {
        "us_per_cell_step": elapsed / cell_steps * 1e6,
        "us_per_cell_power_step": power_s / (POWER_STEPS * N_CELLS) * 1e6,
        "max_abs_dv_mv": worst * 1e3,
    }


def run(*, seconds: int = 3600) -> dict[str, Any]:
    os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")
    profile = _profile(seconds)
    results: dict[str, Any] = {"cells": N_CELLS, "steps": int(profile.size), "dt_s": DT_S}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (build, interface) in _exports(Path(tmp)).items():
            start = time.perf_counter()
            path = build()
            export_s = time.perf_counter() - start
            figures = _measure(path, interface, profile)
            results[name] = {"export_s": export_s, **figures}
            print(f"{name}: {results[name]}", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--seconds", type=int, default=3600, help="profile length (steps)")
    args = parser.parse_args()
    results = run(seconds=args.seconds)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
