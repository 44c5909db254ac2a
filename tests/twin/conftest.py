"""Shared fixtures: synthetic parameter sets whose behaviour is known analytically."""

from __future__ import annotations

import numpy as np
import pytest

from twin.models.ecm_params import EcmParameters, Limits, ThermalParameters


def make_params(
    *,
    r0_ohm: float = 0.002,
    rc: tuple[tuple[float, float], ...] = ((0.001, 10_000.0),),
    capacity_ah: float = 10.0,
    ocv_slope_v: float = 0.8,
    entropic_v_per_k: float = 0.0,
    thermal: ThermalParameters | None = None,
) -> EcmParameters:
    """Constant R/C tables and a linear OCV of 3.3 V + slope * SoC."""
    soc = np.linspace(0.0, 1.0, 11)
    temps = np.array([0.0, 25.0, 50.0])
    shape = (2, temps.size, soc.size)
    return EcmParameters(
        name="synthetic",
        source="tests/twin/conftest.py",
        chemistry="nmc",
        nominal_capacity_ah=capacity_ah,
        soc_grid=soc,
        ocv_v=3.3 + ocv_slope_v * soc,
        entropic_v_per_k=np.full(soc.size, entropic_v_per_k),
        temperature_grid_c=temps,
        r0_ohm=np.full(shape, r0_ohm),
        rc_resistance_ohm=np.array([np.full(shape, r) for r, _ in rc]),
        rc_capacitance_f=np.array([np.full(shape, c) for _, c in rc]),
        limits=Limits(min_voltage_v=3.0, max_voltage_v=4.2),
        thermal=thermal or ThermalParameters(),
    )


@pytest.fixture
def flat_params() -> EcmParameters:
    return make_params()
