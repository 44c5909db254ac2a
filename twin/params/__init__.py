"""Named ECM parameter sets: PyBaMM's ``ecm_example`` and the calibrated JSON sets."""

from __future__ import annotations

from pathlib import Path

from twin.errors import ParameterSetError
from twin.models.ecm_params import EcmParameters

__all__ = ["available_parameter_sets", "load_parameter_set"]

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_SET = "ecm_example"


def available_parameter_sets() -> list[str]:
    """Names accepted by :func:`load_parameter_set`."""
    return sorted({"ecm_example", "nmc_eis_arc", *(p.stem for p in DATA_DIR.glob("*.json"))})


def load_parameter_set(name: str) -> EcmParameters:
    """Load a parameter set by name, or from a JSON file path.

    Raises:
        ParameterSetError: Unknown name (the message lists the known ones) or bad tables.
    """
    if name == "ecm_example":
        from twin.params.ecm_example import ecm_example

        return ecm_example()
    if name == "nmc_eis_arc":
        from twin.params.eis_arc import nmc_eis_arc

        return nmc_eis_arc()
    path = DATA_DIR / f"{name}.json"
    if path.is_file():
        return EcmParameters.from_json(path)
    candidate = Path(name)
    if candidate.suffix == ".json" and candidate.is_file():
        return EcmParameters.from_json(candidate)
    raise ParameterSetError(
        f"unknown ECM parameter set {name!r}; known sets: {', '.join(available_parameter_sets())}"
        " (or give the path of a .json file written by 'batterytwin twin calibrate')"
    )
