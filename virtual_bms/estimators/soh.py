"""Cell SoH after charge completion, from charge throughput over an estimated SoC swing.

D1.2 (section 3.3.1.9): the SoC is updated continuously; the SoH runs once a charge has
finished and its interval (a week or a month) has elapsed, from the accumulated SoC and
charge. Capacity is the charge that moved divided by the SoC change it caused::

    Q = integral(-I dt) / (SoC_end - SoC_anchor)          (positive current discharges)

The segment starts at an *anchor*: the latest instant at which the cell had rested for
``min_rest_s`` (a relaxed cell's SoC estimate is at its most accurate, since the voltage
then is the OCV). The net charge from the anchor counts, so a discharge between anchor and
charge does no harm. The segment ends when the caller reports a completed charge (CV phase
done, or the charge stopped at its SoC target). Only a swing of at least
``min_soc_swing`` is trusted: SoC errors at both ends are divided by the swing.

The result is only as good as the SoC at both ends: the SoC filter must run on the
voltage (an EKF), not on Coulomb counting through the capacity being estimated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike

from twin.models.base import FloatArray

__all__ = ["SohConfig", "SohEstimate", "SohState", "soh_accumulate", "soh_after_charge"]


@dataclass(frozen=True)
class SohConfig:
    """When to estimate and what to trust.

    Attributes:
        interval_s: Least time between two estimates (D1.2: a week or a month).
        min_soc_swing: Least SoC change between anchor and charge end to use a cell.
        min_rest_s: Rest a cell needs before its SoC can anchor a segment.
        rest_c_rate: ``|I|`` below this C-rate (of the believed capacity) counts as rest.
        min_soh: Estimates below this are rejected as implausible (a wrong anchor).
        max_soh: Estimates above this are rejected as implausible.

    Raises:
        ValueError: If a value is out of range.
    """

    interval_s: float = 7 * 86_400.0
    min_soc_swing: float = 0.5
    min_rest_s: float = 900.0
    rest_c_rate: float = 0.02
    min_soh: float = 0.3
    max_soh: float = 1.2

    def __post_init__(self) -> None:
        for name in ("interval_s", "min_rest_s", "rest_c_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"SohConfig.{name} must be finite and >= 0, got {value!r}")
        if not 0 < self.min_soc_swing <= 1:
            raise ValueError(f"SohConfig.min_soc_swing must be in (0, 1], got {self.min_soc_swing}")
        if not 0 <= self.min_soh < self.max_soh:
            raise ValueError(
                f"SohConfig needs 0 <= min_soh < max_soh, got {self.min_soh}, {self.max_soh}"
            )


def _frozen(value: ArrayLike) -> FloatArray:
    arr = np.array(value, dtype=np.float64)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class SohState:
    """What the estimator carries between cycles (arrays of one value per cell).

    Attributes:
        nominal_capacity_ah: Capacity of a new cell (SoH = capacity / this).
        capacity_ah: Present capacity estimate.
        anchor_soc: SoC at the segment's anchor; NaN until a cell has rested.
        charge_in_ah: Net charge into the cell since the anchor.
        rest_s: How long each cell has been resting.
        last_estimate_s: Time of the last estimate (``-inf``: never).
    """

    nominal_capacity_ah: FloatArray
    capacity_ah: FloatArray
    anchor_soc: FloatArray
    charge_in_ah: FloatArray
    rest_s: FloatArray
    last_estimate_s: float = -math.inf

    def __post_init__(self) -> None:
        names = ("nominal_capacity_ah", "capacity_ah", "anchor_soc", "charge_in_ah", "rest_s")
        for name in names:
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        n = self.capacity_ah.shape
        if len(n) != 1 or any(getattr(self, name).shape != n for name in names):
            raise ValueError(f"SohState: every array must have shape (n,), got {n}")
        if np.any(self.nominal_capacity_ah <= 0) or np.any(self.capacity_ah <= 0):
            raise ValueError("SohState: nominal_capacity_ah and capacity_ah must be > 0")

    @classmethod
    def initial(
        cls,
        *,
        nominal_capacity_ah: ArrayLike,
        soh: ArrayLike = 1.0,
        n_cells: int,
    ) -> SohState:
        """A state with no anchor yet and the SoH the BMS assumes now."""
        nominal = np.broadcast_to(np.asarray(nominal_capacity_ah, dtype=np.float64), (n_cells,))
        capacity = nominal * np.broadcast_to(np.asarray(soh, dtype=np.float64), (n_cells,))
        return cls(
            nominal_capacity_ah=nominal,
            capacity_ah=capacity,
            anchor_soc=np.full(n_cells, np.nan),
            charge_in_ah=np.zeros(n_cells),
            rest_s=np.zeros(n_cells),
        )

    @property
    def soh(self) -> FloatArray:
        """Present SoH estimate, capacity over nominal capacity."""
        return np.asarray(self.capacity_ah / self.nominal_capacity_ah)


@dataclass(frozen=True, eq=False)
class SohEstimate:
    """One SoH evaluation after a charge.

    Attributes:
        time_s: When it was made.
        capacity_ah: Capacity per cell from this segment (NaN where not computable).
        soc_swing: SoC change from anchor to charge end per cell.
        trusted: Cells whose estimate was taken over (swing and plausibility checks).
        soh: The SoH per cell after this evaluation (the old value where not trusted).
    """

    time_s: float
    capacity_ah: FloatArray
    soc_swing: FloatArray
    trusted: np.ndarray
    soh: FloatArray


def soh_accumulate(
    state: SohState,
    *,
    current_a: ArrayLike,
    soc: ArrayLike,
    dt_s: float,
    config: SohConfig,
    resting: ArrayLike | None = None,
) -> SohState:
    """Add one step of charge throughput and move the anchor while a cell rests.

    Args:
        state: The estimator's state.
        current_a: Cell current held over the step (positive = discharge), including a
            cell's balancing current.
        soc: SoC estimate per cell at the end of the step.
        dt_s: Step length.
        config: Estimator settings.
        resting: Whether the cells rest in this step, from the BMS's operating mode (the
            D1.2 state machine knows when it is in resting mode). ``None`` detects rest
            from ``|current_a| <= rest_c_rate * capacity``, which needs a current sensor
            whose noise and offset are well below that (true for a shunt on 100 Ah cells,
            not for a 500 A sensor on 5 Ah cells).
    """
    if not (math.isfinite(dt_s) and dt_s > 0):
        raise ValueError(f"dt_s must be finite and > 0, got {dt_s!r}")
    n = state.capacity_ah.shape
    current = np.broadcast_to(np.asarray(current_a, dtype=np.float64), n)
    s = np.broadcast_to(np.asarray(soc, dtype=np.float64), n)
    charge = state.charge_in_ah - current * (dt_s / 3600.0)
    if resting is None:
        is_rest = np.abs(current) <= config.rest_c_rate * state.capacity_ah
    else:
        is_rest = np.broadcast_to(np.asarray(resting, dtype=bool), n)
    rest = np.where(is_rest, state.rest_s + dt_s, 0.0)
    anchor = is_rest & (rest >= config.min_rest_s) & np.isfinite(s)
    return replace(
        state,
        anchor_soc=np.where(anchor, s, state.anchor_soc),
        charge_in_ah=np.where(anchor, 0.0, charge),
        rest_s=rest,
    )


def soh_after_charge(
    state: SohState,
    *,
    soc: ArrayLike,
    time_s: float,
    config: SohConfig,
) -> tuple[SohState, SohEstimate | None]:
    """Estimate capacity and SoH when a charge has completed and the interval has elapsed.

    Args:
        state: The estimator's state (accumulated up to now).
        soc: SoC estimate per cell at the end of the charge.
        time_s: Now.
        config: Estimator settings.

    Returns:
        The new state and the estimate, or the unchanged state and ``None`` while the
        interval since the last estimate has not elapsed. Cells whose swing is too small
        or whose result is implausible keep their SoH; if no cell is trusted, the
        interval is not restarted (the next completed charge tries again).
    """
    if time_s - state.last_estimate_s < config.interval_s:
        return state, None
    n = state.capacity_ah.shape
    s = np.broadcast_to(np.asarray(soc, dtype=np.float64), n)
    swing = s - state.anchor_soc
    with np.errstate(invalid="ignore", divide="ignore"):
        capacity = np.where(np.isfinite(swing) & (swing != 0), state.charge_in_ah / swing, np.nan)
        soh_new = capacity / state.nominal_capacity_ah
        trusted = (
            np.isfinite(capacity)
            & (swing >= config.min_soc_swing)
            & (soh_new >= config.min_soh)
            & (soh_new <= config.max_soh)
        )
    new_capacity = np.where(trusted, capacity, state.capacity_ah)
    new_state = replace(
        state,
        capacity_ah=new_capacity,
        last_estimate_s=float(time_s) if trusted.any() else state.last_estimate_s,
    )
    estimate = SohEstimate(
        time_s=float(time_s),
        capacity_ah=capacity,
        soc_swing=swing,
        trusted=trusted,
        soh=new_state.soh,
    )
    return new_state, estimate
