"""FMUs as twins: FMI 2.0 and 3.0, co-simulation and model exchange, and clear errors."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.twin.fmu.conftest import INIT, NO_AGEING, PARAMS
from twin.errors import FmuError
from twin.fmu import fmpy_adapter
from twin.fmu.describe import describe_fmu
from twin.fmu.twin import FmuMapping, FmuTwin
from twin.models.ecm import CellInit, EcmTwin
from twin.params import load_parameter_set

TOY_MAPPING = FmuMapping(
    current="I_batt",
    ambient="T_amb",
    voltage="V_term",
    soc="SOC",
    temperature="T_cell",
    initial_soc="SOC0",
    current_sign=-1.0,
    temperature_offset_c=-273.15,
)


def _profile_a(n: int) -> np.ndarray:
    """Discharge, rest, charge and a pulse train: 1C = 5 A for the calibrated cell."""
    t = np.arange(n)
    current = np.where(t < n // 4, 5.0, 0.0)
    current = np.where((t >= n // 2) & (t < 3 * n // 4), -2.5, current)
    return np.where(t >= 3 * n // 4, np.where(t % 20 < 10, 7.5, -3.0), current)


def _native(socs: list[float]) -> EcmTwin:
    return EcmTwin(
        load_parameter_set(PARAMS),
        n_cells=len(socs),
        init=CellInit(soc=np.array(socs), temperature_c=INIT.temperature_c),
        options=NO_AGEING,
    )


def _compare(fmu: FmuTwin, native: EcmTwin, *, steps: int, dt_s: float, ambient_c: float) -> float:
    worst = 0.0
    for current in _profile_a(steps):
        a = fmu.step(current_a=current, dt_s=dt_s, ambient_c=ambient_c)
        b = native.step(current_a=current, dt_s=dt_s, ambient_c=ambient_c)
        worst = max(worst, float(np.abs(a.voltage_v - b.voltage_v).max()))
        np.testing.assert_allclose(a.truth.soc, b.truth.soc, atol=1e-9)
        np.testing.assert_allclose(a.surface_temperature_c, b.surface_temperature_c, atol=1e-6)
    return worst


def test_python_fmu_fmi2_matches_native_twin_per_cell(python_ecm_fmu: Path) -> None:
    socs = [0.3, 0.6, 0.9]
    with FmuTwin(python_ecm_fmu, n_cells=3, initial_soc=socs) as fmu:
        assert fmu.description.fmi_version == "2.0"
        assert fmu.interface == "CoSimulation"
        np.testing.assert_allclose(fmu.last_step.truth.soc, socs)
        worst = _compare(fmu, _native(socs), steps=400, dt_s=5.0, ambient_c=35.0)
    assert worst < 1e-4  # 0.1 mV


def test_c_fmu_fmi3_matches_native_twin(c_ecm_fmu3: Path) -> None:
    socs = [0.4, 0.8]
    with FmuTwin(c_ecm_fmu3, n_cells=2, initial_soc=socs) as fmu:
        assert fmu.description.fmi_version.startswith("3.")
        worst = _compare(fmu, _native(socs), steps=600, dt_s=2.0, ambient_c=10.0)
    assert worst < 1e-4


def test_model_exchange_is_integrated_with_cvode(c_ecm_fmu2: Path) -> None:
    socs = [0.7]
    with FmuTwin(c_ecm_fmu2, initial_soc=socs, interface="ModelExchange") as fmu:
        assert fmu.interface == "ModelExchange"
        native = _native(socs)
        worst = 0.0
        for current in _profile_a(240):
            a = fmu.step(current_a=current, dt_s=10.0, ambient_c=25.0)
            b = native.step(current_a=current, dt_s=10.0, ambient_c=25.0)
            worst = max(worst, float(np.abs(a.voltage_v - b.voltage_v).max()))
        assert abs(float(a.truth.soc[0]) - float(b.truth.soc[0])) < 1e-3
    # Continuous-time tables versus the twin's end-of-step lookups: close, not identical.
    assert worst < 5e-3


def test_reset_reuses_the_extracted_fmu_and_replays_exactly(
    python_ecm_fmu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_extract = fmpy_adapter.extract

    def counting_extract(path: Path, *, into: Path | None = None) -> Path:
        calls.append(path)
        return real_extract(path, into=into)

    monkeypatch.setattr(fmpy_adapter, "extract", counting_extract)
    with FmuTwin(python_ecm_fmu, n_cells=2, initial_soc=0.5) as fmu:
        first = [fmu.step(current_a=c, dt_s=10.0, ambient_c=25.0).voltage_v for c in _profile_a(60)]
        start = fmu.reset()
        assert fmu.time_s == 0.0
        np.testing.assert_allclose(start.truth.soc, 0.5)
        again = [fmu.step(current_a=c, dt_s=10.0, ambient_c=25.0).voltage_v for c in _profile_a(60)]
    assert len(calls) == 1
    np.testing.assert_array_equal(np.array(first), np.array(again))


def test_power_and_voltage_control_with_state_rollback(c_ecm_fmu3: Path) -> None:
    with FmuTwin(c_ecm_fmu3, initial_soc=0.5) as fmu:
        assert fmu.description.can_get_and_set_state
        for power in (12.0, -8.0):
            out = fmu.step_power(power_w=power, dt_s=10.0, ambient_c=25.0)
            delivered = float(out.current_a[0] * out.voltage_v[0])
            assert delivered == pytest.approx(power, rel=1e-6)
        hold = fmu.step_voltage(voltage_v=4.0, dt_s=10.0, ambient_c=25.0)
        assert float(hold.voltage_v[0]) == pytest.approx(4.0, abs=1e-6)


def test_foreign_conventions_through_an_explicit_mapping(toy_fmu: Path) -> None:
    with FmuTwin(toy_fmu, mapping=TOY_MAPPING, n_cells=2, initial_soc=[0.2, 0.4]) as fmu:
        out = fmu.step(current_a=2.0, dt_s=36.0, ambient_c=20.0)  # discharge 2 A
    # The toy counts charging current as positive: a discharge lowers its SoC.
    np.testing.assert_allclose(out.truth.soc, [0.19, 0.39])
    # V = 3.0 + 1.2 SoC + R I with I = -2 A in its convention.
    np.testing.assert_allclose(out.voltage_v, 3.0 + 1.2 * np.array([0.19, 0.39]) - 0.1)
    # Kelvin in, degC out: T_cell = T_amb + 0.01 I^2.
    np.testing.assert_allclose(out.surface_temperature_c, 20.04)


def test_default_mapping_is_detected_from_names(python_ecm_fmu: Path) -> None:
    mapping = FmuMapping.detect(describe_fmu(python_ecm_fmu))
    assert (mapping.current, mapping.ambient, mapping.voltage) == (
        "current",
        "ambient_temperature",
        "voltage",
    )
    assert (mapping.soc, mapping.temperature, mapping.initial_soc) == (
        "soc",
        "temperature",
        "soc_initial",
    )


def test_undetectable_mapping_lists_the_fmus_variables(toy_fmu: Path) -> None:
    with pytest.raises(FmuError, match=r"give a mapping.*Inputs: I_batt, T_amb.*V_term"):
        FmuTwin(toy_fmu)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"voltage": "V_cell"}, r"mapping voltage = 'V_cell': ToyCell has no variable 'V_cell'"),
        ({"current": "V_term"}, r"mapping current = 'V_term'.*causality 'output'.*must be input"),
        ({"initial_soc": "SOC"}, r"mapping initial_soc = 'SOC'.*must be parameter"),
    ],
)
def test_wrong_mapping_is_named(toy_fmu: Path, change: dict[str, str], message: str) -> None:
    mapping = FmuMapping(**{**TOY_MAPPING.__dict__, **change})
    with pytest.raises(FmuError, match=message):
        FmuTwin(toy_fmu, mapping=mapping)


def test_failing_do_step_is_reported_with_time_and_call(toy_fmu: Path) -> None:
    with FmuTwin(
        toy_fmu, mapping=TOY_MAPPING, parameters={"fail_after_s": 20.0}, initial_soc=0.5
    ) as fmu:
        fmu.step(current_a=1.0, dt_s=10.0, ambient_c=25.0)
        fmu.step(current_a=1.0, dt_s=10.0, ambient_c=25.0)
        with pytest.raises(FmuError, match=r"ToyCell: doStep failed at t=20 s"):
            fmu.step(current_a=1.0, dt_s=10.0, ambient_c=25.0)


def test_unknown_parameter_is_named_before_anything_runs(toy_fmu: Path) -> None:
    with pytest.raises(FmuError, match=r"no variable 'capacity_Ah'.*"):
        FmuTwin(toy_fmu, mapping=TOY_MAPPING, parameters={"capacity_Ah": 2.0})


def _rewrite(src: Path, dst: Path, *, drop_prefix: str | None = None, xml_sub=None) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if drop_prefix and item.filename.startswith(drop_prefix):
                continue
            data = zin.read(item)
            if item.filename == "modelDescription.xml" and xml_sub is not None:
                data = xml_sub(data.decode()).encode()
            zout.writestr(item, data)
    return dst


def test_no_binary_for_this_platform(c_ecm_fmu2: Path, tmp_path: Path) -> None:
    here = fmpy_adapter.platform_tuple("2.0")
    stripped = _rewrite(c_ecm_fmu2, tmp_path / "nobin.fmu", drop_prefix=f"binaries/{here}/")
    with pytest.raises(FmuError, match=rf"no binary for this platform \({here}\).*C sources"):
        FmuTwin(stripped)


def test_unsupported_fmi_version(toy_fmu: Path, tmp_path: Path) -> None:
    old = _rewrite(
        toy_fmu,
        tmp_path / "fmi1.fmu",
        xml_sub=lambda xml: re.sub(r'fmiVersion="2\.0"', 'fmiVersion="1.0"', xml),
    )
    with pytest.raises(FmuError, match=r"FMI version 1\.0 is not supported.*2\.0 and 3\.0"):
        FmuTwin(old)


def test_not_an_fmu(tmp_path: Path) -> None:
    junk = tmp_path / "junk.fmu"
    junk.write_bytes(b"not a zip")
    with pytest.raises(FmuError, match="not a valid zip"):
        describe_fmu(junk)
    empty = tmp_path / "empty.fmu"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(FmuError, match=r"no modelDescription\.xml"):
        describe_fmu(empty)


def test_interface_the_fmu_lacks(python_ecm_fmu: Path) -> None:
    with pytest.raises(FmuError, match=r"no ModelExchange interface.*offers CoSimulation"):
        FmuTwin(python_ecm_fmu, interface="ModelExchange")
