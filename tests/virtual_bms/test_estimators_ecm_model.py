"""The BMS's ECM: built from a parameter set like the twin's cells, corrected (or, failing
that, replaced) by the cloud's fit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cloud.mqtt.contract import EcmUpdateParams
from twin.models.ecm import CellInit, EcmOptions, EcmTwin
from twin.params import load_parameter_set
from virtual_bms.estimators.ecm_model import (
    OCV_MARGIN_V,
    EcmModel,
    EcmModelError,
    apply_ecm_correction,
    apply_ecm_update,
    ecm_correction,
    ecm_model_from_parameters,
    ecm_update_soc,
)


@pytest.mark.parametrize("name", ["nmc_okane2022", "ecm_example"])
def test_parameters_match_the_twins_small_signal_ecm(name: str) -> None:
    params = load_parameter_set(name)
    soc = np.array([0.2, 0.5, 0.8])
    temperature_c = np.array([12.0, 25.0, 33.0])
    rf = np.array([1.0, 1.3, 1.6])
    twin = EcmTwin(
        params,
        n_cells=3,
        init=CellInit(soc=soc, temperature_c=temperature_c, resistance_factor=rf),
        options=EcmOptions(ageing="none"),
    )
    truth = twin.ecm_parameters_now()
    model = ecm_model_from_parameters(
        params, n_cells=3, temperature_c=temperature_c, soc=soc, resistance_factor=rf, soh=0.8
    )
    assert model.n_rc == params.n_rc
    np.testing.assert_allclose(model.r0_ohm, truth["r0_ohm"], rtol=0.02)
    for k in range(model.n_rc):
        np.testing.assert_allclose(model.rc_resistance_ohm[k], truth[f"r{k + 1}_ohm"], rtol=0.02)
        np.testing.assert_allclose(model.rc_capacitance_f[k], truth[f"c{k + 1}_f"], rtol=0.02)
    np.testing.assert_allclose(model.capacity_ah, 0.8 * params.nominal_capacity_ah)
    np.testing.assert_allclose(model.valid_at_soc, soc)


def test_ocv_follows_the_set_with_temperature_and_its_slope() -> None:
    params = load_parameter_set("ecm_example")  # has an entropic coefficient
    temperature_c = np.array([0.0, 20.0, 40.0])
    model = ecm_model_from_parameters(params, n_cells=3, temperature_c=temperature_c)
    soc = np.array([0.3, 0.6, 0.9])
    np.testing.assert_allclose(model.ocv_v(soc), params.ocv_at(soc, temperature_c), atol=1e-12)
    h = 0.01
    expected = (params.ocv_at(soc + h, temperature_c) - params.ocv_at(soc - h, temperature_c)) / (
        2 * h
    )
    np.testing.assert_allclose(model.docv_dsoc_v(soc), expected, rtol=1e-9)
    np.testing.assert_allclose(model.soc_from_ocv(model.ocv_v(soc)), soc, atol=1e-9)


def test_ocv_is_extended_linearly_beyond_the_table() -> None:
    model = ecm_model_from_parameters(load_parameter_set("nmc_okane2022"), n_cells=1)
    top, grid_end = model.ocv_v(1.05), model.ocv_v(model.soc_grid[-1])
    assert top[0] > grid_end[0]
    assert model.docv_dsoc_v(1.05)[0] > 0.5  # a slope that pulls a filter back


def _update(**changes: float | None) -> EcmUpdateParams:
    fields: dict[str, float | None] = {
        "voltage": 3.7,
        "r0": 0.03,
        "r1": 0.015,
        "c1": 1800.0,
        "r2": 0.012,
        "c2": 25_000.0,
    }
    fields.update(changes)
    return EcmUpdateParams(**fields)  # type: ignore[arg-type]


def test_update_replaces_r_and_c_keeps_ocv_and_capacity() -> None:
    model = ecm_model_from_parameters(load_parameter_set("nmc_okane2022"), n_cells=4, soh=0.8)
    new = apply_ecm_update(model, _update(r3=0.004, c3=400.0))
    assert new.n_rc == 3
    np.testing.assert_array_equal(new.r0_ohm, np.full(4, 0.03))
    np.testing.assert_array_equal(new.rc_resistance_ohm[:, 0], [0.015, 0.012, 0.004])
    np.testing.assert_array_equal(new.rc_capacitance_f[:, 3], [1800.0, 25_000.0, 400.0])
    np.testing.assert_array_equal(new.capacity_ah, model.capacity_ah)
    np.testing.assert_array_equal(new.ocv_grid_v, model.ocv_grid_v)
    # voltage is the operating point of the fit: the SoC whose OCV it is.
    np.testing.assert_allclose(new.ocv_v(new.valid_at_soc), 3.7, atol=1e-9)
    assert model.n_rc == 2  # the old model is untouched


def test_update_with_fewer_or_gapped_pairs() -> None:
    model = ecm_model_from_parameters(load_parameter_set("nmc_okane2022"), n_cells=2)
    assert apply_ecm_update(model, _update(r2=None, c2=None)).n_rc == 1
    gapped = apply_ecm_update(model, _update(r2=None, c2=None, r3=0.002, c3=300.0))
    assert gapped.n_rc == 2
    np.testing.assert_array_equal(gapped.rc_resistance_ohm[:, 0], [0.015, 0.002])


def test_update_fitted_outside_the_ocv_range_is_refused() -> None:
    model = ecm_model_from_parameters(load_parameter_set("lfp_prada2013"), n_cells=2)
    top = float(model.ocv_v(model.soc_grid[-1])[0])
    apply_ecm_update(model, _update(voltage=top + OCV_MARGIN_V / 2))
    with pytest.raises(EcmModelError, match="another cell type"):
        apply_ecm_update(model, _update(voltage=top + 2 * OCV_MARGIN_V))


_ARC = load_parameter_set("nmc_eis_arc")  # 4 RC pairs, time constants decades apart
_CELL_TEMPERATURES_C = np.array([18.0, 25.0, 31.0])


def _arc_table(soc: object, temperature_c: object = _CELL_TEMPERATURES_C) -> EcmModel:
    return ecm_model_from_parameters(
        _ARC, n_cells=3, soc=soc, temperature_c=temperature_c, resistance_factor=1.3
    )


def _update_from(table: EcmModel, **factors: float) -> EcmUpdateParams:
    """What the cloud would send if the cells were ``table`` times ``factors`` (cell means),
    the pairs listed longest time constant first (the pairing is by tau, not position)."""
    fields: dict[str, float] = {
        "voltage": float(table.ocv_v(table.valid_at_soc).mean()),
        "r0": float(table.r0_ohm.mean()) * factors.get("r0", 1.0),
    }
    for slot, j in enumerate(np.argsort(-table.tau_s.mean(axis=1)), start=1):
        fields[f"r{slot}"] = float(table.rc_resistance_ohm[j].mean()) * factors.get(
            f"r{j + 1}", 1.0
        )
        fields[f"c{slot}"] = float(table.rc_capacitance_f[j].mean()) * factors.get(f"c{j + 1}", 1.0)
    return EcmUpdateParams(**fields)


def test_an_update_equal_to_the_tables_corrects_nothing() -> None:
    table = _arc_table(0.4)
    update = _update_from(table)
    np.testing.assert_allclose(ecm_update_soc(table, update), 0.4, atol=1e-9)
    correction = ecm_correction(table, update)
    assert correction is not None
    np.testing.assert_allclose(correction.r0, 1.0, rtol=1e-12)
    np.testing.assert_allclose(correction.rc_resistance, 1.0, rtol=1e-12)
    np.testing.assert_allclose(correction.rc_capacitance, 1.0, rtol=1e-12)
    np.testing.assert_allclose(correction.fitted_at_soc, 0.4)
    np.testing.assert_array_equal(correction.fitted_at_temperature_c, _CELL_TEMPERATURES_C)
    corrected = apply_ecm_correction(table, correction)
    for name in ("r0_ohm", "rc_resistance_ohm", "rc_capacitance_f", "capacity_ah"):
        np.testing.assert_allclose(getattr(corrected, name), getattr(table, name), rtol=1e-12)
    np.testing.assert_array_equal(corrected.valid_at_soc, table.valid_at_soc)


def test_factors_keep_the_tables_soc_and_temperature_dependence() -> None:
    table = _arc_table(0.4)
    correction = ecm_correction(table, _update_from(table, r0=1.1, r2=1.25, c2=0.8))
    assert correction is not None
    assert correction.r0 == pytest.approx(1.1)
    np.testing.assert_allclose(correction.rc_resistance, [1.0, 1.25, 1.0, 1.0])
    np.testing.assert_allclose(correction.rc_capacitance, [1.0, 0.8, 1.0, 1.0])
    assert correction.describe().startswith("R0 x1.10, R1 x1.00, C1 x1.00, R2 x1.25, C2 x0.80")
    # elsewhere (low SoC, where charge transfer rises, and cold) the factors ride on the tables
    elsewhere = _arc_table(0.1, temperature_c=[0.0, 5.0, 40.0])
    corrected = apply_ecm_correction(elsewhere, correction)
    np.testing.assert_allclose(corrected.r0_ohm, 1.1 * elsewhere.r0_ohm, rtol=1e-12)
    np.testing.assert_allclose(
        corrected.rc_resistance_ohm[1], 1.25 * elsewhere.rc_resistance_ohm[1], rtol=1e-12
    )
    np.testing.assert_allclose(
        corrected.rc_capacitance_f[1], 0.8 * elsewhere.rc_capacitance_f[1], rtol=1e-12
    )
    np.testing.assert_allclose(corrected.rc_resistance_ohm[2], elsewhere.rc_resistance_ohm[2])
    assert np.ptp(corrected.r0_ohm) > 0.1 * corrected.r0_ohm.mean()  # per cell, by temperature


def test_another_number_of_pairs_gives_no_correction() -> None:
    table = _arc_table(0.6)
    full = _update_from(table)
    two_pairs = full.model_copy(update={"r3": None, "c3": None, "r4": None, "c4": None})
    assert ecm_correction(table, two_pairs) is None
    correction = ecm_correction(table, full)
    assert correction is not None
    with pytest.raises(EcmModelError, match="4 RC pairs cannot apply to a model with 2"):
        apply_ecm_correction(ecm_model_from_parameters(_ARC, n_cells=3, n_rc=2), correction)


@pytest.mark.parametrize(
    ("factors", "match"),
    [({"r0": 6.0}, "R0 is 6x"), ({"c3": 0.1}, "C3 is 0.1x"), ({"r4": 5.5}, "R4 is 5.5x")],
)
def test_absurd_factors_are_refused(factors: dict[str, float], match: str) -> None:
    table = _arc_table(0.5)
    with pytest.raises(EcmModelError, match=match):
        ecm_correction(table, _update_from(table, **factors))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"r0_ohm": np.array([0.01, -0.01])}, "r0_ohm must be > 0"),
        ({"rc_resistance_ohm": np.ones((5, 2))}, "k in 1..4"),
        ({"rc_capacitance_f": np.ones((1, 2))}, "rc_capacitance_f must have shape"),
        ({"temperature_c": np.zeros(3)}, "temperature_c must have shape"),
        ({"capacity_ah": np.array([1.0, np.nan])}, "NaN"),
        ({"coulombic_efficiency": 1.5}, "coulombic_efficiency"),
    ],
)
def test_model_validation(change: dict[str, object], match: str) -> None:
    model = ecm_model_from_parameters(load_parameter_set("nmc_okane2022"), n_cells=2)
    with pytest.raises(EcmModelError, match=match):
        dataclasses.replace(model, **change)  # type: ignore[arg-type]


def test_builder_validation() -> None:
    params = load_parameter_set("nmc_okane2022")
    with pytest.raises(EcmModelError, match="n_rc"):
        ecm_model_from_parameters(params, n_cells=2, n_rc=3)
    with pytest.raises(EcmModelError, match="soc must be a scalar"):
        ecm_model_from_parameters(params, n_cells=2, soc=[0.1, 0.2, 0.3])
    with pytest.raises(EcmModelError, match="n_cells"):
        ecm_model_from_parameters(params, n_cells=0)
    model = ecm_model_from_parameters(params, n_cells=2)
    assert isinstance(model, EcmModel) and not model.r0_ohm.flags.writeable
