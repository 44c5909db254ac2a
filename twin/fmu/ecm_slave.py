"""PythonFMU co-simulation slave (FMI 2.0) that runs the ECM twin: one cell or a pack.

This file is the script of the FMU built by
:func:`twin.fmu.export_python.export_python_fmu`. Inside the FMU it is imported as the
top-level module ``ecm_slave`` from the FMU's ``resources`` folder, beside two JSON
files written at export: the cell parameter set (:data:`PARAMETERS_FILE`, the format of
``twin/params/data``) and the FMU configuration (:data:`CONFIG_FILE`: model name, pack
topology, model options, start values). The parameter set therefore travels with the
FMU; nothing needs to be installed under its name where the FMU runs.

Where the FMU runs, the importing process must host CPython (the FMU's binary calls the
Python C API of the process it is loaded into, e.g. FMPy) with ``batterytwin`` (the
``twin`` package) and numpy importable. PythonFMU's builder embeds its own Python files
in the FMU's resources, so ``pythonfmu`` is found there if it is not installed. The C
source export of the twin is the alternative that needs no Python.

Variables (names shared with the C export and the FMU importer's default mapping;
positive current discharges, as everywhere in :mod:`twin`):

* inputs ``current`` [A] (a pack's terminal current for a pack) and
  ``ambient_temperature`` [degC];
* outputs ``voltage`` [V] (pack voltage for a pack), ``soc`` [1] (mean over cells),
  ``temperature`` [degC] (hottest cell), ``capacity`` [Ah] (present usable capacity,
  which ageing lowers; a pack's is limited by its weakest series group),
  ``resistance_factor_now`` [1] (mean over cells; spread times ageing growth) and, for
  packs, ``voltage_cell_min`` and ``voltage_cell_max`` [V];
* fixed parameters ``soc_initial``, ``temperature_initial``, ``soh``,
  ``resistance_factor``, ``coulombic_efficiency``, ``ageing_rate_factor`` (Real) and
  ``ageing_enabled`` (Boolean). They are applied when the twin is rebuilt on leaving
  initialization mode, so a changed parameter takes effect after a reset.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, SubElement

from pythonfmu import Fmi2Slave
from pythonfmu.default_experiment import DefaultExperiment
from pythonfmu.enums import Fmi2Causality, Fmi2Initial, Fmi2Status, Fmi2Variability
from pythonfmu.variables import Boolean, Real

from twin.errors import FmuError
from twin.models.base import FloatArray
from twin.models.ecm import CellInit, EcmOptions, EcmTwin
from twin.models.ecm_params import EcmParameters
from twin.pack import Pack, PackTopology

__all__ = [
    "CONFIG_FILE",
    "PARAMETERS_FILE",
    "EcmFmuModel",
    "EcmSlave",
    "FmuStartValues",
    "SlaveConfig",
    "read_config",
    "write_config",
]

CONFIG_FILE = "batterytwin_fmu.json"
"""FMU configuration in the FMU's resources (see :class:`SlaveConfig`)."""
PARAMETERS_FILE = "ecm_parameters.json"
"""Cell parameter set in the FMU's resources (:meth:`EcmParameters.to_json` format)."""
_CONFIG_FORMAT = "batterytwin-ecm-fmu/1"

# (name, unit, description) of every Real variable, in value-reference order.
_INPUTS = (
    ("current", "A", "Terminal current, positive = discharge"),
    ("ambient_temperature", "degC", "Ambient temperature"),
)
_OUTPUTS = (
    ("voltage", "V", "Terminal voltage"),
    ("soc", "1", "State of charge (mean over cells), relative to present usable capacity"),
    ("temperature", "degC", "Cell temperature (hottest cell)"),
    ("capacity", "Ah", "Present usable capacity (falls with ageing)"),
    ("resistance_factor_now", "1", "Resistance relative to the tables, mean over cells"),
)
_PACK_OUTPUTS = (
    ("voltage_cell_min", "V", "Lowest cell voltage"),
    ("voltage_cell_max", "V", "Highest cell voltage"),
)
_REAL_PARAMETERS = (
    ("soc_initial", "1", "Initial state of charge of every cell"),
    ("temperature_initial", "degC", "Initial temperature of every cell"),
    ("soh", "1", "Usable capacity relative to the parameter set's nominal capacity"),
    ("resistance_factor", "1", "Initial resistance relative to the parameter set's tables"),
    ("coulombic_efficiency", "1", "Fraction of charging current stored"),
    ("ageing_rate_factor", "1", "Multiplies every ageing increment"),
)
# Unit definitions in SI base units: (name, exponents, factor, offset).
_UNITS: tuple[tuple[str, dict[str, int], float, float], ...] = (
    ("1", {}, 1.0, 0.0),
    ("A", {"A": 1}, 1.0, 0.0),
    ("Ah", {"A": 1, "s": 1}, 3600.0, 0.0),
    ("V", {"kg": 1, "m": 2, "s": -3, "A": -1}, 1.0, 0.0),
    ("degC", {"K": 1}, 1.0, 273.15),
)


@dataclass(frozen=True)
class FmuStartValues:
    """Start values of the FMU parameters (one value for every cell of a pack).

    Attributes:
        soc_initial: Initial state of charge, 0..1.
        temperature_initial: Initial cell temperature in degC.
        soh: Usable capacity relative to nominal.
        resistance_factor: Resistance relative to the parameter set's tables.
        coulombic_efficiency: Fraction of charging current stored, in (0, 1].
        ageing_rate_factor: Multiplies every ageing increment.
        ageing_enabled: Run the ageing law; off keeps capacity and resistance constant.
    """

    soc_initial: float = 0.5
    temperature_initial: float = 25.0
    soh: float = 1.0
    resistance_factor: float = 1.0
    coulombic_efficiency: float = 1.0
    ageing_rate_factor: float = 1.0
    ageing_enabled: bool = True


@dataclass(frozen=True)
class SlaveConfig:
    """What the exporter bakes into the FMU besides the parameter set.

    Attributes:
        model_name: FMI model name and model identifier (a C identifier).
        description: The FMU's description (shown by importers).
        parameter_set: Name or path the parameter set was loaded from (for the record).
        topology: Pack wiring, or ``None`` for one cell.
        options: ECM options; ``options.ageing`` is the law used while ``ageing_enabled``
            is on, and ``options.coulombic_efficiency`` is overridden by the parameter.
        start: Start values of the FMU parameters.
    """

    model_name: str
    description: str
    parameter_set: str
    topology: PackTopology | None
    options: EcmOptions
    start: FmuStartValues


def write_config(config: SlaveConfig, path: Path) -> None:
    """Write ``config`` as JSON to ``path``.

    Raises:
        FmuError: If ``config.options.ageing`` is not a law name (an ageing model object
            cannot be stored in the FMU).
    """
    if not isinstance(config.options.ageing, str):
        raise FmuError(
            "options.ageing must name an ageing law (e.g. 'auto', 'nmc', 'lfp') to be baked "
            f"into an FMU, got a {type(config.options.ageing).__name__} object"
        )
    doc = {
        "format": _CONFIG_FORMAT,
        "model_name": config.model_name,
        "description": config.description,
        "parameter_set": config.parameter_set,
        "topology": None if config.topology is None else asdict(config.topology),
        "options": asdict(config.options),
        "start": asdict(config.start),
    }
    path.write_text(json.dumps(doc, indent=1))


def read_config(path: Path) -> SlaveConfig:
    """Read a configuration written by :func:`write_config`.

    Raises:
        FmuError: If the file is missing, of another format or lacks fields.
    """
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != _CONFIG_FORMAT:
            raise FmuError(
                f"{path} has format {doc.get('format')!r}, expected {_CONFIG_FORMAT!r}; "
                "export the FMU again with this version of batterytwin"
            )
        topology = doc["topology"]
        return SlaveConfig(
            model_name=str(doc["model_name"]),
            description=str(doc["description"]),
            parameter_set=str(doc["parameter_set"]),
            topology=None if topology is None else PackTopology(**topology),
            options=EcmOptions(**doc["options"]),
            start=FmuStartValues(**doc["start"]),
        )
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise FmuError(f"cannot read the FMU configuration {path}: {exc}") from exc


class EcmFmuModel:
    """The twin behind the FMU, free of any FMI code: a cell or pack built from the
    parameter values, stepped with a held current, reporting the FMU's outputs.

    Args:
        params: Cell parameter set.
        config: Topology and options baked into the FMU.
        values: Parameter values to build from.

    Raises:
        TwinInputError: If a value is out of range (the message names it).
    """

    def __init__(
        self, params: EcmParameters, *, config: SlaveConfig, values: FmuStartValues
    ) -> None:
        options = replace(
            config.options,
            ageing=config.options.ageing if values.ageing_enabled else "none",
            coulombic_efficiency=values.coulombic_efficiency,
        )
        init = CellInit(
            soc=values.soc_initial,
            temperature_c=values.temperature_initial,
            soh=values.soh,
            resistance_factor=values.resistance_factor,
            ageing_rate_factor=values.ageing_rate_factor,
        )
        self._pack: Pack | None = None
        if config.topology is None:
            self._cells = EcmTwin(params, n_cells=1, init=init, options=options)
            self._shape = (1, 1, 1)
            rest = self._cells.reset()
        else:
            self._pack = Pack(
                params,
                topology=config.topology,
                soc=values.soc_initial,
                temperature_c=values.temperature_initial,
                options=options,
            )
            self._cells = self._pack.cells
            self._shape = config.topology.shape
            # At rest every cell sits at its OCV, which depends on SoC and temperature
            # only, so these voltages hold whatever SoH and resistance the cells get.
            rest = self._cells.reset()
            if (values.soh, values.resistance_factor, values.ageing_rate_factor) != (1, 1, 1):
                # Pack builds its cells from SoC and temperature alone: give them the
                # rest of the initial state as a replacement of every cell.
                self._pack.replace_cells(list(range(self._pack.n_cells)), init=init)
        self._outputs = self._collect(self._series_voltage(rest.voltage_v), rest.voltage_v)

    @property
    def has_pack(self) -> bool:
        """Whether this is a pack (``voltage_cell_min`` / ``_max`` are outputs)."""
        return self._pack is not None

    def _series_voltage(self, cell_voltages_v: FloatArray) -> float:
        # Parallel cells share a voltage, series groups add, strings share the terminals.
        v = cell_voltages_v.reshape(self._shape)
        return float(v.mean(axis=2).sum(axis=1).mean())

    def step(self, *, current_a: float, ambient_c: float, dt_s: float) -> None:
        """Hold ``current_a`` (positive = discharge) for ``dt_s`` at ``ambient_c``."""
        if self._pack is None:
            out = self._cells.step(current_a=current_a, dt_s=dt_s, ambient_c=ambient_c)
            self._outputs = self._collect(float(out.voltage_v[0]), out.voltage_v)
        else:
            pack_out = self._pack.step(current_a=current_a, dt_s=dt_s, ambient_c=ambient_c)
            self._outputs = self._collect(pack_out.voltage_v, pack_out.cells.voltage_v)

    def outputs(self) -> Mapping[str, float]:
        """The FMU's outputs after the last step, keyed by variable name."""
        return self._outputs

    def _collect(self, voltage_v: float, cell_voltages_v: FloatArray) -> dict[str, float]:
        cells = self._cells
        capacity_ah = cells.capacity_ah.reshape(self._shape).sum(axis=2).min(axis=1).sum()
        out = {
            "voltage": voltage_v,
            "soc": float(cells.soc.mean()),
            "temperature": float(cells.temperature_c.max()),
            "capacity": float(capacity_ah),
            "resistance_factor_now": float(cells.resistance_factor.mean()),
        }
        if self._pack is not None:
            out["voltage_cell_min"] = float(cell_voltages_v.min())
            out["voltage_cell_max"] = float(cell_voltages_v.max())
        return out


class _UnitReal(Real):  # type: ignore[misc]  # pythonfmu ships no type information
    """A Real variable with a ``unit`` (PythonFMU 0.7 has no ``unit=`` argument)."""

    def __init__(self, name: str, *, unit: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.unit = unit

    def to_xml(self) -> Element:
        node: Element = super().to_xml()
        real = node.find("Real")
        if real is not None:
            real.set("unit", self.unit)
        return node


# PythonFMU's binary finds the slave class by matching "class <Name>(Fmi2Slave):" at the
# start of a line of this file: keep that exact shape.
class EcmSlave(Fmi2Slave):  # type: ignore[misc]  # pythonfmu ships no type information
    """The FMI 2.0 co-simulation adapter around :class:`EcmFmuModel`.

    PythonFMU instantiates it with ``instance_name`` and ``resources`` (the folder that
    holds :data:`CONFIG_FILE` and :data:`PARAMETERS_FILE`); ``fmi2Reset`` makes a new
    instance, which returns every parameter to its start value.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        resources = Path(str(self.resources))
        self._config = read_config(resources / CONFIG_FILE)
        self._params = EcmParameters.from_json(resources / PARAMETERS_FILE)
        self.modelName = self._config.model_name
        self.description = self._config.description
        self.author = "batterytwin"
        self.license = "BSD-3-Clause"
        self.default_experiment = DefaultExperiment(start_time=0.0, step_size=1.0)
        start = self._config.start
        self._inputs = {"current": 0.0, "ambient_temperature": start.temperature_initial}
        self._values = start
        self._model = EcmFmuModel(self._params, config=self._config, values=start)
        self._stale = False  # parameters changed since the model was built
        self._stepped = False
        self._register()

    # --------------------------------------------------------------- variables
    def _register(self) -> None:
        for name, unit, text in _INPUTS:
            self.register_variable(
                _UnitReal(
                    name,
                    unit=unit,
                    description=text,
                    causality=Fmi2Causality.input,
                    variability=Fmi2Variability.continuous,
                    getter=functools.partial(self._inputs.__getitem__, name),
                    setter=functools.partial(self._set_input, name),
                )
            )
        outputs = _OUTPUTS + (_PACK_OUTPUTS if self._model.has_pack else ())
        for name, unit, text in outputs:
            self.register_variable(
                _UnitReal(
                    name,
                    unit=unit,
                    description=text,
                    causality=Fmi2Causality.output,
                    variability=Fmi2Variability.continuous,
                    initial=Fmi2Initial.calculated,
                    getter=functools.partial(self._output, name),
                )
            )
        for name, unit, text in _REAL_PARAMETERS:
            self.register_variable(
                _UnitReal(
                    name,
                    unit=unit,
                    description=text,
                    causality=Fmi2Causality.parameter,
                    variability=Fmi2Variability.fixed,
                    getter=functools.partial(self._get_parameter, name),
                    setter=functools.partial(self._set_parameter, name),
                )
            )
        self.register_variable(
            Boolean(
                "ageing_enabled",
                description="Run the ageing law (capacity fade, resistance growth)",
                causality=Fmi2Causality.parameter,
                variability=Fmi2Variability.fixed,
                getter=functools.partial(self._get_parameter, "ageing_enabled"),
                setter=functools.partial(self._set_parameter, "ageing_enabled"),
            )
        )

    def _set_input(self, name: str, value: float) -> None:
        self._inputs[name] = float(value)

    def _get_parameter(self, name: str) -> float | bool:
        value: float | bool = getattr(self._values, name)
        return value

    def _set_parameter(self, name: str, value: float | bool) -> None:
        # Real parameters are floats, ageing_enabled (Boolean) a bool.
        change: dict[str, Any] = {name: bool(value) if name == "ageing_enabled" else float(value)}
        self._values = replace(self._values, **change)
        self._stale = True

    def _output(self, name: str) -> float:
        if self._stale and not self._stepped:
            # Initialization mode: outputs are calculated from the parameters set so far.
            self._rebuild()
        return self._model.outputs()[name]

    def _rebuild(self) -> None:
        self._model = EcmFmuModel(self._params, config=self._config, values=self._values)
        self._stale = False

    # --------------------------------------------------------------- lifecycle
    def to_xml(self, model_options: Mapping[str, str] | None = None) -> Element:
        """PythonFMU's model description plus unit definitions and initial unknowns."""
        root: Element = super().to_xml(dict(model_options or {}))
        units = Element("UnitDefinitions")
        for name, exponents, factor, offset in _UNITS:
            base = SubElement(SubElement(units, "Unit", name=name), "BaseUnit")
            for base_unit, exponent in exponents.items():
                base.set(base_unit, str(exponent))
            if factor != 1.0:
                base.set("factor", repr(factor))
            if offset != 0.0:
                base.set("offset", repr(offset))
        # The schema puts UnitDefinitions right after the CoSimulation element.
        position = [child.tag for child in root].index("CoSimulation") + 1
        root.insert(position, units)
        structure = root.find("ModelStructure")
        outputs = None if structure is None else structure.find("Outputs")
        if structure is not None and outputs is not None:
            # Outputs are calculated in initialization mode, so they are initial unknowns.
            initial = SubElement(structure, "InitialUnknowns")
            for unknown in outputs:
                SubElement(initial, "Unknown", index=unknown.get("index", ""))
        return root

    def exit_initialization_mode(self) -> None:
        """Build the twin from the parameter values set during initialization."""
        try:
            self._rebuild()
        except Exception as exc:
            self.log(f"exit_initialization_mode: {exc}", Fmi2Status.error)
            raise

    def do_step(self, current_time: float, step_size: float) -> bool:
        """One twin step of ``step_size`` seconds with the held inputs.

        Returns:
            ``False`` (the FMI call fails) if an input is not finite (the step is not
            taken) or the twin raises; either way the reason is logged.
        """
        current_a = self._inputs["current"]
        ambient_c = self._inputs["ambient_temperature"]
        if not (math.isfinite(current_a) and math.isfinite(ambient_c)):
            self.log(
                f"do_step at t={current_time:g} s: inputs must be finite, got "
                f"current={current_a!r} A, ambient_temperature={ambient_c!r} degC; "
                "the step was not taken",
                Fmi2Status.error,
            )
            return False
        try:
            self._model.step(current_a=current_a, ambient_c=ambient_c, dt_s=step_size)
        except Exception as exc:
            # Any failure of the twin must reach the importer as an FMI status with its
            # message, not as an uncaught Python error that PythonFMU reports as fatal.
            self.log(
                f"do_step at t={current_time:g} s with step_size={step_size:g} s: "
                f"{type(exc).__name__}: {exc}",
                Fmi2Status.error,
            )
            return False
        self._stepped = True
        return True
