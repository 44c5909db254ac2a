"""``nmc_eis_arc``: a synthetic NMC cell whose impedance phase is a thermometer.

The calibrated sets come from HPPC pulses: their RC pairs have time constants of seconds
and more, and their phase barely moves with temperature, so EIS-based estimators (SoT,
the EIS part of SoS) cannot work on them. This set adds the physics that makes them work:
R0 with a weak Arrhenius law (electrolyte, 12 kJ/mol), a charge-transfer arc with a strong
one (55 kJ/mol) whose time constants follow its resistance (double-layer capacitance
kept), spread over three RC pairs a decade apart as an ECM stand-in for a depressed arc,
and a slow diffusion pair; charge transfer also rises at low SoC. The OCV is a straight
line from 3.4 to 4.2 V. It is a demonstration cell for Pillar 1's EIS estimators, not a
calibrated one.
"""

from __future__ import annotations

import numpy as np

from twin.models.base import FloatArray
from twin.models.ecm_params import EcmParameters, Limits

__all__ = ["nmc_eis_arc"]

GAS_J_PER_MOL_K = 8.314


def _arrhenius(temperature_c: FloatArray, activation_j_per_mol: float) -> FloatArray:
    """Factor on a 25 degC value."""
    inv = 1.0 / (temperature_c + 273.15) - 1.0 / 298.15
    return np.asarray(np.exp(activation_j_per_mol / GAS_J_PER_MOL_K * inv))


def nmc_eis_arc() -> EcmParameters:
    """A 5 Ah NMC cell with a temperature-activated charge-transfer arc (module docstring)."""
    soc = np.linspace(0.0, 1.0, 11)
    temps = np.arange(-20.0, 61.0, 5.0)
    t, s = np.meshgrid(temps, soc, indexing="ij")
    r0 = 0.005 * _arrhenius(t, 12e3) * np.ones_like(s)
    r_ct = 0.015 * _arrhenius(t, 55e3) * (1.0 + 0.5 * np.exp(-s / 0.08))
    tau_ct_s = 0.01  # at 25 degC: the arc's apex near 16 Hz
    pairs = [
        (weight * r_ct, np.full_like(t, tau_ct_s * spread / (weight * 0.015)))
        for weight, spread in ((0.25, 0.1), (0.5, 1.0), (0.25, 10.0))
    ]
    pairs.append(
        (0.010 * _arrhenius(t, 30e3) * (1.0 + 0.5 * np.exp(-s / 0.1)), np.full_like(t, 5e3))
    )

    def both_directions(table: FloatArray) -> FloatArray:
        return np.stack([table, table])

    return EcmParameters(
        name="nmc_eis_arc",
        source="Synthetic: twin/params/eis_arc.py (Arrhenius charge-transfer arc for EIS demos).",
        chemistry="nmc",
        nominal_capacity_ah=5.0,
        soc_grid=soc,
        ocv_v=3.4 + 0.8 * soc,
        entropic_v_per_k=np.zeros(soc.size),
        temperature_grid_c=temps,
        r0_ohm=both_directions(r0),
        rc_resistance_ohm=np.stack([both_directions(r) for r, _ in pairs]),
        rc_capacitance_f=np.stack([both_directions(c) for _, c in pairs]),
        limits=Limits(min_voltage_v=2.5, max_voltage_v=4.2),
        inductance_h=2e-8,
    )
