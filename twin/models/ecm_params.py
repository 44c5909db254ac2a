"""Equivalent-circuit parameters: OCV(SoC, T) and R0, R1..R4, C1..C4 look-up tables."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from twin.errors import ParameterSetError
from twin.models.base import FloatArray

MAX_RC_PAIRS = 4
DISCHARGE, CHARGE = 0, 1
"""Index of the current-direction axis of every R/C table."""


@dataclass(frozen=True)
class ThermalParameters:
    """Lumped thermal model of one cell.

    Attributes:
        heat_capacity_j_per_k: Cell mass times specific heat.
        heat_transfer_w_per_k: Convection to ambient (h * A).
    """

    heat_capacity_j_per_k: float = 1000.0
    heat_transfer_w_per_k: float = 5.0


@dataclass(frozen=True)
class Limits:
    """Safe operating area; crossing a limit raises an event, never a clip."""

    min_voltage_v: float
    max_voltage_v: float
    min_temperature_c: float = -20.0
    max_temperature_c: float = 60.0


@dataclass(frozen=True, eq=False)
class EcmParameters:
    """One cell's equivalent-circuit tables.

    R and C tables have shape ``(2, n_temperature, n_soc)``: axis 0 is the current
    direction (``DISCHARGE``, ``CHARGE``), axis 1 follows ``temperature_grid_c``,
    axis 2 follows ``soc_grid``. ``rc_resistance_ohm`` and ``rc_capacitance_f`` stack
    1 to 4 such tables (R1..R4, C1..C4). OCV is tabulated over SoC at
    ``reference_temperature_c``; ``entropic_v_per_k`` (dOCV/dT over SoC) moves it with
    temperature.
    """

    name: str
    source: str
    chemistry: str
    nominal_capacity_ah: float
    soc_grid: FloatArray
    ocv_v: FloatArray
    entropic_v_per_k: FloatArray
    temperature_grid_c: FloatArray
    r0_ohm: FloatArray
    rc_resistance_ohm: FloatArray
    rc_capacitance_f: FloatArray
    limits: Limits
    thermal: ThermalParameters = field(default_factory=ThermalParameters)
    reference_temperature_c: float = 25.0
    inductance_h: float = 0.0

    def __post_init__(self) -> None:
        where = f"parameter set {self.name!r} from {self.source}"
        for attr in (
            "soc_grid",
            "ocv_v",
            "entropic_v_per_k",
            "temperature_grid_c",
            "r0_ohm",
            "rc_resistance_ohm",
            "rc_capacitance_f",
        ):
            arr = np.array(getattr(self, attr), dtype=np.float64)
            arr.setflags(write=False)
            object.__setattr__(self, attr, arr)
            if not np.all(np.isfinite(arr)):
                raise ParameterSetError(f"{attr} contains NaN or inf ({where})")
        if not self.nominal_capacity_ah > 0:
            raise ParameterSetError(
                f"nominal_capacity_ah must be > 0, got {self.nominal_capacity_ah!r} ({where})"
            )
        _check_increasing(self.soc_grid, "soc_grid", where)
        _check_increasing(self.temperature_grid_c, "temperature_grid_c", where, allow_single=True)
        n_soc, n_t = self.soc_grid.size, self.temperature_grid_c.size
        for attr, arr in (("ocv_v", self.ocv_v), ("entropic_v_per_k", self.entropic_v_per_k)):
            if arr.shape != (n_soc,):
                raise ParameterSetError(
                    f"{attr} must have one value per soc_grid point ({n_soc}), "
                    f"got shape {arr.shape} ({where})"
                )
        steps = np.diff(self.ocv_v)
        if np.any(steps < 0):
            i = int(np.flatnonzero(steps < 0)[0])
            raise ParameterSetError(
                f"ocv_v is not monotonic in SoC: {self.ocv_v[i]:.4f} V at SoC "
                f"{self.soc_grid[i]:.3f} then {self.ocv_v[i + 1]:.4f} V at SoC "
                f"{self.soc_grid[i + 1]:.3f} ({where})"
            )
        if self.r0_ohm.shape != (2, n_t, n_soc):
            raise ParameterSetError(
                f"r0_ohm must have shape (2, {n_t}, {n_soc}), got {self.r0_ohm.shape} ({where})"
            )
        n_rc = self.rc_resistance_ohm.shape[0] if self.rc_resistance_ohm.ndim == 4 else -1
        if not 1 <= n_rc <= MAX_RC_PAIRS or self.rc_resistance_ohm.shape[1:] != (2, n_t, n_soc):
            raise ParameterSetError(
                f"rc_resistance_ohm must have shape (n_rc in 1..{MAX_RC_PAIRS}, 2, {n_t}, "
                f"{n_soc}), got {self.rc_resistance_ohm.shape} ({where})"
            )
        if self.rc_capacitance_f.shape != self.rc_resistance_ohm.shape:
            raise ParameterSetError(
                f"rc_capacitance_f must match rc_resistance_ohm's shape "
                f"{self.rc_resistance_ohm.shape}, got {self.rc_capacitance_f.shape} ({where})"
            )
        for attr, arr in (
            ("r0_ohm", self.r0_ohm),
            ("rc_resistance_ohm", self.rc_resistance_ohm),
            ("rc_capacitance_f", self.rc_capacitance_f),
        ):
            if np.any(arr <= 0):
                raise ParameterSetError(
                    f"{attr} must be > 0 everywhere, min is {arr.min()} ({where})"
                )
        if not self.limits.min_voltage_v < self.limits.max_voltage_v:
            raise ParameterSetError(f"limits: min_voltage_v must be < max_voltage_v ({where})")
        for attr in ("heat_capacity_j_per_k", "heat_transfer_w_per_k"):
            value = getattr(self.thermal, attr)
            if not value > 0:
                raise ParameterSetError(f"thermal.{attr} must be > 0, got {value!r} ({where})")

    @property
    def n_rc(self) -> int:
        """Number of RC pairs in the tables."""
        return int(self.rc_resistance_ohm.shape[0])

    def ocv_at(
        self, soc: FloatArray | float, temperature_c: FloatArray | float = 25.0
    ) -> FloatArray:
        """Open-circuit voltage by linear interpolation (flat beyond the table)."""
        s = np.asarray(soc, dtype=np.float64)
        ocv = np.interp(s, self.soc_grid, self.ocv_v)
        dudt = np.interp(s, self.soc_grid, self.entropic_v_per_k)
        return np.asarray(ocv + dudt * (np.asarray(temperature_c) - self.reference_temperature_c))

    def scaled_to(self, capacity_ah: float) -> EcmParameters:
        """The same cell chemistry and design, built to another capacity.

        A cell ``k`` times larger is ``k`` of these in parallel: capacity times ``k``,
        resistances divided by ``k``, capacitances times ``k`` (time constants kept),
        heat capacity times ``k`` and cooling surface (heat transfer) times
        ``k ** (2/3)`` (a geometrically similar cell). Second-life EV cells are large
        (60-160 Ah), while PyBaMM's calibrated cells are 5 Ah.

        Raises:
            ParameterSetError: If ``capacity_ah`` is not a positive number.
        """
        if not np.isfinite(capacity_ah) or capacity_ah <= 0:
            raise ParameterSetError(
                f"capacity_ah must be > 0 to scale parameter set {self.name!r}, got {capacity_ah!r}"
            )
        k = capacity_ah / self.nominal_capacity_ah
        return replace(
            self,
            name=f"{self.name}@{capacity_ah:g}Ah",
            source=f"{self.source} Scaled to {capacity_ah:g} Ah (x{k:.4g}).",
            nominal_capacity_ah=capacity_ah,
            r0_ohm=self.r0_ohm / k,
            rc_resistance_ohm=self.rc_resistance_ohm / k,
            rc_capacitance_f=self.rc_capacitance_f * k,
            thermal=ThermalParameters(
                heat_capacity_j_per_k=self.thermal.heat_capacity_j_per_k * k,
                heat_transfer_w_per_k=self.thermal.heat_transfer_w_per_k * k ** (2.0 / 3.0),
            ),
        )

    def to_json(self, path: Path) -> None:
        """Write the parameter set as JSON (the format of ``twin/params/data``)."""
        doc: dict[str, Any] = {}
        for key, value in asdict(self).items():
            doc[key] = value.tolist() if isinstance(value, np.ndarray) else value
        path.write_text(json.dumps(doc, indent=1))

    @classmethod
    def from_json(cls, path: Path) -> EcmParameters:
        """Read a parameter set written by :meth:`to_json`.

        Raises:
            ParameterSetError: If the file is missing fields or its tables are invalid.
        """
        try:
            doc = json.loads(Path(path).read_text())
            doc["limits"] = Limits(**doc["limits"])
            doc["thermal"] = ThermalParameters(**doc.get("thermal", {}))
            return cls(**doc)
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ParameterSetError(f"cannot read ECM parameter set {path}: {exc}") from exc


def _check_increasing(
    arr: FloatArray, name: str, where: str, *, allow_single: bool = False
) -> None:
    if arr.ndim != 1 or arr.size < (1 if allow_single else 2):
        raise ParameterSetError(f"{name} must be a 1-D grid, got shape {arr.shape} ({where})")
    steps = np.diff(arr)
    if np.any(steps <= 0):
        i = int(np.flatnonzero(steps <= 0)[0])
        raise ParameterSetError(
            f"{name} must be strictly increasing, but {arr[i]} is followed by {arr[i + 1]} "
            f"(index {i}) ({where})"
        )
