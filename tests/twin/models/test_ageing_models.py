"""Tests for the semi-empirical NMC / LFP ageing laws."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from twin.errors import TwinInputError
from twin.models.ageing import AgeingState, NoAgeing, StressWindow
from twin.models.ageing_models import (
    AGEING_MODEL_NAMES,
    NaumannLfpAgeing,
    SchmalstiegNmcAgeing,
    ageing_model,
    nmc_ocv_v,
    power_law_step,
)

DAY_S = 86_400.0
MODELS = ["nmc", "lfp"]
LOSS_FIELDS = (
    "capacity_loss_calendar",
    "capacity_loss_cycle",
    "resistance_growth_calendar",
    "resistance_growth_cycle",
)


def window(
    n: int = 1,
    *,
    days: float = 1.0,
    soc: float | list[float] = 0.5,
    temperature_c: float | list[float] = 25.0,
    efc: float | list[float] = 0.0,
    dod: float | list[float] = 0.0,
    c_rate: float | list[float] = 0.0,
    capacity_ah: float = 3.0,
) -> StressWindow:
    """A window with ``efc`` equivalent full cycles (throughput = 2 x efc x capacity)."""

    def arr(v: float | list[float]) -> np.ndarray:
        return np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)).copy()

    return StressWindow(
        duration_s=days * DAY_S,
        mean_soc=arr(soc),
        mean_temperature_c=arr(temperature_c),
        throughput_ah=arr(efc) * 2.0 * capacity_ah,
        mean_dod=arr(dod),
        mean_c_rate=arr(c_rate),
        nominal_capacity_ah=np.full(n, capacity_ah),
        cycle_mean_soc=arr(soc),
    )


def run(name: str, windows: list[StressWindow], rate_factor: float = 1.0) -> AgeingState:
    model = ageing_model(name)
    n = windows[0].mean_soc.shape[0]
    state = AgeingState.fresh(n)
    for w in windows:
        state = model.update(state, w, rate_factor=np.full(n, rate_factor))
    return state


def cycling(n: int = 1, **kw: Any) -> StressWindow:
    """30 days with one 80 % DoD, 0.5C cycle per day at 25 degC, 50 % mean SoC."""
    args: dict[str, Any] = {
        "days": 30.0,
        "soc": 0.5,
        "efc": 30 * 0.8,
        "dod": 0.8,
        "c_rate": 0.5,
    }
    args.update(kw)
    return window(n, **args)


# --- power law integration -------------------------------------------------------------------


def test_power_law_step_matches_closed_form_and_is_split_invariant() -> None:
    rate = np.array([2e-3, 5e-4])
    one = power_law_step(loss=np.zeros(2), rate=rate, exponent=0.5, dx=np.full(2, 100.0))
    np.testing.assert_allclose(one, rate * 10.0)
    half = power_law_step(loss=np.zeros(2), rate=rate, exponent=0.5, dx=np.full(2, 50.0))
    rest = power_law_step(loss=half, rate=rate, exponent=0.5, dx=np.full(2, 50.0))
    np.testing.assert_allclose(half + rest, one, rtol=1e-12)


def test_power_law_step_zero_rate_or_step_gives_nothing() -> None:
    loss = np.array([0.0, 0.1, 0.1])
    out = power_law_step(
        loss=loss, rate=np.array([0.0, 0.0, 1e-3]), exponent=0.75, dx=np.array([5.0, 5.0, 0.0])
    )
    np.testing.assert_array_equal(out, np.zeros(3))


def test_power_law_step_continues_on_the_curve_of_the_new_stress() -> None:
    # Aged at a high rate, then at a low one: the low-rate step starts at the virtual time
    # at which the low-rate curve reaches the present loss (so it is smaller than fresh).
    loss = np.array([0.04])
    step = power_law_step(loss=loss, rate=np.array([1e-3]), exponent=0.5, dx=np.array([100.0]))
    virtual = (0.04 / 1e-3) ** 2
    np.testing.assert_allclose(step, 1e-3 * math.sqrt(virtual + 100.0) - 0.04, rtol=1e-12)


# --- published coefficients ------------------------------------------------------------------


def test_nmc_calendar_matches_schmalstieg_formula() -> None:
    soc, temperature_c, days = 0.8, 40.0, 200.0
    state = run("nmc", [window(days=days, soc=soc, temperature_c=temperature_c)])
    v = float(nmc_ocv_v(soc))
    t_k = temperature_c + 273.15
    alpha_cap = (7.543 * v - 23.75) * 1e6 * math.exp(-6976 / t_k)
    alpha_res = (5.270 * v - 16.32) * 1e5 * math.exp(-5986 / t_k)
    assert state.capacity_loss_calendar[0] == pytest.approx(alpha_cap * days**0.75, rel=1e-12)
    assert state.resistance_growth_calendar[0] == pytest.approx(alpha_res * days**0.75, rel=1e-12)
    assert state.capacity_loss_cycle[0] == 0.0
    assert state.resistance_growth_cycle[0] == 0.0


def test_nmc_cycle_matches_schmalstieg_formula_in_reference_ah() -> None:
    # 100 Ah through a 4 Ah cell = 100 * 2.05 / 4 Ah through the 2.05 Ah reference cell.
    w = window(days=0.0, soc=0.5, efc=12.5, dod=0.6, c_rate=1.0, capacity_ah=4.0)
    state = run("nmc", [w])
    v = float(nmc_ocv_v(0.5))
    q_ref = 100.0 * 2.05 / 4.0
    beta_cap = 7.348e-3 * (v - 3.667) ** 2 + 7.60e-4 + 4.081e-3 * 0.6
    beta_res = 2.153e-4 * (v - 3.725) ** 2 - 1.521e-5 + 2.798e-4 * 0.6
    assert state.capacity_loss_cycle[0] == pytest.approx(beta_cap * math.sqrt(q_ref), rel=1e-12)
    assert state.resistance_growth_cycle[0] == pytest.approx(beta_res * q_ref, rel=1e-12)
    assert state.capacity_loss_calendar[0] == 0.0


def test_nmc_ocv_table_end_points() -> None:
    np.testing.assert_allclose(nmc_ocv_v(np.array([0.0, 1.0, -0.1, 1.1])), [3.331, 4.162] * 2)


def test_lfp_calendar_matches_naumann_formula() -> None:
    soc, temperature_c, days = 0.9, 40.0, 100.0
    state = run("lfp", [window(days=days, soc=soc, temperature_c=temperature_c)])
    inv = 1 / (temperature_c + 273.15) - 1 / 298.15
    t_s = days * DAY_S
    k_cap = 1.2571e-5 * math.exp(-17126 / 8.3144598 * inv) * (2.8575 * (soc - 0.5) ** 3 + 0.60225)
    k_res = 3.4194e-10 * math.exp(-71827 / 8.3144598 * inv) * (-3.3903 * (soc - 0.5) ** 2 + 1.5604)
    assert state.capacity_loss_calendar[0] == pytest.approx(k_cap * math.sqrt(t_s), rel=1e-12)
    assert state.resistance_growth_calendar[0] == pytest.approx(k_res * t_s, rel=1e-12)


def test_lfp_cycle_matches_naumann_formula_in_percent() -> None:
    efc, dod, c_rate = 400.0, 0.8, 0.5
    state = run("lfp", [window(days=0.0, efc=efc, dod=dod, c_rate=c_rate)])
    k_cap = (0.0630 * c_rate + 0.0971) * (4.0253 * (dod - 0.6) ** 3 + 1.0923)
    k_res = (-0.0020 * c_rate + 0.0021) * (6.8477 * (dod - 0.5) ** 3 + 0.91882)
    assert state.capacity_loss_cycle[0] == pytest.approx(k_cap * math.sqrt(efc) / 100, rel=1e-12)
    assert state.resistance_growth_cycle[0] == pytest.approx(k_res * efc / 100, rel=1e-12)


# --- qualitative behaviour -------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_losses_never_decrease_under_random_stress(name: str) -> None:
    rng = np.random.default_rng(7)
    n = 16
    model = ageing_model(name)
    state = AgeingState.fresh(n)
    for _ in range(200):
        efc = rng.uniform(0.0, 2.0, n) * (rng.random(n) < 0.7)
        w = StressWindow(
            duration_s=float(rng.choice([0.0, 600.0, 3600.0, DAY_S])),
            mean_soc=rng.uniform(0.0, 1.0, n),
            mean_temperature_c=rng.uniform(-10.0, 55.0, n),
            throughput_ah=efc * 2 * 3.0,
            mean_dod=np.where(efc > 0, rng.uniform(0.01, 1.0, n), 0.0),
            mean_c_rate=np.where(efc > 0, rng.uniform(0.05, 2.0, n), 0.0),
            nominal_capacity_ah=np.full(n, 3.0),
            cycle_mean_soc=rng.uniform(0.0, 1.0, n),
        )
        new = model.update(state, w, rate_factor=rng.uniform(0.5, 1.5, n))
        for field in LOSS_FIELDS:
            assert (getattr(new, field) >= getattr(state, field)).all(), field
        assert (new.capacity_fraction <= state.capacity_fraction).all()
        assert (new.resistance_factor >= state.resistance_factor).all()
        state = new
    assert (state.capacity_fraction < 1.0).all()


@pytest.mark.parametrize("name", MODELS)
def test_zero_duration_and_throughput_change_nothing(name: str) -> None:
    aged = run(name, [cycling(3, soc=[0.2, 0.5, 0.9])])
    model = ageing_model(name)
    after = model.update(aged, window(3, days=0.0, soc=0.7), rate_factor=np.ones(3))
    for field in (*LOSS_FIELDS, "elapsed_s", "throughput_ah"):
        np.testing.assert_array_equal(getattr(after, field), getattr(aged, field))


@pytest.mark.parametrize("name", MODELS)
def test_update_is_pure_and_tracks_time_and_throughput(name: str) -> None:
    state = AgeingState.fresh(2)
    w = cycling(2)
    new = ageing_model(name).update(state, w, rate_factor=np.ones(2))
    assert (state.capacity_loss_calendar == 0).all() and (state.elapsed_s == 0).all()
    np.testing.assert_allclose(new.elapsed_s, w.duration_s)
    np.testing.assert_allclose(new.throughput_ah, w.throughput_ah)


@pytest.mark.parametrize("name", MODELS)
def test_hotter_ages_faster_in_calendar(name: str) -> None:
    state = run(name, [window(3, days=100.0, soc=0.6, temperature_c=[15.0, 25.0, 45.0])])
    for field in ("capacity_loss_calendar", "resistance_growth_calendar"):
        loss = getattr(state, field)
        assert loss[0] < loss[1] < loss[2], field


@pytest.mark.parametrize("name", MODELS)
def test_high_soc_fades_capacity_faster_in_calendar(name: str) -> None:
    loss = run(name, [window(3, days=100.0, soc=[0.1, 0.5, 1.0])]).capacity_loss_calendar
    assert loss[0] < loss[1] < loss[2]


def test_nmc_resistance_calendar_grows_with_soc() -> None:
    growth = run("nmc", [window(3, days=100.0, soc=[0.1, 0.5, 1.0])]).resistance_growth_calendar
    assert growth[0] < growth[1] < growth[2]


def test_lfp_resistance_calendar_peaks_at_half_soc() -> None:
    # Naumann 2018: k_SoC,R = c (SoC - 0.5)^2 + d with c < 0.
    growth = run("lfp", [window(3, days=100.0, soc=[0.0, 0.5, 1.0])]).resistance_growth_calendar
    assert growth[1] > growth[0]
    assert growth[0] == pytest.approx(growth[2], rel=1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_deeper_dod_ages_faster_at_equal_throughput(name: str) -> None:
    state = run(name, [cycling(3, dod=[0.2, 0.5, 1.0])])
    for field in ("capacity_loss_cycle", "resistance_growth_cycle"):
        loss = getattr(state, field)
        assert loss[0] < loss[1] < loss[2], field


def test_lfp_higher_c_rate_fades_capacity_faster() -> None:
    state = run("lfp", [cycling(3, c_rate=[0.2, 0.5, 1.0])])
    assert state.capacity_loss_cycle[0] < state.capacity_loss_cycle[1]
    assert state.capacity_loss_cycle[1] < state.capacity_loss_cycle[2]
    # As published, the resistance law falls with C-rate, and is clipped at zero above 1.05C.
    assert state.resistance_growth_cycle[0] > state.resistance_growth_cycle[2]
    assert run("lfp", [cycling(1, c_rate=2.0)]).resistance_growth_cycle[0] == 0.0


def test_nmc_cycle_law_ignores_c_rate_and_temperature() -> None:
    # Schmalstieg's cycle law was fitted at 35 degC and 1C only; it has no such terms.
    state = run("nmc", [cycling(3, c_rate=[0.2, 1.0, 2.0], temperature_c=[10.0, 25.0, 40.0])])
    np.testing.assert_allclose(state.capacity_loss_cycle, state.capacity_loss_cycle[0])


@pytest.mark.parametrize("name", MODELS)
def test_more_throughput_ages_more(name: str) -> None:
    loss = run(name, [cycling(3, efc=[5.0, 20.0, 80.0])]).capacity_loss_cycle
    assert loss[0] < loss[1] < loss[2]


# --- power-law shape, rate factor, splitting --------------------------------------------------


def test_calendar_shape_under_constant_stress() -> None:
    lfp = [run("lfp", [window(days=d, soc=0.7)]).capacity_loss_calendar[0] for d in (25, 100)]
    assert lfp[1] == pytest.approx(2.0 * lfp[0], rel=1e-12)  # t^0.5
    nmc = [run("nmc", [window(days=d, soc=0.7)]) for d in (10, 160)]
    assert nmc[1].capacity_loss_calendar[0] == pytest.approx(
        8.0 * nmc[0].capacity_loss_calendar[0], rel=1e-12
    )  # t^0.75
    assert nmc[1].resistance_growth_calendar[0] == pytest.approx(
        8.0 * nmc[0].resistance_growth_calendar[0], rel=1e-12
    )
    lfp_r = [run("lfp", [window(days=d, soc=0.7)]).resistance_growth_calendar[0] for d in (25, 100)]
    assert lfp_r[1] == pytest.approx(4.0 * lfp_r[0], rel=1e-12)  # linear


@pytest.mark.parametrize("name", MODELS)
def test_cycle_shape_under_constant_stress(name: str) -> None:
    one = run(name, [cycling(1, efc=50.0, days=0.0)])
    four = run(name, [cycling(1, efc=200.0, days=0.0)])
    assert four.capacity_loss_cycle[0] == pytest.approx(2.0 * one.capacity_loss_cycle[0], rel=1e-12)
    assert four.resistance_growth_cycle[0] == pytest.approx(
        4.0 * one.resistance_growth_cycle[0], rel=1e-12
    )


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("rate_factor", [1.0, 1.7])
def test_splitting_a_window_gives_the_same_state(name: str, rate_factor: float) -> None:
    kw: dict[str, Any] = {
        "soc": [0.3, 0.8],
        "temperature_c": [20.0, 40.0],
        "dod": [0.4, 0.9],
        "c_rate": 0.7,
    }
    whole = run(name, [window(2, days=60.0, efc=48.0, **kw)], rate_factor)
    parts = [window(2, days=d, efc=0.8 * d, **kw) for d in (1.0, 9.0, 20.0, 30.0)]
    split = run(name, parts, rate_factor)
    for field in (*LOSS_FIELDS, "elapsed_s", "throughput_ah"):
        np.testing.assert_allclose(getattr(split, field), getattr(whole, field), rtol=1e-10)


@pytest.mark.parametrize("name", MODELS)
def test_rate_factor_scales_increments(name: str) -> None:
    windows = [cycling(3), cycling(3, soc=0.8, temperature_c=35.0)]
    model = ageing_model(name)
    factors = np.array([0.0, 1.0, 2.5])
    state = AgeingState.fresh(3)
    for w in windows:
        new = model.update(state, w, rate_factor=factors)
        for field in LOSS_FIELDS:
            inc = getattr(new, field) - getattr(state, field)
            assert inc[0] == 0.0, field
            assert inc[1] > 0.0, field
            assert inc[2] == pytest.approx(2.5 * inc[1], rel=1e-10), field
        state = new


# --- registry and input errors ---------------------------------------------------------------


def test_registry_names() -> None:
    assert isinstance(ageing_model("nmc"), SchmalstiegNmcAgeing)
    assert isinstance(ageing_model(" LFP "), NaumannLfpAgeing)
    assert isinstance(ageing_model("none"), NoAgeing)
    assert ageing_model("nmc").name == "nmc"
    assert ageing_model("lfp").name == "lfp"
    assert {"nmc", "lfp", "none"} <= set(AGEING_MODEL_NAMES)


def test_registry_unknown_name_lists_allowed() -> None:
    with pytest.raises(TwinInputError, match="unknown ageing model 'nca'") as info:
        ageing_model("nca")
    for allowed in ("nmc", "lfp", "none"):
        assert allowed in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"soc": 55.0}, "mean_soc must be in"),
        ({"temperature_c": 298.15}, "mean_temperature_c must be in"),
        ({"dod": -0.1}, "mean_dod must be in"),
        ({"efc": -1.0}, "throughput_ah must be in"),
        ({"days": -1.0}, "duration_s must be finite and >= 0"),
        ({"capacity_ah": 0.0}, "nominal_capacity_ah must be > 0"),
        ({"soc": float("nan")}, "mean_soc must be finite"),
    ],
)
def test_bad_window_is_rejected(change: dict[str, float], message: str) -> None:
    kw: dict[str, Any] = {"efc": 1.0, "dod": 0.5, "c_rate": 0.5}
    kw.update(change)
    with pytest.raises(TwinInputError, match=message):
        run("lfp", [window(2, **kw)])


def test_window_with_wrong_cell_count_is_rejected() -> None:
    with pytest.raises(TwinInputError, match=r"shape \(3,\)"):
        ageing_model("nmc").update(AgeingState.fresh(3), window(2), rate_factor=np.ones(3))
    with pytest.raises(TwinInputError, match="rate_factor must be in"):
        ageing_model("nmc").update(AgeingState.fresh(2), window(2), rate_factor=np.full(2, -1.0))
