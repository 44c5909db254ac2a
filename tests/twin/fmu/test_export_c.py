"""The C-source FMU of the ECM cell: valid FMI 2.0/3.0, and it computes what EcmTwin computes.

Scenario: a second-life cell (SoH 0.9, resistance factor 1.2, coulombic efficiency 0.99)
starting at 80 % SoC and 30 degC in a 38 degC enclosure runs ~1.5 h of discharge, rest,
a charge pulse, rest, a charge, rest and a discharge. Co-simulation steps of 1, 2.5, 5
and 10 s must reproduce ``EcmTwin.step`` bit for bit (to the last bits of ``exp``);
model exchange integrated by CVode must stay within a millivolt of it.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from ctypes import byref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fmpy")

from fmpy import extract, read_model_description, simulate_fmu
from fmpy.fmi1 import FMICallException
from fmpy.fmi2 import FMU2Slave, defaultCallbacks, fmi2CallbackFunctions, fmi2CallbackLoggerTYPE
from fmpy.fmi3 import FMU3Slave
from fmpy.logging import addLoggerProxy
from fmpy.validation import validate_fmu

from twin.errors import TwinInputError
from twin.fmu.export_c import export_c_fmu
from twin.models.ecm import CellInit, EcmOptions, EcmTwin
from twin.params import load_parameter_set

CC = shutil.which("cc") or shutil.which("gcc")
needs_cc = pytest.mark.skipif(CC is None, reason="needs a C compiler (cc or gcc)")

SETS = ("ecm_example", "nmc_okane2022", "nmc_eis_arc")  # 1, 2 and 4 RC pairs
INIT = CellInit(soc=0.8, temperature_c=30.0, soh=0.9, resistance_factor=1.2)
OPTIONS = EcmOptions(ageing="none", coulombic_efficiency=0.99)
AMBIENT_C = 38.0
# (duration s, current in C; positive = discharge): discharge, rest, charge pulse, rest,
# charge, rest, discharge.
SEGMENTS: tuple[tuple[float, float], ...] = (
    (1200.0, 0.8),
    (600.0, 0.0),
    (120.0, -1.5),
    (900.0, 0.0),
    (1500.0, -0.5),
    (600.0, 0.0),
    (300.0, 1.0),
)
STEPS_S = (1.0, 2.5, 5.0, 10.0)  # co-simulation step sizes, used in turn
OUTPUTS = ("voltage", "soc", "temperature")


def _profile(capacity_ah: float) -> Iterator[tuple[float, float]]:
    """(dt_s, current_a) of every co-simulation step, step sizes cycling through STEPS_S."""
    k = 0
    for duration_s, c_rate in SEGMENTS:
        t = 0.0
        while t < duration_s:
            dt = min(STEPS_S[k % len(STEPS_S)], duration_s - t)
            yield dt, c_rate * capacity_ah
            t += dt
            k += 1


def _twin(name: str) -> EcmTwin:
    return EcmTwin(load_parameter_set(name), init=INIT, options=OPTIONS)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, int], Path]:
    """Export (once per module) the FMU of a parameter set for an FMI version."""
    folder = tmp_path_factory.mktemp("c_fmu")
    built: dict[tuple[str, int], Path] = {}

    def get(name: str, fmi_version: int) -> Path:
        if (name, fmi_version) not in built:
            built[name, fmi_version] = export_c_fmu(
                load_parameter_set(name),
                folder / f"{name}_fmi{fmi_version}.fmu",
                fmi_version=2 if fmi_version == 2 else 3,
                init=INIT,
                options=OPTIONS,
            )
        return built[name, fmi_version]

    return get


class _CoSimulation:
    """An extracted FMU instantiated for co-simulation with FMPy, FMI 2.0 or 3.0."""

    def __init__(self, folder: Path) -> None:
        md = read_model_description(str(folder))
        self.vr = {v.name: v.valueReference for v in md.modelVariables}
        self.messages: list[str] = []
        self.fmi3 = md.fmiVersion.startswith("3")
        cls = FMU3Slave if self.fmi3 else FMU2Slave
        self.slave: Any = cls(
            guid=md.guid,
            unzipDirectory=str(folder),
            modelIdentifier=md.coSimulation.modelIdentifier,
            instanceName="cell",
        )
        if self.fmi3:
            self.slave.instantiate(logMessage=self._log3)
            self.slave.enterInitializationMode(startTime=0.0)
        else:
            self._callbacks = fmi2CallbackFunctions()
            self._callbacks.logger = fmi2CallbackLoggerTYPE(self._log2)
            self._callbacks.allocateMemory = defaultCallbacks.allocateMemory
            self._callbacks.freeMemory = defaultCallbacks.freeMemory
            addLoggerProxy(byref(self._callbacks))
            self.slave.instantiate(callbacks=self._callbacks)
            self.slave.setupExperiment(startTime=0.0)
            self.slave.enterInitializationMode()
        self.slave.exitInitializationMode()
        self.time_s = 0.0

    def _log2(self, env: Any, name: Any, status: int, category: Any, message: bytes) -> None:
        self.messages.append(message.decode())

    def _log3(self, env: Any, status: int, category: Any, message: bytes) -> None:
        self.messages.append(message.decode())

    def set(self, **values: float) -> None:
        setter = self.slave.setFloat64 if self.fmi3 else self.slave.setReal
        setter([self.vr[n] for n in values], list(values.values()))

    def get(self, *names: str) -> list[float]:
        getter = self.slave.getFloat64 if self.fmi3 else self.slave.getReal
        return list(getter([self.vr[n] for n in names]))

    def step(self, dt_s: float) -> None:
        self.slave.doStep(self.time_s, dt_s)
        self.time_s += dt_s

    def close(self) -> None:
        self.slave.terminate()
        self.slave.freeInstance()


def _extract(fmu: Path, folder: Path) -> Path:
    extract(str(fmu), unzipdir=str(folder))
    return folder


def _max_errors_against_twin(sim: _CoSimulation, name: str) -> np.ndarray:
    """Largest |FMU - EcmTwin| of voltage, SoC and temperature over the profile."""
    twin = _twin(name)
    start = np.array(sim.get(*OUTPUTS))
    worst = np.abs(start - [twin.reset().voltage_v[0], INIT.soc, INIT.temperature_c])
    for dt_s, current_a in _profile(twin.params.nominal_capacity_ah):
        sim.set(current=current_a, ambient_temperature=AMBIENT_C)
        sim.step(dt_s)
        out = twin.step(current_a=current_a, dt_s=dt_s, ambient_c=AMBIENT_C)
        native = [out.voltage_v[0], out.truth.soc[0], out.surface_temperature_c[0]]
        worst = np.maximum(worst, np.abs(np.array(sim.get(*OUTPUTS)) - native))
    return np.asarray(worst)


@needs_cc
@pytest.mark.parametrize("fmi_version", [2, 3])
@pytest.mark.parametrize("name", SETS)
def test_co_simulation_matches_ecm_twin(
    build: Callable[[str, int], Path], tmp_path: Path, name: str, fmi_version: int
) -> None:
    fmu = build(name, fmi_version)
    assert validate_fmu(str(fmu)) == []
    sim = _CoSimulation(_extract(fmu, tmp_path))
    try:
        d_voltage, d_soc, d_temperature = _max_errors_against_twin(sim, name)
    finally:
        sim.close()
    # Measured: 0 to 4e-16 V, i.e. the same arithmetic up to the last bits of exp().
    assert d_voltage < 1e-9
    assert d_soc < 1e-12
    assert d_temperature < 1e-9


def _native_at_whole_seconds(name: str) -> dict[int, np.ndarray]:
    twin = _twin(name)
    out: dict[int, np.ndarray] = {}
    t = 0
    for duration_s, c_rate in SEGMENTS:
        for _ in range(int(duration_s)):
            step = twin.step(
                current_a=c_rate * twin.params.nominal_capacity_ah, dt_s=1.0, ambient_c=AMBIENT_C
            )
            t += 1
            out[t] = np.array([step.voltage_v[0], step.truth.soc[0], step.surface_temperature_c[0]])
    return out


@needs_cc
@pytest.mark.parametrize("fmi_version", [2, 3])
@pytest.mark.parametrize("name", SETS)
def test_model_exchange_matches_ecm_twin(
    build: Callable[[str, int], Path], name: str, fmi_version: int
) -> None:
    capacity_ah = load_parameter_set(name).nominal_capacity_ah
    bounds = np.cumsum([0.0, *(d for d, _ in SEGMENTS)])
    rows = []
    for (duration_s, c_rate), t0 in zip(SEGMENTS, bounds, strict=False):
        current_a = c_rate * capacity_ah
        rows += [(t0, current_a, AMBIENT_C), (t0 + duration_s, current_a, AMBIENT_C)]
    signals = np.array(
        rows, dtype=[("time", float), ("current", float), ("ambient_temperature", float)]
    )
    result = simulate_fmu(
        str(build(name, fmi_version)),
        fmi_type="ModelExchange",
        solver="CVode",
        relative_tolerance=1e-8,
        input=signals,
        output=list(OUTPUTS),
        stop_time=float(bounds[-1]),
        output_interval=10.0,
        record_events=False,
    )
    native = _native_at_whole_seconds(name)
    # Skip the switching instants, where the voltage jumps by R0 * dI.
    keep = [r for r in result if r["time"] > 0 and np.abs(bounds - r["time"]).min() > 1e-6]
    fmu = np.array([[r[n] for n in OUTPUTS] for r in keep])
    ref = np.array([native[round(r["time"])] for r in keep])
    d_voltage, d_soc, d_temperature = np.abs(fmu - ref).max(axis=0)
    # Measured: 0.05-0.13 mV (the twin's 1 s zero-order hold vs CVode), 1e-13 SoC, 1 mK.
    assert d_voltage < 1e-3
    assert d_soc < 1e-9
    assert d_temperature < 0.01


@needs_cc
@pytest.mark.parametrize("fmi_version", [2, 3])
def test_sources_rebuild_into_a_working_binary(
    build: Callable[[str, int], Path], tmp_path: Path, fmi_version: int
) -> None:
    folder = _extract(build("nmc_eis_arc", fmi_version), tmp_path)
    sources = folder / "sources"
    # FMPy reads FMI 2.0 <SourceFiles> and FMI 3.0 sources/buildDescription.xml alike.
    build_config = read_model_description(str(folder)).buildConfigurations[0]
    files = build_config.sourceFileSets[0].sourceFiles
    assert "ecm_model.c" in files
    (binary,) = (folder / "binaries").rglob("*.so")
    binary.unlink()
    cmd = [str(CC), "-shared", "-fPIC", "-O2", "-I", str(sources), "-o", str(binary)]
    subprocess.run([*cmd, *(str(sources / f) for f in files), "-lm"], check=True)
    sim = _CoSimulation(folder)
    try:
        assert _max_errors_against_twin(sim, "nmc_eis_arc")[0] < 1e-9
    finally:
        sim.close()


@pytest.mark.parametrize("fmi_version", [2, 3])
def test_source_only_fmu_is_valid(tmp_path: Path, fmi_version: int) -> None:
    fmu = export_c_fmu(
        load_parameter_set("nmc_okane2022"),
        tmp_path / "cell.fmu",
        fmi_version=2 if fmi_version == 2 else 3,
        compile=False,
        cc="/nonexistent-cc",
    )
    assert validate_fmu(str(fmu)) == []
    with zipfile.ZipFile(fmu) as zf:
        names = zf.namelist()
    assert not any(n.startswith("binaries/") for n in names)
    assert f"sources/fmi{fmi_version}Functions.h" in names
    assert "sources/ecm_tables.h" in names
    assert ("sources/buildDescription.xml" in names) == (fmi_version == 3)


def test_missing_compiler_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = load_parameter_set("ecm_example")
    with pytest.raises(TwinInputError, match=r"needs a C compiler.*/nonexistent-cc.*CC"):
        export_c_fmu(params, tmp_path / "a.fmu", cc="/nonexistent-cc")
    monkeypatch.setenv("CC", "/nonexistent-cc")
    with pytest.raises(TwinInputError, match=r"\$CC='/nonexistent-cc'"):
        export_c_fmu(params, tmp_path / "b.fmu")
    assert not (tmp_path / "a.fmu").exists()


@needs_cc
@pytest.mark.parametrize("fmi_version", [2, 3])
@pytest.mark.parametrize("variable", ["current", "ambient_temperature"])
def test_nan_input_fails_the_step_and_names_the_variable(
    build: Callable[[str, int], Path], tmp_path: Path, fmi_version: int, variable: str
) -> None:
    sim = _CoSimulation(_extract(build("ecm_example", fmi_version), tmp_path))
    try:
        sim.set(current=10.0, ambient_temperature=AMBIENT_C)
        sim.step(1.0)
        sim.set(**{variable: math.nan})
        with pytest.raises(FMICallException, match="DoStep"):
            sim.step(1.0)
        assert any(f"input '{variable}' is not a finite number" in m for m in sim.messages), (
            sim.messages
        )
        try:  # afterwards the voltage is an error (NaN current) or the last good value
            voltage = sim.get("voltage")[0]
        except FMICallException:
            pass
        else:
            assert math.isfinite(voltage)
    finally:
        sim.close()


@needs_cc
@pytest.mark.parametrize("fmi_version", [2, 3])
def test_fmu_state_rolls_back_a_step(
    build: Callable[[str, int], Path], tmp_path: Path, fmi_version: int
) -> None:
    sim = _CoSimulation(_extract(build("nmc_okane2022", fmi_version), tmp_path))
    try:
        sim.set(current=5.0, ambient_temperature=AMBIENT_C)
        sim.step(10.0)
        get_state = sim.slave.getFMUState if sim.fmi3 else sim.slave.getFMUstate
        set_state = sim.slave.setFMUState if sim.fmi3 else sim.slave.setFMUstate
        saved = get_state()
        sim.step(30.0)
        first = sim.get(*OUTPUTS)
        set_state(saved)
        sim.time_s -= 30.0
        sim.step(30.0)
        assert sim.get(*OUTPUTS) == first
        (sim.slave.freeFMUState if sim.fmi3 else sim.slave.freeFMUstate)(saved)
    finally:
        sim.close()


@needs_cc
def test_voltage_follows_a_new_current_at_once(
    build: Callable[[str, int], Path], tmp_path: Path
) -> None:
    sim = _CoSimulation(_extract(build("ecm_example", 2), tmp_path))
    twin = _twin("ecm_example")
    try:
        sim.set(current=50.0, ambient_temperature=AMBIENT_C)
        sim.step(1.0)
        out = twin.step(current_a=50.0, dt_s=1.0, ambient_c=AMBIENT_C)
        sim.set(current=50.0)  # the step's own current: still the step's own result
        assert sim.get("voltage")[0] == pytest.approx(out.voltage_v[0], abs=1e-12)
        sim.set(current=60.0)  # a new current shows at once, through R0
        v_60 = sim.get("voltage")[0]
        sim.set(current=80.0)
        drop_v = v_60 - sim.get("voltage")[0]
        assert drop_v == pytest.approx(20.0 * out.truth.r0_ohm[0], rel=0.01)
    finally:
        sim.close()
