"""The PythonFMU export of the ECM twin: a valid FMI 2.0 FMU that FMPy runs in this
process and that steps exactly like the native twin (cell and pack, ageing off and on).

The FMU's binary calls the Python C API of the process that loads it, so FMPy can run it
inside the pytest process; each instance puts its resources folder on ``sys.path`` and
imports the script as ``ecm_slave``, which a fixture undoes after each test.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pythonfmu")
pytest.importorskip("fmpy")

from fmpy import extract, instantiate_fmu, read_model_description, simulate_fmu
from fmpy.fmi1 import FMICallException
from fmpy.fmi2 import fmi2Discard
from fmpy.validation import validate_fmu

from twin.errors import FmuError
from twin.fmu.export_python import export_python_fmu
from twin.models.ecm import CellInit, EcmOptions, EcmTwin
from twin.pack import Pack, PackTopology
from twin.params import load_parameter_set

PARAMS = "nmc_okane2022"  # 5 Ah NMC cell
CAPACITY_AH = 5.0
INIT = CellInit(soc=0.8, temperature_c=25.0)
OPTIONS = EcmOptions(ageing_interval_s=600.0)  # ageing windows close every 10 min
DT_S = 60.0
TOLERANCE_V = 1e-4  # 0.1 mV


@pytest.fixture(autouse=True)
def _restore_interpreter() -> Iterator[None]:
    """Undo what loading a PythonFMU does to this interpreter."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    sys.modules.pop("ecm_slave", None)


@pytest.fixture(scope="module")
def cell_fmu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fmu") / "cell.fmu"
    return export_python_fmu(out, params=PARAMS, init=INIT, options=OPTIONS)


@pytest.fixture(scope="module")
def pack_fmu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fmu") / "pack.fmu"
    return export_python_fmu(
        out, params=PARAMS, pack="4s2p", init=INIT, options=OPTIONS, model_name="EcmPack"
    )


def _cycling(hours: float, *, current_a: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-step current (30 min discharge, 10 min rest, 30 min charge, 10 min rest, ...)
    and an ambient temperature swinging 20-30 degC."""
    t = np.arange(0.0, hours * 3600.0, DT_S)
    phase = t % 4800.0
    current = np.select(
        [phase < 1800.0, phase < 2400.0, phase < 4200.0], [current_a, 0.0, -current_a], 0.0
    )
    ambient = 25.0 + 5.0 * np.sin(2.0 * np.pi * t / 14_400.0)
    return current, ambient


@contextmanager
def _instance(
    fmu_path: Path, unzip_dir: Path, *, messages: list[str] | None = None
) -> Iterator[tuple[Any, dict[str, int]]]:
    """An instantiated FMU (FMPy's FMU2Slave) and its value references; with
    ``messages``, the FMU's log messages are collected there."""
    md = read_model_description(str(fmu_path))

    def log(_component: object, _name: bytes, _status: int, _category: bytes, msg: bytes) -> None:
        assert messages is not None
        messages.append(msg.decode())

    fmu = instantiate_fmu(
        extract(str(fmu_path), unzipdir=str(unzip_dir)),
        md,
        debug_logging=messages is not None,
        logger=None if messages is None else log,
    )
    try:
        yield fmu, {v.name: v.valueReference for v in md.modelVariables}
    finally:
        fmu.freeInstance()


def _run_fmu(
    fmu_path: Path,
    unzip_dir: Path,
    *,
    current_a: np.ndarray,
    ambient_c: np.ndarray,
    start_values: dict[str, float | bool] | None = None,
    messages: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Step the FMU once per profile entry (dt = DT_S); outputs after each step."""
    md = read_model_description(str(fmu_path))
    outputs = [v.name for v in md.modelVariables if v.causality == "output"]
    with _instance(fmu_path, unzip_dir, messages=messages) as (fmu, vr):
        fmu.setupExperiment(startTime=0.0)
        fmu.enterInitializationMode()
        for name, value in (start_values or {}).items():
            if isinstance(value, bool):
                fmu.setBoolean([vr[name]], [value])
            else:
                fmu.setReal([vr[name]], [value])
        fmu.exitInitializationMode()
        rows = []
        for k, (i_a, amb_c) in enumerate(zip(current_a, ambient_c, strict=True)):
            fmu.setReal([vr["current"], vr["ambient_temperature"]], [i_a, amb_c])
            fmu.doStep(currentCommunicationPoint=k * DT_S, communicationStepSize=DT_S)
            rows.append(fmu.getReal([vr[n] for n in outputs]))
        fmu.terminate()
    table = np.array(rows)
    return {name: table[:, j] for j, name in enumerate(outputs)}


def _run_cell(
    *, options: EcmOptions, current_a: np.ndarray, ambient_c: np.ndarray
) -> dict[str, np.ndarray]:
    twin = EcmTwin(load_parameter_set(PARAMS), init=INIT, options=options)
    rows = []
    for i_a, amb_c in zip(current_a, ambient_c, strict=True):
        out = twin.step(current_a=i_a, dt_s=DT_S, ambient_c=amb_c)
        rows.append((out.voltage_v[0], twin.soc[0], twin.temperature_c[0], twin.capacity_ah[0]))
    v, soc, temp, cap = np.array(rows).T
    return {"voltage": v, "soc": soc, "temperature": temp, "capacity": cap}


def test_exported_fmus_pass_fmpy_validation(cell_fmu: Path, pack_fmu: Path) -> None:
    assert validate_fmu(str(cell_fmu)) == []
    assert validate_fmu(str(pack_fmu)) == []
    units = {v.name: v.unit for v in read_model_description(str(pack_fmu)).modelVariables}
    assert units["current"] == "A"
    assert units["voltage_cell_min"] == "V"
    assert units["capacity"] == "Ah"
    assert units["temperature_initial"] == "degC"


@pytest.mark.parametrize("ageing", [False, True], ids=["ageing_off", "ageing_on"])
def test_fmu_matches_native_cell(cell_fmu: Path, tmp_path: Path, ageing: bool) -> None:
    current, ambient = _cycling(4.0, current_a=CAPACITY_AH)
    fmu = _run_fmu(
        cell_fmu,
        tmp_path,
        current_a=current,
        ambient_c=ambient,
        start_values={"ageing_enabled": ageing},
    )
    native = _run_cell(
        options=OPTIONS if ageing else EcmOptions(ageing="none", ageing_interval_s=600.0),
        current_a=current,
        ambient_c=ambient,
    )
    assert np.abs(fmu["voltage"] - native["voltage"]).max() < TOLERANCE_V
    assert np.abs(fmu["soc"] - native["soc"]).max() < 1e-9
    assert np.abs(fmu["temperature"] - native["temperature"]).max() < 1e-6
    assert np.abs(fmu["capacity"] - native["capacity"]).max() < 1e-9
    fade_ah = CAPACITY_AH - fmu["capacity"][-1]
    if ageing:
        assert fade_ah > 0.01  # 24 ageing windows of a fresh cell
        assert fmu["resistance_factor_now"][-1] > 1.0
    else:
        assert fade_ah == 0.0


def test_pack_fmu_matches_native_pack(pack_fmu: Path, tmp_path: Path) -> None:
    current, ambient = _cycling(2.0, current_a=2 * CAPACITY_AH)  # 1C of a 2p pack
    fmu = _run_fmu(pack_fmu, tmp_path, current_a=current, ambient_c=ambient)
    pack = Pack(
        load_parameter_set(PARAMS),
        topology=PackTopology.parse("4s2p"),
        soc=0.8,
        temperature_c=25.0,
        options=OPTIONS,
    )
    rows = []
    for i_a, amb_c in zip(current, ambient, strict=True):
        out = pack.step(current_a=float(i_a), dt_s=DT_S, ambient_c=amb_c)
        rows.append((out.voltage_v, out.cells.voltage_v.min(), out.cells.voltage_v.max()))
    v_pack, v_min, v_max = np.array(rows).T
    assert np.abs(fmu["voltage"] - v_pack).max() < TOLERANCE_V
    assert np.abs(fmu["voltage_cell_min"] - v_min).max() < TOLERANCE_V
    assert np.abs(fmu["voltage_cell_max"] - v_max).max() < TOLERANCE_V
    assert fmu["voltage"][0] > 4 * 3.5  # four series groups, not one cell
    assert fmu["capacity"][-1] == pytest.approx(2 * pack.cells.capacity_ah.min())


@pytest.mark.parametrize(("which", "cells_in_parallel"), [("cell", 1), ("pack", 2)])
def test_start_value_of_soh_changes_capacity(
    cell_fmu: Path, pack_fmu: Path, which: str, cells_in_parallel: int
) -> None:
    fmu = cell_fmu if which == "cell" else pack_fmu
    signal = np.array(
        [(0.0, 2.5, 25.0), (600.0, 2.5, 25.0)],
        dtype=[("time", np.float64), ("current", np.float64), ("ambient_temperature", np.float64)],
    )

    def capacity_ah(**start: float) -> float:
        result = simulate_fmu(
            str(fmu),
            stop_time=600.0,
            output_interval=60.0,
            input=signal,
            start_values=start,
            output=["capacity"],
        )
        return float(result["capacity"][0])

    assert capacity_ah() == pytest.approx(cells_in_parallel * CAPACITY_AH)
    assert capacity_ah(soh=0.8) == pytest.approx(cells_in_parallel * 0.8 * CAPACITY_AH)


def test_parameter_set_travels_inside_the_fmu(tmp_path: Path) -> None:
    big_cell = tmp_path / "big_cell.json"
    load_parameter_set(PARAMS).scaled_to(60.0).to_json(big_cell)
    fmu = export_python_fmu(tmp_path / "big.fmu", params=str(big_cell), init=INIT)
    big_cell.unlink()  # the partner has no copy of the set
    result = simulate_fmu(str(fmu), stop_time=60.0, output_interval=60.0, output=["capacity"])
    assert result["capacity"][-1] == pytest.approx(60.0)


def test_parameter_takes_effect_after_reset(cell_fmu: Path, tmp_path: Path) -> None:
    with _instance(cell_fmu, tmp_path) as (fmu, vr):
        fmu.setupExperiment(startTime=0.0)
        fmu.enterInitializationMode()
        fmu.exitInitializationMode()
        fmu.setReal([vr["current"]], [5.0])
        fmu.doStep(currentCommunicationPoint=0.0, communicationStepSize=600.0)
        fmu.reset()
        fmu.setupExperiment(startTime=0.0)
        fmu.enterInitializationMode()
        fmu.setReal([vr["soh"], vr["soc_initial"]], [0.9, 0.3])
        # Initialization mode: the outputs already follow the parameters set so far.
        assert fmu.getReal([vr["capacity"]]) == [pytest.approx(0.9 * CAPACITY_AH)]
        fmu.exitInitializationMode()
        assert fmu.getReal([vr["soc"], vr["capacity"]]) == [
            pytest.approx(0.3),
            pytest.approx(0.9 * CAPACITY_AH),
        ]
        fmu.terminate()


def test_non_finite_input_fails_the_step_with_a_message(cell_fmu: Path, tmp_path: Path) -> None:
    current = np.array([1.0, np.nan, 1.0])
    messages: list[str] = []
    with pytest.raises(FMICallException, match="fmi2DoStep") as failure:
        _run_fmu(
            cell_fmu,
            tmp_path / "stepped",
            current_a=current,
            ambient_c=np.full(3, 25.0),
            messages=messages,
        )
    # PythonFMU reports a failed do_step as fmi2Discard with fmi2Terminated set.
    assert failure.value.status == fmi2Discard
    assert any("inputs must be finite, got current=nan A" in m for m in messages), messages

    # FMPy's simulate_fmu ends the run at the last good step instead of recording NaN.
    signal = np.array(
        [(0.0, 1.0, 25.0), (120.0, 1.0, 25.0), (120.0, 1.0, np.nan), (240.0, 1.0, np.nan)],
        dtype=[("time", np.float64), ("current", np.float64), ("ambient_temperature", np.float64)],
    )
    result = simulate_fmu(str(cell_fmu), stop_time=240.0, output_interval=60.0, input=signal)
    assert result["time"][-1] == 120.0
    assert np.isfinite(result["voltage"]).all()


def test_twin_error_fails_the_step_with_a_message(cell_fmu: Path, tmp_path: Path) -> None:
    messages: list[str] = []
    with _instance(cell_fmu, tmp_path, messages=messages) as (fmu, _vr):
        fmu.setupExperiment(startTime=0.0)
        fmu.enterInitializationMode()
        fmu.exitInitializationMode()
        with pytest.raises(FMICallException, match="fmi2DoStep"):
            fmu.doStep(currentCommunicationPoint=0.0, communicationStepSize=0.0)
    assert any("TwinInputError: dt_s must be a finite number > 0" in m for m in messages), messages


def test_invalid_parameter_fails_initialization_with_a_message(cell_fmu: Path) -> None:
    messages: list[bytes] = []

    def logger(_component: object, _name: bytes, _status: int, _cat: bytes, msg: bytes) -> None:
        messages.append(msg)

    # PythonFMU turns the exception raised on leaving initialization mode into fmi2Fatal.
    with pytest.raises(FMICallException, match="fmi2ExitInitializationMode"):
        simulate_fmu(
            str(cell_fmu),
            stop_time=60.0,
            start_values={"soh": -1.0},
            debug_logging=True,
            logger=logger,
        )
    assert any(b"soh must be > 0" in m for m in messages), messages


def test_export_rejects_what_an_fmu_cannot_carry(tmp_path: Path) -> None:
    with pytest.raises(FmuError, match=r"\.fmu"):
        export_python_fmu(tmp_path / "cell.zip")
    with pytest.raises(FmuError, match="C identifier"):
        export_python_fmu(tmp_path / "cell.fmu", model_name="2cells")
    with pytest.raises(FmuError, match="one value"):
        export_python_fmu(tmp_path / "cell.fmu", init=CellInit(soh=[0.8, 0.9]))
    assert not (tmp_path / "cell.fmu").exists()
