"""FMUs built once per test session: a toy PythonFMU cell and the ECM twin's exports."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from twin.models.ecm import CellInit, EcmOptions

HERE = Path(__file__).parent
PARAMS = "nmc_okane2022"
INIT = CellInit(soc=0.6, temperature_c=25.0)
NO_AGEING = EcmOptions(ageing="none")


@pytest.fixture(scope="session")
def toy_fmu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FMI 2.0 co-simulation FMU of :mod:`tests.twin.fmu.toy_cell_slave` (PythonFMU)."""
    from pythonfmu.builder import FmuBuilder

    out = tmp_path_factory.mktemp("toy")
    script = out / "toy_cell_slave.py"
    shutil.copy(HERE / "toy_cell_slave.py", script)
    return Path(FmuBuilder.build_FMU(script, dest=out))


@pytest.fixture(scope="session")
def python_ecm_fmu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ECM twin exported through PythonFMU (FMI 2.0 co-simulation), no ageing."""
    from twin.fmu.export_python import export_python_fmu

    out = tmp_path_factory.mktemp("py") / "cell.fmu"
    return export_python_fmu(out, params=PARAMS, init=INIT, options=NO_AGEING)


@pytest.fixture(scope="session")
def c_ecm_fmu3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ECM twin exported as C source, compiled here: FMI 3.0 co-simulation."""
    from twin.fmu.export_c import export_c_fmu
    from twin.params import load_parameter_set

    out = tmp_path_factory.mktemp("c3") / "cell3.fmu"
    return export_c_fmu(load_parameter_set(PARAMS), out, fmi_version=3, init=INIT)


@pytest.fixture(scope="session")
def c_ecm_fmu2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ECM twin exported as C source: FMI 2.0, co-simulation and model exchange."""
    from twin.fmu.export_c import export_c_fmu
    from twin.params import load_parameter_set

    out = tmp_path_factory.mktemp("c2") / "cell2.fmu"
    return export_c_fmu(load_parameter_set(PARAMS), out, fmi_version=2, init=INIT)
