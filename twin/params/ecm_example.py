"""PyBaMM's bundled ``ECM_Example`` tables as an :class:`EcmParameters` set.

The CSV files ship inside the pybamm package; they are read directly so that loading
them does not import pybamm. The 3-D R/C tables (temperature x current x SoC) are cut
at +-1C (100 A) to give this platform's direction axis. ``dUdT`` is tabulated over OCV
and temperature in PyBaMM; it is mapped to SoC through the OCV curve at 20 degC.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from twin.errors import ParameterSetError
from twin.models.base import FloatArray
from twin.models.ecm_params import CHARGE, DISCHARGE, EcmParameters, Limits, ThermalParameters

_ONE_C_A = 100.0


def _data_dir() -> Path:
    spec = importlib.util.find_spec("pybamm")
    if spec is None or not spec.submodule_search_locations:
        raise ParameterSetError(
            "parameter set 'ecm_example' reads PyBaMM's bundled tables, but pybamm is not "
            "installed: pip install 'batterytwin[pybamm]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "input/parameters/ecm/data"
    if not path.is_dir():
        raise ParameterSetError(f"PyBaMM's ECM_Example tables are not at {path}")
    return path


def _table_3d(path: Path, n_soc: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    data = np.loadtxt(path, delimiter=",", skiprows=1)
    temps = np.unique(data[:, 0])
    socs = np.unique(data[:, 2])
    if socs.size != n_soc:
        raise ParameterSetError(f"{path}: expected {n_soc} SoC points, found {socs.size}")
    out = np.empty((2, temps.size, socs.size))
    for direction, current in ((DISCHARGE, _ONE_C_A), (CHARGE, -_ONE_C_A)):
        rows = data[data[:, 1] == current]
        rows = rows[np.lexsort((rows[:, 2], rows[:, 0]))]
        out[direction] = rows[:, 3].reshape(temps.size, socs.size)
    return temps, socs, out


def ecm_example() -> EcmParameters:
    """Load PyBaMM's ``ECM_Example``: a 100 Ah cell with R0 and one RC pair."""
    folder = _data_dir()
    ocv_table = np.loadtxt(folder / "ecm_example_ocv.csv", delimiter=",", comments="#")
    temps, socs, r0 = _table_3d(folder / "ecm_example_r0.csv", 21)
    _, _, r1 = _table_3d(folder / "ecm_example_r1.csv", 21)
    _, _, c1 = _table_3d(folder / "ecm_example_c1.csv", 21)
    dudt = np.loadtxt(folder / "ecm_example_dudt.csv", delimiter=",", skiprows=1)
    soc_grid = ocv_table[:, 0]
    ocv = ocv_table[:, 1]
    at20 = dudt[dudt[:, 1] == 20.0]
    entropic = np.interp(ocv, at20[:, 0], at20[:, 2])

    def on_ocv_grid(table: FloatArray) -> FloatArray:
        # R/C tables cover SoC 0..1; extend flat to the OCV table's -0.05..1.05.
        out = np.empty((2, temps.size, soc_grid.size))
        for d in range(2):
            for t in range(temps.size):
                out[d, t] = np.interp(soc_grid, socs, table[d, t])
        return out

    return EcmParameters(
        name="ecm_example",
        source=f"PyBaMM ECM_Example tables ({folder})",
        chemistry="nmc",
        nominal_capacity_ah=100.0,
        soc_grid=soc_grid,
        ocv_v=ocv,
        entropic_v_per_k=entropic,
        temperature_grid_c=temps,
        r0_ohm=on_ocv_grid(r0),
        rc_resistance_ohm=on_ocv_grid(r1)[None],
        rc_capacitance_f=on_ocv_grid(c1)[None],
        limits=Limits(min_voltage_v=3.2, max_voltage_v=4.2),
        # Cell 1000 J/K; cell-jig 10 W/K in series with jig-air 10 W/K -> 5 W/K to air.
        thermal=ThermalParameters(heat_capacity_j_per_k=1000.0, heat_transfer_w_per_k=5.0),
        reference_temperature_c=20.0,
    )
