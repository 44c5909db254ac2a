"""On-demand active balancing (Pillar 2, D1.2 section 3.3.1.12) as a pure state machine.

Balancing runs only when requested (e.g. periodically). A request starts it only if the
cell-voltage spread (max - min) exceeds ``start_spread_v`` (100 mV); otherwise it finishes
at once (``not_needed``). Once running, it stops when the spread falls below
``stop_spread_v`` (30 mV) or after ``max_duration_s`` (``timeout``); ``abort`` stops it at
once (``aborted``).

Which cells, and how much (currents positive = drawn from the cell, as
``twin.pack.Pack.set_balancing`` takes them): each cell's current is proportional to its
deviation, scaled so that the most deviating cell runs at ``current_a``:

* ``"shuttle"`` (active): charge moves from cells above the mean voltage to cells below
  it. What the high cells give sums to what the low cells get divided by the converter's
  ``efficiency``, so the pack's charge is kept apart from the losses.
* ``"dissipative"``: cells above the lowest cell are bled, towards the lowest.

The voltages to pass: cell voltages at rest, or ``model.ocv_v(soc)`` of the estimated SoC
(the D1.2 balancer uses voltage and SoC). Voltages measured while current flows also carry
each cell's ``R I`` drop, and a spread of resistances then looks like a spread of charge;
the balancing current's own drop (``R0 * current_a``) shrinks the spread the machine sees,
so keep ``current_a`` small against ``stop_spread_v / R0`` or pass OCV-based voltages.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from twin.models.base import FloatArray

__all__ = [
    "BalancingConfig",
    "BalancingState",
    "StopReason",
    "balancing_currents",
    "balancing_step",
]


class StopReason(enum.StrEnum):
    """Why balancing is not running (after it last ran or was last requested)."""

    spread_reached = "spread_reached"
    timeout = "timeout"
    not_needed = "not_needed"
    aborted = "aborted"


@dataclass(frozen=True)
class BalancingConfig:
    """Thresholds and balancer hardware.

    Attributes:
        start_spread_v: A request starts balancing only if max - min voltage exceeds this.
        stop_spread_v: Balancing stops when the spread falls below this.
        max_duration_s: Balancing stops after this long (the balancing time expires).
        current_a: Balancing current of the most deviating cell (magnitude).
        mode: ``"shuttle"`` (active, charge moved between cells) or ``"dissipative"``.
        efficiency: Shuttle converter efficiency, (0, 1].

    Raises:
        ValueError: If a value is out of range (each message says which).
    """

    start_spread_v: float = 0.100
    stop_spread_v: float = 0.030
    max_duration_s: float = 4 * 3600.0
    current_a: float = 2.0
    mode: Literal["shuttle", "dissipative"] = "shuttle"
    efficiency: float = 0.9

    def __post_init__(self) -> None:
        for name in ("start_spread_v", "stop_spread_v", "max_duration_s", "current_a"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"BalancingConfig.{name} must be finite and > 0, got {value!r}")
        if not self.stop_spread_v < self.start_spread_v:
            raise ValueError(
                f"BalancingConfig.stop_spread_v ({self.stop_spread_v}) must be below "
                f"start_spread_v ({self.start_spread_v}), or balancing would stop as it starts"
            )
        if self.mode not in ("shuttle", "dissipative"):
            raise ValueError(
                f"BalancingConfig.mode must be 'shuttle' or 'dissipative', got {self.mode!r}"
            )
        if not 0 < self.efficiency <= 1:
            raise ValueError(f"BalancingConfig.efficiency must be in (0, 1], got {self.efficiency}")


@dataclass(frozen=True)
class BalancingState:
    """Where the machine is.

    Attributes:
        active: Balancing is running.
        elapsed_s: How long the present (or last) balancing has run.
        spread_v: The voltage spread seen at the last step.
        stop_reason: Why it is not running (``None`` while running or before any request).
    """

    active: bool = False
    elapsed_s: float = 0.0
    spread_v: float = math.nan
    stop_reason: StopReason | None = None


def balancing_currents(voltage_v: FloatArray, config: BalancingConfig) -> FloatArray:
    """Per-cell balancing currents (positive = drawn from the cell) for these voltages."""
    v = np.asarray(voltage_v, dtype=np.float64)
    if config.mode == "dissipative":
        excess = v - v.min()
        top = excess.max()
        return np.asarray(config.current_a * excess / top) if top > 0 else np.zeros_like(v)
    deviation = v - v.mean()
    top = np.abs(deviation).max()
    if top == 0:
        return np.zeros_like(v)
    current = config.current_a * deviation / top
    # The low cells receive what the high cells give, less the converter's losses.
    return np.asarray(np.where(current < 0, current * config.efficiency, current))


def balancing_step(
    state: BalancingState,
    *,
    voltage_v: ArrayLike,
    request: bool,
    dt_s: float,
    config: BalancingConfig,
    abort: bool = False,
) -> tuple[BalancingState, FloatArray]:
    """Advance the balancing state machine by one BMS cycle.

    Args:
        state: State after the previous cycle.
        voltage_v: Cell voltages now (see the module docstring for which voltages).
        request: Balancing is requested in this cycle; ignored while balancing runs.
        dt_s: Time since the previous cycle (the previous currents were applied so long).
        config: Thresholds and balancer.
        abort: Stop a running balancing now.

    Returns:
        The new state and the per-cell balancing currents to apply until the next cycle
        (all zero when not balancing).

    Raises:
        ValueError: If there are no voltages, one is not finite, or ``dt_s`` < 0.
    """
    v = np.atleast_1d(np.asarray(voltage_v, dtype=np.float64))
    if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"voltage_v must be finite, one value per cell, got {v!r}")
    if not (math.isfinite(dt_s) and dt_s >= 0):
        raise ValueError(f"dt_s must be finite and >= 0, got {dt_s!r}")
    spread = float(v.max() - v.min())
    idle = np.zeros_like(v)
    if state.active:
        elapsed = state.elapsed_s + dt_s
        reason: StopReason | None = None
        if abort:
            reason = StopReason.aborted
        elif spread < config.stop_spread_v:
            reason = StopReason.spread_reached
        elif elapsed >= config.max_duration_s:
            reason = StopReason.timeout
        if reason is not None:
            return BalancingState(False, elapsed, spread, reason), idle
        return BalancingState(True, elapsed, spread, None), balancing_currents(v, config)
    if not request or abort:
        return BalancingState(False, state.elapsed_s, spread, state.stop_reason), idle
    if spread > config.start_spread_v:
        return BalancingState(True, 0.0, spread, None), balancing_currents(v, config)
    return BalancingState(False, 0.0, spread, StopReason.not_needed), idle
