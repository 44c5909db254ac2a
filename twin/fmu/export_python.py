"""Export the ECM twin (with ageing and thermal model) as an FMI 2.0 co-simulation FMU.

:func:`export_python_fmu` builds the FMU with PythonFMU's builder (the only place in
the project that imports it). The FMU's script is :mod:`twin.fmu.ecm_slave`; the cell
parameter set and the configuration (pack topology, options, start values) are baked
into the FMU's resources as JSON, so the partner needs neither the parameter set nor
this exporter.

What the FMU needs where it runs: a process that hosts CPython (the FMU's binary calls
the Python C API of the process it is loaded into, as when FMPy loads it) with
``batterytwin`` (the ``twin`` package) and numpy importable. PythonFMU's own Python
files are embedded in the FMU. For an importer without Python, use the C source export
of the twin instead.

Example:
    >>> from pathlib import Path
    >>> from twin.fmu.export_python import export_python_fmu
    >>> fmu = export_python_fmu(Path("out/cell.fmu"))  # doctest: +SKIP
    >>> pack = export_python_fmu(Path("out/pack.fmu"), pack="16s1p")  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from twin.errors import FmuError
from twin.models.ecm import CellInit, EcmOptions

__all__ = ["export_python_fmu"]

_SLAVE_MODULE = "ecm_slave"  # top-level module name of the script inside the FMU


def _one_value(value: ArrayLike, *, name: str, fmu_name: str) -> float:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size != 1:
        raise FmuError(
            f"init.{name} must be one value for an FMU (its parameter {fmu_name!r} applies "
            f"to every cell), got {arr.size} values"
        )
    return float(arr.reshape(-1)[0])


def export_python_fmu(
    out: Path,
    *,
    params: str = "nmc_okane2022",
    pack: str | None = None,
    init: CellInit | None = None,
    options: EcmOptions | None = None,
    model_name: str = "BatterytwinEcm",
) -> Path:
    """Build an FMI 2.0 co-simulation FMU of one ECM cell or an ECM pack.

    Inputs ``current`` (A, positive = discharge; the pack current for a pack) and
    ``ambient_temperature`` (degC); outputs ``voltage``, ``soc``, ``temperature``,
    ``capacity``, ``resistance_factor_now`` and, for a pack, ``voltage_cell_min`` and
    ``voltage_cell_max``; parameters ``soc_initial``, ``temperature_initial``, ``soh``,
    ``resistance_factor``, ``coulombic_efficiency``, ``ageing_rate_factor`` and
    ``ageing_enabled`` (see :mod:`twin.fmu.ecm_slave`). Each FMU step is one twin step
    of the communication step size.

    Args:
        out: Path of the FMU to write (``.fmu``); parent folders are created.
        params: Parameter-set name or path of a parameter JSON
            (as :func:`twin.params.load_parameter_set` accepts).
        pack: ``None`` for one cell, or a pack wiring such as ``"16s1p"`` or
            ``"4x14s2p"`` (modules x series groups x parallel cells, one string).
        init: Initial state; its scalars become the parameters' start values.
        options: ECM options baked into the FMU. ``options.coulombic_efficiency`` is the
            start value of the ``coulombic_efficiency`` parameter; ``ageing="none"``
            starts ``ageing_enabled`` off (switching it on then uses the chemistry's law).
        model_name: FMI model name and model identifier (a C identifier).

    Returns:
        ``out``.

    Raises:
        FmuError: If ``out`` does not end in ``.fmu``, ``model_name`` is not a C
            identifier, ``init`` holds per-cell arrays or ``options.ageing`` is a model
            object rather than a law name.
        TwinInputError: If the parameter set, pack wiring or initial state is invalid
            (the twin is built once here, so the FMU cannot fail on it later).
    """
    from twin.fmu import ecm_slave
    from twin.pack import PackTopology
    from twin.params import load_parameter_set

    out = Path(out)
    if out.suffix != ".fmu":
        raise FmuError(f"out must be a file name ending in .fmu, got {str(out)!r}")
    if not (model_name.isascii() and model_name.isidentifier()):
        raise FmuError(
            f"model_name must be a C identifier (letters, digits, '_'; no leading digit), "
            f"got {model_name!r}"
        )
    options = options or EcmOptions()
    if not isinstance(options.ageing, str):
        raise FmuError(
            "options.ageing must name an ageing law ('auto', 'none', 'nmc', 'lfp', ...) for "
            f"an FMU, got a {type(options.ageing).__name__} object"
        )
    init = init or CellInit()
    cell = load_parameter_set(params)
    topology = None if pack is None else PackTopology.parse(pack)
    start = ecm_slave.FmuStartValues(
        soc_initial=_one_value(init.soc, name="soc", fmu_name="soc_initial"),
        temperature_initial=_one_value(
            init.temperature_c, name="temperature_c", fmu_name="temperature_initial"
        ),
        soh=_one_value(init.soh, name="soh", fmu_name="soh"),
        resistance_factor=_one_value(
            init.resistance_factor, name="resistance_factor", fmu_name="resistance_factor"
        ),
        coulombic_efficiency=options.coulombic_efficiency,
        ageing_rate_factor=_one_value(
            init.ageing_rate_factor, name="ageing_rate_factor", fmu_name="ageing_rate_factor"
        ),
        ageing_enabled=options.ageing != "none",
    )
    wiring = "one cell" if topology is None else f"a {topology.describe()} pack"
    config = ecm_slave.SlaveConfig(
        model_name=model_name,
        description=(
            f"batterytwin ECM twin of {wiring} of {cell.name} cells (thermal and ageing "
            "models included); positive current discharges. Runs in a process hosting "
            "CPython with batterytwin (the twin package) and numpy importable."
        ),
        parameter_set=params,
        topology=topology,
        options=replace(options, ageing="auto" if options.ageing == "none" else options.ageing),
        start=start,
    )
    ecm_slave.EcmFmuModel(cell, config=config, values=start)  # fail here, not in the FMU

    from pythonfmu.builder import FmuBuilder

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="batterytwin_fmu_") as tmp:
        stage = Path(tmp)
        script = stage / f"{_SLAVE_MODULE}.py"
        shutil.copyfile(Path(ecm_slave.__file__), script)
        cell.to_json(stage / ecm_slave.PARAMETERS_FILE)
        ecm_slave.write_config(config, stage / ecm_slave.CONFIG_FILE)
        # The builder imports the script as a top-level module and leaves its folder on
        # sys.path; undo both so this process does not keep a stale copy around.
        cached = sys.modules.get(_SLAVE_MODULE)
        try:
            FmuBuilder.build_FMU(
                script,
                dest=out,
                project_files=[stage / ecm_slave.PARAMETERS_FILE, stage / ecm_slave.CONFIG_FILE],
            )
        finally:
            while str(stage) in sys.path:
                sys.path.remove(str(stage))
            if cached is None:
                sys.modules.pop(_SLAVE_MODULE, None)
            else:
                sys.modules[_SLAVE_MODULE] = cached
    return out
