"""Scenario speed: ten years of Pillar 2, one year of Pillar 1, a sweep on 1 vs 2 workers.

- ``pillar2_10y_s``: 10 years of ``scenarios/pillar2_home.toml`` (16 cells, ECM + ageing,
  60 s steps), wall time on one core.
- ``pillar1_1y_s``: one year of ``scenarios/pillar1_charging_hub.toml`` (10 chargers, a
  4-module storage of 512 cells, 60 s steps).
- ``sweep_speedup_2_workers``: an 8-run sweep (Pillar 2, one year each, ambient offset
  varied) on 2 local worker processes vs 1.

Run: ``python -m benches.scenarios --json`` (about three minutes). Compilation of the pack
kernel is warmed up first and not counted; loading the weather and load profiles is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scenarios.config import Scenario, load_scenario, with_overrides
from scenarios.engine import simulate
from scenarios.runner import run_kpis
from scenarios.sweep import design_full, run_sweep

ROOT = Path(__file__).resolve().parent.parent


def _length(path: str, *, years: float | None = None, days: float | None = None) -> Scenario:
    return with_overrides(
        load_scenario(ROOT / path),
        {"simulation.years": years, "simulation.days": days, "simulation.full_resolution_days": []},
    )


def _timed(scenario: Scenario) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    summary = simulate(scenario).summary
    return time.perf_counter() - start, summary


def _sweep_s(workers: int) -> float:
    base = _length("scenarios/pillar2_home.toml", years=1.0)
    points = design_full({"site.ambient_offset_c": [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0]})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_sweep(base, points, run_one=run_kpis, out_dir=Path(tmp), workers=workers)
        return time.perf_counter() - start


def run_benchmark() -> dict[str, Any]:
    """All three figures plus the KPIs of the long runs (so a fast wrong run shows)."""
    _timed(_length("scenarios/pillar2_home.toml", days=1.0))  # compile / load the kernel
    print("[benches.scenarios] pillar 2, 10 years ...", file=sys.stderr, flush=True)
    p2_s, p2 = _timed(_length("scenarios/pillar2_home.toml", years=10.0))
    print("[benches.scenarios] pillar 1, 1 year ...", file=sys.stderr, flush=True)
    p1_s, p1 = _timed(_length("scenarios/pillar1_charging_hub.toml", years=1.0))
    print("[benches.scenarios] sweep on 1 and 2 workers ...", file=sys.stderr, flush=True)
    one = _sweep_s(1)
    two = _sweep_s(2)
    return {
        "benchmark": "scenarios",
        "cpu_count": os.cpu_count(),
        "pillar2_10y_s": p2_s,
        "pillar2_10y_soh_end": p2["soh_end"],
        "pillar2_10y_energy_balance_error_pct": p2["energy_balance_error_pct"],
        "pillar1_1y_s": p1_s,
        "pillar1_1y_peak_grid_kw": p1["peak_grid_kw"],
        "pillar1_1y_energy_balance_error_pct": p1["energy_balance_error_pct"],
        "sweep_8_runs_1_worker_s": one,
        "sweep_8_runs_2_workers_s": two,
        "sweep_speedup_2_workers": one / two,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Scenario speed benchmark.")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run_benchmark()
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
