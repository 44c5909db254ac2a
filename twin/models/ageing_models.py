"""Semi-empirical calendar + cycle ageing laws (NMC- and LFP-graphite) for the ECM twin."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

import numpy as np
from numpy.typing import ArrayLike

from twin.errors import TwinInputError
from twin.models.ageing import AgeingModel, AgeingState, NoAgeing, StressWindow
from twin.models.base import FloatArray, as_cell_array

__all__ = [
    "AGEING_MODEL_NAMES",
    "NaumannLfpAgeing",
    "SchmalstiegNmcAgeing",
    "ageing_model",
    "nmc_ocv_v",
    "power_law_step",
]

GAS_CONSTANT_J_PER_MOL_K: Final = 8.3144598
KELVIN_OFFSET: Final = 273.15
SECONDS_PER_DAY: Final = 86_400.0

# Plausibility limits used only to reject inputs in the wrong unit (percent SoC, kelvin).
_SOC_TOLERANCE: Final = 0.05
_MIN_TEMPERATURE_C: Final = -60.0
_MAX_TEMPERATURE_C: Final = 150.0


def power_law_step(
    *, loss: FloatArray, rate: FloatArray, exponent: float, dx: FloatArray
) -> FloatArray:
    """Increment of a power law ``y = rate * x**exponent`` over ``dx``, continued from ``loss``.

    State-based ("virtual x") integration: the stress of this step sets ``rate``; the
    cell's present ``loss`` is converted into the virtual abscissa ``x_v = (loss/rate)**(1/z)``
    at which the law with this rate would have produced it, and the step returns
    ``rate * (x_v + dx)**z - loss``. This is the exact integral of
    ``dy = z * rate**(1/z) * y**(1 - 1/z) * dx`` at constant stress, so splitting a step
    into parts gives the same result, and the loss never decreases.

    Args:
        loss: Accumulated loss before the step (fraction), shape ``(N,)``.
        rate: Pre-factor of the law under this step's stress (``>= 0``).
        exponent: Power ``z`` of the abscissa, ``0 < z``.
        dx: Step of the abscissa (time or throughput) in the law's unit (``>= 0``).

    Returns:
        Non-negative increments, shape ``(N,)``.
    """
    loss = np.maximum(loss, 0.0)
    rate = np.maximum(rate, 0.0)
    dx = np.maximum(dx, 0.0)
    active = (rate > 0.0) & (dx > 0.0)
    safe_rate = np.where(active, rate, 1.0)
    with np.errstate(over="ignore"):
        # A tiny rate after a stressful past gives a huge virtual abscissa: the step is ~0.
        x_virtual = (loss / safe_rate) ** (1.0 / exponent)
    fresh = x_virtual <= 0.0
    ratio = dx / np.where(fresh | ~np.isfinite(x_virtual), 1.0, x_virtual)
    ratio = np.where(np.isfinite(x_virtual), ratio, 0.0)
    # loss * ((1 + dx/x_v)**z - 1) without cancellation when dx << x_v.
    continued = loss * np.expm1(exponent * np.log1p(ratio))
    first = safe_rate * dx**exponent
    return np.where(active, np.where(fresh, first, continued), 0.0)


# --- Schmalstieg et al. 2014, NMC111-graphite (Sanyo UR18650E, 2.05 Ah) --------------------------

# Open-circuit voltage of the Sanyo UR18650E at SoC 0, 0.05, ..., 1: the table that NREL
# BLAST-Lite (nmc111_gr_Sanyo2Ah_2014.py, BSD-3) digitised from Schmalstieg et al. 2014, Fig. 1,
# and Ecker et al. 2014 (0 and 10 % SoC), resampled on a 5 % grid (max. deviation 2.2 mV).
_NMC_OCV_SOC: Final = np.linspace(0.0, 1.0, 21)
# fmt: off
_NMC_OCV_V: Final = np.array([
    3.3310, 3.4197, 3.4910, 3.5436, 3.5812, 3.6079, 3.6267, 3.6411, 3.6552, 3.6726, 3.6974,
    3.7322, 3.7747, 3.8209, 3.8688, 3.9154, 3.9649, 4.0194, 4.0730, 4.1183, 4.1620,
])
# fmt: on

NMC_REFERENCE_CAPACITY_AH: Final = 2.05
"""Nominal capacity of the Sanyo UR18650E (Ecker et al. 2014); scales throughput to the law."""


def nmc_ocv_v(soc: ArrayLike) -> FloatArray:
    """Open-circuit voltage of the Schmalstieg reference cell (Sanyo UR18650E) at ``soc``.

    Args:
        soc: State of charge, 0..1 (clipped).

    Returns:
        Open-circuit voltage in volts, same shape as ``soc``.
    """
    return np.asarray(np.interp(np.clip(soc, 0.0, 1.0), _NMC_OCV_SOC, _NMC_OCV_V), dtype=np.float64)


class SchmalstiegNmcAgeing:
    """NMC-graphite ageing law of Schmalstieg et al. (2014), J. Power Sources 257, 325-334.

    Fitted on Sanyo UR18650E cells (NMC111/graphite, 2.05 Ah; data of Ecker et al. 2014,
    J. Power Sources 248, 839-851). With ``V`` the open-circuit voltage at the window's mean
    SoC, ``T`` the mean cell temperature in kelvin, ``t`` in days and ``Q`` the charge
    throughput in Ah of the 2.05 Ah reference cell (our throughput x 2.05 / nominal capacity)::

        capacity_loss_calendar     = alpha_cap * t**0.75
        alpha_cap = (7.543 V - 23.75) * 1e6 * exp(-6976 / T)       [1/day**0.75]
        resistance_growth_calendar = alpha_res * t**0.75
        alpha_res = (5.270 V - 16.32) * 1e5 * exp(-5986 / T)       [1/day**0.75]
        capacity_loss_cycle        = beta_cap * Q**0.5
        beta_cap = 7.348e-3 (V - 3.667)**2 + 7.60e-4 + 4.081e-3 DoD [1/Ah**0.5]
        resistance_growth_cycle    = beta_res * Q
        beta_res = 2.153e-4 (V - 3.725)**2 - 1.521e-5 + 2.798e-4 DoD [1/Ah]

    ``V`` in the cycle terms is the open-circuit voltage at the throughput-weighted mean SoC
    of the window's half-cycles (``StressWindow.cycle_mean_soc``), the mean cycle voltage
    the published law uses. The cycle terms depend neither on temperature nor on C-rate
    (cycling was done at 35 degC and 1C only). Rates are clipped at 0 (``beta_res`` would
    turn negative below about 5 % DoD near 3.7 V). Validity: accelerated storage tests (SoC
    varied at 50 degC, temperature at 50 % SoC); cycling at 35 degC, 1C/1C, varied DoD and
    mean SoC. The knee seen by Ecker et al. at high DoD is not modelled. See docs/ageing.md.
    """

    name = "nmc"

    def update(
        self, state: AgeingState, window: StressWindow, *, rate_factor: FloatArray
    ) -> AgeingState:
        """Advance ``state`` by one window (pure: returns a new state).

        Args:
            state: Degradation before the window.
            window: Stress over the window.
            rate_factor: Per-cell multiplier of the law's rates (1 = nominal).

        Returns:
            The state after the window.

        Raises:
            TwinInputError: On shape mismatch, non-finite values or values in the wrong unit.
        """
        s = _checked_stress(state, window, rate_factor, model=self.name)
        temperature_k = s.temperature_c + KELVIN_OFFSET
        voltage_v = nmc_ocv_v(s.soc)
        cycle_voltage_v = nmc_ocv_v(s.cycle_soc)
        days = np.full_like(voltage_v, s.duration_s / SECONDS_PER_DAY)
        reference_ah = s.throughput_ah * (NMC_REFERENCE_CAPACITY_AH / s.nominal_capacity_ah)

        alpha_cap = (7.543 * voltage_v - 23.75) * 1e6 * np.exp(-6976.0 / temperature_k)
        alpha_res = (5.270 * voltage_v - 16.32) * 1e5 * np.exp(-5986.0 / temperature_k)
        beta_cap = 7.348e-3 * (cycle_voltage_v - 3.667) ** 2 + 7.60e-4 + 4.081e-3 * s.dod
        beta_res = 2.153e-4 * (cycle_voltage_v - 3.725) ** 2 - 1.521e-5 + 2.798e-4 * s.dod
        return _advance(
            state,
            s,
            capacity_calendar=power_law_step(
                loss=state.capacity_loss_calendar,
                rate=s.rate_factor * alpha_cap,
                exponent=0.75,
                dx=days,
            ),
            resistance_calendar=power_law_step(
                loss=state.resistance_growth_calendar,
                rate=s.rate_factor * alpha_res,
                exponent=0.75,
                dx=days,
            ),
            capacity_cycle=power_law_step(
                loss=state.capacity_loss_cycle,
                rate=s.rate_factor * beta_cap,
                exponent=0.5,
                dx=reference_ah,
            ),
            resistance_cycle=s.rate_factor * np.maximum(beta_res, 0.0) * reference_ah,
        )


# --- Naumann et al. 2018 / 2020, LFP-graphite (Sony/Murata US26650FTC1, 3.0 Ah) -------------------

_LFP_T_REF_K: Final = 298.15


class NaumannLfpAgeing:
    """LFP-graphite ageing law of Naumann et al. (calendar 2018, cycle 2020).

    Fitted on Sony/Murata US26650FTC1 cells (LiFePO4/graphite, 3.0 Ah). Calendar:
    M. Naumann, M. Schimpe, P. Keil, H. C. Hesse, A. Jossen, J. Energy Storage 17 (2018)
    153-169. Cycle: M. Naumann, F. B. Spingler, A. Jossen, J. Power Sources 451 (2020) 227666.
    With ``T`` in kelvin, ``t`` in seconds, ``FEC`` = throughput / (2 x nominal capacity),
    ``C`` the throughput-weighted C-rate in 1/h and ``k_T(k_ref, Ea) =
    k_ref exp(-Ea/R (1/T - 1/298.15 K))``::

        capacity_loss_calendar     = k_T(1.2571e-5 s**-0.5, 17126 J/mol)
                                     * (2.8575 (SoC - 0.5)**3 + 0.60225) * t**0.5
        resistance_growth_calendar = k_T(3.4194e-10 1/s, 71827 J/mol)
                                     * (-3.3903 (SoC - 0.5)**2 + 1.5604) * t
        capacity_loss_cycle        = (0.0630 C + 0.0971) (4.0253 (DoD - 0.6)**3 + 1.0923)
                                     * FEC**0.5 / 100
        resistance_growth_cycle    = (-0.0020 C + 0.0021) (6.8477 (DoD - 0.5)**3 + 0.91882)
                                     * FEC / 100

    The cycle laws are given in percent in the papers, hence ``/ 100``. Coefficients as in
    TUM's SimSES implementation of these papers. Cycle terms do not depend on temperature
    (cycling at 25 degC); the resistance growth falls with C-rate and is clipped at 0 above
    1.05C. Validity: calendar 0-100 % SoC with Arrhenius temperature dependence from the
    storage matrix; cycling at room temperature, up to about 1C, no low-temperature data.
    See docs/ageing.md.
    """

    name = "lfp"

    def update(
        self, state: AgeingState, window: StressWindow, *, rate_factor: FloatArray
    ) -> AgeingState:
        """Advance ``state`` by one window (pure: returns a new state).

        Args:
            state: Degradation before the window.
            window: Stress over the window.
            rate_factor: Per-cell multiplier of the law's rates (1 = nominal).

        Returns:
            The state after the window.

        Raises:
            TwinInputError: On shape mismatch, non-finite values or values in the wrong unit.
        """
        s = _checked_stress(state, window, rate_factor, model=self.name)
        soc, dod, c_rate = s.soc, s.dod, s.c_rate
        inverse_t = 1.0 / (s.temperature_c + KELVIN_OFFSET) - 1.0 / _LFP_T_REF_K
        seconds = np.full_like(soc, s.duration_s)
        fec = s.throughput_ah / (2.0 * s.nominal_capacity_ah)

        k_cap_cal = (
            1.2571e-5
            * np.exp(-17126.0 / GAS_CONSTANT_J_PER_MOL_K * inverse_t)
            * (2.8575 * (soc - 0.5) ** 3 + 0.60225)
        )
        k_res_cal = (
            3.4194e-10
            * np.exp(-71827.0 / GAS_CONSTANT_J_PER_MOL_K * inverse_t)
            * (-3.3903 * (soc - 0.5) ** 2 + 1.5604)
        )
        k_cap_cyc = (0.0630 * c_rate + 0.0971) * (4.0253 * (dod - 0.6) ** 3 + 1.0923) / 100.0
        k_res_cyc = (
            np.maximum(-0.0020 * c_rate + 0.0021, 0.0)
            * (6.8477 * (dod - 0.5) ** 3 + 0.91882)
            / 100.0
        )
        return _advance(
            state,
            s,
            capacity_calendar=power_law_step(
                loss=state.capacity_loss_calendar,
                rate=s.rate_factor * k_cap_cal,
                exponent=0.5,
                dx=seconds,
            ),
            resistance_calendar=s.rate_factor * np.maximum(k_res_cal, 0.0) * seconds,
            capacity_cycle=power_law_step(
                loss=state.capacity_loss_cycle,
                rate=s.rate_factor * k_cap_cyc,
                exponent=0.5,
                dx=fec,
            ),
            resistance_cycle=s.rate_factor * np.maximum(k_res_cyc, 0.0) * fec,
        )


# --- Registry ------------------------------------------------------------------------------------

_REGISTRY: Final[dict[str, type[SchmalstiegNmcAgeing | NaumannLfpAgeing | NoAgeing]]] = {
    "nmc": SchmalstiegNmcAgeing,
    "nmc-graphite": SchmalstiegNmcAgeing,
    "schmalstieg2014": SchmalstiegNmcAgeing,
    "lfp": NaumannLfpAgeing,
    "lfp-graphite": NaumannLfpAgeing,
    "naumann": NaumannLfpAgeing,
    "none": NoAgeing,
}

AGEING_MODEL_NAMES: Final[tuple[str, ...]] = tuple(_REGISTRY)
"""Names accepted by :func:`ageing_model` (case-insensitive)."""


def ageing_model(name: str) -> AgeingModel:
    """Return the ageing law for a chemistry name.

    Args:
        name: ``"nmc"`` (Schmalstieg 2014), ``"lfp"`` (Naumann 2018/2020), ``"none"`` or an
            alias from :data:`AGEING_MODEL_NAMES`; case and surrounding spaces are ignored.

    Returns:
        A fresh model instance.

    Raises:
        TwinInputError: If the name is unknown; the message lists the allowed names.
    """
    key = str(name).strip().lower()
    if key not in _REGISTRY:
        raise TwinInputError(
            f"unknown ageing model {name!r} (ageing_model name); "
            f"allowed: {', '.join(AGEING_MODEL_NAMES)}"
        )
    return _REGISTRY[key]()


# --- Helpers -------------------------------------------------------------------------------------


def _advance(
    state: AgeingState,
    stress: _Stress,
    *,
    capacity_calendar: FloatArray,
    resistance_calendar: FloatArray,
    capacity_cycle: FloatArray,
    resistance_cycle: FloatArray,
) -> AgeingState:
    return replace(
        state,
        capacity_loss_calendar=state.capacity_loss_calendar + capacity_calendar,
        capacity_loss_cycle=state.capacity_loss_cycle + capacity_cycle,
        resistance_growth_calendar=state.resistance_growth_calendar + resistance_calendar,
        resistance_growth_cycle=state.resistance_growth_cycle + resistance_cycle,
        elapsed_s=state.elapsed_s + stress.duration_s,
        throughput_ah=state.throughput_ah + stress.throughput_ah,
    )


@dataclass(frozen=True, slots=True)
class _Stress:
    """A validated window: arrays of shape ``(N,)``, SoC and DoD clipped to 0..1."""

    duration_s: float
    soc: FloatArray
    temperature_c: FloatArray
    throughput_ah: FloatArray
    dod: FloatArray
    c_rate: FloatArray
    nominal_capacity_ah: FloatArray
    rate_factor: FloatArray
    cycle_soc: FloatArray


def _checked_stress(
    state: AgeingState, window: StressWindow, rate_factor: ArrayLike, *, model: str
) -> _Stress:
    """Validate a window (and the rate factors) against the state's cell count."""
    n = state.capacity_loss_calendar.shape[0]
    source = f"StressWindow for ageing model {model!r}"
    duration = float(window.duration_s)
    if not np.isfinite(duration) or duration < 0.0:
        raise TwinInputError(f"duration_s must be finite and >= 0, got {duration!r} ({source})")
    arrays = {
        "mean_soc": window.mean_soc,
        "mean_temperature_c": window.mean_temperature_c,
        "throughput_ah": window.throughput_ah,
        "mean_dod": window.mean_dod,
        "mean_c_rate": window.mean_c_rate,
        "nominal_capacity_ah": window.nominal_capacity_ah,
        "cycle_mean_soc": window.cycle_mean_soc,
    }
    checked = {k: as_cell_array(v, n_cells=n, name=k, source=source) for k, v in arrays.items()}
    _check_range(
        checked["mean_soc"],
        name="mean_soc",
        low=-_SOC_TOLERANCE,
        high=1.0 + _SOC_TOLERANCE,
        hint="a fraction 0..1, not percent",
        source=source,
    )
    _check_range(
        checked["mean_dod"],
        name="mean_dod",
        low=0.0,
        high=1.0 + _SOC_TOLERANCE,
        hint="a fraction 0..1, not percent",
        source=source,
    )
    _check_range(
        checked["mean_temperature_c"],
        name="mean_temperature_c",
        low=_MIN_TEMPERATURE_C,
        high=_MAX_TEMPERATURE_C,
        hint="degC, not kelvin",
        source=source,
    )
    _check_range(
        checked["throughput_ah"],
        name="throughput_ah",
        low=0.0,
        high=np.inf,
        hint="charge + discharge, >= 0",
        source=source,
    )
    _check_range(
        checked["mean_c_rate"],
        name="mean_c_rate",
        low=0.0,
        high=np.inf,
        hint="|current| / capacity, >= 0",
        source=source,
    )
    nominal = checked["nominal_capacity_ah"]
    if (nominal <= 0.0).any():
        i = int(np.flatnonzero(nominal <= 0.0)[0])
        raise TwinInputError(
            f"nominal_capacity_ah must be > 0, got {nominal[i]!r} for cell {i} ({source})"
        )
    factor = as_cell_array(rate_factor, n_cells=n, name="rate_factor", source=source)
    _check_range(factor, name="rate_factor", low=0.0, high=np.inf, hint=">= 0", source=source)
    return _Stress(
        duration_s=duration,
        soc=np.clip(checked["mean_soc"], 0.0, 1.0),
        temperature_c=checked["mean_temperature_c"],
        throughput_ah=checked["throughput_ah"],
        dod=np.clip(checked["mean_dod"], 0.0, 1.0),
        c_rate=checked["mean_c_rate"],
        nominal_capacity_ah=nominal,
        rate_factor=factor,
        cycle_soc=np.clip(checked["cycle_mean_soc"], 0.0, 1.0),
    )


def _check_range(
    values: FloatArray, *, name: str, low: float, high: float, hint: str, source: str
) -> None:
    bad = (values < low) | (values > high)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TwinInputError(
            f"{name} must be in [{low:g}, {high:g}] ({hint}), got {values[i]!r} for cell {i} "
            f"({int(bad.sum())} bad value(s)) ({source})"
        )
