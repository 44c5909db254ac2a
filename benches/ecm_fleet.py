"""ECM fleet throughput: 10,000 cells, 2 RC pairs, thermal and ageing, 1 s steps.

Also times a bare numpy 2-RC update (no tables, no thermal, no ageing, no events) on the
same machine, so the cost of the extra physics is visible as a ratio.

Run: ``python -m benches.ecm_fleet --json``
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from twin.models.ecm import CellInit, EcmOptions, EcmTwin
from twin.params import load_parameter_set

DEFAULT_SET = "nmc_okane2022"


def bare_numpy_2rc(*, n_cells: int = 10_000, n_steps: int = 2000) -> float:
    """Cell-steps per second of the minimal 2-RC update with fixed parameters."""
    rng = np.random.default_rng(0)
    current = rng.uniform(-5, 5, n_cells)
    v1, v2, soc, volt = (np.zeros(n_cells) for _ in range(4))
    a1, a2 = np.full(n_cells, np.exp(-1 / 10)), np.full(n_cells, np.exp(-1 / 300))
    b1, b2 = np.full(n_cells, 0.01 * (1 - a1[0])), np.full(n_cells, 0.02 * (1 - a2[0]))
    start = time.perf_counter()
    for _ in range(n_steps):
        v1 *= a1
        v1 += b1 * current
        v2 *= a2
        v2 += b2 * current
        soc -= current * (1 / 3600 / 5.0)
        np.subtract(3.7 - 0.02 * current, v1 + v2, out=volt)
    return n_cells * n_steps / (time.perf_counter() - start)


def ecm_fleet(
    *, parameter_set: str = DEFAULT_SET, n_cells: int = 10_000, n_steps: int = 3600
) -> dict[str, float]:
    """Time ``n_steps`` 1 s steps of a 10k-cell second-life fleet with everything on.

    Currents change every minute between 16 random per-cell patterns within +-1C, so
    direction changes, reversal counting and (with 3600 steps) one ageing update happen.
    """
    params = load_parameter_set(parameter_set)
    if params.n_rc < 2:
        raise SystemExit(f"parameter set {parameter_set!r} has {params.n_rc} RC pair(s); need 2")
    rng = np.random.default_rng(1)
    init = CellInit(
        soc=rng.uniform(0.3, 0.7, n_cells),
        soh=rng.uniform(0.7, 0.9, n_cells),
        resistance_factor=rng.uniform(1.1, 1.5, n_cells),
        temperature_c=25.0,
    )
    twin = EcmTwin(
        params,
        n_cells=n_cells,
        init=init,
        options=EcmOptions(n_rc=2, ageing="auto", ageing_interval_s=3600.0, thermal=True),
    )
    one_c = params.nominal_capacity_ah
    patterns = [rng.uniform(-one_c, one_c, n_cells) for _ in range(16)]
    for k in range(60):
        twin.step(current_a=patterns[k % 16], dt_s=1.0, ambient_c=25.0)
    start = time.perf_counter()
    for k in range(n_steps):
        twin.step(current_a=patterns[(k // 60) % 16], dt_s=1.0, ambient_c=25.0)
    elapsed = time.perf_counter() - start
    return {
        "ecm_cell_steps_per_s": n_cells * n_steps / elapsed,
        "ecm_n_cells": float(n_cells),
        "ecm_n_steps": float(n_steps),
        "ecm_capacity_fade_pct_in_run": float(
            100 * (1 - twin.capacity_ah.mean() / (init_capacity(init, params.nominal_capacity_ah)))
        ),
    }


def init_capacity(init: CellInit, nominal_ah: float) -> float:
    return float(np.mean(np.asarray(init.soh)) * nominal_ah)


def run_benchmark(*, parameter_set: str = DEFAULT_SET) -> dict[str, float]:
    """Both measurements, best of three runs each (the machine is shared)."""
    fleet = max(
        (ecm_fleet(parameter_set=parameter_set) for _ in range(3)),
        key=lambda r: r["ecm_cell_steps_per_s"],
    )
    bare = max(bare_numpy_2rc() for _ in range(3))
    return {
        **fleet,
        "numpy_bare_2rc_cell_steps_per_s": bare,
        "ecm_slowdown_vs_bare_numpy": bare / fleet["ecm_cell_steps_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--params", default=DEFAULT_SET, help="a 2-RC ECM parameter set")
    args = parser.parse_args()
    result = run_benchmark(parameter_set=args.params)
    print(
        json.dumps(result) if args.json else "\n".join(f"{k}: {v:.4g}" for k, v in result.items())
    )


if __name__ == "__main__":
    main()
