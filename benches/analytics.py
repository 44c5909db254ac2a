"""The Battery Analytics upload benchmark: one BatteryLife-style pickle, end to end.

Scenario: a 100-cycle, 40,000-sample pickle (400 samples per cycle: CC-CV charge, rest,
CC discharge, rest) of a 58 Ah cell that loses capacity along a power law while its
resistance grows, with the quirks of real files: numpy floats, cycles starting at 2,
``time_in_s`` that resets inside some cycles, and a charge capacity that keeps counting
during discharge. The cell is analytic (an OCV curve with three phase changes, so dQ/dV
has peaks, minus I*R), so the file is made in milliseconds and the bench needs no twin.

- ``service_s``: :func:`cloud.analytics.analyse_upload` in process, all plots included.
- ``upload_s``: ``POST /api/upload`` through FastAPI's TestClient (SQLite, a logged-in
  service user): multipart parsing, analysis, plots and the JSON response.
- ``upload_python_floats_s``: the same with Python floats in the lists.

Each figure is the best of several runs (after one warm-up that imports matplotlib).
Run: ``python -m benches.analytics --json`` (about 10 s).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

NOMINAL_AH = 58.0
V_MAX, V_MIN = 4.2, 2.75  # V, charge and discharge cut-offs
# samples per cycle in each step: CC charge, CV charge, rest, CC discharge, rest
STEP_SAMPLES = (150, 30, 10, 190, 20)
BUDGET_S = 0.5  # the target for upload_s


# dQ/dV peaks of the open-circuit curve: (voltage V, width V, share of the capacity)
OCV_PEAKS = ((3.45, 0.03, 0.30), (3.65, 0.035, 0.25), (3.95, 0.04, 0.20))
_OCV_V = np.linspace(2.75, 4.17, 1421)  # V, empty to full


def _ocv_soc() -> NDArray[np.float64]:
    """State of charge along :data:`_OCV_V`: a sloping background plus a logistic step
    per peak (each phase change adds its share of the capacity around its voltage)."""
    share = 1.0 - sum(p[2] for p in OCV_PEAKS)
    soc = share * (_OCV_V - _OCV_V[0]) / (_OCV_V[-1] - _OCV_V[0])
    for volts, width, weight in OCV_PEAKS:
        soc = soc + weight / (1.0 + np.exp(-(_OCV_V - volts) / width))
    soc -= soc[0]
    return np.asarray(soc / soc[-1], dtype=np.float64)


_OCV_SOC = _ocv_soc()


def ocv(soc: NDArray[np.float64]) -> NDArray[np.float64]:
    """Open-circuit voltage (V) at state of charge 0..1."""
    return np.interp(soc, _OCV_SOC, _OCV_V)


def synthetic_cell(
    *,
    cycles: int = 100,
    first_cycle: int = 2,
    numpy_floats: bool = True,
    time_resets: bool = True,
    charge_during_discharge: bool = True,
    temperature: bool = True,
    fade_per_cycle: float = 0.0008,
    resistance_growth_per_cycle: float = 0.003,
    seed: int = 1,
) -> dict[str, Any]:
    """A BatteryML ``BatteryData.to_dict()``-style cell (current positive on charge).

    Capacity follows ``Q = Q0 (1 - k n^0.9)``; resistance grows (0.3 % per cycle). Each
    cycle charges from where the discharge stopped (so charge and discharge balance),
    CC to 95 % then CV to full, and discharges to the cut-off; the capacity columns hold
    what passed before each sample. The quirk flags switch the real-file oddities on.
    """
    rng = np.random.default_rng(seed)
    n_cc, n_cv, n_rest, n_dis, n_rest2 = STEP_SAMPLES
    current_c = 0.5 * NOMINAL_AH  # A, C/2 both ways
    cycle_data = []
    for k in range(cycles):
        number = first_cycle + k
        capacity = NOMINAL_AH * 1.01 * (1.0 - fade_per_cycle * number**0.9)
        capacity *= 1.0 + 0.001 * rng.standard_normal()
        resistance = 0.0012 * (1.0 + resistance_growth_per_cycle * number)  # ohm
        # discharge ends where OCV - I*R reaches the cut-off; charge starts there
        soc_grid = np.linspace(1.0, 0.0, 2001)
        below = np.flatnonzero(ocv(soc_grid) - current_c * resistance <= V_MIN)
        soc_end = float(soc_grid[below[0]]) if below.size else 0.0
        # each sample holds its current until the next one (what coulomb counting assumes)
        dt_cc = (0.95 - soc_end) * capacity * 3600.0 / current_c / n_cc
        shape = np.exp(-4.0 * np.linspace(0.0, 1.0, n_cv))
        dt_cv = 1800.0 / n_cv
        i_cv = shape * (0.05 * capacity * 3600.0 / dt_cv / shape.sum())  # tops up to full
        dt_dis = (1.0 - soc_end) * capacity * 3600.0 / current_c / n_dis
        current = np.concatenate(
            [
                np.full(n_cc, current_c),
                i_cv,
                np.zeros(n_rest),
                np.full(n_dis, -current_c),
                np.zeros(n_rest2),
            ]
        )
        step_s = np.concatenate(
            [
                np.full(n_cc, dt_cc),
                np.full(n_cv, dt_cv),
                np.full(n_rest, 60.0),
                np.full(n_dis, dt_dis),
                np.full(n_rest2, 60.0),
            ]
        )
        time_s = np.r_[0.0, np.cumsum(step_s)[:-1]]
        moved = np.abs(current) * step_s / 3600.0  # Ah in each sample's step
        charged = np.r_[0.0, np.cumsum(np.where(current > 0, moved, 0.0))[:-1]]
        discharged = np.r_[0.0, np.cumsum(np.where(current < 0, moved, 0.0))[:-1]]
        soc = soc_end + (charged - discharged) / capacity
        voltage = np.minimum(ocv(soc) + current * resistance, V_MAX)  # current + on charge
        voltage[n_cc : n_cc + n_cv] = V_MAX
        voltage += 0.0005 * rng.standard_normal(voltage.size)
        charge_q = charged
        if charge_during_discharge:  # the column counts throughput in both directions
            charge_q = charged + discharged
        discharge_q = discharged
        if time_resets and k % 7 == 3:  # a daily clock reset in the middle of the discharge
            cut = n_cc + n_cv + n_rest + n_dis // 2
            time_s[cut:] -= time_s[cut] - 5.0
        temps = 25.0 + 3.0 * np.abs(current) / current_c + 0.2 * rng.standard_normal(time_s.size)
        columns = {
            "current_in_A": current,
            "voltage_in_V": voltage,
            "charge_capacity_in_Ah": charge_q,
            "discharge_capacity_in_Ah": discharge_q,
            "time_in_s": time_s,
        }
        cycle: dict[str, Any] = {"cycle_number": number}
        for key, values in columns.items():
            cycle[key] = [np.float64(x) for x in values] if numpy_floats else values.tolist()
        if temperature:
            cycle["temperature_in_C"] = (
                [np.float64(x) for x in temps] if numpy_floats else temps.tolist()
            )
        else:
            cycle["temperature_in_C"] = None
        cycle["internal_resistance_in_ohm"] = resistance
        cycle_data.append(cycle)
    return {
        "cell_id": "SYNTH_25_B001",
        "cycle_data": cycle_data,
        "form_factor": "prismatic",
        "anode_material": "graphite",
        "cathode_material": "NMC",
        "electrolyte_material": None,
        "nominal_capacity_in_Ah": NOMINAL_AH,
        "depth_of_charge": 1.0,
        "depth_of_discharge": 1.0,
        "already_spent_cycles": 0,
        "max_voltage_limit_in_V": V_MAX,
        "min_voltage_limit_in_V": V_MIN,
        "max_current_limit_in_A": 2 * NOMINAL_AH,
        "min_current_limit_in_A": -2 * NOMINAL_AH,
        "reference": "synthetic (benches.analytics)",
        "description": "analytic OCV minus I*R, power-law fade",
        "charge_protocol": [{"rate_in_C": 0.5, "end_voltage_in_V": V_MAX}],
        "discharge_protocol": [{"rate_in_C": 0.5, "end_voltage_in_V": V_MIN}],
        "SOC_interval": [0, 1],
    }


def synthetic_pickle(**kwargs: Any) -> bytes:
    """:func:`synthetic_cell` pickled (protocol 4, as ``pickle.dump`` writes by default)."""
    return pickle.dumps(synthetic_cell(**kwargs), protocol=4)


def _best(run: Callable[[], Any], repeats: int) -> float:
    run()  # warm-up: imports matplotlib, fills font caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def run_benchmark(repeats: int = 5) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from cloud.analytics import analyse_upload
    from cloud.main import create_app
    from cloud.settings import CloudSettings
    from cloud.users import add_user

    quirky = synthetic_pickle()
    plain = synthetic_pickle(numpy_floats=False)
    samples = sum(len(c["voltage_in_V"]) for c in synthetic_cell()["cycle_data"])
    service_s = _best(lambda: analyse_upload([("cell.pkl", quirky)]), repeats)
    with tempfile.TemporaryDirectory() as tmp:
        settings = CloudSettings(
            database_url=f"sqlite:///{os.path.join(tmp, 'bench.db')}",
            jwt_secret="bench-secret-0123456789abcdef-0123456789",
            broker="none",
        )
        with TestClient(create_app(settings)) as client:
            with client.app.state.sessions() as session, session.begin():  # type: ignore[attr-defined]
                add_user(session, username="bench", password="bench-password", role="service")
            token = client.post(
                "/api/token/", json={"username": "bench", "password": "bench-password"}
            ).json()["access"]
            headers = {"Authorization": f"Bearer {token}"}

            def upload(data: bytes) -> Callable[[], None]:
                def post() -> None:
                    files = {"file": ("SYNTH_25_B001.pkl", data, "application/octet-stream")}
                    response = client.post("/api/upload", files=files, headers=headers)
                    if response.status_code != 200:
                        raise RuntimeError(f"upload failed: {response.text[:300]}")

                return post

            upload_s = _best(upload(quirky), repeats)
            upload_plain_s = _best(upload(plain), repeats)
    return {
        "upload_s": round(upload_s, 4),
        "service_s": round(service_s, 4),
        "upload_python_floats_s": round(upload_plain_s, 4),
        "budget_s": BUDGET_S,
        "within_budget": upload_s <= BUDGET_S,
        "cycles": 100,
        "samples": samples,
        "file_mb": round(len(quirky) / 2**20, 2),
        "repeats": repeats,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Battery Analytics upload benchmark.")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure")
    args = parser.parse_args()
    result = run_benchmark(max(1, args.repeats))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    sys.exit(0 if math.isfinite(result["upload_s"]) else 1)


if __name__ == "__main__":
    main()
