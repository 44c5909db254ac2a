"""Battery twins: cell models (ECM, PyBaMM, FMU), packs, sensors and impedance.

Sign convention: positive current discharges (see :mod:`twin.models.base`). Heavy
back-ends (pybamm in :mod:`twin.models.pybamm_twin`, plotly in :mod:`twin.report`) are
imported only by the modules that need them, so ``import twin`` stays light.
"""

from twin.errors import ParameterSetError, TwinInputError
from twin.models.base import CellStep, CellTruth, CellTwin, TwinEvent
from twin.models.ecm import CellInit, EcmOptions, EcmTwin
from twin.pack import Pack, PackStep, PackTopology, SecondLifeSpread
from twin.params import available_parameter_sets, load_parameter_set

__all__ = [
    "CellInit",
    "CellStep",
    "CellTruth",
    "CellTwin",
    "EcmOptions",
    "EcmTwin",
    "Pack",
    "PackStep",
    "PackTopology",
    "ParameterSetError",
    "SecondLifeSpread",
    "TwinEvent",
    "TwinInputError",
    "available_parameter_sets",
    "load_parameter_set",
]
