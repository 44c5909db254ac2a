"""Parameter sweeps: designs, cached parallel runs on processes or Dask, parquet and report.

A sweep applies each design point to a base scenario (:func:`scenarios.config.with_overrides`),
names the result by its :func:`~scenarios.config.scenario_hash` and runs it unless
``out_dir/runs/<hash>.json`` already exists, so an interrupted sweep resumes where it
stopped and a repeated one runs nothing. ``run_one`` must be a top-level (picklable)
function ``Scenario -> {kpi: value}``; a value may be a list such as ``soh_trajectory``
(``[[day, soh], ...]``), kept in the parquet as a JSON string.

Dask (``executor="dask-local"`` or ``"tcp://host:port"``) and plotly are imported only
when used.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import math
import multiprocessing
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scenarios.config import Scenario, ScenarioError, get_field, scenario_hash, with_overrides

__all__ = [
    "SweepError",
    "design_full",
    "design_lhs",
    "run_sweep",
    "write_sweep_report",
]

RunOne = Callable[[Scenario], Mapping[str, Any]]
Progress = Callable[[int, int], None]

_HASH_COLUMN = "hash"
_TRAJECTORY_SUFFIX = "_trajectory"


class SweepError(RuntimeError):
    """Some runs of a sweep failed; the others are cached, so running again retries only these.

    Attributes:
        failures: ``(hash, point, error)`` per failed run.
    """

    def __init__(self, failures: list[tuple[str, dict[str, Any], str]], runs_dir: Path) -> None:
        self.failures = failures
        lines = [f"  {h[:12]} {point}: {error}" for h, point, error in failures]
        super().__init__(
            f"{len(failures)} run(s) failed; finished runs are cached in {runs_dir}, so running "
            "the sweep again retries only the failed ones:\n" + "\n".join(lines)
        )


# --------------------------------------------------------------------------------- designs
def design_full(vary: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Full factorial design: every combination of the given values, last field fastest.

    Raises:
        ValueError: A field has no values.
    """
    for name, values in vary.items():
        if isinstance(values, str) or len(values) == 0:
            raise ValueError(f"--vary {name}: give a list of at least one value, got {values!r}")
    names = list(vary)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*vary.values())]


def design_lhs(
    ranges: Mapping[str, tuple[float, float]], samples: int, seed: int
) -> list[dict[str, Any]]:
    """Latin hypercube design: each range cut into ``samples`` strata, one point in each.

    A range whose bounds are both ``int`` yields integers, uniform over ``lo..hi``
    inclusive (for integer fields such as ``pack.cells_per_group``); float bounds yield
    floats in ``[lo, hi)``.

    Raises:
        ValueError: ``samples < 1`` or a range is not ``lo <= hi``.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    bounds: list[tuple[float, float, bool]] = []
    for name, pair in ranges.items():
        lo, hi = pair
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"range of {name} must be finite with lo <= hi, got {pair!r}")
        is_int = all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
        bounds.append((lo, hi, is_int))
    if not bounds:
        return [{} for _ in range(samples)]
    from scipy.stats import qmc

    # scipy >= 1.15 takes the seed as `rng` and deprecates `seed`.
    key = "rng" if "rng" in inspect.signature(qmc.LatinHypercube).parameters else "seed"
    unit = qmc.LatinHypercube(d=len(bounds), **{key: seed}).random(samples)
    columns: list[list[Any]] = []
    for j, (lo, hi, is_int) in enumerate(bounds):
        if is_int:
            ints = np.minimum(lo + np.floor(unit[:, j] * (hi - lo + 1)), hi)
            columns.append([int(v) for v in ints])
        else:
            columns.append([float(v) for v in lo + unit[:, j] * (hi - lo)])
    names = list(ranges)
    return [{n: columns[j][i] for j, n in enumerate(names)} for i in range(samples)]


# ----------------------------------------------------------------------------------- runs
def run_sweep(
    base: Scenario,
    points: Sequence[Mapping[str, Any]],
    *,
    run_one: RunOne,
    out_dir: Path,
    executor: str = "process",
    workers: int = 2,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Run ``run_one`` on every design point not yet cached and collect the KPIs.

    Args:
        base: Scenario the points modify.
        points: Overrides per run, dotted paths to values (see :func:`design_full`).
        run_one: Top-level function ``Scenario -> {kpi: value}``.
        out_dir: Gets ``runs/<hash>.json`` per run (written atomically as each finishes)
            and ``sweep.parquet`` (one row per point: varied fields, hash, KPIs).
        executor: ``"process"`` (a local process pool), ``"dask-local"`` (a Dask
            LocalCluster) or the ``tcp://host:port`` address of a Dask scheduler, whose
            workers must be able to import ``run_one``.
        workers: Processes of the pool or the LocalCluster.
        progress: Called as ``progress(done, total)`` at the start and after every run.

    Returns:
        The table also written to ``out_dir/sweep.parquet``.

    Raises:
        ScenarioError: A point names an unknown field or an invalid value (nothing runs).
        SweepError: Runs failed; the successful ones are cached.
    """
    _check_executor(executor, workers)
    _check_picklable(run_one)
    out_dir = Path(out_dir)
    runs_dir = out_dir / "runs"
    varied = list(dict.fromkeys(k for p in points for k in p))
    if _HASH_COLUMN in varied:
        raise ValueError(f"'{_HASH_COLUMN}' is the sweep's own column, not a field to vary")

    rows: list[tuple[dict[str, Any], str]] = []
    scenarios: dict[str, Scenario] = {}
    for i, point in enumerate(points):
        try:
            scenario = with_overrides(base, point)
        except ScenarioError as exc:
            raise ScenarioError(f"sweep point {i} {dict(point)}", exc.problems) from None
        h = scenario_hash(scenario)
        scenarios.setdefault(h, scenario)
        rows.append(({name: get_field(scenario, name) for name in point}, h))

    runs_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for h in scenarios:
        cached = _read_run(runs_dir / f"{h}.json")
        if cached is not None:
            results[h] = cached
    pending = {h: s for h, s in scenarios.items() if h not in results}
    point_of = {h: point for point, h in reversed(rows)}
    total = len(scenarios)
    if progress:
        progress(len(results), total)

    failures: list[tuple[str, dict[str, Any], str]] = []

    def finished(h: str, outcome: tuple[dict[str, Any], float] | BaseException) -> None:
        if isinstance(outcome, BaseException):
            failures.append((h, point_of[h], f"{type(outcome).__name__}: {outcome}"))
        else:
            kpis, elapsed_s = outcome
            record = {
                "hash": h,
                "overrides": point_of[h],
                "kpis": kpis,
                "elapsed_s": elapsed_s,
                "scenario": scenarios[h].model_dump(mode="json"),
            }
            _write_atomic(runs_dir / f"{h}.json", json.dumps(record, indent=1).encode())
            results[h] = kpis
        if progress:
            progress(len(results) + len(failures), total)

    if pending:
        if executor == "process":
            _run_processes(pending, run_one=run_one, workers=workers, finished=finished)
        else:
            _run_dask(
                pending, run_one=run_one, executor=executor, workers=workers, finished=finished
            )
    if failures:
        raise SweepError(failures, runs_dir)

    df = _table(rows, results, varied)
    tmp = out_dir / f".sweep.parquet.{os.getpid()}.tmp"
    df.to_parquet(tmp, index=False)
    os.replace(tmp, out_dir / "sweep.parquet")
    return df


def _check_executor(executor: str, workers: int) -> None:
    if executor not in ("process", "dask-local") and not executor.startswith(("tcp://", "tls://")):
        raise ValueError(
            f"executor must be 'process', 'dask-local' or a Dask scheduler address "
            f"'tcp://host:port', got {executor!r}"
        )
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")


def _check_picklable(run_one: RunOne) -> None:
    try:
        pickle.dumps(run_one)
    except Exception as exc:  # pickle raises several types for unpicklable objects
        raise TypeError(
            f"run_one must be a top-level function that worker processes can import, "
            f"got {run_one!r} ({exc})"
        ) from None


def _call(run_one: RunOne, scenario: Scenario) -> tuple[dict[str, Any], float]:
    """Run one scenario in a worker: KPIs as plain JSON data, and the wall time."""
    start = time.perf_counter()
    result = run_one(scenario)
    elapsed_s = time.perf_counter() - start
    if not isinstance(result, Mapping) or not all(isinstance(k, str) for k in result):
        raise TypeError(f"run_one must return a dict of KPI name -> value, got {result!r}")
    kpis = json.loads(json.dumps(dict(result), default=_jsonable, allow_nan=True))
    return kpis, elapsed_s


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"KPI value {value!r} of type {type(value).__name__} is not JSON data")


Finished = Callable[[str, tuple[dict[str, Any], float] | BaseException], None]


def _start_method() -> str:
    """``fork`` where it is safe, else ``spawn``.

    Forked workers inherit the parent's imports, compiled pack kernel and profile caches,
    which saves each worker seconds of start-up. Forking a process that runs other threads
    (a Dask client, a live progress bar) can deadlock, so then, and off Linux, workers are
    spawned fresh.
    """
    if sys.platform == "linux" and threading.active_count() == 1:
        return "fork"
    return "spawn"


def _run_processes(
    pending: Mapping[str, Scenario], *, run_one: RunOne, workers: int, finished: Finished
) -> None:
    context = multiprocessing.get_context(_start_method())
    pool = ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=context)
    try:
        futures: dict[Future[tuple[dict[str, Any], float]], str] = {
            pool.submit(_call, run_one, scenario): h for h, scenario in pending.items()
        }
        for future in as_completed(futures):
            error = future.exception()
            finished(futures[future], error if error is not None else future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_dask(
    pending: Mapping[str, Scenario],
    *,
    run_one: RunOne,
    executor: str,
    workers: int,
    finished: Finished,
) -> None:
    # distributed annotates only part of its API: its constructors count as untyped calls.
    from distributed import Client, LocalCluster
    from distributed import as_completed as dask_as_completed

    with contextlib.ExitStack() as stack:
        if executor == "dask-local":
            cluster = stack.enter_context(
                LocalCluster(  # type: ignore[no-untyped-call]
                    n_workers=min(workers, len(pending)),
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,  # no port 8787 clash with other users' clusters
                )
            )
            client = stack.enter_context(Client(cluster))  # type: ignore[no-untyped-call]
        else:
            client = stack.enter_context(Client(executor))  # type: ignore[no-untyped-call]
        futures = {client.submit(_call, run_one, s, pure=False): h for h, s in pending.items()}
        try:
            for future in dask_as_completed(futures):  # type: ignore[no-untyped-call]
                try:
                    outcome: tuple[dict[str, Any], float] | BaseException = future.result()
                except Exception as exc:  # the run's own error, re-raised by Dask
                    outcome = exc
                finished(futures[future], outcome)
        finally:
            client.cancel(list(futures))


def _read_run(path: Path) -> dict[str, Any] | None:
    """KPIs of a cached run, or None if there is none (or it cannot be read)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kpis = record.get("kpis") if isinstance(record, dict) else None
    return kpis if isinstance(kpis, dict) else None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _cell(value: Any) -> Any:
    """Scalars stay, lists and tables become JSON strings (parquet wants flat columns)."""
    if isinstance(value, list | dict):
        return json.dumps(value)
    return value


def _table(
    rows: list[tuple[dict[str, Any], str]],
    results: Mapping[str, Mapping[str, Any]],
    varied: list[str],
) -> pd.DataFrame:
    records = []
    for values, h in rows:
        kpis = results[h]
        clash = [k for k in kpis if k in values or k == _HASH_COLUMN]
        if clash:
            raise ValueError(f"KPI name(s) {clash} clash with varied fields or '{_HASH_COLUMN}'")
        record = {name: _cell(values.get(name)) for name in varied}
        record[_HASH_COLUMN] = h
        record.update({k: _cell(v) for k, v in kpis.items()})
        records.append(record)
    return pd.DataFrame.from_records(records, columns=_columns(records, varied))


def _columns(records: list[dict[str, Any]], varied: list[str]) -> list[str]:
    columns = [*varied, _HASH_COLUMN]
    for record in records:
        columns.extend(k for k in record if k not in columns)
    return columns


# --------------------------------------------------------------------------------- report
def write_sweep_report(df: pd.DataFrame, varied_fields: Sequence[str], path: Path) -> Path:
    """Write an HTML page: each KPI against each varied field, SoH trajectories overlaid.

    Columns named ``*_trajectory`` (JSON ``[[day, value], ...]`` per run) are drawn as
    one line per run, labelled by its varied values.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    varied = [f for f in varied_fields if f in df.columns]
    trajectories = [c for c in df.columns if str(c).endswith(_TRAJECTORY_SUFFIX)]
    kpis = [
        c
        for c in df.columns
        if c not in varied
        and c != _HASH_COLUMN
        and c not in trajectories
        and pd.api.types.is_numeric_dtype(df[c])
    ]
    labels = [
        ", ".join(f"{f}={_label(row[f])}" for f in varied) or str(row[_HASH_COLUMN])[:12]
        for _, row in df.iterrows()
    ]
    parts: list[str] = []
    if kpis and varied:
        fig = make_subplots(
            rows=len(kpis),
            cols=len(varied),
            shared_yaxes=True,
            horizontal_spacing=0.04,
            vertical_spacing=min(0.08, 0.5 / len(kpis)),
        )
        for r, kpi in enumerate(kpis, start=1):
            for c, field in enumerate(varied, start=1):
                fig.add_trace(
                    go.Scatter(
                        x=df[field],
                        y=df[kpi],
                        mode="markers",
                        text=labels,
                        hovertemplate="%{text}<br>" + f"{kpi}=%{{y}}<extra></extra>",
                        showlegend=False,
                    ),
                    row=r,
                    col=c,
                )
                if r == len(kpis):
                    fig.update_xaxes(title_text=field, row=r, col=c)
                if c == 1:
                    fig.update_yaxes(title_text=kpi, row=r, col=c)
        fig.update_layout(height=260 * len(kpis) + 80, template="plotly_white")
        parts.append("<h2>KPIs against varied fields</h2>" + _to_html(fig, first=not parts))
    for column in trajectories:
        fig = go.Figure()
        for label, raw in zip(labels, df[column], strict=True):
            points = json.loads(raw) if isinstance(raw, str) else raw
            if not points:
                continue
            x, y = zip(*points, strict=True)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=label))
        name = column.removesuffix(_TRAJECTORY_SUFFIX)
        fig.update_layout(xaxis_title="day", yaxis_title=name, height=500, template="plotly_white")
        parts.append(f"<h2>{column}</h2>" + _to_html(fig, first=not parts))
    shown = df.drop(columns=trajectories)
    table = shown.head(500).to_html(index=False, float_format=lambda v: f"{v:.4g}")
    doc = (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>batterytwin sweep</title>'
        "<style>body{font-family:sans-serif;max-width:1400px;margin:auto}"
        "td,th{padding:2px 8px}</style></head><body>\n"
        f"<h1>Sweep: {len(df)} runs over {', '.join(varied) or 'no fields'}</h1>\n"
        + "\n".join(parts)
        + f"\n<h2>Runs</h2>\n{table}\n</body></html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, doc.encode("utf-8"))
    return path


def _to_html(fig: Any, *, first: bool) -> str:
    # plotly.js once per page, embedded so the report works offline.
    return str(fig.to_html(full_html=False, include_plotlyjs=first))


def _label(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
