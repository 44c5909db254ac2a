"""What an FMU is, read from its modelDescription: version, interfaces, variables, platforms.

``describe_fmu(path)`` is what ``batterytwin fmu info`` prints and what the cloud's models
exchange stores on upload. The result is a plain frozen dataclass that turns into JSON with
:meth:`FmuDescription.to_dict`, so neither the CLI nor the cloud touches FMPy's objects.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from twin.errors import FmuError
from twin.fmu import fmpy_adapter

__all__ = ["FmuDescription", "FmuVariable", "describe_fmu", "describe_fmu_bytes"]


@dataclass(frozen=True, slots=True)
class FmuVariable:
    """One model variable.

    Attributes:
        name: Variable name as the FMU spells it.
        causality: ``input``, ``output``, ``parameter``, ``local``, ...
        variability: ``continuous``, ``discrete``, ``fixed``, ``tunable``, ``constant``.
        type: ``Real``/``Integer``/``Boolean``/``String`` (FMI 2.0) or ``Float64``, ...
        unit: Unit name, if declared.
        start: Start value as written in the XML, if any.
        description: Free text, if any.
        value_reference: The FMU's handle for get/set calls.
    """

    name: str
    causality: str
    variability: str
    type: str
    unit: str | None
    start: str | None
    description: str | None
    value_reference: int

    @property
    def is_real(self) -> bool:
        """Float-valued (``Real`` in FMI 2.0, ``Float32``/``Float64`` in FMI 3.0)."""
        return self.type in ("Real", "Float64", "Float32")


@dataclass(frozen=True, slots=True)
class FmuDescription:
    """Everything about an FMU that can be known without running it."""

    fmi_version: str
    model_name: str
    guid: str
    description: str | None
    generation_tool: str | None
    co_simulation: bool
    model_exchange: bool
    can_get_and_set_state: bool
    can_handle_variable_step: bool
    platforms: tuple[str, ...]
    variables: tuple[FmuVariable, ...]
    default_experiment: dict[str, float]
    continuous_states: int

    def variable(self, name: str) -> FmuVariable:
        """The variable called ``name``.

        Raises:
            FmuError: No such variable; the message lists close names.
        """
        for v in self.variables:
            if v.name == name:
                return v
        close = [v.name for v in self.variables if name.lower() in v.name.lower()]
        hint = f"; similar: {', '.join(close[:5])}" if close else ""
        raise FmuError(f"{self.model_name} has no variable {name!r}{hint}")

    def by_causality(self, causality: str) -> tuple[FmuVariable, ...]:
        """Variables of one causality, in the FMU's order."""
        return tuple(v for v in self.variables if v.causality == causality)

    @property
    def inputs(self) -> tuple[FmuVariable, ...]:
        return self.by_causality("input")

    @property
    def outputs(self) -> tuple[FmuVariable, ...]:
        return self.by_causality("output")

    @property
    def parameters(self) -> tuple[FmuVariable, ...]:
        return self.by_causality("parameter")

    @property
    def interfaces(self) -> tuple[str, ...]:
        """``CoSimulation`` and/or ``ModelExchange``."""
        found = []
        if self.co_simulation:
            found.append("CoSimulation")
        if self.model_exchange:
            found.append("ModelExchange")
        return tuple(found)

    def runs_here(self) -> bool:
        """Carries a binary for this machine's platform."""
        return fmpy_adapter.platform_tuple(self.fmi_version) in self.platforms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists instead of tuples)."""
        out = asdict(self)
        out["platforms"] = list(self.platforms)
        out["variables"] = [asdict(v) for v in self.variables]
        out["interfaces"] = list(self.interfaces)
        return out


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _from_model_description(md: Any, platforms: tuple[str, ...]) -> FmuDescription:
    cs, me = md.coSimulation, md.modelExchange
    experiment: dict[str, float] = {}
    de = md.defaultExperiment
    if de is not None:
        for key, attr in (
            ("start_time_s", "startTime"),
            ("stop_time_s", "stopTime"),
            ("tolerance", "tolerance"),
            ("step_size_s", "stepSize"),
        ):
            value = getattr(de, attr, None)
            if value is not None:
                experiment[key] = float(value)
    variables = tuple(
        FmuVariable(
            name=str(v.name),
            causality=str(v.causality),
            variability=str(v.variability),
            type=str(v.type),
            unit=_text(v.unit if v.unit is not None else _declared_unit(v)),
            start=_text(v.start),
            description=_text(v.description),
            value_reference=int(v.valueReference),
        )
        for v in md.modelVariables
    )
    three = str(md.fmiVersion).startswith("3")
    token = md.instantiationToken if three else md.guid
    return FmuDescription(
        fmi_version=str(md.fmiVersion),
        model_name=str(md.modelName),
        guid=str(token),
        description=_text(md.description),
        generation_tool=_text(md.generationTool),
        co_simulation=cs is not None,
        model_exchange=me is not None,
        can_get_and_set_state=any(
            bool(getattr(x, "canGetAndSetFMUstate", False)) for x in (cs, me) if x is not None
        ),
        can_handle_variable_step=bool(
            cs is not None and getattr(cs, "canHandleVariableCommunicationStepSize", False)
        ),
        platforms=platforms,
        variables=variables,
        default_experiment=experiment,
        continuous_states=int(md.numberOfContinuousStates or 0),
    )


def _declared_unit(variable: Any) -> str | None:
    declared = getattr(variable, "declaredType", None)
    return getattr(declared, "unit", None) if declared is not None else None


def describe_fmu(path: str | Path) -> FmuDescription:
    """Read an FMU file's description.

    Raises:
        FmuError: Missing file, not a zip, no or invalid ``modelDescription.xml``, or an FMI
            version other than 2.0/3.0.
    """
    fmu = Path(path)
    md = fmpy_adapter.read_model_description(fmu)
    return _from_model_description(md, fmpy_adapter.supported_platforms(fmu))


def describe_fmu_bytes(data: bytes, *, name: str = "the upload") -> FmuDescription:
    """As :func:`describe_fmu`, for an FMU held in memory (an HTTP upload)."""
    stream: IO[bytes] = io.BytesIO(data)
    md = fmpy_adapter.read_model_description(stream, name=name)
    stream.seek(0)
    platforms = fmpy_adapter.supported_platforms(stream)
    return _from_model_description(md, platforms)
