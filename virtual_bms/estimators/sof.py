"""State of Function: the charge current a cell may take, from a temperature x SoC look-up table.

D1.2 (section 3.3.1.10) makes the Pillar 2 SoF a current limiter during charging: a look-up
table over the operating conditions, defined to keep the cells out of unsafe operation.
Here the table maps (cell temperature, cell SoC) to the largest charge current, in A or as a
C-rate of the cell's present capacity, and is interpolated bilinearly. Outside its grid a
table holds its edge values, so a table whose edge rows are zero forbids charging beyond
them. A cell whose temperature or SoC is unknown (NaN) may not be charged at all.

Charge currents are negative (positive current discharges, as everywhere in batterytwin);
the limits here are magnitudes (>= 0) and :func:`clip_charge_current` applies them.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from twin.models.base import FloatArray
from virtual_bms.estimators.ecm_model import grid_axis

__all__ = [
    "ChargeLimit",
    "SofTable",
    "SofTableError",
    "allowed_charge_current",
    "clip_charge_current",
    "default_sof_table",
    "load_sof_table",
]


class SofTableError(ValueError):
    """A SoF table that cannot be used; the message says which field and how to fix it."""


def _frozen(value: ArrayLike) -> FloatArray:
    arr = np.array(value, dtype=np.float64)
    arr.setflags(write=False)
    return arr


def _check_grid(grid: FloatArray, name: str, where: str) -> None:
    if grid.ndim != 1 or grid.size < 1:
        raise SofTableError(f"{name} must be a 1-D grid with at least one point ({where})")
    if not np.all(np.isfinite(grid)):
        raise SofTableError(f"{name} contains NaN or inf ({where})")
    steps = np.diff(grid)
    if np.any(steps <= 0):
        i = int(np.flatnonzero(steps <= 0)[0])
        raise SofTableError(
            f"{name} must be strictly increasing, but {grid[i]} is followed by {grid[i + 1]} "
            f"(index {i}); sort the grid and its table rows together ({where})"
        )


@dataclass(frozen=True, eq=False)
class SofTable:
    """Maximum charge current over temperature x SoC.

    Attributes:
        temperature_grid_c: Cell temperatures, strictly increasing, ``(n_T,)``.
        soc_grid: SoC points (0..1), strictly increasing, ``(n_SoC,)``.
        max_charge: Largest charge current (a magnitude, >= 0), ``(n_T, n_SoC)``.
        unit: ``"C"``: ``max_charge`` is a C-rate of the cell's present capacity;
            ``"A"``: amperes per cell.
        source: Where the numbers come from, for error messages and logs.

    Raises:
        SofTableError: If a grid is not strictly increasing, a value is negative or not
            finite, the table's shape does not match the grids, or the unit is unknown.
    """

    temperature_grid_c: FloatArray
    soc_grid: FloatArray
    max_charge: FloatArray
    unit: Literal["A", "C"] = "C"
    source: str = "SoF table"

    def __post_init__(self) -> None:
        for name in ("temperature_grid_c", "soc_grid", "max_charge"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        where = self.source
        _check_grid(self.temperature_grid_c, "temperature_grid_c", where)
        _check_grid(self.soc_grid, "soc_grid", where)
        if self.soc_grid[0] < 0 or self.soc_grid[-1] > 1:
            raise SofTableError(
                f"soc_grid must lie within 0..1 (a fraction, not percent), got "
                f"{self.soc_grid[0]}..{self.soc_grid[-1]} ({where})"
            )
        shape = (self.temperature_grid_c.size, self.soc_grid.size)
        if self.max_charge.shape != shape:
            raise SofTableError(
                f"max_charge must have shape {shape} (one row per temperature, one column per "
                f"SoC point), got {self.max_charge.shape} ({where})"
            )
        if not np.all(np.isfinite(self.max_charge)) or np.any(self.max_charge < 0):
            raise SofTableError(
                "max_charge must be finite and >= 0 everywhere (a magnitude; 0 forbids "
                f"charging), min is {np.nanmin(self.max_charge)} ({where})"
            )
        if self.unit not in ("A", "C"):
            raise SofTableError(f"unit must be 'A' or 'C' (C-rate), got {self.unit!r} ({where})")

    def max_charge_current_a(
        self, *, temperature_c: ArrayLike, soc: ArrayLike, capacity_ah: ArrayLike
    ) -> FloatArray:
        """Largest charge current per cell in A (a magnitude), bilinear in the table.

        Args:
            temperature_c: Cell temperatures.
            soc: Cell SoC estimates, 0..1.
            capacity_ah: Present cell capacities (used when ``unit`` is ``"C"``).

        Returns:
            One limit per cell (broadcast of the inputs); 0 where an input is NaN.
        """
        t, s, q = np.broadcast_arrays(
            np.asarray(temperature_c, dtype=np.float64),
            np.asarray(soc, dtype=np.float64),
            np.asarray(capacity_ah, dtype=np.float64),
        )
        known = np.isfinite(t) & np.isfinite(s)
        t0, t1, ft = grid_axis(self.temperature_grid_c, np.where(known, t, 0.0))
        s0, s1, fs = grid_axis(self.soc_grid, np.where(known, s, 0.0))
        tab = self.max_charge
        low = tab[t0, s0] * (1.0 - fs) + tab[t0, s1] * fs
        high = tab[t1, s0] * (1.0 - fs) + tab[t1, s1] * fs
        value = low * (1.0 - ft) + high * ft
        if self.unit == "C":
            value = value * q
        return np.asarray(np.where(known & np.isfinite(value), value, 0.0))


def load_sof_table(path: str | Path) -> SofTable:
    """A SoF table from a JSON or TOML file with the keys of :class:`SofTable`.

    Example (TOML)::

        unit = "C"
        temperature_grid_c = [0.0, 10.0, 25.0, 45.0]
        soc_grid = [0.0, 0.8, 1.0]
        max_charge = [[0.0, 0.0, 0.0], [0.2, 0.1, 0.02], [0.5, 0.3, 0.05], [0.3, 0.2, 0.02]]

    Raises:
        SofTableError: If the file cannot be read, lacks a key, has an unknown key, or the
            table is invalid; the message names the file.
    """
    file = Path(path)
    try:
        text = file.read_text()
        data: Any = tomllib.loads(text) if file.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as error:
        raise SofTableError(f"cannot read SoF table {file}: {error}") from None
    if not isinstance(data, dict):
        raise SofTableError(f"SoF table {file} must be an object of SofTable's keys")
    known = {"temperature_grid_c", "soc_grid", "max_charge", "unit", "source"}
    missing = sorted({"temperature_grid_c", "soc_grid", "max_charge"} - set(data))
    unknown = sorted(set(data) - known)
    if missing or unknown:
        raise SofTableError(
            f"SoF table {file}: missing {missing or 'nothing'}, unknown {unknown or 'nothing'}"
        )
    try:
        return SofTable(
            temperature_grid_c=np.asarray(data["temperature_grid_c"], dtype=np.float64),
            soc_grid=np.asarray(data["soc_grid"], dtype=np.float64),
            max_charge=np.asarray(data["max_charge"], dtype=np.float64),
            unit=data.get("unit", "C"),
            source=str(data.get("source", file)),
        )
    except (TypeError, ValueError) as error:
        raise SofTableError(f"SoF table {file}: {error}") from None


def default_sof_table() -> SofTable:
    """A conservative charge-current table (C-rate) for second-life NMC/graphite cells."""
    # Why these numbers. Charging drives the graphite anode's potential towards 0 V vs
    # Li/Li+; once it dips below, lithium plates instead of intercalating (capacity loss,
    # dendrites, a safety risk). The overpotential that causes this grows as diffusion and
    # charge transfer slow down in the cold, and the margin shrinks as the anode fills up
    # (high SoC). Post-mortem studies find plating to be the dominant ageing mechanism
    # below about 25 degC and SEI growth above (Waldmann et al., J. Power Sources 262
    # (2014) 129-135), and EV-cell datasheets typically allow charging only within
    # about 0..45 degC. Hence: no charging at or below 0 degC, a gentle ramp up to
    # 25 degC, a derating again above 45 degC (SEI growth, heat) and none from 55 degC;
    # along SoC, the current tapers above 80 % and is left at a trickle (0.05C at
    # 25 degC) at full charge for the end of a constant-voltage phase. The plateau of
    # 0.5C is half the 1C a new EV cell commonly takes: aged cells have a higher
    # resistance, so their anode reaches the plating potential at a lower current.
    temperature_grid_c = [-10.0, 0.0, 5.0, 10.0, 15.0, 25.0, 35.0, 45.0, 50.0, 55.0]
    soc_grid = [0.0, 0.5, 0.8, 0.9, 0.95, 1.0]
    max_charge_c = [
        [0.00, 0.00, 0.00, 0.00, 0.00, 0.00],  # -10 degC
        [0.00, 0.00, 0.00, 0.00, 0.00, 0.00],  # 0 degC: no charging at or below freezing
        [0.10, 0.10, 0.05, 0.05, 0.02, 0.02],  # 5 degC
        [0.20, 0.20, 0.10, 0.05, 0.05, 0.02],  # 10 degC
        [0.35, 0.35, 0.20, 0.10, 0.05, 0.02],  # 15 degC
        [0.50, 0.50, 0.35, 0.20, 0.10, 0.05],  # 25 degC
        [0.50, 0.50, 0.35, 0.20, 0.10, 0.05],  # 35 degC
        [0.30, 0.30, 0.20, 0.10, 0.05, 0.02],  # 45 degC
        [0.10, 0.10, 0.05, 0.05, 0.02, 0.02],  # 50 degC
        [0.00, 0.00, 0.00, 0.00, 0.00, 0.00],  # 55 degC: no charging when hot
    ]
    return SofTable(
        temperature_grid_c=np.array(temperature_grid_c),
        soc_grid=np.array(soc_grid),
        max_charge=np.array(max_charge_c),
        unit="C",
        source="default second-life NMC SoF table (virtual_bms.estimators.sof)",
    )


@dataclass(frozen=True, eq=False)
class ChargeLimit:
    """Allowed charge current (magnitudes, >= 0).

    Attributes:
        cell_a: Per cell, ``(n,)``.
        pack_a: For the pack: the smallest cell limit times the cells in parallel.
        limiting_cell: Index of the cell with the smallest limit.
    """

    cell_a: FloatArray
    pack_a: float
    limiting_cell: int


def allowed_charge_current(
    table: SofTable,
    *,
    temperature_c: ArrayLike,
    soc: ArrayLike,
    capacity_ah: ArrayLike,
    parallel_cells: int = 1,
) -> ChargeLimit:
    """Per-cell and pack-level charge-current limits.

    In a series string every cell carries the string current, so the weakest cell sets
    the string's limit; parallel cells (cells per group times strings) share the pack
    current. The pack limit assumes an even share, so it is ``min(cell limit) *
    parallel_cells``.

    Args:
        table: The SoF table.
        temperature_c: Measured cell temperatures, scalar or per cell.
        soc: Estimated cell SoC, per cell.
        capacity_ah: Present cell capacities (e.g. nominal times the SoH estimate).
        parallel_cells: Cells in parallel: ``cells_per_group * strings_in_parallel``.

    Raises:
        ValueError: If ``parallel_cells`` < 1 or there are no cells.
    """
    if parallel_cells < 1:
        raise ValueError(f"parallel_cells must be >= 1, got {parallel_cells}")
    cell = np.atleast_1d(
        table.max_charge_current_a(temperature_c=temperature_c, soc=soc, capacity_ah=capacity_ah)
    )
    if cell.size == 0:
        raise ValueError("allowed_charge_current needs at least one cell")
    worst = int(np.argmin(cell))
    return ChargeLimit(cell_a=cell, pack_a=float(cell[worst]) * parallel_cells, limiting_cell=worst)


def clip_charge_current(requested_a: float, *, allowed_a: float) -> float:
    """Limit a requested current (negative = charge) to the allowed charge magnitude.

    Discharge requests (>= 0) pass unchanged; a charge request beyond ``allowed_a``
    becomes ``-allowed_a``.

    Raises:
        ValueError: If ``allowed_a`` is negative or NaN.
    """
    if not allowed_a >= 0:
        raise ValueError(f"allowed_a is a magnitude and must be >= 0, got {allowed_a!r}")
    return float(max(requested_a, -allowed_a))
