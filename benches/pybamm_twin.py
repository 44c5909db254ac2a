"""Benchmark: how much faster than real time the PyBaMM twin steps a domestic profile.

Scenario: one LG M50 cell (PyBaMM "Chen2020" by default), SPMe with lumped thermal
model and solvent-diffusion-limited SEI growth, stepped every 10 s through a seeded
domestic-storage-like profile: rests and 0.2-1C charge/discharge segments of 5-60 min,
with +-10 % load noise on every step so each step restarts the solver at a new current.

Run ``python -m benches.pybamm_twin --json`` to print the result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from numpy.typing import NDArray

DT_S = 10.0  # s, step length of the twin
NOMINAL_CAPACITY_AH = 5.0  # A.h, LG M50 (Chen2020 / OKane2022): 1C = 5 A
INITIAL_SOC = 0.5
SOC_BAND = (0.15, 0.9)  # profile turns around before leaving this (coulomb-counted) band


def domestic_profile(*, n_steps: int, seed: int = 2024) -> NDArray[np.float64]:
    """Per-step currents (A, positive = discharge) of a household-battery-like day.

    Segments are a rest (40 %), a discharge (30 %) or a charge (30 %) at 0.2-1C for
    5-60 min; a segment that would leave ``SOC_BAND`` by coulomb counting is turned
    into a rest or reversed. Every step gets +-10 % (1 sigma) load noise.
    """
    rng = np.random.default_rng(seed)
    currents = np.empty(n_steps)
    soc = INITIAL_SOC
    i = 0
    while i < n_steps:
        n = min(int(rng.integers(30, 361)), n_steps - i)  # 5-60 min of 10 s steps
        kind = rng.choice(3, p=(0.4, 0.3, 0.3))  # rest, discharge, charge
        c_rate = float(rng.uniform(0.2, 1.0))
        base_a = (0.0, c_rate, -c_rate)[kind] * NOMINAL_CAPACITY_AH
        delta_soc = -base_a * n * DT_S / 3600.0 / NOMINAL_CAPACITY_AH
        if not SOC_BAND[0] <= soc + delta_soc <= SOC_BAND[1]:
            base_a = -base_a
            delta_soc = -delta_soc
            if not SOC_BAND[0] <= soc + delta_soc <= SOC_BAND[1]:
                base_a, delta_soc = 0.0, 0.0
        noise = 1.0 + 0.1 * rng.standard_normal(n)
        currents[i : i + n] = base_a * np.clip(noise, 0.5, 1.5)
        soc += -float(currents[i : i + n].sum()) * DT_S / 3600.0 / NOMINAL_CAPACITY_AH
        i += n
    return currents


def run_benchmark(
    *,
    simulated_s: float = 86_400.0,
    parameter_set: str = "Chen2020",
    compile_model: bool = False,
) -> dict[str, float]:
    """Step an SPMe + lumped thermal + SEI twin through ``simulated_s`` of the profile.

    Args:
        simulated_s: Simulated time; one day by default (8640 steps).
        parameter_set: ``"Chen2020"`` or ``"OKane2022"`` (about 5x costlier Jacobian).
        compile_model: Use PyBaMM's gcc compile of the model (first run compiles,
            about a minute for OKane2022; later runs load the cached library).

    Returns:
        ``pybamm_realtime_factor`` (simulated seconds per wall second of stepping),
        ``pybamm_step_ms`` (wall time per 10 s step), ``pybamm_build_s`` (model build,
        solver set-up and any compile), ``simulated_s``, ``steps`` and the final truth
        ``final_soc`` and ``final_lli_pct`` as a sanity check.
    """
    # PyBaMM asks about telemetry on first import unless told not to.
    os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")
    from twin.models.pybamm_twin import PybammTwin, PybammTwinConfig

    n_steps = round(simulated_s / DT_S)
    if n_steps < 1:
        raise ValueError(f"simulated_s must be >= {DT_S} s, got {simulated_s!r} (run_benchmark)")
    currents = domestic_profile(n_steps=n_steps)

    start = time.perf_counter()
    twin = PybammTwin(
        PybammTwinConfig(
            parameter_set=parameter_set,
            model="SPMe",
            thermal="lumped",
            sei="solvent-diffusion limited",
            initial_soc=INITIAL_SOC,
            compile_model=compile_model,
        )
    )
    build_s = time.perf_counter() - start

    step = twin.last_step
    start = time.perf_counter()
    for current_a in currents:
        step = twin.step(current_a=current_a, dt_s=DT_S, ambient_c=20.0)
    wall_s = time.perf_counter() - start

    return {
        "pybamm_realtime_factor": n_steps * DT_S / wall_s,
        "pybamm_step_ms": wall_s / n_steps * 1e3,
        "pybamm_build_s": build_s,
        "simulated_s": n_steps * DT_S,
        "steps": float(n_steps),
        "final_soc": float(step.truth.soc[0]),
        "final_lli_pct": float(step.truth.lli_pct[0]),
    }


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m benches.pybamm_twin [--json] [options]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--simulated-s", type=float, default=86_400.0)
    parser.add_argument("--parameter-set", default="Chen2020")
    parser.add_argument("--compile", action="store_true", help="gcc-compile the model")
    args = parser.parse_args(argv)
    result = run_benchmark(
        simulated_s=args.simulated_s,
        parameter_set=args.parameter_set,
        compile_model=args.compile,
    )
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>24}: {value:.6g}")


if __name__ == "__main__":
    main()
