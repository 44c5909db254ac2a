"""Any FMI 2.0/3.0 FMU of a cell as a twin: the same ``CellTwin`` interface as the ECM.

A :class:`FmuMapping` says which FMU variables are the current (or power) and ambient
inputs and which are the voltage, SoC and temperature outputs. :class:`FmuTwin` extracts
the FMU once, instantiates one FMU per cell, and steps them with the mapped inputs; a
reset calls the FMU's own reset instead of extracting again (FMPy's efficient loop).

Sign convention: the twin's, positive current discharges. An FMU that counts charging
current as positive is mapped with ``current_sign = -1``.

Power and voltage control: with an FMU that can save and restore its state, the current
of a power-controlled step (or a constant-voltage hold) is found by secant iterations on
trial steps that are rolled back, then the real step takes that current. Without that
capability a power step uses the current ``P / V`` at the previous step's voltage, and a
voltage hold is refused.
"""

from __future__ import annotations

import functools
import math
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from twin.errors import FmuError
from twin.fmu import fmpy_adapter
from twin.fmu.describe import FmuDescription, FmuVariable, describe_fmu
from twin.fmu.instance import FmuInstance
from twin.models.base import (
    CellStep,
    CellTruth,
    FloatArray,
    LimitCheck,
    LimitMonitor,
    TwinEvent,
    as_cell_array,
    check_dt,
)
from twin.models.ecm_params import Limits

__all__ = ["FmuMapping", "FmuTwin"]

Interface = Literal["auto", "CoSimulation", "ModelExchange"]
_MAX_SECANT_ITERATIONS = 8
_RESIDUAL_TOLERANCE = 1e-10
"""Power (W) or voltage (V) residual at which a controlled step's current is accepted."""

_ALIASES: dict[str, tuple[str, ...]] = {
    "current": ("current", "current_a", "i", "i_cell", "cell_current", "current [a]", "i_batt"),
    "power": ("power", "power_w", "p", "cell_power", "power [w]"),
    "ambient": (
        "ambient_temperature",
        "ambient_temperature_c",
        "t_amb",
        "tamb",
        "ambient",
        "ambient temperature [degc]",
    ),
    "voltage": (
        "voltage",
        "voltage_v",
        "v",
        "v_cell",
        "terminal_voltage",
        "cell_voltage",
        "terminal voltage [v]",
        "voltage [v]",
    ),
    "soc": ("soc", "state_of_charge", "soc_1"),
    "temperature": (
        "temperature",
        "temperature_c",
        "t_cell",
        "cell_temperature",
        "cell temperature [degc]",
    ),
    "capacity": ("capacity", "capacity_ah", "q", "capacity [a.h]"),
    "initial_soc": ("soc_initial", "soc0", "initial_soc", "soc_init", "soc_start"),
}
_INPUTS = ("current", "power", "ambient")
_OUTPUTS = ("voltage", "soc", "temperature", "capacity")


@dataclass(frozen=True)
class FmuMapping:
    """Which FMU variables play which role.

    Attributes:
        current: Input for the cell current (A). One of ``current``/``power`` is needed.
        power: Input for the cell power (W), used by power steps when given.
        ambient: Input for the ambient temperature (degC), optional.
        voltage: Output of the terminal voltage (V), required.
        soc: Output of the state of charge (0..1), optional (NaN when absent).
        temperature: Output of the cell temperature (degC); ambient when absent.
        capacity: Output of the present capacity (Ah), optional.
        initial_soc: Parameter that sets the initial SoC, optional.
        current_sign: +1 if the FMU's positive current discharges (as here), -1 if it
            charges.
        temperature_offset_c: Added to FMU temperatures to get degC (-273.15 for kelvin);
            subtracted from the ambient before it is set.
    """

    current: str | None = "current"
    power: str | None = None
    ambient: str | None = "ambient_temperature"
    voltage: str = "voltage"
    soc: str | None = "soc"
    temperature: str | None = "temperature"
    capacity: str | None = None
    initial_soc: str | None = "soc_initial"
    current_sign: float = 1.0
    temperature_offset_c: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FmuMapping:
        """From a TOML/JSON table; unknown keys are an error naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FmuError(
                f"unknown FMU mapping key(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))

    @classmethod
    def detect(cls, description: FmuDescription) -> FmuMapping:
        """Guess the mapping from common variable names (case-insensitive).

        Inputs are looked for among inputs, outputs among outputs (then locals), the
        initial SoC among parameters. A temperature declared in K gets the kelvin offset.

        Raises:
            FmuError: No voltage output or neither a current nor a power input found;
                the message lists the FMU's inputs and outputs.
        """
        by_causality: dict[str, dict[str, FmuVariable]] = {}
        for v in description.variables:
            by_causality.setdefault(v.causality, {})[v.name.lower()] = v

        def find(role: str, causalities: tuple[str, ...]) -> FmuVariable | None:
            for causality in causalities:
                pool = by_causality.get(causality, {})
                for alias in _ALIASES[role]:
                    if alias in pool and pool[alias].is_real:
                        return pool[alias]
            return None

        found = {role: find(role, ("input",)) for role in _INPUTS}
        found.update({role: find(role, ("output", "local")) for role in _OUTPUTS})
        found["initial_soc"] = find("initial_soc", ("parameter",))
        if found["voltage"] is None or (found["current"] is None and found["power"] is None):
            raise FmuError(
                f"{description.model_name}: cannot tell which variables are the cell's "
                "current (or power) input and voltage output; give a mapping. Inputs: "
                f"{_names(description.inputs)}; outputs: {_names(description.outputs)}"
            )
        temperature = found["temperature"]
        kelvin = temperature is not None and (temperature.unit or "").strip() == "K"
        voltage = found["voltage"]
        assert voltage is not None
        return cls(
            current=_name(found["current"]),
            power=_name(found["power"]),
            ambient=_name(found["ambient"]),
            voltage=voltage.name,
            soc=_name(found["soc"]),
            temperature=_name(temperature),
            capacity=_name(found["capacity"]),
            initial_soc=_name(found["initial_soc"]),
            temperature_offset_c=-273.15 if kelvin else 0.0,
        )

    def check(self, description: FmuDescription) -> None:
        """Every mapped variable exists, is a float and has the right causality.

        Raises:
            FmuError: Naming the role, the variable and what was wrong.
        """
        if self.current is None and self.power is None:
            raise FmuError("the FMU mapping needs a current or a power input")
        if self.current_sign not in (1.0, -1.0):
            raise FmuError(f"mapping current_sign must be 1 or -1, got {self.current_sign}")
        wanted: list[tuple[str, str | None, tuple[str, ...]]] = [
            ("current", self.current, ("input",)),
            ("power", self.power, ("input",)),
            ("ambient", self.ambient, ("input",)),
            ("voltage", self.voltage, ("output", "local")),
            ("soc", self.soc, ("output", "local")),
            ("temperature", self.temperature, ("output", "local")),
            ("capacity", self.capacity, ("output", "local", "calculatedParameter")),
            ("initial_soc", self.initial_soc, ("parameter",)),
        ]
        for role, name, causalities in wanted:
            if name is None:
                continue
            try:
                var = description.variable(name)
            except FmuError as exc:
                raise FmuError(f"mapping {role} = {name!r}: {exc}") from None
            if var.causality not in causalities:
                raise FmuError(
                    f"mapping {role} = {name!r}: the variable has causality {var.causality!r}, "
                    f"but the {role} must be {' or '.join(causalities)}"
                )
            if not var.is_real:
                raise FmuError(
                    f"mapping {role} = {name!r}: the variable is {var.type}, not a float"
                )


def _power_residual(current_a: float, end_voltage_v: float, *, power_w: float) -> float:
    return current_a * end_voltage_v - power_w


def _voltage_residual(current_a: float, end_voltage_v: float, *, voltage_v: float) -> float:
    return end_voltage_v - voltage_v


def _name(v: FmuVariable | None) -> str | None:
    return None if v is None else v.name


def _names(variables: tuple[FmuVariable, ...]) -> str:
    return ", ".join(v.name for v in variables) or "(none)"


class FmuTwin:
    """A cell twin backed by an FMU: ``n_cells`` instances of one extracted FMU.

    Example:
        >>> with FmuTwin(Path("cell.fmu"), n_cells=4, initial_soc=0.8) as cells:
        ...     out = cells.step(current_a=5.0, dt_s=1.0, ambient_c=25.0)

    Args:
        path: The ``.fmu`` file.
        mapping: Variable roles; detected from common names when omitted.
        n_cells: Number of cells, one FMU instance each.
        parameters: Start values of FMU parameters, applied at every reset.
        cell_parameters: Per-cell start values (one per cell, e.g. a second-life spread of
            ``soh``), applied after ``parameters``.
        initial_soc: Initial SoC per cell (needs ``mapping.initial_soc``).
        capacity_ah: Capacity to report when the FMU has no capacity output.
        limits: Voltage/temperature limits whose crossing is reported as events.
        interface: ``"auto"`` prefers co-simulation, then model exchange (integrated with
            FMPy's CVode).

    Raises:
        FmuError: Not readable, no binary for this platform, an interface the FMU lacks,
            a mapped variable missing or of the wrong causality, or a failing
            initialisation.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        mapping: FmuMapping | None = None,
        n_cells: int = 1,
        parameters: Mapping[str, float] | None = None,
        cell_parameters: Mapping[str, ArrayLike] | None = None,
        initial_soc: ArrayLike | None = None,
        capacity_ah: float | None = None,
        limits: Limits | None = None,
        interface: Interface = "auto",
    ) -> None:
        if n_cells < 1:
            raise FmuError(f"n_cells must be >= 1, got {n_cells}")
        self.path = Path(path)
        self.description = describe_fmu(self.path)
        desc = self.description
        self.interface = self._choose_interface(interface)
        if not desc.runs_here():
            here = fmpy_adapter.platform_tuple(desc.fmi_version)
            rebuild = (
                "; it ships C sources, so it can be rebuilt for this platform"
                if "c-code" in desc.platforms
                else ""
            )
            raise FmuError(
                f"{self.path}: no binary for this platform ({here}); the FMU has "
                f"{', '.join(p for p in desc.platforms if p != 'c-code') or 'no binaries'}{rebuild}"
            )
        self.mapping = mapping or FmuMapping.detect(desc)
        self.mapping.check(desc)
        self._n = n_cells
        self._capacity_ah = float("nan") if capacity_ah is None else float(capacity_ah)
        self._limits = limits
        base = {k: float(v) for k, v in (parameters or {}).items()}
        for name in base:
            desc.variable(name)  # names a missing parameter before anything runs
        socs = self._initial_socs(initial_soc)
        per_cell = {
            name: as_cell_array(values, n_cells=n_cells, name=name, source="cell_parameters")
            for name, values in (cell_parameters or {}).items()
        }
        for name in per_cell:
            desc.variable(name)
        self._tmp: Path | None = Path(tempfile.mkdtemp(prefix="batterytwin-fmu-"))
        self._instances: list[FmuInstance] = []
        try:
            unzipdir = fmpy_adapter.extract(self.path, into=self._tmp)
            md = fmpy_adapter.read_model_description(self.path)
            for i in range(n_cells):
                start = dict(base)
                start.update({name: float(values[i]) for name, values in per_cell.items()})
                if socs is not None:
                    assert self.mapping.initial_soc is not None
                    start[self.mapping.initial_soc] = float(socs[i])
                self._instances.append(
                    FmuInstance(
                        model_description=md,
                        description=desc,
                        unzipdir=unzipdir,
                        interface=self.interface,
                        start_values=start,
                    )
                )
        except BaseException:
            self.close()
            raise
        self._resolve_references()
        self._monitor = LimitMonitor()
        self._time_s = 0.0
        self._last: CellStep = self._observe(np.zeros(n_cells), np.full(n_cells, 25.0), ())

    # ---------------------------------------------------------------- set-up
    def _choose_interface(self, interface: Interface) -> str:
        desc = self.description
        if interface == "auto":
            if desc.co_simulation:
                return "CoSimulation"
            if desc.model_exchange:
                return "ModelExchange"
            raise FmuError(f"{self.path}: the FMU offers neither co-simulation nor model exchange")
        if interface not in desc.interfaces:
            raise FmuError(
                f"{self.path}: the FMU has no {interface} interface (it offers "
                f"{', '.join(desc.interfaces) or 'none'})"
            )
        return interface

    def _initial_socs(self, initial_soc: ArrayLike | None) -> FloatArray | None:
        if initial_soc is None:
            return None
        if self.mapping.initial_soc is None:
            raise FmuError(
                f"{self.path}: initial_soc was given but the mapping names no initial-SoC "
                "parameter (mapping.initial_soc)"
            )
        socs = as_cell_array(initial_soc, n_cells=self._n, name="initial_soc", source="FmuTwin")
        if np.any((socs < 0) | (socs > 1)):
            raise FmuError(f"initial_soc must be within 0..1, got {socs}")
        return socs

    def _resolve_references(self) -> None:
        m, d = self.mapping, self.description

        def vr(name: str | None) -> int | None:
            return None if name is None else d.variable(name).value_reference

        self._vr_current = vr(m.current)
        self._vr_power = vr(m.power)
        self._vr_ambient = vr(m.ambient)
        roles = [("voltage", m.voltage), ("soc", m.soc), ("temperature", m.temperature)]
        roles.append(("capacity", m.capacity))
        self._out_roles = [role for role, name in roles if name is not None]
        self._out_vrs = [d.variable(name).value_reference for _, name in roles if name is not None]

    # ------------------------------------------------------------- interface
    @property
    def n_cells(self) -> int:
        return self._n

    @property
    def time_s(self) -> float:
        return self._time_s

    @property
    def last_step(self) -> CellStep:
        """The most recent step (after a reset: the initial state)."""
        return self._last

    def reset(self) -> CellStep:
        """Reset every instance to time 0 with its start values (no re-extraction)."""
        for inst in self._instances:
            inst.reset()
        self._time_s = 0.0
        self._monitor.reset()
        self._last = self._observe(np.zeros(self._n), np.full(self._n, 25.0), ())
        return self._last

    def step(self, *, current_a: ArrayLike, dt_s: float, ambient_c: ArrayLike) -> CellStep:
        """Hold ``current_a`` (positive = discharge) for ``dt_s`` at ``ambient_c``."""
        dt = check_dt(dt_s, source="FmuTwin.step")
        current = as_cell_array(current_a, n_cells=self._n, name="current_a", source="FmuTwin")
        ambient = as_cell_array(ambient_c, n_cells=self._n, name="ambient_c", source="FmuTwin")
        if self._vr_current is None:
            voltage = np.maximum(self._last.voltage_v, 1e-6)
            return self._advance_power(current * voltage, dt, ambient, current)
        for i, inst in enumerate(self._instances):
            self._apply(inst, current=float(current[i]), power=None, ambient_c=float(ambient[i]))
            inst.do_step(dt)
        return self._finish(dt, current, ambient)

    def step_power(self, *, power_w: ArrayLike, dt_s: float, ambient_c: ArrayLike) -> CellStep:
        """Hold a per-cell power (positive = discharge) for ``dt_s``."""
        dt = check_dt(dt_s, source="FmuTwin.step_power")
        power = as_cell_array(power_w, n_cells=self._n, name="power_w", source="FmuTwin")
        ambient = as_cell_array(ambient_c, n_cells=self._n, name="ambient_c", source="FmuTwin")
        if self._vr_power is not None:
            volt = np.maximum(self._last.voltage_v, 1e-6)
            return self._advance_power(power, dt, ambient, power / volt)
        currents = np.empty(self._n)
        for i, inst in enumerate(self._instances):
            p, amb = float(power[i]), float(ambient[i])
            guess = p / max(float(self._last.voltage_v[i]), 1e-6)
            if inst.can_roll_back and p != 0.0:
                currents[i] = self._solve_current(
                    inst,
                    dt=dt,
                    ambient_c=amb,
                    guess=guess,
                    residual=functools.partial(_power_residual, power_w=p),
                )
            else:
                currents[i] = guess
            self._apply(inst, current=float(currents[i]), power=None, ambient_c=amb)
            inst.do_step(dt)
        return self._finish(dt, currents, ambient)

    def step_voltage(self, *, voltage_v: ArrayLike, dt_s: float, ambient_c: ArrayLike) -> CellStep:
        """Hold the terminal voltage for ``dt_s`` (needs an FMU that can roll back).

        Raises:
            FmuError: The FMU cannot save and restore its state.
        """
        dt = check_dt(dt_s, source="FmuTwin.step_voltage")
        target = as_cell_array(voltage_v, n_cells=self._n, name="voltage_v", source="FmuTwin")
        ambient = as_cell_array(ambient_c, n_cells=self._n, name="ambient_c", source="FmuTwin")
        if self._vr_current is None or not all(inst.can_roll_back for inst in self._instances):
            raise FmuError(
                f"{self.description.model_name}: a voltage hold needs a current input and an "
                "FMU that can save and restore its state (canGetAndSetFMUstate)"
            )
        currents = np.empty(self._n)
        for i, inst in enumerate(self._instances):
            v_target = float(target[i])
            last_i = float(self._last.current_a[i])
            # Start from the present current, or a small one in the direction the
            # voltage has to move.
            guess = (
                last_i
                if last_i != 0.0
                else math.copysign(0.01, float(self._last.voltage_v[i]) - v_target)
            )
            currents[i] = self._solve_current(
                inst,
                dt=dt,
                ambient_c=float(ambient[i]),
                guess=guess,
                residual=functools.partial(_voltage_residual, voltage_v=v_target),
            )
            self._apply(inst, current=float(currents[i]), power=None, ambient_c=float(ambient[i]))
            inst.do_step(dt)
        return self._finish(dt, currents, ambient)

    # -------------------------------------------------------------- stepping
    def _apply(
        self, inst: FmuInstance, *, current: float | None, power: float | None, ambient_c: float
    ) -> None:
        vrs: list[int] = []
        values: list[float] = []
        if current is not None and self._vr_current is not None:
            vrs.append(self._vr_current)
            values.append(current * self.mapping.current_sign)
        if power is not None and self._vr_power is not None:
            vrs.append(self._vr_power)
            values.append(power * self.mapping.current_sign)
        if self._vr_ambient is not None:
            vrs.append(self._vr_ambient)
            values.append(ambient_c - self.mapping.temperature_offset_c)
        inst.set_reals(vrs, values)

    def _advance_power(
        self, power: FloatArray, dt: float, ambient: FloatArray, current_guess: FloatArray
    ) -> CellStep:
        for i, inst in enumerate(self._instances):
            self._apply(inst, current=None, power=float(power[i]), ambient_c=float(ambient[i]))
            inst.do_step(dt)
        step = self._finish(dt, current_guess, ambient)
        # The current that delivered the power, from the terminal voltage at the end.
        current = power / np.maximum(step.voltage_v, 1e-6)
        self._last = CellStep(
            step.time_s,
            current,
            step.voltage_v,
            step.surface_temperature_c,
            step.truth,
            step.events,
        )
        return self._last

    def _solve_current(
        self,
        inst: FmuInstance,
        *,
        dt: float,
        ambient_c: float,
        guess: float,
        residual: Callable[[float, float], float],
    ) -> float:
        """The current whose step makes ``residual(current, end_voltage)`` zero.

        Secant iterations on trial steps that are rolled back each time; a cell that is
        linear in its current over the step (an ECM) converges in two or three. When no
        current meets the target (a power beyond the cell's maximum), the best one tried
        is used.
        """
        state = inst.save_state()
        v_ref = self._out_vrs[self._out_roles.index("voltage")]

        def trial(current: float) -> float:
            self._apply(inst, current=current, power=None, ambient_c=ambient_c)
            inst.do_step(dt)
            v_end = inst.get_reals([v_ref])[0]
            inst.restore_state(state)
            return residual(current, v_end)

        try:
            x0, x1 = guess, guess * 1.01 + math.copysign(1e-3, guess)
            f0, f1 = trial(x0), trial(x1)
            best = min((abs(f0), x0), (abs(f1), x1))
            for _ in range(_MAX_SECANT_ITERATIONS):
                if f1 == f0 or best[0] <= _RESIDUAL_TOLERANCE:
                    break
                x0, x1, f0 = x1, x1 - f1 * (x1 - x0) / (f1 - f0), f1
                f1 = trial(x1)
                best = min(best, (abs(f1), x1))
        finally:
            inst.free_state(state)
        return best[1]

    def _finish(self, dt: float, current: FloatArray, ambient: FloatArray) -> CellStep:
        self._time_s += dt
        step = self._observe(current, ambient, ())
        events = self._check_limits(step)
        if events:
            step = CellStep(
                step.time_s,
                step.current_a,
                step.voltage_v,
                step.surface_temperature_c,
                step.truth,
                events,
            )
        self._last = step
        return step

    def _observe(
        self, current: FloatArray, ambient: FloatArray, events: tuple[TwinEvent, ...]
    ) -> CellStep:
        n = self._n
        values = np.array([inst.get_reals(self._out_vrs) for inst in self._instances]).reshape(
            n, len(self._out_vrs)
        )
        cols = {role: values[:, k] for k, role in enumerate(self._out_roles)}
        voltage = cols["voltage"].copy()
        bad = ~np.isfinite(voltage)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise FmuError(
                f"{self.description.model_name}: cell {i} returned a non-finite voltage at "
                f"t={self._time_s:g} s"
            )
        offset = self.mapping.temperature_offset_c
        temperature = cols["temperature"] + offset if "temperature" in cols else ambient.copy()
        soc = cols["soc"].copy() if "soc" in cols else np.full(n, np.nan)
        capacity = cols["capacity"].copy() if "capacity" in cols else np.full(n, self._capacity_ah)
        return CellStep(
            time_s=self._time_s,
            current_a=np.asarray(current, dtype=np.float64).copy(),
            voltage_v=voltage,
            surface_temperature_c=np.asarray(temperature, dtype=np.float64),
            truth=CellTruth.basic(soc=soc, capacity_ah=capacity, r0_ohm=np.full(n, np.nan)),
            events=events,
        )

    def _check_limits(self, step: CellStep) -> tuple[TwinEvent, ...]:
        if self._limits is None:
            return ()
        lim = self._limits
        return self._monitor.check(
            time_s=self._time_s,
            checks=(
                LimitCheck("over_voltage", step.voltage_v, lim.max_voltage_v, above=True),
                LimitCheck("under_voltage", step.voltage_v, lim.min_voltage_v, above=False),
                LimitCheck(
                    "over_temperature",
                    step.surface_temperature_c,
                    lim.max_temperature_c,
                    above=True,
                ),
            ),
        )

    # --------------------------------------------------------------- clean-up
    def close(self) -> None:
        """Free every instance and delete the extracted files (idempotent)."""
        for inst in getattr(self, "_instances", []):
            inst.close()
        self._instances = []
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> FmuTwin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
