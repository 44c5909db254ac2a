"""The twin a request names: an ECM or PyBaMM parameter set, or an FMU of the models exchange.

PyBaMM and FMPy are imported only when a request asks for them. An FMU is read from the
database (``fmu_files``) into a temporary file that lives as long as the twin.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from cloud.testbench.messages import (
    EcmModelSpec,
    FmuModelSpec,
    ModelSpec,
    PybammModelSpec,
)
from cloud.testbench.procedures import UnitRatings
from cloud.testbench.runner import SteppableTwin

__all__ = ["BuiltTwin", "FmuLoader", "ModelError", "build_twin", "database_fmu_loader"]

FmuLoader = Callable[[int], bytes]
"""Returns the ``.fmu`` file of a models-exchange id (raises :class:`ModelError`)."""


class ModelError(ValueError):
    """The model a request names cannot be built (unknown FMU, bad mapping, ...)."""


@dataclass
class BuiltTwin:
    """A twin ready for the bench, what it says of the unit, and how to release it."""

    twin: SteppableTwin
    ratings: UnitRatings
    describe: dict[str, Any]
    close: Callable[[], None]


def build_twin(
    spec: ModelSpec,
    *,
    ambient_c: float,
    ageing: bool = True,
    fmu_loader: FmuLoader | None = None,
) -> BuiltTwin:
    """Build the twin of ``spec`` (slow for PyBaMM: call it off the event loop).

    Args:
        spec: The request's model.
        ambient_c: The cell starts at this temperature.
        ageing: False turns the ECM's ageing off whatever ``spec`` says: abuse tests
            leave the SoC window the ageing laws are valid in.
        fmu_loader: Where FMUs come from (the models exchange).

    Raises:
        ModelError: If the model cannot be built; the message says why.
    """
    try:
        if isinstance(spec, EcmModelSpec):
            return _ecm(spec, ambient_c=ambient_c, ageing=ageing)
        if isinstance(spec, PybammModelSpec):
            return _pybamm(spec, ambient_c=ambient_c)
        if fmu_loader is None:
            raise ModelError("FMU models need the models exchange (a database)")
        return _fmu(spec, fmu_loader)
    except ModelError:
        raise
    except (ValueError, OSError) as error:  # TwinInputError, FmuError, ParameterSetError
        raise ModelError(f"cannot build the {spec.kind} model: {error}") from error


def _ecm(spec: EcmModelSpec, *, ambient_c: float, ageing: bool) -> BuiltTwin:
    from twin.models.ecm import CellInit, EcmOptions, EcmTwin
    from twin.params import load_parameter_set

    params = load_parameter_set(spec.parameter_set)
    twin = EcmTwin(
        params,
        init=CellInit(
            soc=spec.initial_soc,
            temperature_c=ambient_c,
            soh=spec.soh,
            resistance_factor=spec.resistance_factor,
            ageing_rate_factor=spec.ageing_rate_factor,
        ),
        options=EcmOptions(
            ageing="auto" if spec.ageing and ageing else "none", ageing_interval_s=600.0
        ),
    )
    ratings = UnitRatings(
        capacity_ah=float(twin.capacity_ah[0]),
        min_voltage_v=params.limits.min_voltage_v,
        max_voltage_v=params.limits.max_voltage_v,
        max_temperature_c=params.limits.max_temperature_c,
    )
    describe = {
        "kind": "ecm",
        "parameter_set": params.name,
        "chemistry": params.chemistry,
        "ageing": spec.ageing and ageing,
    }
    return BuiltTwin(twin, ratings, describe, close=lambda: None)


def _pybamm(spec: PybammModelSpec, *, ambient_c: float) -> BuiltTwin:
    from twin.models.pybamm_twin import PybammTwin, PybammTwinConfig

    config = PybammTwinConfig(
        parameter_set=spec.parameter_set,
        model=spec.model,
        thermal=spec.thermal,
        initial_soc=spec.initial_soc,
        initial_temperature_c=ambient_c,
        ambient_temperature_c=ambient_c,
    )
    twin = PybammTwin(config)
    low, high = twin.voltage_limits_v
    capacity = float(twin.last_step.truth.capacity_ah[0])
    ratings = UnitRatings(
        capacity_ah=capacity if math.isfinite(capacity) else twin.nominal_capacity_ah,
        min_voltage_v=low,
        max_voltage_v=high,
        max_temperature_c=config.max_temperature_c,
    )
    describe = {"kind": "pybamm", "parameter_set": spec.parameter_set, "model": spec.model}
    return BuiltTwin(twin, ratings, describe, close=lambda: None)


def _fmu(spec: FmuModelSpec, loader: FmuLoader) -> BuiltTwin:
    from twin.fmu.twin import FmuMapping, FmuTwin
    from twin.models.ecm_params import Limits

    content = loader(spec.model_id)
    folder = Path(tempfile.mkdtemp(prefix="batterytwin-bench-"))
    try:
        path = folder / f"model-{spec.model_id}.fmu"
        path.write_bytes(content)
        mapping = FmuMapping.from_dict(spec.mapping) if spec.mapping is not None else None
        limits = None
        if spec.min_voltage_v is not None and spec.max_voltage_v is not None:
            limits = Limits(
                min_voltage_v=spec.min_voltage_v,
                max_voltage_v=spec.max_voltage_v,
                max_temperature_c=spec.max_temperature_c,
            )
        twin = FmuTwin(
            path,
            mapping=mapping,
            parameters=spec.parameters,
            initial_soc=spec.initial_soc,
            capacity_ah=spec.capacity_ah,
            limits=limits,
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise

    def close() -> None:
        twin.close()
        shutil.rmtree(folder, ignore_errors=True)

    capacity = spec.capacity_ah
    if capacity is None:
        reported = float(twin.last_step.truth.capacity_ah[0])
        capacity = reported if math.isfinite(reported) else math.nan
    can_hold = (
        twin.description.can_get_and_set_state
        and twin.interface == "CoSimulation"
        and twin.mapping.current is not None
    )
    ratings = UnitRatings(
        capacity_ah=capacity,
        min_voltage_v=spec.min_voltage_v if spec.min_voltage_v is not None else math.nan,
        max_voltage_v=spec.max_voltage_v if spec.max_voltage_v is not None else math.nan,
        max_temperature_c=spec.max_temperature_c,
        can_hold_voltage=can_hold,
    )
    describe = {
        "kind": "fmu",
        "model_id": spec.model_id,
        "model_name": twin.description.model_name,
        "fmi_version": twin.description.fmi_version,
        "interface": twin.interface,
    }
    return BuiltTwin(twin, ratings, describe, close=close)


def database_fmu_loader(engine: Engine) -> FmuLoader:
    """Reads an FMU's file from the models exchange (a deleted version is not found)."""

    def load(model_id: int) -> bytes:
        from sqlalchemy.orm import Session

        from cloud.exchange import read_content

        with Session(engine) as session:
            content = read_content(session, model_id=model_id)
        if content is None:
            raise ModelError(f"no FMU with model_id {model_id} in the models exchange")
        return content

    return load


@contextlib.contextmanager
def built(
    spec: ModelSpec,
    *,
    ambient_c: float,
    ageing: bool = True,
    fmu_loader: FmuLoader | None = None,
) -> Iterator[BuiltTwin]:
    """:func:`build_twin` for a block, closed after it."""
    twin = build_twin(spec, ambient_c=ambient_c, ageing=ageing, fmu_loader=fmu_loader)
    try:
        yield twin
    finally:
        twin.close()
