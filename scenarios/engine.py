"""Run a scenario: SimPy processes drive the pack twin through years of duty.

Processes (all generator functions taking ``env`` first):

- ``storage``: every ``simulation.chunk_s`` it runs the pack and its controller over the
  chunk that has just passed (60 s steps in the compiled kernel), so every discrete
  event of that chunk (EV arrivals, departures) has already happened; it aggregates
  KPIs hourly and daily and writes checkpoints.
- ``ev_arrivals`` / ``ev`` (Pillar 1): EVs arrive with a time-of-day rate, wait for a
  free charger (a ``simpy.Resource``) at most their patience, charge at the lower of
  charger and vehicle power until full or until they leave.
- ``replacements``: swap cells or modules at the scheduled days.

The models stay free of SimPy: this module wires them together. Time runs as fast as
possible, or at wall-clock pace with ``simpy.rt`` (``realtime_factor``).

Energy balance, booked at every step (AC side, W; positive battery = discharge)::

    PV - curtailed + import = load + EV - unserved + export + battery_charge - battery_discharge
    battery_charge - battery_discharge = stored-energy change + cell losses + inverter
                                         losses + capacity-fade loss

``energy_balance_error_pct`` checks the chain end to end from the pack's stored energy.
"""

from __future__ import annotations

import json
import math
import pickle
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import simpy

from scenarios.config import Pillar1Scenario, Pillar2Scenario, Scenario
from scenarios.storage import BMS_COLUMNS, BmsStorage, make_storage
from twin.models.base import FloatArray
from twin.pack_kernel import OUTPUT_COLUMNS, ControlLimits

__all__ = ["BMS_HOURLY_COLUMNS", "HOURLY_COLUMNS", "RunResult", "simulate"]

_DAY_S = 86_400
_BMS_SLOW_DAYS = 60.0  # a BMS-attached run steps in Python: beyond this it takes hours
_B = {name: i for i, name in enumerate(BMS_COLUMNS)}
_C = {name: i for i, name in enumerate(OUTPUT_COLUMNS)}
HOURLY_COLUMNS = (
    "time_h",
    "pv_kwh",
    "load_kwh",
    "ev_kwh",
    "grid_import_kwh",
    "grid_export_kwh",
    "battery_charge_kwh",
    "battery_discharge_kwh",
    "unserved_kwh",
    "pv_curtailed_kwh",
    "cell_loss_kwh",
    "inverter_loss_kwh",
    "peak_grid_kw",
    "peak_net_kw",
    "soc_mean",
    "soc_min_cell",
    "soc_max_cell",
    "t_cell_max_c",
    "t_cell_min_c",
    "v_cell_min",
    "v_cell_max",
    "outside_temperature_h",
    "ambient_c",
)
"""One row per hour (energies per hour; extremes over the hour)."""
BMS_HOURLY_COLUMNS = (
    "bms_soc_mean",
    "bms_soc_rmse_pct",
    "bms_charge_limit_min_a",
    "bms_discharge_limit_min_a",
    "bms_soh_mean",
    "bms_limited_h",
)
"""Added to the hourly rows with ``[bms] enabled = true`` and ``record = true``: mean SoC
estimate, RMS SoC error against the truth (points), smallest charge and discharge current
limits (A; inf = none), SoH estimate at the hour's end, time the BMS cut the request."""


@dataclass
class _Ev:
    arrival_s: float
    energy_wh: float
    dwell_s: float
    patience_s: float
    power_w: float
    state: str = "waiting"
    departure_s: float = 0.0
    charge_end_s: float = 0.0


@dataclass
class _Accumulators:
    """Running totals of the whole run (Wh unless stated)."""

    totals: dict[str, float] = field(default_factory=dict)
    peak_grid_w: float = 0.0
    peak_net_w: float = 0.0
    wait_s: list[float] = field(default_factory=list)
    ev_served: int = 0
    ev_lost: int = 0
    ev_lost_wh: float = 0.0
    fade_loss_wh: float = 0.0

    def add(self, name: str, value: float) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + value


@dataclass
class RunResult:
    """What a run produces: KPIs plus hourly and daily tables."""

    summary: dict[str, Any]
    hourly: dict[str, FloatArray]
    daily: dict[str, FloatArray]
    full_resolution: dict[int, dict[str, FloatArray]]


class _Run:
    """State of one scenario run (what a checkpoint holds)."""

    def __init__(self, scenario: Scenario, *, seed: int, model: str = "ecm") -> None:
        from scenarios import profiles

        self.scenario = scenario
        self.seed = seed
        sim = scenario.simulation
        self.dt_s = float(sim.dt_s)
        self.chunk_s = int(sim.chunk_s)
        self.n_steps_total = sim.duration_s // sim.dt_s
        self.duration_s = float(self.n_steps_total * sim.dt_s)
        pack_cfg = scenario.pack
        self.params = pack_cfg.load_parameters()
        self.model = model
        self.storage = make_storage(
            model,
            pack_cfg,
            self.params,
            seed=seed,
            bms=scenario.bms,
            pillar=1 if isinstance(scenario, Pillar1Scenario) else 2,
            fmu=scenario.fmu,
        )
        self.record_bms = (
            scenario.bms.enabled and scenario.bms.record and isinstance(self.storage, BmsStorage)
        )
        self.capacity0_ah = float(self.storage.capacity_ah().sum())
        self.nominal_ah = self.params.nominal_capacity_ah * pack_cfg.n_cells
        self.energy0_wh = self.storage.stored_energy_wh()
        self.acc = _Accumulators()
        self.hourly: list[list[float]] = []
        self.daily: list[list[float]] = []
        self.full_resolution: dict[int, dict[str, list[float]]] = {}
        self.done_steps = 0
        self.evs: list[_Ev] = []
        self.next_replacement = 0
        self._profiles = profiles
        self._year_cache: tuple[int, dict[str, FloatArray]] | None = None
        self.control = self._control()

    def __getstate__(self) -> dict[str, Any]:
        # A checkpoint keeps the state, not the profile module or the cached year.
        state = dict(self.__dict__)
        del state["_profiles"]
        state["_year_cache"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from scenarios import profiles

        self.__dict__.update(state)
        self._profiles = profiles

    # ----------------------------------------------------------- exogenous data
    def _year(self, year: int) -> dict[str, FloatArray]:
        """Load, PV and ambient arrays of one simulated year (cached one at a time)."""
        if self._year_cache and self._year_cache[0] == year:
            return self._year_cache[1]
        sc = self.scenario
        p = self._profiles
        days = 365
        if sc.site.weather_source == "tmy3":
            weather = p.weather_tmy3(n_days=days, dt_s=self.dt_s)
        else:
            weather = p.weather(region=sc.site.weather_region, n_days=days, dt_s=self.dt_s)
        pv = p.pv_power_w(
            weather=weather,
            peak_kw=sc.pv.peak_kw,
            tilt_deg=sc.pv.tilt_deg,
            azimuth_deg=sc.pv.azimuth_deg,
            system_losses_pct=sc.pv.system_losses_pct,
            dt_s=self.dt_s,
        )
        if isinstance(sc, Pillar2Scenario):
            load = p.household_load_w(
                annual_kwh=sc.household.annual_consumption_kwh,
                dt_s=self.dt_s,
                n_days=days,
                seed=self.seed + 7919 * year,
            )
        else:
            load = np.zeros_like(pv)
        outdoor = np.asarray(weather.temperature_c) + sc.site.ambient_offset_c
        if sc.site.battery_location == "indoor":
            ambient = np.full_like(outdoor, sc.site.indoor_temperature_c + sc.site.ambient_offset_c)
        else:
            ambient = outdoor
        data = {"pv_w": np.asarray(pv), "load_w": np.asarray(load), "ambient_c": ambient}
        self._year_cache = (year, data)
        return data

    def exogenous(self, start_step: int, n: int) -> dict[str, FloatArray]:
        steps_per_year = int(365 * _DAY_S / self.dt_s)
        out: dict[str, list[FloatArray]] = {"pv_w": [], "load_w": [], "ambient_c": []}
        k = start_step
        while k < start_step + n:
            year, offset = divmod(k, steps_per_year)
            take = min(start_step + n - k, steps_per_year - offset)
            data = self._year(year)
            for key in out:
                out[key].append(data[key][offset : offset + take])
            k += take
        return {key: np.concatenate(v) for key, v in out.items()}

    def _control(self) -> ControlLimits:
        sc = self.scenario
        bms = sc.bms
        topo = sc.pack
        parallel_ah = (
            self.params.nominal_capacity_ah * topo.cells_per_group * topo.strings_in_parallel
        )
        margin = bms.cell_voltage_margin_v
        lim = self.params.limits
        common: dict[str, float] = {
            "soc_min": bms.soc_min,
            "soc_max": bms.soc_max,
            "max_charge_a": bms.max_charge_c_rate * parallel_ah,
            "max_discharge_a": bms.max_discharge_c_rate * parallel_ah,
            "v_cell_min_ok": lim.min_voltage_v + margin,
            "v_cell_max_ok": lim.max_voltage_v - margin,
            "min_charge_temperature_c": bms.min_charge_temperature_c,
            "max_temperature_c": bms.max_temperature_c,
        }
        inverter_w = sc.inverter_max_kw * 1000.0
        if isinstance(sc, Pillar2Scenario):
            return ControlLimits(inverter_max_w=inverter_w, **common)
        ctrl = sc.controller
        return ControlLimits(
            discharge_above_w=ctrl.threshold_kw * 1000.0,
            charge_below_w=ctrl.recharge_below_kw * 1000.0,
            grid_charge_max_w=ctrl.recharge_max_kw * 1000.0,
            inverter_max_w=inverter_w,
            grid_limit_w=sc.grid.limit_kw * 1000.0,
            **common,
        )

    # ------------------------------------------------------------------ storage
    def ev_demand_w(self, start_s: float, n: int) -> FloatArray:
        """Charging power of all EVs on the step grid of the chunk starting at ``start_s``."""
        demand = np.zeros(n)
        t0 = start_s
        t1 = start_s + n * self.dt_s
        keep: list[_Ev] = []
        for ev in self.evs:
            # "gone" too: an EV may arrive and leave within the chunk being booked.
            if ev.state in ("charging", "gone"):
                a = max(ev.departure_s - ev.dwell_s, t0)
                b = min(ev.charge_end_s, t1)
                if b > a:
                    # Power held over whole steps, weighted by the part of each step used.
                    ka, kb = (a - t0) / self.dt_s, (b - t0) / self.dt_s
                    i0, i1 = int(ka), min(math.ceil(kb), n)
                    w = np.ones(i1 - i0)
                    w[0] -= ka - i0
                    w[-1] -= i1 - kb
                    demand[i0:i1] += ev.power_w * w
            if ev.state == "waiting" or ev.departure_s > t1:
                keep.append(ev)
        self.evs = keep
        return demand

    def run_chunk(self, n: int) -> None:
        start = self.done_steps
        start_s = start * self.dt_s
        ex = self.exogenous(start, n)
        ev = self.ev_demand_w(start_s, n) if isinstance(self.scenario, Pillar1Scenario) else 0.0
        demand = ex["load_w"] + ev
        net = demand - ex["pv_w"]
        out = self.storage.run(
            net_w=net, ambient_c=ex["ambient_c"], dt_s=self.dt_s, control=self.control
        )
        self.acc.fade_loss_wh += self.storage.fade_loss_wh
        self._book(start, ex, np.broadcast_to(ev, net.shape), net, out)
        self.done_steps += n

    def _book(
        self,
        start: int,
        ex: dict[str, FloatArray],
        ev: FloatArray,
        net: FloatArray,
        out: FloatArray,
    ) -> None:
        h = self.dt_s / 3600.0  # Wh per W-step
        bat = out[:, _C["battery_ac_w"]]
        grid = out[:, _C["grid_w"]]
        steps_per_hour = int(3600 / self.dt_s)
        t_lim_hi = self.scenario.bms.max_temperature_c
        t_lim_lo = self.scenario.bms.min_charge_temperature_c
        outside = (out[:, _C["t_cell_max"]] > t_lim_hi) | (out[:, _C["t_cell_min"]] < t_lim_lo)
        cell_soc = self.storage.soc()
        for a in range(0, net.size, steps_per_hour):
            b = min(a + steps_per_hour, net.size)
            sl = slice(a, b)
            row = [
                (start + a) * self.dt_s / 3600.0,
                ex["pv_w"][sl].sum() * h / 1000,
                ex["load_w"][sl].sum() * h / 1000,
                ev[sl].sum() * h / 1000,
                np.clip(grid[sl], 0, None).sum() * h / 1000,
                np.clip(-grid[sl], 0, None).sum() * h / 1000,
                np.clip(-bat[sl], 0, None).sum() * h / 1000,
                np.clip(bat[sl], 0, None).sum() * h / 1000,
                out[sl, _C["unserved_w"]].sum() * h / 1000,
                out[sl, _C["pv_curtailed_w"]].sum() * h / 1000,
                out[sl, _C["joule_loss_w"]].sum() * h / 1000,
                out[sl, _C["inverter_loss_w"]].sum() * h / 1000,
                grid[sl].max() / 1000,
                net[sl].max() / 1000,
                out[sl, _C["soc_mean"]].mean(),
                float(cell_soc.min()),
                float(cell_soc.max()),
                out[sl, _C["t_cell_max"]].max(),
                out[sl, _C["t_cell_min"]].min(),
                out[sl, _C["v_cell_min"]].min(),
                out[sl, _C["v_cell_max"]].max(),
                outside[sl].sum() * h,
                ex["ambient_c"][sl].mean(),
            ]
            if self.record_bms:
                row.extend(self._bms_hour(sl))
            self.hourly.append([float(x) for x in row])
        # The same hour without storage, booked per step: grid = net demand.
        self.acc.add("import_without_kwh", float(np.clip(net, 0, None).sum() * h / 1000))
        self.acc.add("export_without_kwh", float(np.clip(-net, 0, None).sum() * h / 1000))
        self.acc.peak_grid_w = max(self.acc.peak_grid_w, float(grid.max()))
        self.acc.peak_net_w = max(self.acc.peak_net_w, float(net.max()))
        # Full resolution where asked (whole days only).
        first_day = int(start * self.dt_s // _DAY_S)
        for day in self.scenario.simulation.full_resolution_days:
            if day == first_day or day == int(((start + net.size - 1) * self.dt_s) // _DAY_S):
                rec = self.full_resolution.setdefault(
                    day, {c: [] for c in ("time_s", *OUTPUT_COLUMNS, "net_w")}
                )
                for k in range(net.size):
                    t = (start + k) * self.dt_s
                    if int(t // _DAY_S) != day:
                        continue
                    rec["time_s"].append(t)
                    rec["net_w"].append(float(net[k]))
                    for name, col in _C.items():
                        rec[name].append(float(out[k, col]))

    def _bms_hour(self, sl: slice) -> list[float]:
        """The hour's :data:`BMS_HOURLY_COLUMNS` from the storage's per-step record."""
        assert isinstance(self.storage, BmsStorage)
        est = self.storage.estimates[sl]
        return [
            float(est[:, _B["bms_soc_mean"]].mean()),
            float(np.sqrt(est[:, _B["bms_soc_sq_error"]].mean()) * 100.0),
            float(est[:, _B["bms_charge_limit_a"]].min()),
            float(est[:, _B["bms_discharge_limit_a"]].min()),
            float(est[-1, _B["bms_soh_mean"]]),
            float(est[:, _B["bms_limited"]].sum() * self.dt_s / 3600.0),
        ]

    def close_day(self) -> None:
        rows = np.asarray(self.hourly[-24:])
        cap = self.storage.capacity_ah()
        self.daily.append(
            [
                len(self.daily),
                float(cap.sum() / self.nominal_ah),
                float(cap.min() / self.params.nominal_capacity_ah),
                float(self.storage.resistance_factor().mean()),
                *(float(rows[:, i].sum()) for i in range(1, 12)),
                float(rows[:, 12].max()),
                float(rows[:, 14].mean()),
                float(rows[:, 17].max()),
            ]
        )


DAILY_COLUMNS = (
    "day",
    "soh_pack",
    "soh_weakest_cell",
    "resistance_factor_mean",
    *HOURLY_COLUMNS[1:12],
    "peak_grid_kw",
    "soc_mean",
    "t_cell_max_c",
)


# ---------------------------------------------------------------- SimPy processes
def storage(
    env: simpy.Environment,
    run: _Run,
    progress: Callable[[float, float], None] | None,
    checkpoint: Callable[[], None] | None,
) -> Generator[simpy.Event, Any, None]:
    """Run the pack over each chunk once it has passed; close days; checkpoint."""
    steps_per_chunk = int(run.chunk_s / run.dt_s)
    while run.done_steps < run.n_steps_total:
        n = min(steps_per_chunk, run.n_steps_total - run.done_steps)
        yield env.timeout(n * run.dt_s)
        run.run_chunk(n)
        t = run.done_steps * run.dt_s
        if t % _DAY_S == 0 or run.done_steps == run.n_steps_total:
            run.close_day()
            if checkpoint:
                checkpoint()
        if progress:
            progress(t, run.duration_s)


def replacements(env: simpy.Environment, run: _Run) -> Generator[simpy.Event, Any, None]:
    """Swap cells or modules at the scheduled times (module = all its cells)."""
    events = sorted(run.scenario.replacements, key=lambda e: e.at_days)
    per_module = run.storage.cells_per_module
    while run.next_replacement < len(events):
        event = events[run.next_replacement]
        at = event.at_days * _DAY_S
        # Happen at the first chunk boundary at or after the scheduled time.
        at = math.ceil(at / run.chunk_s) * run.chunk_s
        if at > env.now:
            yield env.timeout(at - env.now)
        if event.module is not None:
            cells = list(range(event.module * per_module, (event.module + 1) * per_module))
        else:
            cells = list(event.cells or [])
        run.storage.replace(cells, soh=event.soh)
        run.next_replacement += 1


def ev_arrivals(
    env: simpy.Environment, run: _Run, chargers: list[simpy.Resource]
) -> Generator[simpy.Event, Any, None]:
    """EVs of each day, drawn from a per-day random stream (so a resumed run draws the
    same EVs), arriving with the hub's time-of-day profile."""
    from scenarios import profiles

    sc = run.scenario
    assert isinstance(sc, Pillar1Scenario)
    rate = np.asarray(profiles.ev_arrival_rate_per_h(sc.ev.arrival_profile), dtype=np.float64)
    shape = rate / rate.sum()
    while env.now < run.duration_s:
        day = int(env.now // _DAY_S)
        rng = np.random.default_rng([run.seed, 1, day])
        n = rng.poisson(sc.ev.arrivals_per_day)
        hours = rng.choice(24, size=n, p=shape)
        times = np.sort(day * _DAY_S + hours * 3600.0 + rng.uniform(0, 3600.0, n))
        energy = np.clip(rng.normal(sc.ev.energy_mean_kwh, sc.ev.energy_std_kwh, n), 2.0, None)
        dwell = np.clip(rng.normal(sc.ev.dwell_mean_min, sc.ev.dwell_std_min, n), 5.0, None)
        group = rng.choice(len(chargers), size=n, p=_charger_weights(sc))
        for t, e, d, g in zip(times, energy, dwell, group, strict=True):
            if t >= run.duration_s:
                break
            if t > env.now:
                yield env.timeout(t - env.now)
            power = min(sc.chargers[g].power_kw, sc.ev.max_power_kw) * 1000.0
            ev = _Ev(
                arrival_s=env.now,
                energy_wh=e * 1000.0,
                dwell_s=d * 60.0,
                patience_s=sc.ev.patience_min * 60.0,
                power_w=power,
            )
            run.evs.append(ev)
            env.process(ev_session(env, run, ev, chargers[g]))
        next_day = (day + 1) * _DAY_S
        if next_day > env.now:
            yield env.timeout(next_day - env.now)


def _charger_weights(sc: Pillar1Scenario) -> FloatArray:
    counts: FloatArray = np.array([c.count for c in sc.chargers], dtype=np.float64)
    counts /= counts.sum()
    return counts


def ev_session(
    env: simpy.Environment, run: _Run, ev: _Ev, charger: simpy.Resource
) -> Generator[simpy.Event, Any, None]:
    """Wait for a charger (at most the EV's patience), then charge until full or gone."""
    with charger.request() as req:
        patience_left = max(ev.arrival_s + ev.patience_s - env.now, 0.0)
        got = yield req | env.timeout(patience_left)
        if req not in got:
            ev.state = "lost"
            run.acc.ev_lost += 1
            run.acc.ev_lost_wh += ev.energy_wh
            return
        run.acc.wait_s.append(env.now - ev.arrival_s)
        run.acc.ev_served += 1
        ev.state = "charging"
        ev.departure_s = env.now + ev.dwell_s
        ev.charge_end_s = env.now + min(ev.dwell_s, ev.energy_wh / ev.power_w * 3600.0)
        run.acc.add("ev_wanted_wh", ev.energy_wh)
        run.acc.add("ev_session_wh", ev.power_w * (ev.charge_end_s - env.now) / 3600.0)
        yield env.timeout(ev.dwell_s)
        ev.state = "gone"


# ------------------------------------------------------------------------ run
def simulate(
    scenario: Scenario,
    *,
    seed: int | None = None,
    progress: Callable[[float, float], None] | None = None,
    realtime_factor: float | None = None,
    checkpoint_path: Path | None = None,
    resume: bool = False,
    model: str = "ecm",
) -> RunResult:
    """Run a scenario to its end and return KPIs and time series.

    Args:
        scenario: A validated scenario.
        seed: Overrides ``scenario.simulation.seed``.
        progress: Called with ``(simulated_s, total_s)`` after each chunk.
        realtime_factor: Simulated seconds per wall-clock second (``simpy.rt``); ``None``
            runs as fast as possible.
        checkpoint_path: Where to pickle the run state at the end of every simulated day.
        resume: Continue from ``checkpoint_path`` if it exists.
        model: ``"ecm"`` (the pack cell by cell, compiled), ``"pybamm"`` (one PyBaMM
            cell for the pack; slow, see :class:`scenarios.storage.PybammStorage`) or
            ``"fmu"`` (the scenario's ``[fmu]`` cell model, see
            :class:`scenarios.fmu_storage.FmuStorage`).
    """
    seed = scenario.simulation.seed if seed is None else seed
    if model in ("pybamm", "fmu") and (checkpoint_path is not None or resume):
        raise ValueError(
            f"checkpoints and --resume need --model ecm: the {model} state cannot be saved"
        )
    run: _Run | None = None
    if resume and checkpoint_path is not None and checkpoint_path.is_file():
        with checkpoint_path.open("rb") as fh:
            run = pickle.load(fh)
        if run.scenario != scenario or run.seed != seed or run.model != model:
            raise ValueError(f"checkpoint {checkpoint_path} belongs to another scenario or seed")
    if run is None:
        run = _Run(scenario, seed=seed, model=model)
    days = scenario.simulation.duration_days
    if scenario.bms.enabled and days > _BMS_SLOW_DAYS:
        warnings.warn(
            f"bms.enabled steps the pack and its BMS in Python (about a second per simulated "
            f"hour for the home pack): {days:g} days will take long; the BMS is meant for "
            f"runs of days or weeks (<= {_BMS_SLOW_DAYS:g} days)",
            stacklevel=2,
        )
    start_s = run.done_steps * run.dt_s
    if realtime_factor:
        env: simpy.Environment = simpy.rt.RealtimeEnvironment(
            initial_time=start_s, factor=1.0 / realtime_factor, strict=False
        )
    else:
        env = simpy.Environment(initial_time=start_s)

    def save() -> None:
        if checkpoint_path is None:
            return
        tmp = checkpoint_path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            pickle.dump(run, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(checkpoint_path)

    env.process(storage(env, run, progress, save if checkpoint_path else None))
    env.process(replacements(env, run))
    if isinstance(scenario, Pillar1Scenario):
        chargers = [simpy.Resource(env, capacity=c.count) for c in scenario.chargers]
        _restore_evs(env, run, chargers)
        env.process(ev_arrivals(env, run, chargers))
    env.run(until=run.duration_s + 1.0)
    return _result(run)


def _restore_evs(env: simpy.Environment, run: _Run, chargers: list[simpy.Resource]) -> None:
    """After a resume: EVs that were charging take their chargers back, then the EVs that
    were waiting queue again (in arrival order) with the patience they had left."""
    sc = run.scenario
    assert isinstance(sc, Pillar1Scenario)

    def group_of(ev: _Ev) -> int:
        for i, c in enumerate(sc.chargers):
            if min(c.power_kw, sc.ev.max_power_kw) * 1000.0 == ev.power_w:
                return i
        return 0

    for ev in run.evs:
        if ev.state == "charging" and ev.departure_s > env.now:
            env.process(_hold(env, chargers[group_of(ev)], ev))
    for ev in sorted(run.evs, key=lambda e: e.arrival_s):
        if ev.state == "waiting":
            env.process(ev_session(env, run, ev, chargers[group_of(ev)]))


def _hold(
    env: simpy.Environment, charger: simpy.Resource, ev: _Ev
) -> Generator[simpy.Event, Any, None]:
    with charger.request() as req:
        yield req
        yield env.timeout(max(ev.departure_s - env.now, 0.0))
        ev.state = "gone"


def _result(run: _Run) -> RunResult:
    hourly_arr = np.asarray(run.hourly)
    columns = (*HOURLY_COLUMNS, *BMS_HOURLY_COLUMNS) if run.record_bms else HOURLY_COLUMNS
    hourly = {name: hourly_arr[:, i] for i, name in enumerate(columns)}
    daily_arr = np.asarray(run.daily)
    daily = {name: daily_arr[:, i] for i, name in enumerate(DAILY_COLUMNS)}
    full = {d: {k: np.asarray(v) for k, v in rec.items()} for d, rec in run.full_resolution.items()}
    return RunResult(
        summary=_summary(run, hourly, daily), hourly=hourly, daily=daily, full_resolution=full
    )


def _summary(
    run: _Run, hourly: dict[str, FloatArray], daily: dict[str, FloatArray]
) -> dict[str, Any]:
    sc = run.scenario
    tot = {name: float(hourly[name].sum()) for name in HOURLY_COLUMNS[1:12]}
    pv, load, ev = tot["pv_kwh"], tot["load_kwh"], tot["ev_kwh"]
    imp, exp_ = tot["grid_import_kwh"], tot["grid_export_kwh"]
    chg, dis = tot["battery_charge_kwh"], tot["battery_discharge_kwh"]
    stored_end = run.storage.stored_energy_wh()
    delta_stored = (stored_end - run.energy0_wh) / 1000.0
    losses = tot["cell_loss_kwh"] + tot["inverter_loss_kwh"] + run.acc.fade_loss_wh / 1000.0
    supply = pv - tot["pv_curtailed_kwh"] + imp
    use = load + ev - tot["unserved_kwh"] + exp_ + delta_stored + losses
    throughput = chg + dis
    pack_kwh_nominal = run.nominal_ah * float(np.mean(run.params.ocv_v)) / 1000.0
    summary: dict[str, Any] = {
        "scenario": sc.name,
        "kind": sc.kind,
        "model": run.model,
        "seed": run.seed,
        "simulated_days": run.duration_s / _DAY_S,
        "pack_cells": sc.pack.n_cells,
        "pack_nominal_kwh": pack_kwh_nominal,
        "soh_start": float(run.capacity0_ah / run.nominal_ah),
        "soh_end": float(run.storage.capacity_ah().sum() / run.nominal_ah),
        "soh_weakest_cell_end": float(daily["soh_weakest_cell"][-1]),
        "resistance_factor_end": float(run.storage.resistance_factor().mean()),
        "full_equivalent_cycles": throughput / (2.0 * pack_kwh_nominal),
        "storage_throughput_kwh": throughput,
        "pv_kwh": pv,
        "load_kwh": load,
        "grid_import_kwh": imp,
        "grid_export_kwh": exp_,
        "battery_charge_kwh": chg,
        "battery_discharge_kwh": dis,
        "losses_kwh": losses,
        "stored_energy_change_kwh": delta_stored,
        "energy_balance_error_pct": 100.0 * abs(supply - use) / max(supply, 1e-9),
        "time_outside_temperature_limits_h": float(hourly["outside_temperature_h"].sum()),
        "soh_trajectory": [
            [float(d), float(s)] for d, s in zip(daily["day"], daily["soh_pack"], strict=True)
        ][:: max(1, len(daily["day"]) // 400)],
    }
    kpis = getattr(run.storage, "kpis", None)
    if kpis is not None:
        summary.update(kpis())
    tariff = sc.tariff
    if isinstance(sc, Pillar2Scenario):
        net_kwh_import_without = (
            run.acc.totals.get("import_without_kwh", 0.0),
            run.acc.totals.get("export_without_kwh", 0.0),
        )
        cost = imp * tariff.import_eur_per_kwh - exp_ * tariff.feed_in_eur_per_kwh
        cost0 = (
            net_kwh_import_without[0] * tariff.import_eur_per_kwh
            - net_kwh_import_without[1] * tariff.feed_in_eur_per_kwh
        )
        summary.update(
            {
                "self_consumption_pct": 100.0 * (pv - exp_) / pv if pv > 0 else float("nan"),
                "autarky_pct": 100.0 * (load - imp) / load if load > 0 else float("nan"),
                "self_consumption_without_storage_pct": 100.0
                * (pv - net_kwh_import_without[1])
                / pv
                if pv > 0
                else float("nan"),
                "autarky_without_storage_pct": 100.0 * (load - net_kwh_import_without[0]) / load
                if load > 0
                else float("nan"),
                "energy_cost_eur": cost,
                "energy_cost_without_storage_eur": cost0,
                "savings_eur": cost0 - cost,
            }
        )
    else:
        waits = np.asarray(run.acc.wait_s) if run.acc.wait_s else np.zeros(1)
        summary.update(
            {
                "peak_grid_kw": run.acc.peak_grid_w / 1000.0,
                "peak_grid_without_storage_kw": run.acc.peak_net_w / 1000.0,
                "ev_energy_kwh": ev,
                "energy_not_delivered_kwh": tot["unserved_kwh"] + run.acc.ev_lost_wh / 1000.0,
                "ev_energy_wanted_kwh": run.acc.totals.get("ev_wanted_wh", 0.0) / 1000.0,
                "ev_energy_sessions_kwh": run.acc.totals.get("ev_session_wh", 0.0) / 1000.0,
                "evs_served": run.acc.ev_served,
                "evs_lost": run.acc.ev_lost,
                "ev_wait_mean_min": float(waits.mean() / 60.0),
                "ev_wait_p95_min": float(np.percentile(waits, 95) / 60.0),
                "energy_cost_eur": imp * tariff.import_eur_per_kwh
                - exp_ * tariff.feed_in_eur_per_kwh,
            }
        )
    return summary


def write_summary(summary: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(summary, indent=1))
