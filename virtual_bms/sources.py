"""Where a BMS gets its measurements and where its decisions go.

A BMS reads a :class:`SensorSource` (one voltage and temperature channel per series
group, one current channel per string) and hands it an :class:`Actuation` (contactor,
per-group balancing currents, charge and discharge current limits). The twin is one
source (:class:`TwinSource`: a :class:`~twin.pack.Pack`, its sensors and a load); a CAN
bus is another (:mod:`virtual_bms.can`), so the same BMS code runs on simulated and on
physical hardware. Simulated sources also move time forward (:meth:`TwinSource.advance`)
and know the truth the benches score against.

Example::

    source = TwinSource(pack, load=household_load(pack, seed=3), seed=3)
    source.advance(1.0)
    frame = source.read()
    source.apply(Actuation(charge_limit_a=20.0))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

import numpy as np

from twin.eis import EisConfig, EisRecord, measure_eis
from twin.models.base import CellStep, CellTwin, FloatArray
from twin.pack import Pack, PackStep
from twin.sensors import Sensors, SensorSpec

__all__ = [
    "Actuation",
    "CellStringSource",
    "EisCapable",
    "LoadProfile",
    "SensorFrame",
    "SensorSource",
    "SimulatedSource",
    "SourceTruth",
    "TwinSource",
    "charging_hub_load",
    "household_load",
]


@dataclass(frozen=True, slots=True)
class SensorFrame:
    """One read of every channel (what a BMS sees).

    Attributes:
        time_s: When it was read.
        voltage_v: Series-group voltages, shape (n_groups,).
        current_a: String currents (positive = discharge), shape (n_strings,).
        temperature_c: Series-group temperatures, shape (n_groups,).
    """

    time_s: float
    voltage_v: FloatArray
    current_a: FloatArray
    temperature_c: FloatArray

    @property
    def group_current_a(self) -> FloatArray:
        """Each series group's current: its string's current."""
        per_string = self.voltage_v.size // self.current_a.size
        return np.repeat(self.current_a, per_string)


@dataclass(frozen=True, slots=True)
class Actuation:
    """What the BMS asks of the pack.

    Attributes:
        contactor_closed: The main contactor.
        balancing_current_a: Per-group balancing current (positive drawn from the group),
            ``None`` = leave as is.
        charge_limit_a: Most pack charge current allowed (SoF; ``None`` = no limit).
        discharge_limit_a: Most pack discharge current allowed (``None`` = no limit).
    """

    contactor_closed: bool = True
    balancing_current_a: FloatArray | None = None
    charge_limit_a: float | None = None
    discharge_limit_a: float | None = None


@dataclass(frozen=True, slots=True)
class SourceTruth:
    """What a simulated source knows and a BMS does not, per series group."""

    soc: FloatArray
    capacity_ah: FloatArray
    temperature_c: FloatArray
    r0_ohm: FloatArray


@runtime_checkable
class SensorSource(Protocol):
    """Measurements in, decisions out (a twin or a physical pack)."""

    @property
    def n_groups(self) -> int: ...

    @property
    def n_strings(self) -> int: ...

    def read(self) -> SensorFrame: ...

    def apply(self, actuation: Actuation) -> None: ...


@runtime_checkable
class SimulatedSource(SensorSource, Protocol):
    """A source whose time the BMS moves and whose truth it can be scored against."""

    def advance(self, dt_s: float) -> None: ...

    def truth(self) -> SourceTruth: ...


@runtime_checkable
class EisCapable(Protocol):
    """A source that can run an impedance sweep on some of its groups."""

    def measure_eis(
        self, *, event_id: str, groups: Sequence[int] | None, config: EisConfig
    ) -> list[EisRecord]: ...


LoadProfile = Callable[[float], float]
"""Pack power asked for at a time in seconds (W; positive discharges the pack)."""


def household_load(
    *,
    pv_peak_w: float = 4000.0,
    daily_load_kwh: float = 9.0,
    max_power_w: float = 2500.0,
    seed: int = 0,
) -> LoadProfile:
    """Pillar 2: a household with PV; the battery covers the net load (self-consumption).

    The profile is drawn once per day at 1-minute resolution (the quick-start day's
    household model) and repeats; the battery power is load minus PV, clipped to
    ``max_power_w`` both ways.
    """
    from twin.domestic_day import DomesticDayConfig, household_profile

    config = DomesticDayConfig(pv_peak_w=pv_peak_w, daily_load_kwh=daily_load_kwh)
    minutes = np.arange(0.0, 86_400.0, 60.0)
    pv, load = household_profile(minutes, config=config, rng=np.random.default_rng(seed))
    net = np.clip(load - pv, -max_power_w, max_power_w)

    def power_w(time_s: float) -> float:
        return float(net[int(time_s // 60.0) % net.size])

    return power_w


def charging_hub_load(
    *,
    session_power_w: float = 150_000.0,
    sessions_per_day: int = 24,
    session_min: float = 20.0,
    recharge_power_w: float = 60_000.0,
    seed: int = 0,
) -> LoadProfile:
    """Pillar 1: EV fast-charging sessions drawn from the battery (the weak grid cannot
    supply them), with the grid and PV recharging it at a steady rate in between."""
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.uniform(6 * 3600.0, 22 * 3600.0, sessions_per_day))
    length_s = session_min * 60.0

    def power_w(time_s: float) -> float:
        t = time_s % 86_400.0
        busy = np.any((t >= starts) & (t < starts + length_s))
        return session_power_w if busy else -recharge_power_w

    return power_w


@dataclass
class TwinSource:
    """A :class:`~twin.pack.Pack` seen through noisy sensors, driven by a load profile.

    Args:
        pack: The twin.
        load: Pack power asked for over time; the BMS's limits and the contactor apply.
        sensors: The measurement chain (default: the twin's typical BMS sensors, one
            voltage and one temperature channel per series group, one current channel per
            string).
        ambient_c: Ambient temperature, or a function of time.
        seed: Seed of the sensor errors.
    """

    pack: Pack
    load: LoadProfile
    sensors: Sensors | None = None
    ambient_c: float | Callable[[float], float] = 25.0
    seed: int = 0
    last_step: PackStep | None = field(default=None, init=False)
    _actuation: Actuation = field(default_factory=Actuation, init=False)

    def __post_init__(self) -> None:
        if self.sensors is None:
            self.sensors = Sensors(
                SensorSpec(),
                n_voltage=self.n_groups,
                n_current=self.n_strings,
                n_temperature=self.n_groups,
                seed=self.seed,
            )

    @property
    def n_groups(self) -> int:
        shape = self.pack.topology.shape
        return shape[0] * shape[1]

    @property
    def n_strings(self) -> int:
        return self.pack.topology.strings_in_parallel

    @property
    def time_s(self) -> float:
        return self.pack.cells.time_s

    def _ambient(self, time_s: float) -> float:
        return float(self.ambient_c(time_s) if callable(self.ambient_c) else self.ambient_c)

    def _per_group(self, per_cell: FloatArray) -> FloatArray:
        means: FloatArray = per_cell.reshape(self.n_groups, -1).mean(axis=1)
        return means

    def apply(self, actuation: Actuation) -> None:
        self._actuation = actuation
        if actuation.contactor_closed and not self.pack.contactor_closed:
            self.pack.close_contactor()
        elif not actuation.contactor_closed and self.pack.contactor_closed:
            self.pack.open_contactor("bms")
        if actuation.balancing_current_a is not None:
            per_cell = self.pack.topology.cells_per_group
            group = np.asarray(actuation.balancing_current_a, dtype=float)
            self.pack.set_balancing(np.repeat(group / per_cell, per_cell))

    def advance(self, dt_s: float) -> None:
        """Move the twin by ``dt_s`` at the load's power, within the BMS's limits."""
        t = self.time_s
        power = self.load(t)
        act = self._actuation
        voltage = self._pack_voltage()
        if power < 0 and act.charge_limit_a is not None:
            power = max(power, -act.charge_limit_a * voltage)
        if power > 0 and act.discharge_limit_a is not None:
            power = min(power, act.discharge_limit_a * voltage)
        self.last_step = self.pack.step_power(power_w=power, dt_s=dt_s, ambient_c=self._ambient(t))

    def _pack_voltage(self) -> float:
        if self.last_step is not None and math.isfinite(self.last_step.voltage_v):
            return max(self.last_step.voltage_v, 1e-3)
        ocv = self.pack.cells.params.ocv_at(self.pack.cells.soc, self.pack.cells.temperature_c)
        groups = self.pack.topology.groups_per_string
        return float(np.mean(ocv)) * groups

    def read(self) -> SensorFrame:
        if self.last_step is None:
            self.advance(1e-3)  # a first, negligible step gives the twin its voltages
        step = self.last_step
        assert step is not None and self.sensors is not None
        reading = self.sensors.read(
            time_s=step.time_s,
            voltage_v=self._per_group(step.cells.voltage_v),
            current_a=step.string_currents_a,
            temperature_c=self._per_group(step.cells.surface_temperature_c),
        )
        return SensorFrame(
            time_s=reading.time_s,
            voltage_v=reading.voltage_v,
            current_a=reading.current_a,
            temperature_c=reading.temperature_c,
        )

    def truth(self) -> SourceTruth:
        cells = self.pack.cells
        capacity = cells.capacity_ah.reshape(self.n_groups, -1)
        soc = cells.soc.reshape(self.n_groups, -1)
        r0 = (
            self.last_step.cells.truth.r0_ohm
            if self.last_step is not None
            else np.full(cells.n_cells, np.nan)
        ).reshape(self.n_groups, -1)
        per_cell = self.pack.topology.cells_per_group
        return SourceTruth(
            soc=(soc * capacity).sum(axis=1) / capacity.sum(axis=1),
            capacity_ah=capacity.sum(axis=1),
            temperature_c=self._per_group(cells.temperature_c),
            r0_ohm=1.0 / (1.0 / r0).sum(axis=1) if per_cell > 1 else r0[:, 0],
        )

    def measure_eis(
        self, *, event_id: str, groups: Sequence[int] | None, config: EisConfig
    ) -> list[EisRecord]:
        """An EIS sweep on the first cell of each group asked for (``None`` = all)."""
        per_cell = self.pack.topology.cells_per_group
        wanted = range(self.n_groups) if groups is None else groups
        cells = [g * per_cell for g in wanted]
        records = measure_eis(self.pack.cells, event_id=event_id, config=config, cells=cells)
        return [replace(r, cell_id=r.cell_id // per_cell) for r in records]


@dataclass
class CellStringSource:
    """One series string of any cell twin (e.g. the PyBaMM twin), one channel per cell.

    For twins that are not packs: the string current follows the load's power at the
    string voltage, the contactor zeroes it, and each cell's balancing current is added
    to its own current.

    Args:
        cells: The twin; its cells are wired in series.
        load: Power asked for over time (positive discharges).
        sensors: Measurement chain (default: the typical BMS sensors).
        ambient_c: Ambient temperature.
        seed: Seed of the sensor errors.
    """

    cells: CellTwin
    load: LoadProfile
    sensors: Sensors | None = None
    ambient_c: float = 25.0
    seed: int = 0
    last_step: CellStep | None = field(default=None, init=False)
    _actuation: Actuation = field(default_factory=Actuation, init=False)

    def __post_init__(self) -> None:
        if self.sensors is None:
            n = self.cells.n_cells
            self.sensors = Sensors(
                SensorSpec(), n_voltage=n, n_current=1, n_temperature=n, seed=self.seed
            )

    @property
    def n_groups(self) -> int:
        return self.cells.n_cells

    @property
    def n_strings(self) -> int:
        return 1

    def apply(self, actuation: Actuation) -> None:
        self._actuation = actuation

    def advance(self, dt_s: float) -> None:
        act = self._actuation
        voltage = (
            float(np.sum(self.last_step.voltage_v)) if self.last_step is not None else math.nan
        )
        if not math.isfinite(voltage) or voltage <= 0:
            self.last_step = self.cells.step(current_a=0.0, dt_s=dt_s, ambient_c=self.ambient_c)
            return
        current = self.load(self.cells.time_s) / voltage
        if current < 0 and act.charge_limit_a is not None:
            current = max(current, -act.charge_limit_a)
        if current > 0 and act.discharge_limit_a is not None:
            current = min(current, act.discharge_limit_a)
        if not act.contactor_closed:
            current = 0.0
        per_cell = np.full(self.n_groups, current)
        if act.balancing_current_a is not None:
            per_cell = per_cell + np.asarray(act.balancing_current_a, dtype=float)
        self.last_step = self.cells.step(current_a=per_cell, dt_s=dt_s, ambient_c=self.ambient_c)
        self._string_current_a = current

    def read(self) -> SensorFrame:
        if self.last_step is None:
            self.advance(1e-3)
        step = self.last_step
        assert step is not None and self.sensors is not None
        reading = self.sensors.read(
            time_s=step.time_s,
            voltage_v=step.voltage_v,
            current_a=getattr(self, "_string_current_a", 0.0),
            temperature_c=step.surface_temperature_c,
        )
        return SensorFrame(
            time_s=reading.time_s,
            voltage_v=reading.voltage_v,
            current_a=reading.current_a,
            temperature_c=reading.temperature_c,
        )

    def truth(self) -> SourceTruth:
        step = self.last_step
        n = self.n_groups
        if step is None:
            nan = np.full(n, np.nan)
            return SourceTruth(soc=nan, capacity_ah=nan, temperature_c=nan, r0_ohm=nan)
        return SourceTruth(
            soc=step.truth.soc,
            capacity_ah=step.truth.capacity_ah,
            temperature_c=step.surface_temperature_c,
            r0_ohm=step.truth.r0_ohm,
        )
