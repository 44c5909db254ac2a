"""Uploaded files to one normalised cell record: the BatteryLife/BatteryML processed pickle
(``.pkl``) or the CSV set ``<cell>_cycles.csv``, ``<cell>_metadata.csv``, ``<cell>_metrics.csv``.

Sign convention (BatteryML's, kept throughout the package): current positive while
charging, negative while discharging. Quirks of real files are repaired here and written
into :attr:`CellRecord.quality`, which becomes the response's ``data_quality`` section:
Python or numpy floats, ``time_in_s`` that goes back (a clock reset every day), a charge
capacity that also counts during discharge, a discharge-positive current, cycles that
start at 2, repeated or unsorted cycle numbers, absent temperatures and resistances.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import PurePath
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cloud.analytics.safe_pickle import RefusedPickleError, SafeUnpickler

__all__ = ["AnalyticsInputError", "CellRecord", "read_upload"]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

MAX_SAMPLES = 5_000_000  # per upload (50 MB of floats is about 1 M samples); memo
# references could otherwise repeat one list many times
MAX_CYCLES = 200_000
REQUIRED_CYCLE_KEYS = ("cycle_number", "current_in_A", "voltage_in_V", "time_in_s")
SAMPLE_KEYS = (
    "current_in_A",
    "voltage_in_V",
    "charge_capacity_in_Ah",
    "discharge_capacity_in_Ah",
    "time_in_s",
    "temperature_in_C",
)
METADATA_KEYS = (
    "cell_id",
    "form_factor",
    "anode_material",
    "cathode_material",
    "electrolyte_material",
    "nominal_capacity_in_Ah",
    "depth_of_charge",
    "depth_of_discharge",
    "already_spent_cycles",
    "max_voltage_limit_in_V",
    "min_voltage_limit_in_V",
    "max_current_limit_in_A",
    "min_current_limit_in_A",
    "reference",
    "description",
    "charge_protocol",
    "discharge_protocol",
    "SOC_interval",
)
_NUMERIC_METADATA = frozenset(
    {
        "nominal_capacity_in_Ah",
        "depth_of_charge",
        "depth_of_discharge",
        "already_spent_cycles",
        "max_voltage_limit_in_V",
        "min_voltage_limit_in_V",
        "max_current_limit_in_A",
        "min_current_limit_in_A",
    }
)
_CSV_ROLES = ("cycles", "metadata", "metrics")
_SUFFIXES = (".pkl", ".pickle", ".csv")
_FORMAT_HINT = (
    "send one BatteryLife/BatteryML .pkl, or the CSV set <cell>_cycles.csv "
    "(with <cell>_metadata.csv and <cell>_metrics.csv)"
)
# a capacity column that rises in the other phase by more than this share is unusable
_CROSS_PHASE_SHARE = 0.05


class AnalyticsInputError(ValueError):
    """The upload cannot be analysed; the message says what is wrong or missing (HTTP 400)."""


@dataclass(frozen=True)
class CellRecord:
    """One cell's cycling data, samples of all cycles concatenated in cycle order.

    Cycle ``k`` holds samples ``start[k]:start[k + 1]``. Columns absent from the file are
    all-NaN; ``time_s`` increases within each cycle (resets repaired); ``current_a`` is
    positive while charging.
    """

    name: str
    source_format: str  # "pickle" or "csv"
    metadata: dict[str, Any]  # JSON-safe: every key of the file but the cycle data
    cycle_number: IntArray
    start: IntArray
    time_s: FloatArray
    current_a: FloatArray
    voltage_v: FloatArray
    charge_capacity_ah: FloatArray
    discharge_capacity_ah: FloatArray
    temperature_c: FloatArray
    internal_resistance_ohm: FloatArray  # one per cycle
    charge_column_usable: bool  # False: coulomb counting gives the charge capacity
    discharge_column_usable: bool
    current_threshold_a: float  # |current| below it is rest
    quality: dict[str, Any] = field(default_factory=dict)

    @property
    def n_cycles(self) -> int:
        return int(self.cycle_number.size)

    @property
    def cycle_index(self) -> IntArray:
        """The cycle (0..n_cycles-1) of every sample."""
        return np.repeat(np.arange(self.n_cycles), np.diff(self.start))


def read_upload(files: Sequence[tuple[str, bytes]]) -> CellRecord:
    """One cell from ``(filename, content)`` pairs: one pickle, or one CSV set.

    Raises:
        AnalyticsInputError: wrong file types or names, several cells, unreadable or
            incomplete data; the message names what is missing.
    """
    if not files:
        raise AnalyticsInputError(f"no file in the upload: {_FORMAT_HINT}")
    kinds = [PurePath(name).suffix.lower() for name, _ in files]
    pickles = [f for f, kind in zip(files, kinds, strict=True) if kind in (".pkl", ".pickle")]
    tables = [f for f, kind in zip(files, kinds, strict=True) if kind == ".csv"]
    others = [name for (name, _), kind in zip(files, kinds, strict=True) if kind not in _SUFFIXES]
    if others:
        raise AnalyticsInputError(f"file type not allowed: {', '.join(others)} ({_FORMAT_HINT})")
    if (pickles and tables) or len(pickles) > 1:
        names = ", ".join(n for n, _ in files)
        raise AnalyticsInputError(f"one cell per upload, got {names}: {_FORMAT_HINT}")
    if pickles:
        name, data = pickles[0]
        return _from_pickle(name, data)
    return _from_csv_set(tables)


# --- pickle --------------------------------------------------------------------------


def _from_pickle(filename: str, data: bytes) -> CellRecord:
    unpickler = SafeUnpickler(io.BytesIO(data))
    try:
        obj = unpickler.load()
    except RefusedPickleError as error:
        raise AnalyticsInputError(f"{filename}: {error}") from None
    except Exception as error:  # truncated, corrupt or not a pickle at all
        raise AnalyticsInputError(
            f"{filename} is not a readable pickle ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(obj, Mapping):
        raise AnalyticsInputError(
            f"{filename}: expected a dict with cell_id and cycle_data (BatteryML's "
            f"BatteryData.to_dict()), got {type(obj).__name__}"
        )
    cycles = obj.get("cycle_data")
    if not isinstance(cycles, list | tuple) or not cycles:
        what = "missing" if cycles is None else f"a {type(cycles).__name__}, not a list"
        raise AnalyticsInputError(
            f"{filename}: 'cycle_data' is {what}; it must be a non-empty list of cycles"
        )
    if len(cycles) > MAX_CYCLES:
        raise AnalyticsInputError(f"{filename}: {len(cycles)} cycles, at most {MAX_CYCLES}")
    columns, cycle_numbers, resistance = _pickle_columns(filename, cycles)
    quality: dict[str, Any] = {
        "value_types": sorted(
            {f"numpy.{t}" for t in unpickler.numpy_scalar_types}
            | ({"python float"} if columns.pop("_python_floats", None) is not None else set())
        )
    }
    metadata = {str(k): _json_safe(v) for k, v in obj.items() if k != "cycle_data"}
    return _normalise(
        name=PurePath(filename).stem,
        source_format="pickle",
        files=[filename],
        metadata=metadata,
        cycle_number=cycle_numbers,
        columns=columns,
        resistance=resistance,
        quality=quality,
    )


def _pickle_columns(
    filename: str, cycles: Sequence[Any]
) -> tuple[dict[str, Any], FloatArray, FloatArray]:
    missing: dict[str, list[int]] = {}
    for k, cycle in enumerate(cycles):
        if not isinstance(cycle, Mapping):
            raise AnalyticsInputError(
                f"{filename}: cycle_data[{k}] is a {type(cycle).__name__}, not a dict"
            )
        for key in REQUIRED_CYCLE_KEYS:
            if cycle.get(key) is None:
                missing.setdefault(key, []).append(k)
    if missing:
        parts = [f"{key} (cycle_data{_indices(ks)})" for key, ks in missing.items()]
        raise AnalyticsInputError(f"{filename}: missing {'; '.join(parts)}")
    lengths = np.array([_length(c["voltage_in_V"]) for c in cycles], dtype=np.int64)
    if int(lengths.sum()) > MAX_SAMPLES:
        raise AnalyticsInputError(
            f"{filename}: {int(lengths.sum())} samples, at most {MAX_SAMPLES} per upload"
        )
    columns: dict[str, Any] = {}
    python_floats = False
    for key in SAMPLE_KEYS:
        values = [c.get(key) for c in cycles]
        present = [v is not None and _length(v) > 0 for v in values]
        if not any(present):
            columns[key] = None
            continue
        bad = [
            k
            for k, (v, ok) in enumerate(zip(values, present, strict=True))
            if ok and _length(v) != lengths[k]
        ]
        if bad:
            k = bad[0]
            raise AnalyticsInputError(
                f"{filename}: cycle_data[{k}] has {lengths[k]} voltage_in_V values but "
                f"{_length(values[k])} {key} values (in {len(bad)} cycles)"
            )
        if not all(present):  # e.g. temperature_in_C None in some cycles
            values = [
                v if ok else [math.nan] * n
                for v, ok, n in zip(values, present, lengths, strict=False)
            ]
        columns[key] = _concatenate(filename, key, values, int(lengths.sum()))
        first = next(v for v, ok in zip(values, present, strict=True) if ok)
        python_floats |= isinstance(first, list | tuple) and type(first[0]) is float
    if python_floats:
        columns["_python_floats"] = True
    columns["_lengths"] = lengths
    try:
        numbers = np.array([float(c["cycle_number"]) for c in cycles])
        resistance = np.array(
            [_resistance(c.get("internal_resistance_in_ohm")) for c in cycles], dtype=np.float64
        )
    except (TypeError, ValueError) as error:
        raise AnalyticsInputError(f"{filename}: cycle_number or resistance: {error}") from None
    return columns, numbers, resistance


def _length(values: Any) -> int:
    try:
        return len(values)
    except TypeError:
        raise AnalyticsInputError(
            f"expected a list of samples, got a {type(values).__name__}"
        ) from None


def _indices(ks: list[int]) -> str:
    shown = ", ".join(str(k) for k in ks[:5])
    return f"[{shown}{', ...' if len(ks) > 5 else ''}] of {len(ks)} cycles"


def _concatenate(filename: str, key: str, values: list[Any], total: int) -> FloatArray:
    if all(isinstance(v, np.ndarray) for v in values):
        try:
            return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in values])
        except (TypeError, ValueError) as error:
            raise AnalyticsInputError(f"{filename}: {key} is not numeric: {error}") from None
    try:  # the fast path: lists of Python or numpy floats
        return np.fromiter(chain.from_iterable(values), dtype=np.float64, count=total)
    except (TypeError, ValueError):
        pass
    try:  # None inside a list becomes NaN here
        return np.array(list(chain.from_iterable(values)), dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise AnalyticsInputError(f"{filename}: {key} holds non-numbers ({error})") from None


def _resistance(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, list | tuple | np.ndarray):
        arr = np.asarray(value, dtype=np.float64)
        return float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan
    return float(value)


# --- CSV set -------------------------------------------------------------------------


def _from_csv_set(tables: list[tuple[str, bytes]]) -> CellRecord:
    roles: dict[str, tuple[str, bytes]] = {}
    cells: set[str] = set()
    for name, data in tables:
        stem = PurePath(name).stem
        base, _, role = stem.rpartition("_")
        if role not in _CSV_ROLES or not base:
            raise AnalyticsInputError(
                f"{name}: CSV files must be named <cell>_cycles.csv, <cell>_metadata.csv "
                "or <cell>_metrics.csv"
            )
        if role in roles:
            raise AnalyticsInputError(f"two {role} files: {roles[role][0]} and {name}")
        roles[role] = (name, data)
        cells.add(base)
    if len(cells) > 1:
        raise AnalyticsInputError(f"one cell per upload, got {', '.join(sorted(cells))}")
    base = cells.pop()
    if "cycles" not in roles:
        raise AnalyticsInputError(f"the CSV set lacks {base}_cycles.csv (the samples)")
    quality: dict[str, Any] = {"value_types": ["csv text"]}
    cycles_name, cycles_data = roles["cycles"]
    header, table = _read_table(cycles_name, cycles_data)
    absent = [k for k in REQUIRED_CYCLE_KEYS if k not in header]
    if absent:
        raise AnalyticsInputError(f"{cycles_name}: missing columns {', '.join(absent)}")
    if table.shape[0] > MAX_SAMPLES:
        raise AnalyticsInputError(f"{cycles_name}: more than {MAX_SAMPLES} rows")
    numbers_per_row = table[:, header.index("cycle_number")]
    if not np.isfinite(numbers_per_row).all():
        raise AnalyticsInputError(f"{cycles_name}: cycle_number is empty on some rows")
    order = np.argsort(numbers_per_row, kind="stable")  # rows of a cycle need not be adjacent
    table = table[order]
    numbers_per_row = numbers_per_row[order]
    first_rows = np.flatnonzero(np.r_[True, numbers_per_row[1:] != numbers_per_row[:-1]])
    lengths = np.diff(np.r_[first_rows, numbers_per_row.size]).astype(np.int64)
    if lengths.size > MAX_CYCLES:
        raise AnalyticsInputError(f"{cycles_name}: {lengths.size} cycles, at most {MAX_CYCLES}")
    columns: dict[str, Any] = {
        key: table[:, header.index(key)] if key in header else None for key in SAMPLE_KEYS
    }
    columns["_lengths"] = lengths
    resistance = np.full(lengths.size, math.nan)
    if "internal_resistance_in_ohm" in header:
        per_row = table[:, header.index("internal_resistance_in_ohm")]
        resistance = _segment_nanmean(per_row, first_rows)
    metadata: dict[str, Any] = {}
    if "metadata" in roles:
        metadata = _read_metadata(*roles["metadata"])
    else:
        quality.setdefault("notes", []).append(f"no {base}_metadata.csv: metadata unknown")
    if "metrics" in roles:
        metrics_name, metrics_data = roles["metrics"]
        m_header, m_table = _read_table(metrics_name, metrics_data, required=("cycle_number",))
        used = []
        if "internal_resistance_in_ohm" in m_header and not np.isfinite(resistance).any():
            lookup = dict(
                zip(
                    m_table[:, m_header.index("cycle_number")],
                    m_table[:, m_header.index("internal_resistance_in_ohm")],
                    strict=True,
                )
            )
            resistance = np.array([lookup.get(n, math.nan) for n in numbers_per_row[first_rows]])
            used.append("internal_resistance_in_ohm")
        quality["metrics_file"] = {"rows": int(m_table.shape[0]), "columns_used": used}
    return _normalise(
        name=base,
        source_format="csv",
        files=[n for n, _ in tables],
        metadata=metadata,
        cycle_number=numbers_per_row[first_rows],
        columns=columns,
        resistance=resistance,
        quality=quality,
    )


def _decode(name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise AnalyticsInputError(f"{name} is not UTF-8 text") from None


def _read_table(
    name: str, data: bytes, required: Sequence[str] = ()
) -> tuple[list[str], FloatArray]:
    """The numeric columns of a CSV file (header names, rows x columns; empty cells NaN)."""
    text = _decode(name, data)
    first_line, _, body = text.partition("\n")
    header = [h.strip() for h in next(csv.reader([first_line]), [])]
    if not header or not body.strip():
        raise AnalyticsInputError(f"{name} has no header line or no rows")
    absent = [k for k in required if k not in header]
    if absent:
        raise AnalyticsInputError(f"{name}: missing columns {', '.join(absent)}")
    wanted = [
        k
        for k, h in enumerate(header)
        if h in SAMPLE_KEYS or h in ("cycle_number", "internal_resistance_in_ohm")
    ]
    names = [header[k] for k in wanted]
    try:  # the C parser; fails on empty or quoted cells
        table = np.loadtxt(
            io.StringIO(body), delimiter=",", usecols=wanted, ndmin=2, dtype=np.float64
        )
    except ValueError:
        table = _read_table_slowly(name, body, wanted, header)
    return names, table


def _read_table_slowly(name: str, body: str, wanted: list[int], header: list[str]) -> FloatArray:
    rows: list[list[float]] = []
    for line, row in enumerate(csv.reader(io.StringIO(body)), start=2):
        if not row:
            continue
        try:
            rows.append([_cell(row, k) for k in wanted])
        except ValueError:
            bad = next(k for k in wanted if k < len(row) and not _is_number(row[k]))
            raise AnalyticsInputError(
                f"{name} line {line}: {header[bad]} is {row[bad]!r}, not a number"
            ) from None
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(wanted))


def _cell(row: list[str], k: int) -> float:
    return float(row[k]) if k < len(row) and row[k].strip() else math.nan


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return not text.strip()
    return True


def _read_metadata(name: str, data: bytes) -> dict[str, Any]:
    """A header row and one value row, or two columns of key and value."""
    rows = [r for r in csv.reader(io.StringIO(_decode(name, data))) if r]
    if len(rows) < 2:
        raise AnalyticsInputError(f"{name} needs a header line and a line of values")
    header = [h.strip() for h in rows[0]]
    if len(header) == 2 and header[0].lower() in ("key", "field", "name", "property"):
        pairs: Iterable[tuple[str, str]] = (
            (r[0].strip(), r[1] if len(r) > 1 else "") for r in rows[1:]
        )
    else:
        pairs = zip(header, rows[1], strict=False)
    metadata: dict[str, Any] = {}
    for key, text in pairs:
        if not key or key.startswith("Unnamed"):  # a pandas index column
            continue
        value: Any = text.strip() or None
        if key in _NUMERIC_METADATA and value is not None:
            try:
                value = float(value)
            except ValueError:
                raise AnalyticsInputError(f"{name}: {key} is {text!r}, not a number") from None
        metadata[key] = value
    return metadata


def _segment_nanmean(values: FloatArray, first_rows: IntArray) -> FloatArray:
    finite = np.isfinite(values)
    sums = np.add.reduceat(np.where(finite, values, 0.0), first_rows)
    counts = np.add.reduceat(finite.astype(np.float64), first_rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, math.nan)


# --- common normalisation ------------------------------------------------------------


def _normalise(
    *,
    name: str,
    source_format: str,
    files: list[str],
    metadata: dict[str, Any],
    cycle_number: FloatArray,
    columns: dict[str, Any],
    resistance: FloatArray,
    quality: dict[str, Any],
) -> CellRecord:
    notes: list[str] = quality.setdefault("notes", [])
    lengths: IntArray = columns.pop("_lengths")
    if not np.isfinite(cycle_number).all() or (cycle_number != np.round(cycle_number)).any():
        raise AnalyticsInputError(f"{files[0]}: cycle_number must be whole numbers")
    numbers = cycle_number.astype(np.int64)
    quality.update(format=source_format, files=files, cycles_in_file=int(numbers.size))
    keep = _cycle_order(numbers, lengths, notes)
    start = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    gather = None
    if keep is not None:
        gather = _gather(start, keep)
        numbers, lengths, resistance = numbers[keep], lengths[keep], resistance[keep]
        start = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    total = int(start[-1])

    def column(key: str) -> FloatArray:
        values = columns.get(key)
        if values is None:
            return np.full(total, math.nan)
        arr = np.asarray(values, dtype=np.float64)
        return arr[gather] if gather is not None else arr

    absent = [k for k in SAMPLE_KEYS if columns.get(k) is None]
    if absent:
        quality["absent_columns"] = absent
    if total == 0:
        raise AnalyticsInputError(f"{files[0]}: the cycles hold no samples")
    voltage = column("voltage_in_V")
    current = column("current_in_A")
    for key, values in (("voltage_in_V", voltage), ("current_in_A", current)):
        if not np.isfinite(values).any():
            raise AnalyticsInputError(f"{files[0]}: {key} holds no numbers")
    if numbers[0] != 1:
        notes.append(
            f"cycles start at {numbers[0]}, not 1 (processed files often drop the formation "
            "cycle); cycle numbers are used as given"
        )
    quality["first_cycle_number"] = int(numbers[0])
    time_s = _repair_time(column("time_in_s"), start, quality)
    current = np.nan_to_num(current, nan=0.0)
    charge_q = column("charge_capacity_in_Ah")
    discharge_q = column("discharge_capacity_in_Ah")
    threshold = _rest_threshold(current)
    current = _orient_current(current, discharge_q, start, threshold, quality)
    charge_ok, discharge_ok = _capacity_columns(
        current, charge_q, discharge_q, start, threshold, quality
    )
    temperature = column("temperature_in_C")
    if not np.isfinite(temperature).any():
        notes.append("no temperature_in_C: temperature analysis from the cell id, if any")
    elif not np.isfinite(temperature).all():
        notes.append("temperature_in_C is missing in some cycles or samples (ignored there)")
    if not np.isfinite(resistance).any():
        quality.setdefault("absent_columns", []).append("internal_resistance_in_ohm")
    missing_meta = [k for k in METADATA_KEYS if metadata.get(k) in (None, "")]
    if missing_meta:
        quality["missing_metadata"] = missing_meta
    metadata.setdefault("cell_id", None)
    if metadata["cell_id"] in (None, ""):
        metadata["cell_id"] = name
        notes.append(f"no cell_id: the file name {name!r} is used")
    return CellRecord(
        name=name,
        source_format=source_format,
        metadata=metadata,
        cycle_number=numbers,
        start=start,
        time_s=time_s,
        current_a=current,
        voltage_v=voltage,
        charge_capacity_ah=charge_q,
        discharge_capacity_ah=discharge_q,
        temperature_c=temperature,
        internal_resistance_ohm=resistance,
        charge_column_usable=charge_ok,
        discharge_column_usable=discharge_ok,
        current_threshold_a=threshold,
        quality=quality,
    )


def _cycle_order(numbers: IntArray, lengths: IntArray, notes: list[str]) -> IntArray | None:
    """Indices of the cycles to keep in order (None: all, as they are)."""
    order = np.argsort(numbers, kind="stable")
    unsorted = bool((order != np.arange(numbers.size)).any())
    sorted_numbers = numbers[order]
    first = np.r_[True, sorted_numbers[1:] != sorted_numbers[:-1]]
    repeated = int((~first).sum())
    empty = lengths[order] == 0
    keep = order[first & ~empty]
    if unsorted:
        notes.append("cycles were not in cycle-number order: sorted")
    if repeated:
        notes.append(f"{repeated} repeated cycle numbers: the first record of each is used")
    if empty.any():
        notes.append(f"{int(empty.sum())} cycles without samples: skipped")
    if keep.size == 0:
        raise AnalyticsInputError("no cycle holds samples")
    if not unsorted and not repeated and not empty.any():
        return None
    return np.asarray(keep, dtype=np.int64)


def _gather(start: IntArray, keep: IntArray) -> IntArray:
    lengths = start[keep + 1] - start[keep]
    new_start = np.r_[0, np.cumsum(lengths)[:-1]]
    shift = np.repeat(start[keep] - new_start, lengths)
    return np.asarray(np.arange(int(lengths.sum())) + shift, dtype=np.int64)


def segment_cumsum(values: FloatArray, start: IntArray) -> FloatArray:
    """Cumulative sum restarting at every cycle (``start`` as in :class:`CellRecord`)."""
    total = np.cumsum(values)
    before = np.r_[0.0, total][start[:-1]]
    return np.asarray(total - np.repeat(before, np.diff(start)), dtype=np.float64)


def _repair_time(time_s: FloatArray, start: IntArray, quality: dict[str, Any]) -> FloatArray:
    """Make time increase within each cycle: a step back (or a gap in the column)
    becomes one typical step, so later samples keep their spacing."""
    if not np.isfinite(time_s).any():
        raise AnalyticsInputError("time_in_s holds no numbers")
    step = np.diff(time_s, prepend=np.nan)
    step[start[:-1]] = 0.0  # cycles start afresh
    inside = np.ones(step.size, dtype=bool)
    inside[start[:-1]] = False
    positive = step[inside & (step > 0)]
    typical = float(np.median(positive)) if positive.size else 1.0
    back = inside & (step < 0)
    gaps = inside & ~np.isfinite(step)
    if back.any():
        cycles = np.unique(np.searchsorted(start, np.flatnonzero(back), side="right") - 1)
        quality["time_resets"] = {
            "count": int(back.sum()),
            "cycles": int(cycles.size),
            "repair": f"time_in_s went back inside a cycle (e.g. a daily clock reset); "
            f"continued from the previous sample with the median step {typical:.3g} s",
        }
    if gaps.any():
        quality.setdefault("notes", []).append(
            f"{int(gaps.sum())} samples without time_in_s: one median step assumed"
        )
    step = np.where(back | gaps, typical, step)
    first = np.nan_to_num(time_s[start[:-1]], nan=0.0)
    return segment_cumsum(step, start) + np.repeat(first, np.diff(start))


def _rest_threshold(current: FloatArray) -> float:
    scale = float(np.percentile(np.abs(current), 99))
    return max(1e-6, 0.01 * scale)


def _rises(q: FloatArray, start: IntArray) -> FloatArray:
    """Per-sample increase of a capacity column within its cycle (0 where unknown)."""
    step = np.diff(q, prepend=np.nan)
    step[start[:-1]] = np.nan
    return np.where(np.isfinite(step) & (step > 0), step, 0.0)


def _orient_current(
    current: FloatArray,
    discharge_q: FloatArray,
    start: IntArray,
    threshold: float,
    quality: dict[str, Any],
) -> FloatArray:
    """BatteryML's sign: discharge negative. Flipped when the discharge capacity rises
    mostly while the current is positive."""
    rise = _rises(discharge_q, start)
    while_negative = float(rise[current < -threshold].sum())
    while_positive = float(rise[current > threshold].sum())
    if while_positive > 3 * while_negative and while_positive > 0:
        quality["current_sign"] = "flipped: the file has discharge positive"
        return -current
    quality["current_sign"] = "charge positive, discharge negative (BatteryML)"
    return current


def _capacity_columns(
    current: FloatArray,
    charge_q: FloatArray,
    discharge_q: FloatArray,
    start: IntArray,
    threshold: float,
    quality: dict[str, Any],
) -> tuple[bool, bool]:
    charging, discharging = current > threshold, current < -threshold
    usable = []
    for key, q, own, other, other_name in (
        ("charge_capacity_in_Ah", charge_q, charging, discharging, "discharge"),
        ("discharge_capacity_in_Ah", discharge_q, discharging, charging, "charge"),
    ):
        source = key
        if not np.isfinite(q).any():
            source = f"coulomb counting ({key} absent)"
        else:
            rise = _rises(q, start)
            in_own, in_other = float(rise[own].sum()), float(rise[other].sum())
            if in_own <= 0 or in_other > _CROSS_PHASE_SHARE * in_own:
                source = (
                    f"coulomb counting ({key} also rises during {other_name}: "
                    f"{in_other:.4g} Ah against {in_own:.4g} Ah in its own phase)"
                )
        usable.append(source == key)
        quality[key.replace("_in_Ah", "_source")] = source
    if not usable[0]:
        quality["coulombic_efficiency"] = (
            "from coulomb counting of both phases: the charge capacity column cannot give it"
        )
    return usable[0], usable[1]


def _json_safe(value: Any, depth: int = 0) -> Any:
    """Metadata as JSON: numpy scalars to numbers, NaN to None, long lists cut."""
    if depth > 8:
        return "..."
    if value is None or isinstance(value, bool | int | str):
        return value[:10_000] if isinstance(value, str) else value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _json_safe(value.item(), depth)
    if isinstance(value, np.ndarray):
        return _json_safe(value.ravel()[:1000].tolist(), depth)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, depth + 1) for k, v in list(value.items())[:1000]}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v, depth + 1) for v in list(value)[:1000]]
    if isinstance(value, bytes | bytearray):
        return bytes(value[:10_000]).decode("utf-8", "replace")
    return str(value)[:10_000]
