"""Run NREL BLAST-Lite on a SoC/temperature day repeated for N years (inside BLAST's own venv).

Usage: ``python _blast_lite_runner.py IN.json OUT.json``. Uses only the standard library,
numpy<2 and blast-lite, never the batterytwin project (its numpy>=2 cannot coexist).

IN.json: ``{"time_s": [...], "soc": [...], "temperature_c": [...], "years": 5,
"models": ["Nmc111_Gr_Sanyo2Ah_Battery", ...]}`` where the series covers one period and
ends where it starts (it is repeated). OUT.json: per model, every BLAST output (``q``,
``q_t``, ...) interpolated at exactly ``years * 365`` days, plus versions.
"""

from __future__ import annotations

import json
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Simulate each requested BLAST-Lite model on the repeated series."""
    import numpy as np
    from blast import models  # type: ignore[import-not-found, unused-ignore]

    series = {
        "Time_s": np.asarray(spec["time_s"], dtype=float),
        "SOC": np.asarray(spec["soc"], dtype=float),
        "Temperature_C": np.asarray(spec["temperature_c"], dtype=float),
    }
    years = float(spec["years"])
    end_days = years * 365.0
    results: dict[str, Any] = {}
    for name in spec["models"]:
        started = time.perf_counter()
        cell = getattr(models, name)()
        # The same SoC series every period: BLAST then scales throughput by the present
        # capacity (SoC is relative to it), exactly as our bench does.
        cell.simulate_battery_life(
            series, threshold_time=years, is_conserve_energy_throughput=False
        )
        t_days = np.asarray(cell.stressors["t_days"], dtype=float)
        efc = np.asarray(cell.stressors["efc"], dtype=float)
        outputs = {
            key: float(np.interp(end_days, t_days, np.asarray(values, dtype=float)))
            for key, values in cell.outputs.items()
        }
        results[name] = {
            "label": str(cell._label),
            "outputs_at_end": outputs,
            "efc_at_end": float(np.interp(end_days, t_days, efc)),
            "simulated_days": float(t_days[-1]),
            "updates": int(t_days.size - 1),
            "runtime_s": time.perf_counter() - started,
        }
    return {
        "blast_lite_version": metadata.version("blast-lite"),
        "numpy_version": str(np.__version__),
        "python_version": sys.version.split()[0],
        "end_days": end_days,
        "results": results,
    }


def main(argv: list[str]) -> int:
    """Read the spec, run BLAST-Lite, write the results; returns the exit code."""
    if len(argv) != 3:
        print(f"usage: {argv[0]} IN.json OUT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    Path(argv[2]).write_text(json.dumps(run(spec)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
