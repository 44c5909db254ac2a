"""Interface between a twin and its semi-empirical ageing model.

The ECM accumulates cheap per-step stress sums per cell; every ageing interval it hands
the ageing model a :class:`StressWindow` and receives an updated :class:`AgeingState`.
Capacity and resistance of each cell are then ``capacity_fraction`` and
``resistance_factor`` times their beginning-of-(second-)life values.

Cycle depth is found by reversal counting: a half-cycle ends when the current changes
direction, and its depth is the SoC swing since the previous reversal. Throughput of a
half-cycle is attributed to the window in which it ends.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from twin.models.base import FloatArray


@dataclass(frozen=True, slots=True)
class StressWindow:
    """Stress seen by each cell over one ageing interval (all arrays shape ``(N,)``)."""

    duration_s: float
    mean_soc: FloatArray
    """Time-averaged true SoC, 0..1."""
    mean_temperature_c: FloatArray
    """Time-averaged cell temperature."""
    throughput_ah: FloatArray
    """Charge moved in half-cycles completed in this window (charge + discharge)."""
    mean_dod: FloatArray
    """Throughput-weighted depth of those half-cycles, 0..1 (0 where no throughput)."""
    mean_c_rate: FloatArray
    """Throughput-weighted |current| / nominal capacity, 1/h (0 where no throughput)."""
    nominal_capacity_ah: FloatArray
    """Capacity that defines 1C and one equivalent full cycle (2 x capacity throughput)."""
    cycle_mean_soc: FloatArray
    """Throughput-weighted mean SoC of those half-cycles (the SoC the cycling happened
    at, which cycle laws need; equals ``mean_soc`` where there is no throughput). A
    half-cycle moves SoC monotonically, so its own mean is the midpoint of its ends."""


@dataclass(frozen=True, slots=True)
class AgeingState:
    """Accumulated degradation per cell, as fractions of beginning-of-life values."""

    capacity_loss_calendar: FloatArray
    capacity_loss_cycle: FloatArray
    resistance_growth_calendar: FloatArray
    resistance_growth_cycle: FloatArray
    elapsed_s: FloatArray
    """Ageing time seen, per cell (a replaced cell restarts at its own value)."""
    throughput_ah: FloatArray
    """Total throughput seen, per cell."""

    @classmethod
    def fresh(cls, n_cells: int) -> AgeingState:
        z = np.zeros(n_cells)
        return cls(z, z.copy(), z.copy(), z.copy(), z.copy(), z.copy())

    @property
    def capacity_fraction(self) -> FloatArray:
        """Remaining capacity relative to the start (1 = no fade)."""
        return np.clip(1.0 - self.capacity_loss_calendar - self.capacity_loss_cycle, 0.0, 1.0)

    @property
    def resistance_factor(self) -> FloatArray:
        """Resistance relative to the start (1 = no growth)."""
        return 1.0 + self.resistance_growth_calendar + self.resistance_growth_cycle

    def replace_cells(self, cells: np.ndarray | list[int], other: AgeingState) -> AgeingState:
        """Return a copy where ``cells`` take their values from ``other`` (same length)."""
        idx = np.asarray(cells, dtype=np.intp)
        out = {}
        for name in self.__slots__:
            arr = getattr(self, name).copy()
            arr[idx] = getattr(other, name)
            out[name] = arr
        return replace(self, **out)


class AgeingModel(Protocol):
    """A semi-empirical calendar + cycle ageing law, vectorised over cells."""

    name: str

    def update(
        self, state: AgeingState, window: StressWindow, *, rate_factor: FloatArray
    ) -> AgeingState:
        """Advance ``state`` by one window. ``rate_factor`` scales each cell's increments
        (second-life spread of ageing rates; 1 = nominal)."""
        ...


class NoAgeing:
    """Ageing switched off: the state only records time and throughput."""

    name = "none"

    def update(
        self, state: AgeingState, window: StressWindow, *, rate_factor: FloatArray
    ) -> AgeingState:
        return replace(
            state,
            elapsed_s=state.elapsed_s + window.duration_s,
            throughput_ah=state.throughput_ah + window.throughput_ah,
        )
