"""ECM calibration accuracy: the shipped calibrated sets against PyBaMM, recomputed now.

Runs the held-out 4 h PV/load profile (the one :mod:`twin.calibrate` validates with,
never used for fitting) through PyBaMM's SPMe (isothermal) and through ``EcmTwin`` with
the shipped JSON set, and reports the terminal-voltage RMS error in mV at 25 degC, plus
10 and 40 degC for the NMC set. Needs PyBaMM.

Run: ``python -m benches.calibration --json``
"""

from __future__ import annotations

import argparse
import json
import time

from twin.calibrate import validate_against_pybamm
from twin.params import load_parameter_set

SHIPPED = {"nmc_okane2022": "OKane2022", "lfp_prada2013": "Prada2013"}
"""Shipped ECM set -> PyBaMM set it was calibrated against."""


def run_benchmark() -> dict[str, float]:
    """Held-out RMS (mV) of the shipped NMC and LFP sets vs PyBaMM, and the wall time."""
    start = time.perf_counter()
    nmc = validate_against_pybamm(
        load_parameter_set("nmc_okane2022"),
        SHIPPED["nmc_okane2022"],
        temperatures_c=(25.0, 10.0, 40.0),
    )
    lfp = validate_against_pybamm(load_parameter_set("lfp_prada2013"), SHIPPED["lfp_prada2013"])
    by_t = {v.temperature_c: v for v in nmc}
    return {
        "calibration_rms_mv": by_t[25.0].rms_mv,
        "calibration_max_mv": by_t[25.0].max_abs_mv,
        "calibration_rms_mv_10c": by_t[10.0].rms_mv,
        "calibration_rms_mv_40c": by_t[40.0].rms_mv,
        "calibration_rms_mv_lfp": lfp[0].rms_mv,
        "calibration_max_mv_lfp": lfp[0].max_abs_mv,
        "calibration_profile_hours": nmc[0].duration_s / 3600.0,
        "calibration_bench_seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run_benchmark()
    print(
        json.dumps(result) if args.json else "\n".join(f"{k}: {v:.4g}" for k, v in result.items())
    )


if __name__ == "__main__":
    main()
