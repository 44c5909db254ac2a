"""The twin-core benchmark: every figure the twin issue promises, in one JSON object.

- ``ecm_cell_steps_per_s``: 10,000-cell ECM fleet, 2 RC pairs, thermal, ageing, 1 s steps.
- ``pybamm_realtime_factor``: SPMe + lumped thermal + SEI twin stepped at 10 s.
- ``calibration_rms_mv``: fitted ECM vs PyBaMM on a held-out dynamic profile.
- ``blast_lite_fade_difference_pct``: our NMC fade minus BLAST-Lite's after 5 years.

Run: ``python -m benches.twin --json`` (under a minute once the BLAST-Lite venv exists;
building it the first time adds about a minute; progress goes to stderr).
A part that cannot run reports ``null`` and says why under ``errors``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

PARTS = ("ecm", "pybamm", "calibration", "blast_lite")


def _ecm() -> dict[str, Any]:
    from benches.ecm_fleet import run_benchmark

    return dict(run_benchmark())


def _pybamm() -> dict[str, Any]:
    from benches.pybamm_twin import run_benchmark

    return dict(run_benchmark())


def _calibration() -> dict[str, Any]:
    from benches.calibration import run_benchmark

    return dict(run_benchmark())


def _blast_lite() -> dict[str, Any]:
    from benches.blast_lite import run_benchmark

    result = run_benchmark()
    keys = (
        "blast_lite_fade_difference_pct",
        "blast_lite_fade_relative_difference",
        "our_fade_pct",
        "blast_lite_fade_pct",
        "our_model",
        "blast_lite_model",
        "duty_cycle",
        "error",
    )
    out = {k: result.get(k) for k in keys}
    if out["error"]:
        raise RuntimeError(str(out["error"]))
    del out["error"]
    out["blast_lite_our_fade_pct"] = out.pop("our_fade_pct")
    return out


RUNNERS: dict[str, Callable[[], dict[str, Any]]] = {
    "ecm": _ecm,
    "pybamm": _pybamm,
    "calibration": _calibration,
    "blast_lite": _blast_lite,
}
HEADLINE = {
    "ecm": "ecm_cell_steps_per_s",
    "pybamm": "pybamm_realtime_factor",
    "calibration": "calibration_rms_mv",
    "blast_lite": "blast_lite_fade_difference_pct",
}


def run_benchmark(parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    """Run the chosen parts; a failing part yields ``null`` plus an entry in ``errors``."""
    os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")
    result: dict[str, Any] = {
        "benchmark": "twin",
        "machine": (
            f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
    }
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    for part in parts:
        print(f"[benches.twin] {part} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            result.update(RUNNERS[part]())
        except Exception as exc:  # report, never invent a figure
            result[HEADLINE[part]] = None
            errors[part] = f"{type(exc).__name__}: {exc}"
        timings[part] = round(time.perf_counter() - start, 1)
        print(f"[benches.twin] {part} done in {timings[part]} s", file=sys.stderr, flush=True)
    result["runtime_s"] = timings
    result["errors"] = errors
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Twin-core benchmark.")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--only", choices=PARTS, action="append", help="run only these parts")
    args = parser.parse_args()
    result = run_benchmark(tuple(args.only) if args.only else PARTS)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    sys.exit(1 if result["errors"] else 0)


if __name__ == "__main__":
    main()
