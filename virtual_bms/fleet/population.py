"""The cells of a whole fleet of virtual BMSs in one vectorised twin, and their telemetry.

A fleet of ``count`` BMSs with ``cells`` series cells each is one
:class:`~twin.models.ecm.EcmTwin` per pillar (second-life spread drawn per cell), so a
step of 10,000 BMSs x 16 cells is one array step, not 10,000 Python objects. Each BMS's
string carries its own load, vectorised: a Pillar 2 home charges from PV around noon and
discharges in the evening; a Pillar 1 hub takes fast-charging sessions that start at
random. Loads stop at the SoC window a BMS would keep (10-90 %). Each BMS's own view is
light and vectorised too: SoC by coulomb counting from a believed capacity, and the SoH
it was told, so telemetry carries values that move with load and ageing rather than
random bytes.

Sign convention: positive current discharges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from twin.models.base import FloatArray
from twin.models.ecm import CellInit, EcmTwin
from twin.pack import SecondLifeSpread
from twin.params import load_parameter_set

__all__ = ["FleetPopulation", "PopulationConfig"]

PillarMix = Literal["1", "2", "mix"]
_PARAMETERS = {1: ("nmc_eis_arc", 160.0), 2: ("nmc_okane2022", 100.0)}
"""Cell set and capacity (Ah) per pillar, as the single virtual BMS uses them."""
_SOC_WINDOW = (0.1, 0.9)
_DAY_S = 86_400.0


@dataclass(frozen=True)
class PopulationConfig:
    """What the fleet is made of.

    Attributes:
        count: Number of BMSs.
        pillar: ``"1"`` (charging hubs), ``"2"`` (homes) or ``"mix"`` (the first half
            homes, the second half hubs).
        cells: Series cells per BMS (one voltage channel each).
        seed: Seed of the cell spread and the loads.
        start_time_s: Time of day at the start (s after midnight), for the load shapes.
    """

    count: int
    pillar: PillarMix = "2"
    cells: int = 16
    seed: int = 0
    start_time_s: float = 12 * 3600.0

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")
        if self.pillar not in ("1", "2", "mix"):
            raise ValueError(f"pillar must be 1, 2 or mix, got {self.pillar!r}")
        if not 1 <= self.cells <= 512:
            raise ValueError(f"cells must be within 1..512, got {self.cells}")

    def pillars(self) -> np.ndarray:
        """Pillar of each BMS (1 or 2)."""
        if self.pillar == "mix":  # homes first, then hubs: contiguous for provisioning
            return np.where(np.arange(self.count) < (self.count + 1) // 2, 2, 1)
        return np.full(self.count, int(self.pillar))


class _Group:
    """The BMSs of one pillar: their twin, loads and estimates."""

    def __init__(self, *, pillar: int, members: np.ndarray, cells: int, seed: int) -> None:
        name, capacity_ah = _PARAMETERS[pillar]
        self.pillar = pillar
        self.members = members
        n = members.size
        rng = np.random.default_rng(seed + 1000 * pillar)
        params = load_parameter_set(name).scaled_to(capacity_ah)
        init = SecondLifeSpread().draw(n * cells, soc=0.5, temperature_c=20.0, rng=rng)
        # A BMS starts somewhere in its window; its cells sit near that SoC.
        start = rng.uniform(0.3, 0.7, n)
        init = CellInit(
            soc=np.clip(np.repeat(start, cells) + rng.normal(0, 0.01, n * cells), 0.05, 0.95),
            temperature_c=20.0,
            soh=init.soh,
            resistance_factor=init.resistance_factor,
            ageing_rate_factor=init.ageing_rate_factor,
        )
        self.twin = EcmTwin(params, n_cells=n * cells, init=init)
        self.cells = cells
        self.capacity_ah = capacity_ah
        self.nominal_v = float(np.mean(params.ocv_v))
        # Load shape per BMS: a peak power (W) and a phase, so the fleet is not in lockstep.
        pack_wh = capacity_ah * cells * self.nominal_v
        self.peak_w = pack_wh * rng.uniform(0.15, 0.4, n)  # 0.15-0.4 C
        self.phase_s = rng.uniform(-3600.0, 3600.0, n)
        self.session_end_s = np.zeros(n)  # Pillar 1: end of the current fast charge
        self.rng = rng
        # What each BMS believes: the installer's SoH and its own coulomb count.
        self.soh_believed = np.full(n, 0.8)
        self.soc_estimate = start.copy()
        self.equivalent_cycles = np.zeros(n)
        self.current_a = np.zeros(n)
        self.temperature_c = np.full(n * cells, 20.0)
        self.voltage_v = self.twin.reset().voltage_v.copy()

    def power_w(self, time_s: float, dt_s: float) -> FloatArray:
        """Each BMS's load (positive discharges) at ``time_s`` of day."""
        n = self.members.size
        t = time_s + self.phase_s
        if self.pillar == 2:
            day = (t % _DAY_S) / _DAY_S
            pv = np.clip(np.sin((day - 0.25) * 2 * math.pi), 0.0, None)  # 6 h to 18 h
            evening = np.exp(-(((day - 0.8) / 0.06) ** 2))
            load: FloatArray = self.peak_w * (0.9 * evening - pv + 0.1)
            return load
        # Pillar 1: sessions of 20-40 min that start at random, about 8 a day per hub.
        starting = (self.session_end_s <= time_s) & (self.rng.random(n) < dt_s * 8 / _DAY_S)
        self.session_end_s[starting] = time_s + self.rng.uniform(1200.0, 2400.0, starting.sum())
        charging_evs = self.session_end_s > time_s
        recharge = -0.3 * self.peak_w  # grid/PV tops the buffer up between sessions
        return np.where(charging_evs, 2.0 * self.peak_w, recharge)

    def step(self, *, time_s: float, dt_s: float, ambient_c: float) -> None:
        n, cells = self.members.size, self.cells
        string_v = self.voltage_v.reshape(n, cells).sum(axis=1)
        current = self.power_w(time_s, dt_s) / np.maximum(string_v, 1.0)
        # The SoC window a BMS keeps (on its own estimate, as a real one would).
        low, high = _SOC_WINDOW
        current = np.where((current > 0) & (self.soc_estimate <= low), 0.0, current)
        current = np.where((current < 0) & (self.soc_estimate >= high), 0.0, current)
        out = self.twin.step(current_a=np.repeat(current, cells), dt_s=dt_s, ambient_c=ambient_c)
        self.voltage_v = out.voltage_v
        self.temperature_c = out.surface_temperature_c
        self.current_a = current
        believed_ah = self.capacity_ah * self.soh_believed
        self.soc_estimate = self.soc_estimate - current * dt_s / 3600.0 / believed_ah
        self.equivalent_cycles += np.abs(current) * dt_s / 3600.0 / (2.0 * believed_ah)


class FleetPopulation:
    """All cells of all BMSs, stepped together; a BMS is an index ``0..count-1``."""

    def __init__(self, config: PopulationConfig) -> None:
        self.config = config
        pillars = config.pillars()
        self.pillar = pillars
        self._groups: list[_Group] = []
        self._group_of = np.empty(config.count, dtype=np.intp)
        self._row_of = np.empty(config.count, dtype=np.intp)
        for pillar in (1, 2):
            members = np.flatnonzero(pillars == pillar)
            if members.size == 0:
                continue
            self._group_of[members] = len(self._groups)
            self._row_of[members] = np.arange(members.size)
            self._groups.append(
                _Group(pillar=pillar, members=members, cells=config.cells, seed=config.seed)
            )
        self.time_s = 0.0
        self._cell_ids = "[" + ",".join(str(i) for i in range(config.cells)) + "]"

    def step(self, dt_s: float, *, ambient_c: float = 20.0) -> None:
        """Advance every cell by ``dt_s`` under its BMS's load."""
        time_of_day = self.config.start_time_s + self.time_s
        for group in self._groups:
            group.step(time_s=time_of_day, dt_s=dt_s, ambient_c=ambient_c)
        self.time_s += dt_s

    def true_soc(self) -> FloatArray:
        """Mean true SoC per BMS (for checks)."""
        out = np.empty(self.config.count)
        for group in self._groups:
            out[group.members] = group.twin.soc.reshape(group.members.size, -1).mean(axis=1)
        return out

    def telemetry(self, index: int, *, seq: int, ts_s: float) -> bytes:
        """The telemetry payload of BMS ``index`` now (the wire contract's JSON).

        Pillar 1 reports voltage, temperature, current and SoC; Pillar 2 adds SoH and
        equivalent cycles (D2.3 Table 2, without the EIS-based quantities).
        """
        group = self._groups[self._group_of[index]]
        row = int(self._row_of[index])
        cells = group.cells
        sl = slice(row * cells, (row + 1) * cells)
        volts = ",".join(f"{v:.4f}" for v in group.voltage_v[sl].tolist())
        temps = ",".join(f"{t:.2f}" for t in group.temperature_c[sl].tolist())
        current = f"{float(group.current_a[row]):.3f}"
        soc = f"{min(max(float(group.soc_estimate[row]), 0.0), 1.0):.4f}"
        parts = [
            f'{{"seq":{seq},"ts":{ts_s:.3f},"pillar":{group.pillar},"cell_ids":{self._cell_ids}',
            f'"voltage":[{volts}]',
            f'"temperature":[{temps}]',
            f'"current":[{",".join([current] * cells)}]',
            f'"soc":[{",".join([soc] * cells)}]',
        ]
        if group.pillar == 2:
            soh = f"{float(group.soh_believed[row]):.4f}"
            cycles = f"{float(group.equivalent_cycles[row]):.4f}"
            parts.append(f'"soh":[{",".join([soh] * cells)}]')
            parts.append(f'"equivalent_cycles":[{",".join([cycles] * cells)}]')
        return (",".join(parts) + "}").encode()
