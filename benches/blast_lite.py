"""Compare our ageing laws with NREL BLAST-Lite on one PV home-storage duty cycle over 5 years.

Duty cycle (one equivalent cycle of 70 % DoD per day, constant 25 degC cell temperature,
5-minute SoC samples): rest at 20 % SoC until 10:00, charge linearly to 90 % by 15:00
(0.14C), rest until 18:00, discharge linearly to 20 % by 22:00 (0.175C), rest until
midnight. The same SoC/temperature series goes to BLAST-Lite (which repeats the day until
5 years have passed) and to our laws, whose stress windows are built from it by reversal
counting exactly as ``twin.models.ageing`` describes.

BLAST-Lite pins numpy<2, so it runs in its own virtual environment (created on first use
under ``~/.cache/batterytwin/blast-lite-venv``, reused afterwards) through
``benches/_blast_lite_runner.py``; data goes through JSON files.

Run: ``python -m benches.blast_lite --json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from twin.models.ageing import AgeingState, StressWindow
from twin.models.ageing_models import ageing_model
from twin.models.base import FloatArray

__all__ = ["DutyCycle", "WindowStress", "run_benchmark", "stress_windows"]

BLAST_LITE_REQUIREMENT: Final = "blast-lite==1.1.1"
NUMPY_REQUIREMENT: Final = "numpy<2"
DEFAULT_VENV_DIR: Final = Path.home() / ".cache" / "batterytwin" / "blast-lite-venv"
RUNNER: Final = Path(__file__).with_name("_blast_lite_runner.py")
SECONDS_PER_DAY: Final = 86_400.0
DAYS_PER_YEAR: Final = 365  # BLAST-Lite's year


@dataclass(frozen=True, slots=True)
class DutyCycle:
    """One domestic PV-storage day, repeated: SoC corners joined by straight lines."""

    step_s: float = 300.0
    temperature_c: float = 25.0
    soc_low: float = 0.2
    soc_high: float = 0.9
    charge_start_h: float = 10.0
    charge_end_h: float = 15.0
    discharge_start_h: float = 18.0
    discharge_end_h: float = 22.0
    years: int = 5

    def day(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """One day from 0 to 86 400 s inclusive (ends where it starts).

        Returns:
            ``(time_s, soc, temperature_c)`` sampled every ``step_s``.
        """
        time_s = np.arange(0.0, SECONDS_PER_DAY + self.step_s / 2, self.step_s)
        corners_h = [
            0.0,
            self.charge_start_h,
            self.charge_end_h,
            self.discharge_start_h,
            self.discharge_end_h,
            24.0,
        ]
        corners_soc = [self.soc_low, self.soc_low, self.soc_high, self.soc_high]
        corners_soc += [self.soc_low, self.soc_low]
        soc = np.interp(time_s / 3600.0, corners_h, corners_soc)
        return time_s, soc, np.full_like(time_s, self.temperature_c)

    def series(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """The day repeated for ``years`` x 365 days (one shared sample at each midnight)."""
        time_s, soc, temperature_c = self.day()
        days = self.years * DAYS_PER_YEAR
        per_day = time_s.size - 1
        full_t = (np.arange(days * per_day + 1) * self.step_s).astype(np.float64)
        full_soc = np.append(np.tile(soc[:-1], days), soc[-1])
        full_temp = np.append(np.tile(temperature_c[:-1], days), temperature_c[-1])
        return full_t, full_soc, full_temp

    def describe(self) -> dict[str, object]:
        """Plain description for the report."""
        swing = self.soc_high - self.soc_low
        return {
            "name": "domestic PV storage, one cycle per day",
            "years": self.years,
            "sample_step_s": self.step_s,
            "cell_temperature_c": self.temperature_c,
            "soc_profile": (
                f"{self.soc_low:.0%} until {self.charge_start_h:g} h, linear charge to "
                f"{self.soc_high:.0%} by {self.charge_end_h:g} h, rest until "
                f"{self.discharge_start_h:g} h, linear discharge to {self.soc_low:.0%} by "
                f"{self.discharge_end_h:g} h, rest until 24 h"
            ),
            "dod": swing,
            "charge_c_rate": round(swing / (self.charge_end_h - self.charge_start_h), 4),
            "discharge_c_rate": round(swing / (self.discharge_end_h - self.discharge_start_h), 4),
            "equivalent_full_cycles_per_day_at_full_capacity": swing,
        }


@dataclass(frozen=True, slots=True)
class WindowStress:
    """Stress per ageing window from a SoC series, in units of the present capacity.

    ``throughput`` and ``c_rate`` are relative to the capacity that the SoC refers to:
    multiply by that capacity (Ah) for ``StressWindow.throughput_ah`` and by the ratio of
    present to nominal capacity for ``StressWindow.mean_c_rate``.
    """

    duration_s: FloatArray
    mean_soc: FloatArray
    mean_temperature_c: FloatArray
    throughput: FloatArray
    """Sum of |dSoC| over the half-cycles that end in the window."""
    mean_dod: FloatArray
    mean_c_rate: FloatArray
    """Throughput-weighted |dSoC/dt| in 1/h."""
    cycle_mean_soc: FloatArray
    """Throughput-weighted mean SoC of the half-cycles (their midpoints)."""


def stress_windows(
    *, time_s: FloatArray, soc: FloatArray, temperature_c: FloatArray, window_s: float
) -> WindowStress:
    """Cut a SoC/temperature series into ageing windows by reversal counting.

    A half-cycle ends when the current changes direction (rests do not end it); its depth
    is the SoC swing since the previous reversal, and its throughput and C-rate go to the
    window in which it ends. A half-cycle still open at the end of the series is closed
    there. SoC and temperature are time-averaged (trapezoidal) per window.

    Args:
        time_s: Sample times from 0, uniformly spaced, spanning whole windows.
        soc: State of charge at the samples, 0..1.
        temperature_c: Cell temperature at the samples.
        window_s: Window length, a multiple of the sample step.

    Returns:
        Per-window stress arrays.
    """
    dt_s = np.diff(time_s)
    step_s = float(dt_s[0])
    per_window = round(window_s / step_s)
    n_windows = dt_s.size // per_window
    if not np.allclose(dt_s, step_s) or n_windows * per_window != dt_s.size:
        raise ValueError(
            f"series must be uniformly sampled and span whole windows of {window_s} s "
            f"(step {step_s} s, {dt_s.size} steps) (stress_windows)"
        )

    def window_mean(values: FloatArray) -> FloatArray:
        steps = 0.5 * (values[1:] + values[:-1])
        return np.asarray(steps.reshape(n_windows, per_window).mean(axis=1), dtype=np.float64)

    d_soc = np.diff(soc)
    moving = np.flatnonzero(d_soc != 0.0)
    direction = np.sign(d_soc[moving])
    starts = np.r_[True, direction[1:] != direction[:-1]]
    half_cycle = np.cumsum(starts) - 1
    n_half = int(half_cycle[-1]) + 1 if moving.size else 0
    moved = np.abs(d_soc[moving])
    c_rate_h = moved / (dt_s[moving] / 3600.0)
    throughput = _sum_by(half_cycle, moved, n_half)
    weighted_c = _sum_by(half_cycle, moved * c_rate_h, n_half)
    change = _sum_by(half_cycle, d_soc[moving], n_half)
    depth = np.abs(change)
    midpoint = soc[moving[starts]] + 0.5 * change
    # A half-cycle ends where the next one's first step starts; the last one at the end.
    first_step = moving[starts]
    end_s = np.append(time_s[first_step[1:]], time_s[-1])
    window = np.minimum((end_s // window_s).astype(np.intp), n_windows - 1)

    w_throughput = _sum_by(window, throughput, n_windows)
    w_dod = _sum_by(window, throughput * depth, n_windows)
    w_c = _sum_by(window, weighted_c, n_windows)
    w_mid = _sum_by(window, throughput * midpoint, n_windows)
    has = w_throughput > 0.0
    safe = np.where(has, w_throughput, 1.0)
    mean_soc = window_mean(soc)
    return WindowStress(
        duration_s=np.full(n_windows, window_s),
        mean_soc=mean_soc,
        mean_temperature_c=window_mean(temperature_c),
        throughput=w_throughput,
        mean_dod=np.where(has, w_dod / safe, 0.0),
        mean_c_rate=np.where(has, w_c / safe, 0.0),
        cycle_mean_soc=np.where(has, w_mid / safe, mean_soc),
    )


def _sum_by(index: NDArray[np.intp], weights: FloatArray, length: int) -> FloatArray:
    """Sum ``weights`` into ``length`` bins given by ``index``."""
    return np.asarray(np.bincount(index, weights=weights, minlength=length), dtype=np.float64)


def simulate_ours(
    *, model_name: str, stress: WindowStress, nominal_capacity_ah: float
) -> dict[str, float]:
    """Run one of our laws over the windows for a single nominal cell.

    The SoC series is relative to the present capacity (as the ECM's true SoC is), so the
    charge moved and the C-rate shrink with the capacity fraction reached so far.

    Returns:
        Losses at the end, as fractions, and the equivalent full cycles seen.
    """
    model = ageing_model(model_name)
    state = AgeingState.fresh(1)
    one = np.ones(1)
    nominal = np.full(1, nominal_capacity_ah)
    for i in range(stress.duration_s.size):
        fraction = state.capacity_fraction
        window = StressWindow(
            duration_s=float(stress.duration_s[i]),
            mean_soc=stress.mean_soc[i : i + 1],
            mean_temperature_c=stress.mean_temperature_c[i : i + 1],
            throughput_ah=stress.throughput[i] * fraction * nominal_capacity_ah,
            mean_dod=stress.mean_dod[i : i + 1],
            mean_c_rate=stress.mean_c_rate[i : i + 1] * fraction,
            nominal_capacity_ah=nominal,
            cycle_mean_soc=stress.cycle_mean_soc[i : i + 1],
        )
        state = model.update(state, window, rate_factor=one)
    return {
        "capacity_loss": float(1.0 - state.capacity_fraction[0]),
        "capacity_loss_calendar": float(state.capacity_loss_calendar[0]),
        "capacity_loss_cycle": float(state.capacity_loss_cycle[0]),
        "resistance_growth": float(state.resistance_factor[0] - 1.0),
        "equivalent_full_cycles": float(state.throughput_ah[0] / (2 * nominal_capacity_ah)),
    }


@dataclass(frozen=True, slots=True)
class _Pair:
    ours: str
    ours_description: str
    nominal_capacity_ah: float
    blast: str
    note: str


_PAIRS: Final = (
    _Pair(
        ours="nmc",
        ours_description="Schmalstieg et al. 2014 NMC111-graphite (Sanyo UR18650E)",
        nominal_capacity_ah=2.05,
        blast="Nmc111_Gr_Sanyo2Ah_Battery",
        note=(
            "same cell and same published law: the difference comes from stress extraction "
            "(BLAST: daily RMS voltage and time-averaged calendar rate; ours: OCV at window "
            "mean SoC), reference capacity (BLAST 2.15 Ah, ours 2.05 Ah) and BLAST's forward-"
            "Euler state update"
        ),
    ),
    _Pair(
        ours="lfp",
        ours_description="Naumann et al. 2018/2020 LFP-graphite (Sony/Murata US26650FTC1)",
        nominal_capacity_ah=3.0,
        blast="Lfp_Gr_SonyMurata3Ah_Battery",
        note=(
            "same cells and TUM data; BLAST's capacity law is NREL's own re-fit (sigmoid "
            "calendar term in the graphite potential, (k*EFC)^1.13 cycle term), ours is "
            "Naumann's published sqrt(t) / sqrt(FEC) fit"
        ),
    ),
    _Pair(
        ours="nmc",
        ours_description="Schmalstieg et al. 2014 NMC111-graphite (Sanyo UR18650E)",
        nominal_capacity_ah=2.05,
        blast="Lmo_Gr_NissanLeaf66Ah_2ndLife_Battery",
        note=(
            "context only: second-life Nissan Leaf LMO-graphite modules (Braco et al.), "
            "already at ~70 % of new; BLAST's fade is relative to the start of second life, "
            "ours is a fresh NMC cell; different chemistry"
        ),
    ),
)


def _venv_python(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(cmd: list[str], *, timeout_s: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MPLBACKEND="Agg", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)  # keep the project's packages out of BLAST's interpreter
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
    )


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def _venv_works(python: Path) -> bool:
    if not python.exists():
        return False
    probe = "import blast.models, numpy; assert int(numpy.__version__.split('.')[0]) < 2"
    return _run([str(python), "-c", probe], timeout_s=300).returncode == 0


def ensure_blast_venv(venv_dir: Path, *, timeout_s: float = 1800.0) -> Path:
    """Return the interpreter of a working BLAST-Lite venv, creating it if needed.

    Raises:
        RuntimeError: If the venv cannot be created or BLAST-Lite cannot be installed
            (e.g. no network); the message carries the tail of pip's output.
    """
    python = _venv_python(venv_dir)
    if _venv_works(python):
        return python
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    made = _run([sys.executable, "-m", "venv", "--clear", str(venv_dir)], timeout_s=300)
    if made.returncode != 0:
        raise RuntimeError(f"python -m venv {venv_dir} failed: {_tail(made.stderr)}")
    cmd = [str(python), "-m", "pip", "install", "--quiet"]
    pip = _run([*cmd, BLAST_LITE_REQUIREMENT, NUMPY_REQUIREMENT], timeout_s=timeout_s)
    if pip.returncode != 0:
        raise RuntimeError(
            f"pip install {BLAST_LITE_REQUIREMENT} '{NUMPY_REQUIREMENT}' into {venv_dir} "
            f"failed (exit {pip.returncode}): {_tail(pip.stderr or pip.stdout)}"
        )
    if not _venv_works(python):
        raise RuntimeError(f"BLAST-Lite installed into {venv_dir} but `import blast` fails")
    return python


def run_blast_lite(
    *, python: Path, duty: DutyCycle, models: list[str], timeout_s: float = 1800.0
) -> dict[str, Any]:
    """Run the runner script inside the BLAST venv on one day of ``duty``, repeated.

    Raises:
        RuntimeError: If the runner fails; the message carries the tail of its stderr.
    """
    time_s, soc, temperature_c = duty.day()
    spec = {
        "time_s": time_s.tolist(),
        "soc": soc.tolist(),
        "temperature_c": temperature_c.tolist(),
        "years": duty.years,
        "models": models,
    }
    with tempfile.TemporaryDirectory(prefix="batterytwin-blast-") as tmp:
        spec_path = Path(tmp) / "in.json"
        out_path = Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        done = _run([str(python), str(RUNNER), str(spec_path), str(out_path)], timeout_s=timeout_s)
        if done.returncode != 0 or not out_path.exists():
            raise RuntimeError(f"BLAST-Lite runner failed: {_tail(done.stderr, 8)}")
        result: dict[str, Any] = json.loads(out_path.read_text(encoding="utf-8"))
    return result


def _pct(fraction: float) -> float:
    return round(100.0 * fraction, 3)


def run_benchmark(
    *, venv_dir: Path | None = None, duty: DutyCycle | None = None
) -> dict[str, object]:
    """Compare our capacity fade after 5 years with BLAST-Lite's on the duty cycle.

    Args:
        venv_dir: BLAST-Lite venv (default ``~/.cache/batterytwin/blast-lite-venv``).
        duty: Duty cycle (default: the module's PV storage day).

    Returns:
        One JSON-ready dict. The headline compares our ``nmc`` law with BLAST-Lite's
        Sanyo NMC111 model; ``comparisons`` adds LFP and the second-life Nissan Leaf.
        If BLAST-Lite cannot be run, ``error`` says why and its numbers are ``None``.
    """
    started = time.perf_counter()
    duty = duty or DutyCycle()
    venv_dir = venv_dir or DEFAULT_VENV_DIR
    series_t, series_soc, series_temp = duty.series()
    daily = stress_windows(
        time_s=series_t, soc=series_soc, temperature_c=series_temp, window_s=SECONDS_PER_DAY
    )
    hourly = stress_windows(
        time_s=series_t, soc=series_soc, temperature_c=series_temp, window_s=3600.0
    )
    ours: dict[str, dict[str, float]] = {}
    ours_hourly: dict[str, dict[str, float]] = {}
    for pair in _PAIRS:
        if pair.ours not in ours:
            for store, stress in ((ours, daily), (ours_hourly, hourly)):
                store[pair.ours] = simulate_ours(
                    model_name=pair.ours,
                    stress=stress,
                    nominal_capacity_ah=pair.nominal_capacity_ah,
                )

    error: str | None = None
    blast: dict[str, Any] = {}
    try:
        python = ensure_blast_venv(venv_dir)
        blast = run_blast_lite(python=python, duty=duty, models=[p.blast for p in _PAIRS])
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
        error = f"BLAST-Lite not run: {exc}"

    comparisons: list[dict[str, object]] = []
    for pair in _PAIRS:
        mine = ours[pair.ours]
        entry: dict[str, object] = {
            "our_model": f"{pair.ours} ({pair.ours_description})",
            "blast_lite_model": pair.blast,
            "our_fade_pct": _pct(mine["capacity_loss"]),
            "our_fade_pct_hourly_windows": _pct(ours_hourly[pair.ours]["capacity_loss"]),
            "our_fade_calendar_pct": _pct(mine["capacity_loss_calendar"]),
            "our_fade_cycle_pct": _pct(mine["capacity_loss_cycle"]),
            "our_resistance_growth_pct": _pct(mine["resistance_growth"]),
            "our_equivalent_full_cycles": round(mine["equivalent_full_cycles"], 1),
            "note": pair.note,
        }
        got = blast.get("results", {}).get(pair.blast)
        if got is None:
            entry.update(blast_lite_fade_pct=None, fade_difference_pct=None)
            entry.update(fade_relative_difference=None)
        else:
            outputs = got["outputs_at_end"]
            blast_fade = 1.0 - float(outputs["q"])
            diff = _pct(mine["capacity_loss"]) - _pct(blast_fade)
            entry.update(
                blast_lite_fade_pct=_pct(blast_fade),
                blast_lite_outputs_at_end={k: round(float(v), 5) for k, v in outputs.items()},
                blast_lite_equivalent_full_cycles=round(float(got["efc_at_end"]), 1),
                fade_difference_pct=round(diff, 3),
                fade_relative_difference=round(diff / _pct(blast_fade), 4),
            )
        comparisons.append(entry)

    head = comparisons[0]
    return {
        "benchmark": "blast_lite",
        "duty_cycle": duty.describe(),
        "stress_windows": (
            "daily windows; half-cycles by reversal counting, throughput-weighted DoD and "
            "C-rate (our_fade_pct_hourly_windows: same with hourly windows)"
        ),
        "our_model": head["our_model"],
        "blast_lite_model": head["blast_lite_model"],
        "our_fade_pct": head["our_fade_pct"],
        "blast_lite_fade_pct": head["blast_lite_fade_pct"],
        "blast_lite_fade_difference_pct": head["fade_difference_pct"],
        "blast_lite_fade_relative_difference": head["fade_relative_difference"],
        "comparisons": comparisons,
        "blast_lite_version": blast.get("blast_lite_version"),
        "blast_lite_numpy_version": blast.get("numpy_version"),
        "blast_lite_venv": str(venv_dir),
        "error": error,
        "runtime_s": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m benches.blast_lite [--json] [--venv DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--venv", type=Path, default=None, help="BLAST-Lite venv directory")
    args = parser.parse_args(argv)
    report = run_benchmark(venv_dir=args.venv)
    if args.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=2))
    return 0 if report["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
