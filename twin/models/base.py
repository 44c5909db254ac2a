"""The small interface every cell twin implements (ECM, PyBaMM, FMU).

Sign convention, stated once for the whole platform: **positive current discharges
the cell** (as in PyBaMM); negative current charges it. Power follows the same sign
(positive = power delivered by the cell).

A twin holds ``n_cells`` cells and steps them together as arrays. Each step takes a
piecewise-constant current (or power) held for ``dt_s`` at an ambient temperature and
returns what a sensor would see (terminal voltage, surface temperature) beside the
ground truth that only a simulation knows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from twin.errors import TwinInputError

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class TwinEvent:
    """Something a real pack would flag: a limit crossed, power not deliverable, ...

    Attributes:
        time_s: Twin time at the end of the step that raised it.
        kind: Short machine-readable name, e.g. ``"over_voltage"``.
        cells: Indices of the affected cells.
        values: The offending values, one per cell.
        limit: The limit that was crossed.
    """

    time_s: float
    kind: str
    cells: tuple[int, ...]
    values: tuple[float, ...]
    limit: float

    def __str__(self) -> str:
        worst = max(self.values, key=lambda v: abs(v - self.limit)) if self.values else float("nan")
        return (
            f"t={self.time_s:.0f} s {self.kind}: {len(self.cells)} cell(s), "
            f"worst {worst:.4g} vs limit {self.limit:.4g}"
        )


_NAN_CACHE: dict[int, FloatArray] = {}


def _nan(n: int) -> FloatArray:
    """A shared read-only all-NaN array (truth fields a twin does not model)."""
    arr = _NAN_CACHE.get(n)
    if arr is None:
        arr = np.full(n, np.nan)
        arr.setflags(write=False)
        _NAN_CACHE[n] = arr
    return arr


@dataclass(frozen=True, slots=True)
class CellTruth:
    """Ground truth per cell, known to the twin and hidden from a BMS.

    PyBaMM-only quantities are NaN for twins that do not model them.
    """

    soc: FloatArray
    """True state of charge, 0..1, relative to the present usable capacity."""
    capacity_ah: FloatArray
    """Present usable capacity."""
    r0_ohm: FloatArray
    """Present series resistance at the cell's SoC and temperature."""
    lli_pct: FloatArray
    """Loss of lithium inventory in percent (PyBaMM only)."""
    lam_negative_pct: FloatArray
    """Loss of active material in the negative electrode in percent (PyBaMM only)."""
    lam_positive_pct: FloatArray
    """Loss of active material in the positive electrode in percent (PyBaMM only)."""
    plated_lithium_ah: FloatArray
    """Lithium lost to plating, as charge (PyBaMM only)."""

    @classmethod
    def basic(cls, *, soc: FloatArray, capacity_ah: FloatArray, r0_ohm: FloatArray) -> CellTruth:
        """Truth for twins without electrochemical degradation states."""
        n = soc.shape[0]
        return cls(
            soc=soc,
            capacity_ah=capacity_ah,
            r0_ohm=r0_ohm,
            lli_pct=_nan(n),
            lam_negative_pct=_nan(n),
            lam_positive_pct=_nan(n),
            plated_lithium_ah=_nan(n),
        )


@dataclass(frozen=True, slots=True)
class CellStep:
    """The result of one step: sensor-visible quantities plus ground truth."""

    time_s: float
    current_a: FloatArray
    voltage_v: FloatArray
    surface_temperature_c: FloatArray
    truth: CellTruth
    events: tuple[TwinEvent, ...] = field(default=())


@runtime_checkable
class CellTwin(Protocol):
    """What every cell twin offers. Implementations step all cells as arrays."""

    @property
    def n_cells(self) -> int:
        """Number of cells stepped together."""
        ...

    @property
    def time_s(self) -> float:
        """Simulated time since the initial state."""
        ...

    def reset(self) -> CellStep:
        """Return to the initial state and report it."""
        ...

    def step(self, *, current_a: ArrayLike, dt_s: float, ambient_c: ArrayLike) -> CellStep:
        """Hold ``current_a`` (per cell or one value for all) for ``dt_s`` seconds."""
        ...

    def step_power(self, *, power_w: ArrayLike, dt_s: float, ambient_c: ArrayLike) -> CellStep:
        """Hold a per-cell power (positive = discharge) for ``dt_s`` seconds."""
        ...


@dataclass(frozen=True, slots=True)
class LimitCheck:
    """One limit to watch: ``values`` beyond ``limit`` (by more than ``slack``)."""

    kind: str
    values: FloatArray
    limit: float
    above: bool
    slack: float = 0.0


class LimitMonitor:
    """Raises a :class:`TwinEvent` when a cell *enters* the region beyond a limit.

    A cell that stays beyond a limit raises nothing more until it has come back and
    crossed again, so a long excursion is one event, not one per step. Costs one
    reduction per check while no cell is beyond its limit.
    """

    def __init__(self) -> None:
        self._beyond: dict[str, np.ndarray] = {}

    def reset(self) -> None:
        """Forget every excursion (after a twin's reset)."""
        self._beyond.clear()

    def forget_cells(self, cells: np.ndarray) -> None:
        """Forget the excursions of ``cells`` (e.g. replaced cells)."""
        for mask in self._beyond.values():
            mask[cells] = False

    def check(self, *, time_s: float, checks: tuple[LimitCheck, ...]) -> tuple[TwinEvent, ...]:
        """Evaluate ``checks`` and return the events of cells that newly crossed."""
        events: list[TwinEvent] = []
        for c in checks:
            threshold = c.limit + c.slack if c.above else c.limit - c.slack
            crossed = c.values.max() > threshold if c.above else c.values.min() < threshold
            if not crossed:
                self._beyond.pop(c.kind, None)
                continue
            beyond = c.values > threshold if c.above else c.values < threshold
            was = self._beyond.get(c.kind)
            new = beyond if was is None else beyond & ~was
            self._beyond[c.kind] = beyond
            if new.any():
                cells = np.flatnonzero(new)
                events.append(
                    TwinEvent(
                        time_s=time_s,
                        kind=c.kind,
                        cells=tuple(int(i) for i in cells),
                        values=tuple(float(v) for v in c.values[cells]),
                        limit=float(c.limit),
                    )
                )
        return tuple(events)


def check_dt(dt_s: float, *, source: str) -> float:
    """Validate a step length.

    Raises:
        TwinInputError: If ``dt_s`` is not a finite positive number.
    """
    dt = float(dt_s)
    if not np.isfinite(dt) or dt <= 0.0:
        raise TwinInputError(f"dt_s must be a finite number > 0, got {dt_s!r} ({source})")
    return dt


def as_cell_array(value: ArrayLike, *, n_cells: int, name: str, source: str) -> FloatArray:
    """Broadcast a scalar or per-cell input to shape ``(n_cells,)`` and reject NaN/inf.

    Raises:
        TwinInputError: On a wrong shape or a non-finite entry, naming the first bad cell.
    """
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        if not np.isfinite(arr):
            raise TwinInputError(f"{name} must be finite, got {float(arr)!r} ({source})")
        return np.full(n_cells, float(arr))
    if arr.shape != (n_cells,):
        raise TwinInputError(
            f"{name} must be a scalar or have shape ({n_cells},), got shape {arr.shape} ({source})"
        )
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TwinInputError(
            f"{name} must be finite, got {arr[i]!r} for cell {i} "
            f"({int(bad.sum())} bad value(s)) ({source})"
        )
    return arr
